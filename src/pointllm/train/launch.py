"""`pointllm train --nproc N ...`: the same command under torchrun, one process per device.

`pointllm train --nproc 8 ARGS` equals `torchrun --nproc_per_node 8 -m pointllm train ARGS`;
`--nnodes/--node_rank/--master_addr/--master_port` or `--rdzv_endpoint/--rdzv_backend/--rdzv_id`
span several nodes. torchrun forwards SIGTERM and SIGUSR1 to the workers and waits
`--shutdown_timeout` seconds for their checkpoint; the launcher then exits with
RESUBMIT_EXIT_CODE, as a single-process run does.

`run_torchrun` is the launcher itself, for any `pointllm` subcommand (`pointllm eval run --nproc`
uses it too); it reports which ranks failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Set by the launcher; an interrupted worker creates this file so the launcher knows the workers
# stopped to be resubmitted rather than failed.
MARKER_ENV = "POINTLLM_RESUBMIT_MARKER"
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def launch_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pointllm train", add_help=False, allow_abbrev=False)
    group = parser.add_argument_group("multi-process launch (torchrun)")
    group.add_argument("--nproc", type=int, help="processes per node (usually GPUs per node)")
    group.add_argument("--nnodes", default="1", help="number of nodes, or MIN:MAX (1)")
    group.add_argument("--node_rank", type=int, help="this node's rank (static rendezvous)")
    group.add_argument("--master_addr", help="address of node 0 (static rendezvous)")
    group.add_argument("--master_port", type=int, help="port on node 0 (static rendezvous)")
    group.add_argument("--rdzv_endpoint", help="host:port of the c10d rendezvous (elastic)")
    group.add_argument("--rdzv_backend", default="c10d", help="rendezvous backend (c10d)")
    group.add_argument("--rdzv_id", help="job id shared by all nodes (elastic rendezvous)")
    group.add_argument(
        "--shutdown_timeout",
        type=int,
        default=600,
        help="seconds workers get to save a checkpoint after SIGTERM/SIGUSR1 (600)",
    )
    return parser


def split_launch_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Separate the launcher's flags from the training arguments."""
    return launch_parser().parse_known_args(list(argv))


def torchrun_argv(
    options: argparse.Namespace,
    train_argv: Sequence[str],
    verbose: bool,
    command: Sequence[str] = ("train",),
) -> list[str]:
    """torchrun's argument list for `options` followed by `-m pointllm COMMAND ARGS`."""
    if options.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {options.nproc}")
    argv = ["--nproc_per_node", str(options.nproc), "--nnodes", str(options.nnodes)]
    if options.rdzv_endpoint:
        argv += ["--rdzv_endpoint", options.rdzv_endpoint, "--rdzv_backend", options.rdzv_backend]
        if options.rdzv_id:
            argv += ["--rdzv_id", options.rdzv_id]
    elif options.master_addr or options.node_rank is not None or options.master_port:
        argv += ["--node_rank", str(options.node_rank or 0)]
        argv += ["--master_addr", options.master_addr or "127.0.0.1"]
        argv += ["--master_port", str(options.master_port or 29500)]
    elif str(options.nnodes) == "1":
        argv += ["--standalone"]  # one node: torchrun picks a free port itself
    else:
        raise ValueError(
            f"--nnodes {options.nnodes} needs --rdzv_endpoint (or --master_addr and --node_rank)"
        )
    argv += ["--signals_to_handle", FORWARDED_SIGNALS]
    argv += ["--shutdown_timeout", str(options.shutdown_timeout)]
    argv += ["-m", "pointllm", *(["--verbose"] if verbose else []), *command, *train_argv]
    return argv


@dataclass(frozen=True)
class LaunchOutcome:
    """How the workers ended: the global ranks that failed (with their exit codes; negative is
    the signal that killed it), or the signal that stopped the launcher."""

    failed_ranks: dict[int, int] = field(default_factory=dict)
    signal: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed_ranks and self.signal is None


def run_torchrun(
    options: argparse.Namespace,
    command_argv: Sequence[str],
    verbose: bool = False,
    command: Sequence[str] = ("train",),
) -> LaunchOutcome:
    """Run `pointllm COMMAND ARGS` under torchrun in this process (so it receives the
    scheduler's signals and forwards them) and wait for every worker."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    argv = torchrun_argv(options, command_argv, verbose, command)
    try:
        torchrun.main(argv)
    except ChildFailedError as exc:
        return LaunchOutcome({rank: failure.exitcode for rank, failure in exc.failures.items()})
    except SignalException as exc:
        return LaunchOutcome(signal=exc.sigval.name)
    return LaunchOutcome()


def launch(options: argparse.Namespace, train_argv: Sequence[str], verbose: bool = False) -> int:
    """`pointllm train` under torchrun. Returns 0, RESUBMIT_EXIT_CODE when the workers stopped on
    a signal, or 1 on failure."""
    from pointllm.train import RESUBMIT_EXIT_CODE

    torchrun_argv(options, train_argv, verbose)  # bad launcher flags fail before the temp folder
    marker_dir = Path(tempfile.mkdtemp(prefix="pointllm-launch-"))
    marker = marker_dir / "interrupted"
    os.environ[MARKER_ENV] = str(marker)
    try:
        status = 0 if run_torchrun(options, train_argv, verbose).ok else 1
    finally:
        interrupted = marker.exists()
        shutil.rmtree(marker_dir, ignore_errors=True)
        os.environ.pop(MARKER_ENV, None)
    return RESUBMIT_EXIT_CODE if interrupted else status


def note_interruption() -> None:
    """In a launched worker, tell the launcher that this run stopped to be resubmitted."""
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).touch()
