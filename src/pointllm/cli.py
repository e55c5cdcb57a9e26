"""The `pointllm` command: parses arguments and dispatches to typed functions.

Each area of the package owns a small `commands` module with a `register(subparsers)` function
that adds its subcommands; heavy imports happen inside the handlers so `pointllm --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

# Modules that add subcommands; each defines register(subparsers).
COMMAND_MODULES = (
    "pointllm.demo",
    "pointllm.data.commands",
    "pointllm.eval.commands",
    "pointllm.infer.commands",
    "pointllm.model.commands",
    "pointllm.serve.commands",
    "pointllm.train.commands",
    "pointllm.pretrain.commands",
    "pointllm.doctor",
    "pointllm.hpc",
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
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def hide_loading_bars() -> None:
    """transformers draws a progress bar for every checkpoint it loads; ours are enough."""
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
        if getattr(args, "needs_model", True):
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
