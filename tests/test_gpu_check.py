"""scripts/gpu_check.py: its CPU rehearsal runs the whole plan with tiny shapes, so the GPU check
cannot rot between the rare runs on a lent GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = load_script()


def run_check(out: Path, *args: str, timeout: float = 600) -> tuple[int, dict, str]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--rehearse", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    report_file = out / "report.json"
    assert report_file.is_file(), proc.stderr[-3000:]
    return proc.returncode, json.loads(report_file.read_text()), (out / "report.md").read_text()


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """The whole rehearsal once, with a failure injected into its first part."""
    out = tmp_path_factory.mktemp("gpu-check")
    status, report, table = run_check(out, "--fail", "doctor")
    return status, report, table


def test_rehearsal_runs_every_part_and_records_the_injected_failure(rehearsal):
    status, report, table = rehearsal
    parts = {p["name"]: p for p in report["parts"]}
    assert [p["name"] for p in report["parts"]] == [p.name for p in gpu_check.PARTS]
    assert status == 1  # a failed part makes the run fail, after the rest ran
    assert parts["doctor"]["status"] == "failed"
    assert "injected failure" in parts["doctor"]["reason"]
    for name, part in parts.items():
        if name == "doctor":
            continue
        assert part["status"] in ("ok", "skipped"), (name, part["reason"], part["log_tail"])
        if part["status"] == "skipped":
            assert "needs CUDA" in part["reason"], (name, part["reason"])
        else:
            assert part["metrics"]["summary"], name
        assert f"| {name} | " in table
    # What a CPU can run, runs: the CUDA-only parts are exactly these.
    skipped = {n for n, p in parts.items() if p["status"] == "skipped"}
    assert skipped == {
        "gpu_tests",
        "fsdp",
        "zero2",
        "zero3",
        "stage2_qlora_1gpu_24gb",
        "infer_8bit",
        "infer_4bit",
    }
    assert report["mode"].startswith("rehearsal") and report["total_s"] < report["budget_s"]


def test_rehearsal_measures_what_the_gpu_run_reports(rehearsal):
    _, report, _ = rehearsal
    m = {p["name"]: p["metrics"] for p in report["parts"]}
    assert m["encoder"]["grouping_speedup"] > 1  # ours beats the reference loop even tiny
    assert m["encoder"]["encoder_fp32_clouds_per_s"] > 0
    for stage in ("smol_stage1", "smol_stage2"):
        assert m[stage]["steps"] == 20 and len(m[stage]["losses"]) == 20
        assert m[stage]["loss_falls"] is True
        assert m[stage]["attention"] == "sdpa"
        assert m[stage]["tokens_per_s"] > 0
    for recipe in ("stage1_1gpu_24gb", "stage2_lora_1gpu_24gb"):
        assert m[recipe]["steps"] == 2 and m[recipe]["step_s_median"] > 0
    # Stage 1 trains the projector only; LoRA trains adapters, not the whole LLM.
    assert m["stage1_1gpu_24gb"]["trainable_parameters"] < m["stage1_1gpu_24gb"]["total_parameters"]
    assert m["build_7b"]["vocab_size"] == 1000 + 3  # + the three point tokens
    infer = m["infer_bf16"]
    assert infer["batch1_tokens_per_s"] > 0 and infer["batch8_tokens_per_s"] > 0
    assert m["ddp"]["world_size"] == 1 and m["ddp"]["steps"] == 5
    assert m["serve"]["clients"] == 16 and m["serve"]["ok"] == 16


def test_timeouts_and_failed_inputs_do_not_stop_the_run(tmp_path):
    start = time.monotonic()
    status, report, _ = run_check(
        tmp_path,
        "--isolation",
        "process",
        "--only",
        "doctor,prepare,smol_stage1",
        "--fail",
        "doctor:hang",
        "--fail",
        "prepare",
        "--limit-s",
        "3",
        timeout=120,
    )
    assert time.monotonic() - start < 90
    parts = {p["name"]: p for p in report["parts"]}
    assert status == 1
    assert parts["doctor"]["status"] == "failed" and "timed out" in parts["doctor"]["reason"]
    assert parts["prepare"]["status"] == "failed"
    assert "injected failure" in parts["prepare"]["reason"]
    assert parts["smol_stage1"]["status"] == "skipped"
    assert parts["smol_stage1"]["reason"] == "needs prepare, which failed"


def test_loss_falls_compares_the_first_and_last_quarters():
    assert gpu_check.loss_falls([5.0, 4.9, 4.0, 3.0, 2.9, 2.8, 2.0, 1.9])
    assert not gpu_check.loss_falls([2.0, 2.1, 2.0, 2.1, 2.0, 2.2, 2.1, 2.2])
    assert not gpu_check.loss_falls([3.0, 2.0])  # too few steps to say


def test_unknown_parts_are_refused():
    with pytest.raises(SystemExit, match="unknown part 'nope'"):
        gpu_check.parse_fail(["nope"])
    with pytest.raises(SystemExit, match="unknown part"):
        gpu_check.main(["--out", "/nonexistent", "--only", "doctor,nope"])
