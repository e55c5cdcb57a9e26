"""`pointllm demo`: the whole pipeline on this machine (`run`), and the command (`commands`)."""

from __future__ import annotations

from typing import Any

# Loaded on first use, so that `pointllm --help` (which imports `commands`) stays light.
_RUN_NAMES = (
    "FULL",
    "PHASES",
    "QUICK",
    "SUMMARY_FILE",
    "Context",
    "DemoPlan",
    "demo_encoder",
    "phase_outputs",
    "phase_settings",
    "recipe_path",
    "run_demo",
)


def __getattr__(name: str) -> Any:
    if name in _RUN_NAMES:
        from pointllm.demo import run

        return getattr(run, name)
    raise AttributeError(f"module 'pointllm.demo' has no attribute {name!r}")


__all__ = list(_RUN_NAMES)
