"""`pointllm doctor`: can this machine train PointLLM (`checks`), and the command (`commands`)."""

from pointllm.doctor.checks import (
    FAIL,
    OK,
    WARN,
    Check,
    Gpu,
    TorchInfo,
    format_table,
    run_checks,
    verdict,
)

__all__ = [
    "FAIL",
    "OK",
    "WARN",
    "Check",
    "Gpu",
    "TorchInfo",
    "format_table",
    "run_checks",
    "verdict",
]
