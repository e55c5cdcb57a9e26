"""`--resume` with damaged checkpoints: markers that prove their files, fallback to the newest
intact checkpoint, a clear exit when none is intact, and pruning that never leaves a marked,
partial checkpoint. The resumes run as real `pointllm train` processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_train

from pointllm.train.checkpoints import (
    COMPLETE_MARKER,
    NO_INTACT_CHECKPOINT_EXIT_CODE,
    NoIntactCheckpointError,
    latest_complete_checkpoint,
    mark_complete,
    prune_checkpoints,
    resume_point,
    verify_checkpoint,
)

assets = test_train.assets  # the tiny LLM and synthetic data of the training tests


@pytest.fixture(scope="module")
def saved_run(assets, tmp_path_factory) -> Path:
    """Three steps, a checkpoint after each (in-process: the resumes below are the subprocesses)."""
    out = tmp_path_factory.mktemp("resume") / "run"
    argv = test_train.train_argv(assets, out, "--save_strategy", "steps", "--save_steps", "1")
    test_train.run_train([*argv, "--max_steps", "3"])
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-3",
    ]
    return out


def copy_run(saved_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(saved_run, run)
    return run


def truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def resume(assets, run: Path, steps: int) -> tuple[subprocess.CompletedProcess, float]:
    argv = test_train.train_argv(assets, run, "--max_steps", str(steps), "--resume")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pointllm", "train", *argv],
        env=test_train.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result, time.monotonic() - started


def test_marker_records_size_and_hash_of_every_file(saved_run):
    checkpoint = saved_run / "checkpoint-3"
    record = json.loads((checkpoint / COMPLETE_MARKER).read_text())
    on_disk = {p.name for p in checkpoint.iterdir()} - {COMPLETE_MARKER}
    assert set(record["checks"]) == on_disk >= {"model.safetensors", "trainer_state.json"}
    for name, check in record["checks"].items():
        assert check["size"] == (checkpoint / name).stat().st_size
        assert len(check["blake2b"]) == 32
    assert verify_checkpoint(checkpoint) is None


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda c: truncate(c / "model.safetensors"), "model.safetensors has 100 bytes"),
        (lambda c: truncate(c / "optimizer.pt"), "optimizer.pt has 100 bytes"),
        (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
        (lambda c: (c / COMPLETE_MARKER).write_text("{"), "unreadable"),
    ],
    ids=["weights", "optimizer", "state", "marker"],
)
def test_each_kind_of_damage_is_named(saved_run, tmp_path, damage, says):
    run = copy_run(saved_run, tmp_path)
    damage(run / "checkpoint-3")
    assert says in verify_checkpoint(run / "checkpoint-3")
    assert latest_complete_checkpoint(run) == run / "checkpoint-2"


def test_same_size_rewrite_is_caught_by_the_hash(saved_run, tmp_path):
    run = copy_run(saved_run, tmp_path)
    weights = run / "checkpoint-3" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # the last MiB is hashed
    weights.write_bytes(bytes(data))
    assert "hash mismatch" in verify_checkpoint(run / "checkpoint-3")


def test_resume_skips_a_truncated_newest_checkpoint(assets, saved_run, tmp_path):
    run = copy_run(saved_run, tmp_path)
    truncate(run / "checkpoint-3" / "model.safetensors")
    result, seconds = resume(assets, run, steps=4)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"skipping {run / 'checkpoint-3'}: model.safetensors has 100 bytes" in output
    assert f"resuming from {run / 'checkpoint-2'}" in output
    assert "Traceback" not in output
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] == 4 and summary["resumed_from"] == str(run / "checkpoint-2")
    assert seconds < 120


def test_resume_with_every_checkpoint_damaged_exits_65_without_a_traceback(
    assets, saved_run, tmp_path
):
    run = copy_run(saved_run, tmp_path)
    for step in (1, 2, 3):
        truncate(run / f"checkpoint-{step}" / "model.safetensors")
    with pytest.raises(NoIntactCheckpointError, match="none of the 3 finished checkpoints"):
        resume_point(run)
    result, seconds = resume(assets, run, steps=4)
    assert result.returncode == NO_INTACT_CHECKPOINT_EXIT_CODE, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "error: --resume: none of the 3 finished checkpoints" in result.stderr
    assert result.stderr.count("skipping") == 3
    assert seconds < 120


def test_unfinished_saves_only_start_fresh(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-1").mkdir(parents=True)
    (run / "checkpoint-1" / "model.safetensors").write_bytes(b"half")
    assert resume_point(run) is None


def test_a_kill_while_pruning_never_leaves_a_marked_partial_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    for step in (1, 2, 3):
        checkpoint = run / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        for name in ("model.safetensors", "optimizer.pt", "trainer_state.json"):
            (checkpoint / name).write_text(f"{name} {step}")
        mark_complete(checkpoint, step)

    def killed_midway(path, ignore_errors=False):
        (Path(path) / "model.safetensors").unlink()  # some files gone, then the kill
        raise KeyboardInterrupt

    import pointllm.train.checkpoints as checkpoints

    monkeypatch.setattr(checkpoints.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoints(run, keep=1)
    assert not (run / "checkpoint-1" / COMPLETE_MARKER).exists()
    assert "did not finish" in verify_checkpoint(run / "checkpoint-1")
    assert latest_complete_checkpoint(run) == run / "checkpoint-3"


def test_save_total_limit_prunes_only_after_marking(assets, tmp_path, monkeypatch):
    """`--save_total_limit` is applied by our pruning (after the new checkpoint is marked), never
    by the Trainer's own rotation, and the run's recorded arguments still carry the limit."""
    import transformers.trainer as hf_trainer

    limits = []
    rotate = getattr(hf_trainer, "rotate_checkpoints", None)

    def recording_rotate(**kwargs):
        limits.append(kwargs.get("save_total_limit"))
        return rotate(**kwargs)

    monkeypatch.setattr(hf_trainer, "rotate_checkpoints", recording_rotate, raising=False)
    out = tmp_path / "run"
    argv = test_train.train_argv(
        assets, out, "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "2"
    )
    test_train.run_train([*argv, "--max_steps", "3"])
    kept = sorted(out.glob("checkpoint-*"))
    assert [p.name for p in kept] == ["checkpoint-2", "checkpoint-3"]
    assert all(verify_checkpoint(p) is None for p in kept)
    assert not [limit for limit in limits if limit], limits
    record = json.loads((out / "training_config.json").read_text())
    assert record["training_args"]["save_total_limit"] == 2
