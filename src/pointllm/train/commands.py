"""`pointllm train`: parse a recipe and flags, then call `pointllm.train.train` (or torchrun)."""

from __future__ import annotations

import argparse
import sys

_DESCRIPTION = """\
usage: pointllm train [--config RECIPE] [--FIELD VALUE ...] [--nproc N ...]

Train PointLLM stage 1 or stage 2. Values come from the recipe (a YAML file, or the name of one
shipped with pointllm: stage1, stage2, demo_stage1, ...), then from the command line (which wins). The original PointLLM script's flags are accepted (--version v1, --stage_2 True,
--fix_llm, --fix_pointnet, --pointnum, --evaluation_strategy, ...). Exit status 75 means the run
was stopped by SIGTERM/SIGUSR1 after saving a checkpoint: resubmit it with --resume. Exit status
65 means --resume found checkpoints but none intact (each skipped one is named with its reason).
"""


def _print_help() -> None:
    from pointllm.train.args import build_parser
    from pointllm.train.launch import launch_parser

    print(_DESCRIPTION)
    launch_parser().print_help()
    print()
    build_parser().print_help()


def _show_progress_messages() -> None:
    """pointllm's own INFO messages (dataset summary, resume point) on stderr, from the first
    process of each node only, so a multi-GPU run does not print everything N times."""
    import logging
    import os

    logger = logging.getLogger("pointllm")
    if logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("pointllm: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO if os.environ.get("LOCAL_RANK", "0") == "0" else logging.WARNING)


def _train(args: argparse.Namespace) -> int:
    from pointllm.train import RESUBMIT_EXIT_CODE
    from pointllm.train.launch import launch, note_interruption, split_launch_args

    if "-h" in args.argv or "--help" in args.argv:
        _print_help()
        return 0
    options, rest = split_launch_args(args.argv)
    if options.nproc is not None:
        return launch(options, rest, verbose=args.verbose)

    from pointllm.train.args import parse_args
    from pointllm.train.checkpoints import NO_INTACT_CHECKPOINT_EXIT_CODE, NoIntactCheckpointError
    from pointllm.train.run import train

    model_args, data_args, training_args = parse_args(rest)
    _show_progress_messages()
    try:
        result = train(model_args, data_args, training_args)
    except NoIntactCheckpointError as exc:
        print(f"pointllm train: error: {exc}", file=sys.stderr)
        return NO_INTACT_CHECKPOINT_EXIT_CODE
    if result.interrupted:
        note_interruption()
        if training_args.should_save:
            print(
                f"pointllm train: stopped by signal at step {result.global_step}; checkpoint saved "
                f"in {result.output_dir}. Resubmit with --resume (exit status {RESUBMIT_EXIT_CODE})."
            )
        return RESUBMIT_EXIT_CODE
    if not training_args.should_save:
        return 0
    summary = result.summary
    print(
        f"pointllm train: {summary['global_step']} steps, final loss {summary['final_loss']}, "
        f"{summary['samples_per_second']} samples/s; model and train_summary.json in "
        f"{result.output_dir}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train` to the top-level parser; its arguments are parsed by the handler (YAML +
    HfArgumentParser), so the subparser takes everything after `train` verbatim."""
    parser = subparsers.add_parser(
        "train",
        help="train stage 1 or 2 (--config stage1|stage2|..., --nproc N for several GPUs)",
        add_help=False,
        prefix_chars="+",  # nothing after `train` is an option of this parser
    )
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    parser.set_defaults(func=_train)
