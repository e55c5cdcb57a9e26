"""`pointllm demo`: argument parsing; the pipeline lives in `run`."""

from __future__ import annotations

import argparse


def _handle(args: argparse.Namespace) -> int:
    import os

    from pointllm.demo.run import PRECISION_ENV, PRECISIONS, run_demo

    precision = args.precision or os.environ.get(PRECISION_ENV) or "auto"
    if precision not in PRECISIONS:
        print(f"pointllm demo: ${PRECISION_ENV}={precision!r}: use one of {', '.join(PRECISIONS)}")
        return 2
    if args.seed < 0:
        print(f"pointllm demo: --seed {args.seed}: use a seed >= 0")
        return 2
    run_demo(args.out, quick=args.quick, fresh=args.fresh, precision=precision, seed=args.seed)
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
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the synthetic data and of every training phase (default 0); changing it "
        "reruns everything",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=None,
        help="training precision; auto (the default, or $POINTLLM_DEMO_PRECISION): bf16 autocast "
        "on a CUDA GPU or a CPU with AMX, else fp32. Changing it reruns the training phases",
    )
    parser.set_defaults(func=_handle)
