"""`pointllm eval run --nproc N`: shards answered by torchrun workers (CPU, no process group),
merged into the file a one-process run writes; a failed rank is named and a rerun continues."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pointllm.eval.run import load_benchmark, shard_items

BATCH = 2
LIMIT = 5  # batches {0,1} {2,3} {4}: rank 0 answers 0, 1, 4 (a short last batch), rank 1 2, 3


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from pointllm.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("synthetic")
    generate_dataset(out, 12, seed=0, num_points=128, val_fraction=0.5)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, base_tokenizer) -> Path:
    """A tiny model whose greedy answers differ between objects (untied Qwen2 head; the tied
    tiny Llama answers every object with the same newlines)."""
    from conftest import make_tiny_model

    from pointllm.model.pointllm import save_pointllm

    model, tokenizer = make_tiny_model(base_tokenizer, arch="qwen2", num_points=64, seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_pointllm(model, tokenizer, path)
    return path


def eval_run(checkpoint: Path, points: Path, anno: Path, output: Path, *extra: str):
    argv = ["--task", "modelnet-cls", "--model", str(checkpoint), "--data-path", str(points)]
    argv += ["--anno-path", str(anno), "--limit", str(LIMIT), "--batch-size", str(BATCH)]
    argv += ["--max-new-tokens", "6", "--device", "cpu", "--output", str(output), *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "pointllm", "eval", "run", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def one_process(synthetic, checkpoint, tmp_path_factory) -> Path:
    """The reference: the same objects answered in one process."""
    output = tmp_path_factory.mktemp("one") / "results.json"
    anno = synthetic / "anno" / "val_cls.json"
    done = eval_run(checkpoint, synthetic / "points", anno, output)
    assert done.returncode == 0, done.stderr[-3000:]
    return output


def test_shards_are_whole_batches_round_robin():
    items = list(range(7))
    assert [shard_items(items, r, 2, 2) for r in (0, 1)] == [[0, 1, 4, 5], [2, 3, 6]]
    assert [shard_items(items, r, 3, 1) for r in (0, 1, 2)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert shard_items(items, 0, 1, 3) == items
    with pytest.raises(ValueError, match="rank must be in 0..1, got 2"):
        shard_items(items, 2, 2, 2)


def test_two_processes_write_the_one_process_file(synthetic, checkpoint, one_process, tmp_path):
    output = tmp_path / "results.json"
    anno = synthetic / "anno" / "val_cls.json"
    done = eval_run(checkpoint, synthetic / "points", anno, output, "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert output.read_bytes() == one_process.read_bytes()
    matcher = "results_evaluated_matcher.json"
    assert (tmp_path / matcher).read_bytes() == (one_process.parent / matcher).read_bytes()
    assert not (tmp_path / "results.json.parts").exists()  # merged shards are removed
    assert "rank 0: 3 results" in done.stdout and "rank 1: 2 results" in done.stdout
    assert f"{LIMIT} results for 'What is this?' in {output}" in done.stdout

    results = json.loads(output.read_text())["results"]
    split = json.loads(anno.read_text())[:LIMIT]
    assert [r["object_id"] for r in results] == [row["object_id"] for row in split]
    answers = [r["model_output"] for r in results]
    assert all(answers) and len(set(answers)) > 1  # a shuffled merge would not match


def test_failed_rank_is_named_and_a_rerun_keeps_the_finished_shard(
    synthetic, checkpoint, one_process, tmp_path
):
    """Rank 0's shard is already complete (with marked answers); rank 1 meets a broken point
    file: the run fails naming rank 1 and writes no results. Repaired, the rerun answers only
    rank 1's objects and merges the marked answers unchanged."""
    anno = synthetic / "anno" / "val_cls.json"
    points = tmp_path / "points"
    shutil.copytree(synthetic / "points", points)
    items, _ = load_benchmark("modelnet-cls", points, anno)
    items = items[:LIMIT]
    reference = json.loads(one_process.read_text())
    by_id = {r["object_id"]: r for r in reference["results"]}
    rank0 = [by_id[i.object_id] | {"model_output": "kept"} for i in shard_items(items, 0, 2, BATCH)]
    output = tmp_path / "results.json"
    shard = tmp_path / "results.json.parts" / "rank0-of-2.json"
    shard.parent.mkdir()
    shard.write_text(json.dumps({"prompt": reference["prompt"], "results": rank0}))
    broken = shard_items(items, 1, 2, BATCH)[0].points
    good = broken.read_bytes()
    broken.write_bytes(b"not a point cloud")

    failed = eval_run(checkpoint, points, anno, output, "--nproc", "2")
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("pointllm eval: error: rank 1 of 2 failed (exit code 1)"), last
    assert "results.json.parts: rerun the same command to continue" in last
    assert f"rank 1: {broken}" in failed.stderr  # the worker's own one-line cause
    assert not output.exists()
    assert [r["model_output"] for r in json.loads(shard.read_text())["results"]] == ["kept"] * 3

    broken.write_bytes(good)
    rerun = eval_run(checkpoint, points, anno, output, "--nproc", "2")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    merged = json.loads(output.read_text())
    assert merged["prompt"] == reference["prompt"]
    assert merged["results"] == [
        {**entry, "model_output": "kept"} if i in (0, 1, 4) else entry
        for i, entry in enumerate(reference["results"])
    ]
    assert not shard.parent.exists()
