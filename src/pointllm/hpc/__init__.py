"""Job scripts for PBS and Slurm clusters: `render` builds them, `commands` is `pointllm hpc`."""

from pointllm.hpc.render import (
    JOBS,
    RESUBMIT_EXIT_CODE,
    SCHEDULERS,
    HpcError,
    JobSpec,
    default_config,
    default_walltime,
    example_specs,
    interactive_command,
    render,
    walltime_seconds,
)

__all__ = [
    "JOBS",
    "RESUBMIT_EXIT_CODE",
    "SCHEDULERS",
    "HpcError",
    "JobSpec",
    "default_config",
    "default_walltime",
    "example_specs",
    "interactive_command",
    "render",
    "walltime_seconds",
]
