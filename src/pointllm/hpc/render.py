"""PBS and Slurm job scripts rendered from a few options, never edited by hand.

A batch script runs `pointllm train --config RECIPE --resume` on 1 GPU, one node x N GPUs
(`--nproc N`, torchrun) or M nodes x N GPUs (one launcher per node, torchrun's c10d rendezvous
on the first node of `$PBS_NODEFILE` / `$SLURM_JOB_NODELIST`), and keeps training going across
wall-time limits:

- Shortly before the wall time the job shell gets SIGUSR1 (Slurm: `--signal=B:USR1@GRACE`; PBS
  has no such warning, so a timer in the script sends it) and forwards it to training, which saves
  a checkpoint and exits with `pointllm.train.RESUBMIT_EXIT_CODE` (75).
- A SIGTERM (the wall time itself, `qdel`, `scancel`) reaches every process of the job, training
  included; the shell traps it only to stay alive and read training's exit status.
- On status 75 the script submits itself again (`qsub` / `sbatch`); the next job resumes from the
  checkpoint. On success it can submit the next stage's script (`--next`).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, fields

SCHEDULERS = ("pbs", "slurm")
_NAMES = {"pbs": "PBS", "slurm": "Slurm"}
JOBS = ("interactive", "stage1", "stage2")
# pointllm.train.RESUBMIT_EXIT_CODE, repeated so that rendering never imports torch; a test keeps
# the two equal.
RESUBMIT_EXIT_CODE = 75
_WALLTIME = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")
# Recipes by (stage, single GPU?): the 8-GPU originals, or the single-GPU (24 GB) variants.
_CONFIGS = {
    ("stage1", False): "configs/stage1.yaml",
    ("stage1", True): "configs/stage1_1gpu_24gb.yaml",
    ("stage2", False): "configs/stage2.yaml",
    ("stage2", True): "configs/stage2_lora_1gpu_24gb.yaml",
}


class HpcError(ValueError):
    """A job-script option that cannot be rendered."""


def default_walltime(job: str) -> str:
    return "2:00:00" if job == "interactive" else "24:00:00"


def default_config(job: str, gpus: int) -> str:
    """The stage's recipe: the 8-GPU original, or the single-GPU (24 GB) variant."""
    return "" if job == "interactive" else _CONFIGS[(job, gpus == 1)]


