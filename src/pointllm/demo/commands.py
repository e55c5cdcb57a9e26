"""`pointllm demo`: argument parsing; the pipeline lives in `run`."""

from __future__ import annotations

import argparse


def _handle(args: argparse.Namespace) -> int:
    from pointllm.demo.run import run_demo

    run_demo(args.out, quick=args.quick, fresh=args.fresh)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train, evaluate and chat with a PointLLM on this machine (minutes, CPU)",
        description="synthetic data -> stage 0 (encoder) -> stage 1 -> stage 2 -> held-out "
        "evaluation -> chat examples, on the embedded SmolLM2-135M-Instruct. Finished phases "
        "are reused on a re-run.",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--fresh", action="store_true", help="run every phase again")
    parser.add_argument("--quick", action="store_true", help="a smaller run (a few minutes)")
    parser.set_defaults(func=_handle)
