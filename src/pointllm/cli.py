"""The `pointllm` command: parses arguments and dispatches to typed functions.

Each area of the package owns a small `commands` module with a `register(subparsers)` function
that adds its subcommands; heavy imports happen inside the handlers so `pointllm --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

# Modules that add subcommands; each defines register(subparsers).
COMMAND_MODULES = (
    "pointllm.demo.commands",
    "pointllm.data.commands",
    "pointllm.eval.commands",
    "pointllm.infer.commands",
    "pointllm.model.commands",
    "pointllm.serve.commands",
    "pointllm.train.commands",
    "pointllm.pretrain.commands",
    "pointllm.doctor.commands",
    "pointllm.hpc.commands",
)


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def quiet_third_party_noise() -> None:
    """Hide third-party deprecation and duplicate-registration chatter unless --verbose."""
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!pointllm)")
    warnings.filterwarnings("ignore", message=".*backend defined more than once.*")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def show_progress(stream=None) -> bool:
    """Keep long phases (hub downloads, weight loading) visible. On a terminal the hub's and
    transformers' own progress bars draw; in a log (no terminal) they would fill it with
    carriage returns, so they are off and each phase prints one `pointllm: ...` line instead.
    Returns whether bars are on."""
    if (stream or sys.stderr).isatty():
        return True
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logger = logging.getLogger("pointllm.progress")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("pointllm: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return False


def hide_loading_bars() -> None:
    """No per-checkpoint loading bars from transformers (used when stderr is no terminal)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pointllm", description="PointLLM: a language model that understands 3D point clouds."
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show third-party warnings and full tracebacks"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_third_party_noise()
        if not show_progress() and getattr(args, "needs_model", True):
            hide_loading_bars()
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        print("pointllm: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, FileNotFoundError, PermissionError) as exc:
        if args.verbose:
            raise
        print(f"pointllm {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
