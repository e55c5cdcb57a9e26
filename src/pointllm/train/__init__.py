"""Training: stage 1 (alignment) and stage 2 (instruction tuning) through one entry point.

`train(model_args, data_args, training_args)` runs a stage; `parse_args(argv)` builds its
arguments from a YAML recipe and command-line flags. A run stopped by SIGTERM / SIGUSR1 saves a
checkpoint and `pointllm train` exits with `RESUBMIT_EXIT_CODE`, so job scripts can resubmit it
with `--resume`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# EX_TEMPFAIL from sysexits.h: "temporary failure, try again" - the job should be resubmitted.
RESUBMIT_EXIT_CODE = 75

_LAZY = {
    "train": "pointllm.train.run",
    "TrainResult": "pointllm.train.run",
    "parse_args": "pointllm.train.args",
    "ModelArguments": "pointllm.train.args",
    "DataArguments": "pointllm.train.args",
    "PointLLMTrainingArguments": "pointllm.train.args",
}

if TYPE_CHECKING:
    from pointllm.train.args import (
        DataArguments,
        ModelArguments,
        PointLLMTrainingArguments,
        parse_args,
    )
    from pointllm.train.run import TrainResult, train


def __getattr__(name: str) -> Any:
    # Heavy modules (torch, transformers) load on first use so the CLI starts fast.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pointllm.train' has no attribute {name!r}")


__all__ = [
    "RESUBMIT_EXIT_CODE",
    "DataArguments",
    "ModelArguments",
    "PointLLMTrainingArguments",
    "TrainResult",
    "parse_args",
    "train",
]