def walltime_seconds(walltime: str) -> int:
    """`H:MM:SS` (the form both qsub and sbatch accept) in seconds."""
    match = _WALLTIME.match(walltime)
    if not match:
        raise HpcError(f"--walltime {walltime!r}: expected H:MM:SS, e.g. 2:00:00")
    hours, minutes, seconds = (int(g) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class JobSpec:
    """Everything a job script depends on. `job_script` is the path (relative to the directory
    the job is submitted from) under which the script resubmits itself."""

    scheduler: str
    job: str
    nodes: int = 1
    gpus_per_node: int = 1
    group: str | None = None
    queue: str | None = None
    walltime: str = ""  # default: 2:00:00 interactive, 24:00:00 batch
    config: str = ""  # default: the stage's recipe for this many GPUs
    venv: str | None = ".venv"
    container: str | None = None
    setup: tuple[str, ...] = ()
    grace: int = 600
    max_resubmits: int = 20
    job_script: str | None = None
    next_script: str | None = None
    select_resources: str = ""
    directives: tuple[str, ...] = ()
    rdzv_port: int = 29400
    train_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise HpcError(f"--scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.job not in JOBS:
            raise HpcError(f"--job must be one of {JOBS}, got {self.job!r}")
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise HpcError(
                f"--nodes and --gpus-per-node must be >= 1, got {self.nodes} and "
                f"{self.gpus_per_node}"
            )
        # Defaults that depend on other fields (the dataclass is frozen, hence object.__setattr__).
        if not self.walltime:
            object.__setattr__(self, "walltime", default_walltime(self.job))
        if not self.config:
            object.__setattr__(
                self, "config", default_config(self.job, self.nodes * self.gpus_per_node)
            )
        seconds = walltime_seconds(self.walltime)
        if self.job == "interactive":
            if self.train_args or self.next_script:
                raise HpcError("training arguments and --next are for batch jobs (stage1/stage2)")
        else:
            if not self.job_script:
                raise HpcError(
                    "a batch job needs the path it is submitted as, to resubmit itself: "
                    "pass -o FILE (or --job-script PATH)"
                )
            if not 0 < self.grace < seconds:
                raise HpcError(
                    f"--grace {self.grace}: must be between 0 and the wall time ({seconds} s)"
                )
        if self.max_resubmits < 0:
            raise HpcError(f"--max-resubmits must be >= 0, got {self.max_resubmits}")
        if self.container and self.venv:
            raise HpcError("--container and --venv exclude each other: the image has its own env")
        if self.select_resources and self.scheduler != "pbs":
            raise HpcError("--select-resources is for PBS (`-l select=N:...`); Slurm: --directive")
        for value in (self.group, self.queue, self.select_resources, *self.directives):
            if value and ("\n" in value or "\r" in value):
                raise HpcError(f"{value!r}: a job option cannot contain a line break")

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1


# ---- pieces shared by both schedulers --------------------------------------------------------


def _q(value: str) -> str:
    return shlex.quote(value)


# Options whose flag is not the field's name.
_OPTIONS = {"job_script": "-o", "next_script": "--next", "directives": "--directive"}


def _render_argv(spec: JobSpec) -> list[str]:
    """The `pointllm hpc render` arguments that reproduce `spec` (for the script's header)."""
    argv = ["pointllm", "hpc", "render", "--scheduler", spec.scheduler, "--job", spec.job]
    defaults = {
        "walltime": default_walltime(spec.job),
        "config": default_config(spec.job, spec.nodes * spec.gpus_per_node),
        "venv": None if spec.container else ".venv",
    }
    for f in fields(JobSpec):
        if f.name in ("scheduler", "job", "train_args"):
            continue
        value = getattr(spec, f.name)
        if value == defaults.get(f.name, f.default):
            continue
        option = _OPTIONS.get(f.name, "--" + f.name.replace("_", "-"))
        for item in value if isinstance(value, tuple) else ("" if value is None else value,):
            # argparse would take a value that starts with "-" for an option: attach it.
            item = str(item)
            argv += [f"{option}={item}"] if item.startswith("-") else [option, item]
    return argv + (["--", *spec.train_args] if spec.train_args else [])


def _header(spec: JobSpec, summary: str) -> list[str]:
    return [
        f"# {summary}",
        "# Generated by `pointllm hpc render` with the command below; render your own (other",
        "# nodes, GPUs, stage, --next to chain stages) instead of editing:",
        f"#   {shlex.join(_render_argv(spec))}",
    ]


def _pointllm(spec: JobSpec) -> list[str]:
    """The command that runs pointllm: from the venv (activated first) or the container."""
    if spec.container:
        return ["apptainer", "exec", "--nv", _q(spec.container), "pointllm"]
    return ["pointllm"]


def _train_argv(spec: JobSpec, rendezvous: list[str]) -> list[str]:
    argv = [*_pointllm(spec), "train"]
    if spec.nodes * spec.gpus_per_node > 1:
        argv += ["--nproc", str(spec.gpus_per_node)]
    argv += rendezvous
    argv += ["--config", _q(spec.config), "--resume", *(_q(a) for a in spec.train_args)]
    return argv


# ---- interactive -----------------------------------------------------------------------------


def interactive_command(spec: JobSpec) -> list[str]:
    """The command that opens a shell on a GPU compute node (arguments already shell-quoted)."""
    if spec.scheduler == "pbs":
        argv = ["qsub", "-I"]
        argv += ["-P", _q(spec.group)] if spec.group else []
        argv += ["-q", _q(spec.queue)] if spec.queue else []
        argv += ["-l", _q(f"select={spec.nodes}{spec.select_resources}")]
        return argv + ["-l", f"walltime={spec.walltime}", *spec.directives]
    argv = ["srun"]
    argv += [f"--account={_q(spec.group)}"] if spec.group else []
    argv += [f"--partition={_q(spec.queue)}"] if spec.queue else []
    argv += [f"--nodes={spec.nodes}", f"--gpus-per-node={spec.gpus_per_node}"]
    argv += [f"--time={spec.walltime}", *spec.directives, "--pty", "bash", "-l"]
    return argv


def _render_interactive(spec: JobSpec) -> str:
    where = _NAMES[spec.scheduler]
    enter = (
        f"apptainer run --nv {_q(spec.container)} doctor"
        if spec.container
        else f"source {_q(spec.venv or '.venv')}/bin/activate && pointllm doctor"
    )
    lines = [
        "#!/bin/bash",
        *_header(spec, f"An interactive shell on a GPU compute node ({where})."),
        "# Never train on the login node. Once on the compute node:",
        f"#   cd <project> && {enter}",
        f"exec {' '.join(interactive_command(spec))}",
    ]
    return "\n".join(lines) + "\n"


# ---- batch -----------------------------------------------------------------------------------


def _directives(spec: JobSpec, name: str) -> list[str]:
    if spec.scheduler == "pbs":
        lines = [f"#PBS -N {name}"]
        lines += [f"#PBS -P {spec.group}"] if spec.group else []
        lines += [f"#PBS -q {spec.queue}"] if spec.queue else []
        lines += [
            f"#PBS -l select={spec.nodes}{spec.select_resources}",
            f"#PBS -l walltime={spec.walltime}",
            "#PBS -j oe",
        ]
        return lines + [f"#PBS {d}" for d in spec.directives]
    lines = [f"#SBATCH --job-name={name}"]
    lines += [f"#SBATCH --account={spec.group}"] if spec.group else []
    lines += [f"#SBATCH --partition={spec.queue}"] if spec.queue else []
    lines += [
        f"#SBATCH --nodes={spec.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={spec.gpus_per_node}",
        f"#SBATCH --time={spec.walltime}",
        # B: signals only this shell, which forwards to training (Slurm may send it up to 60 s
        # early: its timer ticks once a minute).
        f"#SBATCH --signal=B:USR1@{spec.grace}",
        "#SBATCH --output=%x-%j.out",
    ]
    return lines + [f"#SBATCH {d}" for d in spec.directives]


def _launch(spec: JobSpec) -> list[str]:
    """Lines that define the `train` command array (and the multi-node host list)."""
    if not spec.multi_node:
        return [f"train=({' '.join(_train_argv(spec, []))})"]
    port = spec.rdzv_port
    rendezvous = ["--nnodes", str(spec.nodes), "--rdzv_endpoint", f'"$RDZV_HOST:{port}"']
    if spec.scheduler == "pbs":
        rendezvous += ["--rdzv_id", '"$PBS_JOBID"']
        return [
            "# One launcher per node (mpirun -npernode 1); torchrun's c10d rendezvous runs on the",
            "# first node of $PBS_NODEFILE (which lists a node once per slot).",
            'HOSTFILE="$(mktemp)"',
            'awk \'!seen[$0]++\' "$PBS_NODEFILE" > "$HOSTFILE"',
            f'if [[ $(wc -l < "$HOSTFILE") -ne {spec.nodes} ]]; then',
            f'  echo "pointllm job: expected {spec.nodes} nodes in $PBS_NODEFILE, got'
            f' $(wc -l < "$HOSTFILE")" >&2',
            "  exit 1",
            "fi",
            'RDZV_HOST="$(head -n 1 "$HOSTFILE")"',
            "# mpirun passes on only the variables named with -x.",
            "exports=()",
            "for name in PATH LD_LIBRARY_PATH HF_HOME HF_HUB_OFFLINE POINTLLM_HOME; do",
            '  if [[ -n ${!name:-} ]]; then exports+=(-x "$name"); fi',
            "done",
            f'train=(mpirun -np {spec.nodes} -npernode 1 -hostfile "$HOSTFILE" "${{exports[@]}}"',
            f"       {' '.join(_train_argv(spec, rendezvous))})",
        ]
    rendezvous += ["--rdzv_id", '"$SLURM_JOB_ID"']
    return [
        "# One launcher per node (srun, one task per node); torchrun's c10d rendezvous runs on",
        "# the first node of the allocation.",
        # sed reads the whole list: `head` could end scontrol with SIGPIPE (fatal with pipefail).
        'RDZV_HOST="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)"',
        f"train=(srun --nodes={spec.nodes} --ntasks-per-node=1",
        f"       {' '.join(_train_argv(spec, rendezvous))})",
    ]


def _submit(spec: JobSpec, script: str, resubmits: str | None) -> str:
    """The submit command for `script`; `resubmits` (a shell expression) sets the counter."""
    if spec.scheduler == "pbs":
        options = f'-v "POINTLLM_RESUBMITS={resubmits}" ' if resubmits else ""
        return f"qsub {options}{script}"
    # sbatch hands this job's environment on: clear the chain's variables for a new chain.
    if resubmits:
        return f'sbatch --export="ALL,POINTLLM_RESUBMITS={resubmits}" {script}'
    return f"env -u POINTLLM_RESUBMITS -u POINTLLM_JOB_SCRIPT sbatch {script}"


def _render_batch(spec: JobSpec) -> str:
    pbs = spec.scheduler == "pbs"
    stage = spec.job[-1]
    name = f"pointllm-{spec.job}"
    shape = (
        "1 GPU"
        if spec.nodes * spec.gpus_per_node == 1
        else f"{spec.nodes} node{'s' if spec.multi_node else ''} x {spec.gpus_per_node} GPUs"
    )
    submit = f"qsub {spec.job_script}" if pbs else f"sbatch {spec.job_script}"
    stop_after = walltime_seconds(spec.walltime) - spec.grace
    resubmit = _submit(spec, '"$JOB_SCRIPT"', "$((RESUBMITS + 1))")
    submit_next = _submit(spec, '"$NEXT_JOB_SCRIPT"', None)
    lines = [
        "#!/bin/bash",
        *_directives(spec, name),
        *_header(spec, f"PointLLM stage {stage} training on {shape} ({_NAMES[spec.scheduler]})."),
        f"# Submit from the project root: {submit}",
        f"# {spec.grace} s before the wall time training saves a checkpoint and this job submits",
        "# itself again to continue; delete the queued follow-up job to end the chain.",
        "set -euo pipefail",
        "",
        "# Fixed when rendered; the environment may override the first two.",
        f'JOB_SCRIPT="${{POINTLLM_JOB_SCRIPT:-{spec.job_script}}}"',
        f'MAX_RESUBMITS="${{POINTLLM_MAX_RESUBMITS:-{spec.max_resubmits}}}"',
        'RESUBMITS="${POINTLLM_RESUBMITS:-0}"',
        f"NEXT_JOB_SCRIPT={_q(spec.next_script or '')}",
        f"RESUBMIT_EXIT_CODE={RESUBMIT_EXIT_CODE}  # pointllm train: stopped by a signal, "
        "checkpoint saved",
        "",
        f'cd "${{{"PBS_O_WORKDIR" if pbs else "SLURM_SUBMIT_DIR"}:-$PWD}}"',
        "if [[ ! -f $JOB_SCRIPT ]]; then",
        '  echo "pointllm job: $JOB_SCRIPT not found in $PWD: submit from the directory it was'
        ' rendered for (or set POINTLLM_JOB_SCRIPT)" >&2',
        "  exit 1",
        "fi",
    ]
    lines += [f"source {_q(spec.venv)}/bin/activate"] if spec.venv else []
    lines += list(spec.setup)
    cleanup = (
        ['  if [[ -n $timer_pid ]]; then kill "$timer_pid" 2>/dev/null || true; fi'] if pbs else []
    )
    cleanup += (
        ['  if [[ -n ${HOSTFILE:-} ]]; then rm -f "$HOSTFILE"; fi']
        if spec.multi_node and pbs
        else []
    )
    if cleanup:
        lines += ["", 'timer_pid=""', "cleanup() {", *cleanup, "}", "trap cleanup EXIT"]
    lines += ["", *_launch(spec), ""]
    lines += [
        "# USR1 is the early warning (only this shell gets it): pass it to training. SIGTERM goes",
        "# to every process of the job, training included: trap it only to stay alive.",
        'forward_stop() { kill -USR1 "$train_pid" 2>/dev/null || true; }',
        'train_pid=""',
        "trap forward_stop USR1",
        "trap : TERM",
        "",
        '"${train[@]}" &',
        "train_pid=$!",
    ]
    if pbs:
        lines += [
            f"# PBS has no early warning: this timer sends it {spec.grace} s before the wall time.",
            f'( trap \'kill "$!" 2>/dev/null; exit 0\' TERM; sleep {stop_after} & wait "$!"'
            ' && kill -USR1 "$$" ) &',
            "timer_pid=$!",
        ]
    lines += [
        "while :; do",
        "  status=0",
        '  wait "$train_pid" || status=$?',
        "  # A trapped signal ends `wait` early (status > 128) while training is still saving.",
        '  if (( status > 128 )) && kill -0 "$train_pid" 2>/dev/null; then continue; fi',
        "  break",
        "done",
        "",
        "if (( status == RESUBMIT_EXIT_CODE )); then",
        "  if (( RESUBMITS >= MAX_RESUBMITS )); then",
        '    echo "pointllm job: training was stopped $((RESUBMITS + 1)) times; not resubmitting'
        ' (POINTLLM_MAX_RESUBMITS=$MAX_RESUBMITS)" >&2',
        '    exit "$status"',
        "  fi",
        '  echo "pointllm job: checkpoint saved before the wall time; resubmitting $JOB_SCRIPT'
        ' ($((RESUBMITS + 1))/$MAX_RESUBMITS)"',
        f"  {resubmit}",
        "  exit 0",
        "fi",
        "if (( status == 0 )) && [[ -n $NEXT_JOB_SCRIPT ]]; then",
        '  echo "pointllm job: training finished; submitting $NEXT_JOB_SCRIPT"',
        f"  {submit_next}",
        "fi",
        'exit "$status"',
    ]
    return "\n".join(lines) + "\n"


def render(spec: JobSpec) -> str:
    """The job script (or, for `interactive`, the command wrapped in a script) for `spec`."""
    return _render_interactive(spec) if spec.job == "interactive" else _render_batch(spec)


# ---- the shipped examples --------------------------------------------------------------------


# The examples shipped in hpc/, one per scheduler: stage 1 on one node x 8 GPUs (the original
# recipe), with placeholder group and queue names.
EXAMPLE_SCRIPTS = {scheduler: f"hpc/{scheduler}/stage1-1x8.sh" for scheduler in SCHEDULERS}


def example_specs() -> dict[str, JobSpec]:
    """The shipped example scripts by path relative to the project root (the directory they are
    submitted from)."""
    return {
        path: JobSpec(
            scheduler=scheduler,
            job="stage1",
            gpus_per_node=8,
            group="<group>",
            queue="<queue>",
            job_script=path,
        )
        for scheduler, path in EXAMPLE_SCRIPTS.items()
    }
