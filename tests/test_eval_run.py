"""`pointllm eval run`: benchmark loading, the results format, resuming, and a full small
offline run (run -> metrics -> report) with a tiny PointLLM on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pointllm.cli import main
from pointllm.eval.run import (
    ORIGINAL_SAMPLING,
    generation_settings,
    load_benchmark,
    run_benchmark,
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from pointllm.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("synthetic")
    generate_dataset(out, 12, seed=0, num_points=128, val_fraction=0.5)
    return out


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, base_tokenizer) -> Path:
    from conftest import make_tiny_model

    from pointllm.model.pointllm import save_pointllm

    model, tokenizer = make_tiny_model(base_tokenizer, num_points=64)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_pointllm(model, tokenizer, path)
    return path


class FakeModel:
    """Answers from the point file name; remembers its calls; can fail on a given call."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls: list[tuple[int, dict]] = []
        self.fail_on_call = fail_on_call

    def generate_batch(self, items, **gen):
        self.calls.append((len(items), gen))
        if len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt
        return [f" answer about {Path(points).stem} \n" for points, _ in items]


def test_objaverse_benchmark_items_follow_the_ground_truth_file(synthetic):
    from pointllm.data.objaverse import load_objaverse_gt

    items, class_set = load_benchmark(
        "objaverse-caption", synthetic / "points", synthetic / "anno" / "val_gt.json"
    )
    expected = load_objaverse_gt(synthetic / "anno" / "val_gt.json")
    assert class_set is None
    assert [(i.object_id, i.ground_truth) for i in items] == expected
    assert [i.points for i in items] == [
        synthetic / "points" / f"{object_id}_128.npy" for object_id, _ in expected
    ]


def test_classification_split_items_and_class_set(synthetic):
    from pointllm.data.synthetic import CATEGORIES

    items, class_set = load_benchmark(
        "modelnet-cls", synthetic / "points", synthetic / "anno" / "val_cls.json"
    )
    split = json.loads((synthetic / "anno" / "val_cls.json").read_text())
    assert class_set.name == "synthetic" and class_set.classes == tuple(CATEGORIES)
    assert [i.entry("x") for i in items] == [
        {
            "object_id": r["object_id"],
            "ground_truth": r["label"],
            "model_output": "x",
            "label_name": r["label_name"],
        }
        for r in split
    ]


