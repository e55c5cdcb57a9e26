"""`pointllm doctor`: argument parsing and the report; the checks live in `checks`."""

from __future__ import annotations

import argparse


def _doctor(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from pointllm.doctor.checks import format_table, run_checks, verdict

    checks = run_checks()
    name, status = verdict(checks)
    if args.json:
        report = {"verdict": name, "exit_status": status, "checks": [asdict(c) for c in checks]}
        print(json.dumps(report, indent=2))
    else:
        print(format_table(checks))
    return status


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check this machine for training: torch/CUDA, GPUs, packages, apex, login node, disk",
        description="Check whether this machine can train PointLLM. Exit status 1 when something "
        "blocks training (each failed check says what to do).",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=_doctor, needs_model=False)
