"""`pointllm demo`: the whole pipeline on this machine (`run`), and the command (`commands`).

`run` imports only the standard library at module level (each phase imports what it runs), so
importing it here keeps `pointllm --help` light.
"""

from pointllm.demo.run import (
    FULL,
    PHASES,
    QUICK,
    SUMMARY_FILE,
    Context,
    DemoPlan,
    demo_encoder,
    phase_outputs,
    phase_settings,
    recipe_path,
    run_demo,
)

__all__ = [
    "FULL",
    "PHASES",
    "QUICK",
    "SUMMARY_FILE",
    "Context",
    "DemoPlan",
    "demo_encoder",
    "phase_outputs",
    "phase_settings",
    "recipe_path",
    "run_demo",
]