def test_modelnet_file_items_are_indexed_clouds_without_normals(tmp_path):
    from pointllm.data.modelnet import MODELNET40_CLASSES

    rng = np.random.default_rng(0)
    stored = rng.normal(size=(3, 8192, 6)).astype(np.float32)  # xyz + normals
    np.savez(tmp_path / "mn.npz", points=stored, labels=np.array([0, 39, 7]))
    items, class_set = load_benchmark("modelnet-cls", tmp_path / "mn.npz")
    assert class_set.name == "modelnet40"
    assert [(i.object_id, i.ground_truth, i.label_name) for i in items] == [
        (0, 0, "airplane"),
        (1, 39, "xbox"),
        (2, 7, MODELNET40_CLASSES[7]),
    ]
    assert items[0].points.shape == (8192, 6)
    assert not items[0].points[:, 3:].any()  # normals dropped, rgb zero


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "modelnet-cls", "--data-path", "{points}"], "give the classification split"),
        (["--task", "objaverse-cls", "--data-path", "{points}"], "needs --anno-path"),
        (
            ["--task", "objaverse-cls", "--data-path", "{empty}", "--anno-path", "{gt}"],
            "expected one point file synth_",
        ),
        (
            ["--task", "objaverse-cls", "--data-path", "{points}", "--anno-path", "{gt}"]
            + ["--prompt-index", "5"],
            "prompt index must be in 0..2, got 5",
        ),
    ],
)
def test_bad_input_is_one_line_error(synthetic, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    paths = {
        "points": synthetic / "points",
        "gt": synthetic / "anno" / "val_gt.json",
        "empty": tmp_path / "empty",
    }
    args = [a.format(**paths) for a in args]
    status = main(["eval", "run", "--model", str(tmp_path / "none"), "--output", "o.json", *args])
    err = capsys.readouterr().err
    assert status == 1
    assert message in err and err.count("\n") == 1


def test_generation_settings_greedy_or_original_sampling():
    assert generation_settings(False, 32) == {"do_sample": False, "max_new_tokens": 32}
    assert generation_settings(True, 32) == {**ORIGINAL_SAMPLING, "max_new_tokens": 32}
    assert ORIGINAL_SAMPLING == {"do_sample": True, "temperature": 1.0, "top_k": 50, "top_p": 0.95}


def test_interrupted_run_resumes_to_the_uninterrupted_file(synthetic, tmp_path):
    items, _ = load_benchmark(
        "objaverse-cls", synthetic / "points", synthetic / "anno" / "val_gt.json"
    )
    assert len(items) >= 5
    whole = tmp_path / "whole.json"
    run_benchmark(FakeModel(), items, "What is this?", whole, batch_size=2, progress=False)

    resumed = tmp_path / "resumed.json"
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(FakeModel(fail_on_call=2), items, "What is this?", resumed, batch_size=2)
    assert len(json.loads(resumed.read_text())["results"]) == 2  # the first batch was saved
    second = FakeModel()
    run_benchmark(second, items, "What is this?", resumed, batch_size=2, progress=False)
    assert sum(n for n, _ in second.calls) == len(items) - 2  # only the rest was generated
    assert resumed.read_bytes() == whole.read_bytes()
    data = json.loads(whole.read_text())
    assert data["prompt"] == "What is this?"
    assert [r["object_id"] for r in data["results"]] == [i.object_id for i in items]
    assert data["results"][0]["model_output"] == f"answer about {items[0].object_id}_128"


def test_limit_then_full_run_continues(synthetic, tmp_path):
    items, _ = load_benchmark(
        "objaverse-cls", synthetic / "points", synthetic / "anno" / "val_gt.json"
    )
    out = tmp_path / "r.json"
    run_benchmark(FakeModel(), items[:3], "What is this?", out, batch_size=8, progress=False)
    model = FakeModel()
    run_benchmark(model, items, "What is this?", out, batch_size=8, progress=False)
    assert [n for n, _ in model.calls] == [len(items) - 3]
    ids = [r["object_id"] for r in json.loads(out.read_text())["results"]]
    assert ids == [i.object_id for i in items]


def test_existing_file_for_another_prompt_or_dataset_is_refused(synthetic, tmp_path):
    items, _ = load_benchmark(
        "objaverse-cls", synthetic / "points", synthetic / "anno" / "val_gt.json"
    )
    out = tmp_path / "r.json"
    run_benchmark(FakeModel(), items[:2], "What is this?", out, progress=False)
    with pytest.raises(ValueError, match="holds results for the prompt 'What is this"):
        run_benchmark(FakeModel(), items, "This is an object of ", out, progress=False)
    with pytest.raises(ValueError, match="objects outside this benchmark"):
        run_benchmark(FakeModel(), items[2:], "What is this?", out, progress=False)


def test_full_small_run_offline(synthetic, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """run (interrupted, resumed) -> matcher -> metrics -> report, all through the CLI."""
    from pointllm.infer.api import PointLLM

    common = ["--model", str(tiny_checkpoint), "--data-path", str(synthetic / "points")]
    common += ["--batch-size", "2", "--max-new-tokens", "4", "--device", "cpu"]
    cls_args = ["eval", "run", "--task", "modelnet-cls", *common]
    cls_args += ["--anno-path", str(synthetic / "anno" / "val_cls.json"), "--limit", "4"]
    run_dir = tmp_path / "tiny-run"

    assert main([*cls_args, "--output", str(run_dir / "whole.json")]) == 0

    original = PointLLM.generate_batch
    calls = []

    def fail_on_second_batch(self, items, **gen):
        calls.append(len(items))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, items, **gen)

    monkeypatch.setattr(PointLLM, "generate_batch", fail_on_second_batch)
    resumed = tmp_path / "resumed.json"
    assert main([*cls_args, "--output", str(resumed)]) == 130
    assert len(json.loads(resumed.read_text())["results"]) == 2
    monkeypatch.setattr(PointLLM, "generate_batch", original)
    assert main([*cls_args, "--output", str(resumed)]) == 0
    assert resumed.read_bytes() == (run_dir / "whole.json").read_bytes()

    data = json.loads(resumed.read_text())
    split = json.loads((synthetic / "anno" / "val_cls.json").read_text())[:4]
    assert list(data) == ["prompt", "results"] and data["prompt"] == "What is this?"
    for entry, row in zip(data["results"], split, strict=True):
        assert list(entry) == ["object_id", "ground_truth", "model_output", "label_name"]
        assert (entry["object_id"], entry["ground_truth"], entry["label_name"]) == (
            row["object_id"],
            row["label"],
            row["label_name"],
        )
        assert isinstance(entry["model_output"], str)
    matcher = json.loads((run_dir / "whole_evaluated_matcher.json").read_text())
    assert matcher["class_set"] == "synthetic" and matcher["total_predictions"] == 4
    assert "matcher accuracy (synthetic)" in capsys.readouterr().out

    caption = run_dir / "caption.json"
    cap_args = ["eval", "run", "--task", "objaverse-caption", *common, "--limit", "3"]
    cap_args += ["--anno-path", str(synthetic / "anno" / "val_gt.json"), "--output", str(caption)]
    assert main(cap_args) == 0
    assert json.loads(caption.read_text())["prompt"] == "Caption this 3D model in detail."
    capsys.readouterr()
    assert main(["eval", "metrics", "--results", str(caption), "--json", "--device", "cpu"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert 0 <= scores["bleu-1"] <= 100 and scores["simcse_similarity"] is None
    assert (run_dir / "caption_evaluated_traditional.json").is_file()

    report = tmp_path / "report.md"
    assert main(["eval", "report", str(run_dir), "--output", str(report)]) == 0
    text = report.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| tiny-run"))
    assert f"{matcher['accuracy']:.2f}" in row and f"{scores['bleu-1']:.2f}" in row
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shards_of_another_process_count_resume_a_one_process_run(synthetic, tmp_path):
    """Shards left by a 3-process run (one unfinished) count as done in a plain run, whose file
    ends as an uninterrupted run's; complete shards are then removed."""
    from pointllm.eval.run import parts_dir, shard_items, shard_path

    items, _ = load_benchmark(
        "objaverse-cls", synthetic / "points", synthetic / "anno" / "val_gt.json"
    )
    whole = tmp_path / "whole.json"
    run_benchmark(FakeModel(), items, "What is this?", whole, batch_size=2, progress=False)
    out = tmp_path / "r.json"
    shards = [shard_items(items, rank, 3, 1) for rank in range(3)]
    shards[2] = shards[2][:-1]  # rank 2 stopped before its last object
    for rank, shard in enumerate(shards):
        run_benchmark(FakeModel(), shard, "What is this?", shard_path(out, rank, 3), progress=False)
    model = FakeModel()
    parts = sorted(parts_dir(out).glob("*.json"))
    run_benchmark(model, items, "What is this?", out, progress=False, resume_from=parts)
    assert [n for n, _ in model.calls] == [1]  # only rank 2's last object
    assert out.read_bytes() == whole.read_bytes()

    with pytest.raises(ValueError, match="holds results for the prompt 'What is this"):
        run_benchmark(FakeModel(), items, "Caption", tmp_path / "c.json", resume_from=parts)


def test_complete_shards_merge_without_loading_the_model(synthetic, tmp_path, capsys):
    """`eval run` (one process) over complete shards: the merged file and matcher score, no
    model needed (the --model path does not exist), the shards removed."""
    from pointllm.eval.run import parts_dir, shard_items, shard_path

    anno = synthetic / "anno" / "val_cls.json"
    items, _ = load_benchmark("modelnet-cls", synthetic / "points", anno)
    whole = tmp_path / "whole.json"
    run_benchmark(FakeModel(), items, "What is this?", whole, batch_size=2, progress=False)
    out = tmp_path / "r.json"
    for rank in range(2):
        shard = shard_items(items, rank, 2, 2)
        run_benchmark(FakeModel(), shard, "What is this?", shard_path(out, rank, 2), progress=False)
    argv = ["eval", "run", "--task", "modelnet-cls", "--model", str(tmp_path / "no-model")]
    argv += ["--data-path", str(synthetic / "points"), "--anno-path", str(anno)]
    assert main([*argv, "--output", str(out)]) == 0
    assert out.read_bytes() == whole.read_bytes()
    assert not parts_dir(out).exists()
    assert (tmp_path / "r_evaluated_matcher.json").is_file()
    assert f"{len(items)} results for 'What is this?'" in capsys.readouterr().out


def test_each_rank_takes_its_own_device(monkeypatch):
    import torch

    from pointllm.eval.run import rank_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rank_device("auto", 3) == "cpu" and rank_device("cpu", 3) == "cpu"
    with pytest.raises(ValueError, match="--device cuda:1 names one GPU"):
        rank_device("cuda:1", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [rank_device(d, r) for d, r in [("auto", 0), ("cuda", 1)]] == ["cuda:0", "cuda:1"]
    with pytest.raises(ValueError, match="needs cuda:2, but 2 GPU"):
        rank_device("auto", 2)


def test_workers_get_every_given_option_but_nproc():
    from pointllm.cli import build_parser
    from pointllm.eval.commands import _worker_argv

    given = ["--task", "objaverse-caption", "--model", "m", "--data-path", "d", "--output", "o"]
    given += ["--prompt-index", "0", "--sample", "--seed", "0", "--trust-pickle"]
    args = build_parser().parse_args(["eval", "run", *given, "--nproc", "2"])
    argv = _worker_argv(args)
    assert "--nproc" not in argv
    reparsed = build_parser().parse_args(["eval", "run", *argv])
    for key in ("task", "model", "data_path", "output", "prompt_index", "sample", "seed"):
        assert getattr(reparsed, key) == getattr(args, key), key
    assert reparsed.trust_pickle and reparsed.nproc is None
    assert [reparsed.batch_size, reparsed.device, reparsed.max_new_tokens] == [8, "auto", 256]


def test_failed_ranks_make_one_line(tmp_path):
    from pointllm.eval.run import _failure
    from pointllm.train.launch import LaunchOutcome

    out = tmp_path / "r.json"
    one = _failure(LaunchOutcome({1: 1}), 4, out)
    assert one.startswith("rank 1 of 4 failed (exit code 1); finished batches stay in ")
    two = _failure(LaunchOutcome({3: -9, 0: 2}), 4, out)
    assert two.startswith("ranks 0, 3 of 4 failed (rank 0: exit code 2; rank 3: killed by SIGKILL)")
    assert _failure(LaunchOutcome(signal="SIGTERM"), 4, out).startswith("stopped by SIGTERM;")
    assert all("\n" not in line for line in (one, two))
