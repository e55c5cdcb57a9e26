"""`pointllm hpc render|examples`: argument parsing; the scripts come from `render`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pointllm.atomic import write_text
from pointllm.hpc.render import JOBS, SCHEDULERS, JobSpec, example_specs, render


def _spec_from_args(args: argparse.Namespace) -> JobSpec:
    train_args = list(args.train_args)
    if train_args[:1] == ["--"]:
        train_args = train_args[1:]
    venv = args.venv if args.venv is not None else (None if args.container else ".venv")
    return JobSpec(
        scheduler=args.scheduler,
        job=args.job,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        group=args.group,
        queue=args.queue,
        walltime=args.walltime or "",
        config=args.config or "",
        venv=venv or None,
        container=args.container,
        setup=tuple(args.setup),
        grace=args.grace,
        max_resubmits=args.max_resubmits,
        job_script=args.job_script or (str(args.output) if args.output else None),
        next_script=args.next,
        select_resources=args.select_resources,
        directives=tuple(args.directive),
        rdzv_port=args.rdzv_port,
        train_args=tuple(train_args),
    )


def _render_command(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    text = render(spec)
    if args.output is None:
        print(text, end="")
        return 0
    path = write_text(args.output, text, executable=True)
    if spec.job == "interactive":
        print(f"wrote {path}; run it on the login node to get a shell on a compute node")
    else:
        submit = "qsub" if spec.scheduler == "pbs" else "sbatch"
        print(f"wrote {path}; submit it from this directory: {submit} {spec.job_script}")
    return 0


def _examples_command(args: argparse.Namespace) -> int:
    for relative, spec in example_specs().items():
        # The scripts name themselves relative to the project root; --out only moves the files.
        path = write_text(
            Path(args.out) / Path(relative).relative_to("hpc"), render(spec), executable=True
        )
        print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("hpc", help="render PBS / Slurm job scripts (hpc/ has examples)")
    sub = parser.add_subparsers(dest="hpc_command", metavar="SUBCOMMAND", required=True)

    render_parser = sub.add_parser(
        "render",
        help="write a job script for an interactive session or stage 1/2 training",
        description="Render a PBS or Slurm job script. Batch jobs resubmit themselves when the "
        "wall time stops training. Arguments after `--` go to `pointllm train`.",
    )
    add = render_parser.add_argument
    add("--scheduler", required=True, choices=SCHEDULERS)
    add("--job", required=True, choices=JOBS)
    add("--nodes", type=int, default=1, help="nodes (1)")
    add("--gpus-per-node", type=int, default=1, help="GPUs per node = processes per node (1)")
    add("--group", help="project / account to charge (qsub -P, sbatch --account)")
    add("--queue", help="queue / partition (qsub -q, sbatch --partition)")
    add("--walltime", help="H:MM:SS (2:00:00 interactive, 24:00:00 batch)")
    add("--config", help="training recipe (default: configs/stageN*.yaml for this many GPUs)")
    add("--venv", help="virtual environment to activate (.venv; '' for none)")
    add("--container", help="Apptainer image to run pointllm in (instead of a venv)")
    add("--setup", action="append", default=[], help="shell line run first (repeatable)")
    add("--grace", type=int, default=600, help="seconds before the wall time to stop (600)")
    add("--max-resubmits", type=int, default=20, help="resubmissions before giving up (20)")
    add("-o", "--output", type=Path, help="write the script here (default: print it)")
    add("--job-script", help="path the job resubmits (default: the -o path)")
    add("--next", help="job script to submit when training finishes (e.g. stage 2)")
    add("--select-resources", default="", help="PBS: appended to select=N, e.g. :ngpus=8")
    add(
        "--directive",
        action="append",
        default=[],
        help="extra #PBS / #SBATCH option, e.g. --directive=--cpus-per-task=32 (repeatable)",
    )
    add("--rdzv-port", type=int, default=29400, help="multi-node rendezvous port (29400)")
    add("train_args", nargs=argparse.REMAINDER, help="-- then `pointllm train` arguments")
    render_parser.set_defaults(func=_render_command, needs_model=False)

    examples_parser = sub.add_parser(
        "examples", help="render the example scripts shipped in hpc/ (PBS and Slurm)"
    )
    examples_parser.add_argument("--out", default="hpc", help="folder (hpc)")
    examples_parser.set_defaults(func=_examples_command, needs_model=False)
