"""Instruction dataset, collator, benchmark file loaders and `pointllm data check/convert-modelnet`."""

from __future__ import annotations

import json
import logging
import math
import pickle

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from pointllm.cli import main as cli_main
from pointllm.config import POINT_END_TOKEN, POINT_PATCH_TOKEN, POINT_START_TOKEN
from pointllm.data.collate import PointLLMCollator
from pointllm.data.conversation import (
    IGNORE_INDEX,
    insert_point_block,
    normalize_messages,
    point_block,
    tokenize_conversation,
)
from pointllm.data.dataset import PointLLMDataset, SampleTokenizer, parse_record

NUM_POINTS = 64
MAX_LENGTH = 160
TYPES = ("simple_description", "single_round", "multi_round")


def qa(question: str, answer: str, *more: str, point: bool = True) -> list[dict]:
    """Original-format turns: question, answer, then alternating `more` turns."""
    texts = [f"<point>\n{question}" if point else question, answer, *more]
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


def record(object_id: str | None, turns: list[dict], kind: str = "simple_description") -> dict:
    out = {"conversation_type": kind, "conversations": turns}
    if object_id is not None:
        out["object_id"] = object_id
    return out


# index -> what the record is; kept samples come first in this order: 0, 1, 2, 4, 5, 10.
RECORDS = [
    record("obj_a", qa("What is this?", "A red mug.")),  # 0 ok
    record("obj_b", qa("Color?", "Blue.", "And its shape?", "Round."), "multi_round"),  # 1 ok
    {"conversations": qa("Say hi.", "Hi!", point=False)},  # 2 ok, text-only, default type
    record("obj_missing", qa("What is this?", "Nothing.")),  # 3 missing_points
    record("obj_corrupt", qa("What is this?", "Garbage.")),  # 4 ok, fails to load
    record("obj_shape", qa("What is this?", "Bad shape.")),  # 5 ok, fails to load
    record("obj_a", [{"from": "human", "value": "<point><point> Two?"}, *qa("q", "a")[1:]]),  # 6
    record("obj_a", [{"from": "human", "value": "<point> a"}, {"from": "human", "value": "b"}]),
    record("obj_a", qa("What is this?", "   ")),  # 8 bad_conversation (empty turn)
    record("obj_a", qa("word " * 300, "Too long.")),  # 9 too_long (point block + question)
    record("obj_b", qa("Describe it.", "long answer " * 200), "single_round"),  # 10 truncated
    record("obj_a", qa("What is this?", "Filtered."), "detailed_description"),  # 11 filtered
    record("obj_a", qa("No point here.", "x", point=False)),  # 12 point_count
    record("obj_a", qa("Spell <point_patch>.", "x")),  # 13 point_count (reserved token)
    "not a record",  # 14 bad_conversation
    record("obj_a", qa("q", "a", "dangling question")),  # 15 bad_conversation (ends with human)
]
KEPT = [0, 1, 2, 4, 5, 10]


@pytest.fixture(scope="module")
def tiny(base_tokenizer):
    """A tiny PointLLM (5 point tokens, 64-point clouds) and its tokenizer with point tokens."""
    return make_tiny_model(base_tokenizer, num_points=NUM_POINTS)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Annotation file and point folder with every kind of good and bad sample."""
    root = tmp_path_factory.mktemp("data")
    points = root / "points"
    points.mkdir()
    rng = np.random.default_rng(0)
    np.save(points / f"obj_a_{NUM_POINTS}.npy", rng.random((NUM_POINTS, 6), dtype=np.float32))
    np.save(points / "obj_b_8192.npy", rng.random((NUM_POINTS, 6), dtype=np.float32))
    (points / "obj_corrupt_8192.npy").write_bytes(b"\x00garbage, not an npy file" * 10)
    np.save(points / "obj_shape_8192.npy", rng.random((NUM_POINTS, 4), dtype=np.float32))
    anno = root / "anno.json"
    anno.write_text(json.dumps(RECORDS))
    return anno, points


@pytest.fixture(scope="module")
def dataset(tiny, data):
    model, tokenizer = tiny
    return PointLLMDataset.for_model(
        *data,
        tokenizer,
        model.config,
        conversation_types=TYPES,
        model_max_length=MAX_LENGTH,
    )


def reference_tokens(tokenizer, config, rec: dict):
    """The naive path: the full point block tokenized with the conversation."""
    block = point_block(config.num_point_tokens, config.mm_use_point_start_end)
    has_points = "object_id" in rec
    messages = insert_point_block(
        normalize_messages(rec["conversations"]), block if has_points else None
    )
    return tokenize_conversation(
        messages,
        tokenizer,
        config.template,
        max_length=MAX_LENGTH,
        protected_prefix_text=block if has_points else None,
    )


# ---- dataset ------------------------------------------------------------------------------------


def test_counts_every_reason(tiny, data, caplog):
    model, tokenizer = tiny
    with caplog.at_level(logging.INFO, logger="pointllm.data"):
        ds = PointLLMDataset.for_model(
            *data, tokenizer, model.config, conversation_types=TYPES, model_max_length=MAX_LENGTH
        )
    assert len(ds) == len(KEPT)
    assert dict(ds.stats) == {
        "ok": 6,
        "truncated": 1,
        "filtered_type": 1,
        "bad_conversation": 4,
        "point_count": 3,
        "missing_points": 1,
        "too_long": 1,
    }
    summary = ds.summary()
    assert "\n" not in summary
    for part in ("6 samples ok", "1 truncated", "bad_conversation 4", "point_count 3"):
        assert part in summary
    assert summary in caplog.text
    assert "obj_missing_64.npy not found" in caplog.text


def test_for_model_follows_the_config(dataset, tiny):
    model, _ = tiny
    assert dataset.tokenize.num_point_tokens == model.config.num_point_tokens == 5
    assert dataset.tokenize.template == model.config.template
    assert dataset.num_points == NUM_POINTS and dataset.use_color


def test_items_match_the_full_block_reference(dataset, tiny):
    model, tokenizer = tiny
    for i, source in enumerate(KEPT):
        if source in (4, 5):  # clouds that fail to load: covered below
            continue
        item = dataset[i]
        ref = reference_tokens(tokenizer, model.config, RECORDS[source])
        assert item["input_ids"].tolist() == ref.input_ids
        assert item["labels"].tolist() == ref.labels
        assert len(item["input_ids"]) <= MAX_LENGTH


def test_item_contents(dataset, tiny):
    model, tokenizer = tiny
    item = dataset[0]
    ids, labels = item["input_ids"], item["labels"]
    assert item["object_id"] == "obj_a"
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
    patch = tokenizer.convert_tokens_to_ids(POINT_PATCH_TOKEN)
    start = tokenizer.convert_tokens_to_ids(POINT_START_TOKEN)
    end = tokenizer.convert_tokens_to_ids(POINT_END_TOKEN)
    (at,) = (ids == start).nonzero()[0].tolist()
    n = model.config.num_point_tokens
    assert ids[at + 1 : at + 1 + n].tolist() == [patch] * n and ids[at + 1 + n] == end
    assert int((ids == patch).sum()) == n
    supervised = labels != IGNORE_INDEX
    assert torch.equal(labels[supervised], ids[supervised])
    assert tokenizer.decode(ids[supervised]) == "A red mug." + tokenizer.eos_token

    cloud = item["point_clouds"]
    assert cloud.shape == (NUM_POINTS, 6) and cloud.dtype == torch.float32
    xyz = cloud[:, :3]
    assert torch.allclose(xyz.mean(0), torch.zeros(3), atol=1e-5)
    assert math.isclose(float(xyz.norm(dim=1).max()), 1.0, rel_tol=1e-5)

    text_only = dataset[2]
    assert text_only["point_clouds"] is None and text_only["object_id"] == ""
    assert not (text_only["input_ids"] == patch).any()

    truncated = dataset[5]
    assert len(truncated["input_ids"]) == MAX_LENGTH
    assert int((truncated["input_ids"] == patch).sum()) == n


def test_length_bound_is_an_upper_bound(tiny):
    model, tokenizer = tiny
    for template in ("chat_template", "vicuna_v1_1"):
        tok = SampleTokenizer(tokenizer, template, num_point_tokens=513, max_length=10_000)
        for rec in RECORDS:
            try:
                object_id, messages = parse_record(rec, tok.block)
            except ValueError:
                continue
            full = tok.expand(tok(messages, object_id is not None))[0]
            assert len(full) <= tok.length_bound(messages, object_id is not None)


def test_corrupt_cloud_falls_through_to_the_next_sample(tiny, data, caplog):
    model, tokenizer = tiny
    ds = PointLLMDataset.for_model(
        *data, tokenizer, model.config, conversation_types=TYPES, model_max_length=MAX_LENGTH
    )
    with caplog.at_level(logging.WARNING, logger="pointllm.data"):
        item = ds[3]  # obj_corrupt, then obj_shape fails too, then the truncated sample
    assert item["object_id"] == "obj_b"
    assert torch.equal(item["input_ids"], ds[5]["input_ids"])
    assert ds.stats["corrupt_points"] == 2
    assert "obj_corrupt_8192.npy" in caplog.text and "obj_shape_8192.npy" in caplog.text
    assert ds[4]["object_id"] == "obj_b"  # known bad: skipped without another warning
    assert ds.stats["corrupt_points"] == 2
    assert ds[-1]["object_id"] == "obj_b"
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_dataloader_survives_corrupt_files_and_the_model_trains(tiny, dataset):
    model, tokenizer = tiny
    collator = PointLLMCollator(tokenizer)
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=3, collate_fn=collator, num_workers=workers
        )
        batches = list(loader)
        assert [len(b["input_ids"]) for b in batches] == [3, 3]
        ids = [row for b in batches for row in b["input_ids"]]
        assert len(ids) == len(dataset)
    model.train()
    output = model(**batches[0])
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert model.point_proj[0].weight.grad is not None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON at line 1"),
        ('{"a": 1}', "expected a JSON list"),
    ],
)
def test_bad_annotation_file_names_the_file(tiny, tmp_path, content, message):
    _, tokenizer = tiny
    anno = tmp_path / "anno.json"
    anno.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        PointLLMDataset(anno, tmp_path, tokenizer, template="chat_template", num_point_tokens=5)
    assert str(anno) in str(info.value) and "\n" not in str(info.value)


def test_missing_folder_and_tokenizer_without_point_tokens(tiny, data, base_tokenizer):
    anno, points = data
    _, tokenizer = tiny
    with pytest.raises(FileNotFoundError, match="point-cloud directory not found"):
        PointLLMDataset(
            anno, points / "nope", tokenizer, template="chat_template", num_point_tokens=5
        )
    with pytest.raises(ValueError, match="lacks the point tokens"):
        PointLLMDataset(anno, points, base_tokenizer, template="chat_template", num_point_tokens=5)


# ---- collator -----------------------------------------------------------------------------------


def test_collator_pads_masks_and_stacks_in_row_order(dataset, tiny):
    _, tokenizer = tiny
    items = [dataset[2], dataset[0], dataset[1]]  # text-only first: clouds follow the rows
    batch = PointLLMCollator(tokenizer, pad_to_multiple_of=8)(items)
    lengths = [len(item["input_ids"]) for item in items]
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and max(lengths) <= width < max(lengths) + 8
    for row, (item, n) in enumerate(zip(items, lengths, strict=True)):
        assert torch.equal(batch["input_ids"][row, :n], item["input_ids"])
        assert torch.equal(batch["labels"][row, :n], item["labels"])
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
    assert batch["point_clouds"].shape == (2, NUM_POINTS, 6)
    assert torch.equal(batch["point_clouds"][0], items[1]["point_clouds"])
    assert torch.equal(batch["point_clouds"][1], items[2]["point_clouds"])

    text_only = PointLLMCollator(tokenizer)([dataset[2]])
    assert "point_clouds" not in text_only
    assert text_only["input_ids"].shape == (1, lengths[0])


def test_collator_rejects_inconsistent_samples(dataset, tiny):
    _, tokenizer = tiny
    collate = PointLLMCollator(tokenizer)
    small = dict(dataset[1], point_clouds=torch.zeros(8, 6))
    with pytest.raises(ValueError, match="differ in shape"):
        collate([dataset[0], small])
    with pytest.raises(ValueError, match="labels"):
        collate([dict(dataset[0], labels=dataset[0]["labels"][:-1])])
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        PointLLMCollator(tokenizer, pad_to_multiple_of=0)


# ---- pointllm data check ------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    status = cli_main(["data", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def table_count(output: str, label: str) -> int:
    line = next(line for line in output.splitlines() if line.strip().startswith(label))
    return int(line.split()[-1])


def test_check_reports_problems_and_writes_a_clean_file(data, tmp_path, capsys):
    anno, points = data
    clean = tmp_path / "clean.json"
    status, out = run_cli(
        capsys,
        *("check", "--anno", anno, "--data-dir", points, "--num-points", NUM_POINTS),
        *("--write-clean", clean),
    )
    assert status == 1
    expected = {
        "ok": 6,  # 0, 1, 2, 9, 10, 11: without a tokenizer lengths are not checked
        "missing points": 1,
        "corrupt points": 1,
        "bad shape": 1,
        "bad conversation": 4,
        "bad <point> count": 3,
    }
    assert {label: table_count(out, label) for label in expected} == expected
    assert "length not checked" in out and "obj_corrupt_8192.npy" in out
    assert json.loads(clean.read_text()) == [RECORDS[i] for i in (0, 1, 2, 9, 10, 11)]

    status, out = run_cli(
        capsys, "check", "--anno", clean, "--data-dir", points, "--num-points", NUM_POINTS
    )
    assert status == 0 and table_count(out, "ok") == 6


def test_check_with_tokenizer_counts_lengths_and_deep_reads_values(tiny, data, tmp_path, capsys):
    _, tokenizer = tiny
    anno, points = data
    tokenizer_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tokenizer_dir)
    status, out = run_cli(
        capsys,
        *("check", "--anno", anno, "--data-dir", points, "--tokenizer", tokenizer_dir),
        *("--num-point-tokens", 5, "--max-length", MAX_LENGTH, "--num-points", NUM_POINTS),
    )
    assert status == 1
    assert table_count(out, "too long") == 1 and table_count(out, "truncated (kept)") == 1
    assert table_count(out, "ok") == 5 and "length not checked" not in out

    nan_dir = tmp_path / "nan_points"
    nan_dir.mkdir()
    cloud = np.random.default_rng(1).random((NUM_POINTS, 6), dtype=np.float32)
    cloud[3, 0] = np.nan
    np.save(nan_dir / "obj_a_8192.npy", cloud)
    nan_anno = tmp_path / "nan.json"
    nan_anno.write_text(json.dumps(RECORDS[:1]))
    assert run_cli(capsys, "check", "--anno", nan_anno, "--data-dir", nan_dir)[0] == 0
    status, out = run_cli(capsys, "check", "--anno", nan_anno, "--data-dir", nan_dir, "--deep")
    assert status == 1 and table_count(out, "corrupt points") == 1 and "NaN" in out


def test_check_bad_file_is_one_line_error(tmp_path, capsys):
    anno = tmp_path / "anno.json"
    anno.write_text("[1, 2")
    status, out = run_cli(capsys, "check", "--anno", anno, "--data-dir", tmp_path)
    assert status == 1
    assert out.strip().count("\n") == 0 and str(anno) in out and "invalid JSON" in out


# ---- ModelNet40 ---------------------------------------------------------------------------------


@pytest.fixture
def modelnet_dat(tmp_path):
    """A fake modelnet40_test_8192pts_fps.dat: 5 clouds of 64 points (xyz + normals)."""
    rng = np.random.default_rng(0)
    clouds = [rng.normal(size=(64, 6)).astype(np.float32) * (i + 1) + i for i in range(5)]
    labels = [np.array([k]) for k in (0, 15, 36, 39, 7)]
    path = tmp_path / "modelnet40_test_8192pts_fps.dat"
    path.write_bytes(pickle.dumps((clouds, labels)))
    return path, np.stack(clouds), np.array([0, 15, 36, 39, 7])


def naive_normalize(xyz: np.ndarray) -> np.ndarray:
    xyz = xyz - xyz.mean(axis=0)
    return xyz / np.linalg.norm(xyz, axis=1).max()


def test_modelnet_classes():
    from pointllm.data.modelnet import MODELNET40_CLASSES

    assert len(MODELNET40_CLASSES) == len(set(MODELNET40_CLASSES)) == 40
    assert MODELNET40_CLASSES[:3] == ("airplane", "bathtub", "bed")
    assert MODELNET40_CLASSES[-1] == "xbox"
    for index, name in [
        (15, "flower pot"),
        (16, "glass box"),
        (23, "night stand"),
        (28, "range hood"),
        (36, "tv stand"),
    ]:
        assert MODELNET40_CLASSES[index] == name
    assert not any("_" in name for name in MODELNET40_CLASSES)


def test_modelnet_pickle_needs_trust(modelnet_dat):
    from pointllm.data.modelnet import load_modelnet40

    path, _, _ = modelnet_dat
    with pytest.raises(ValueError, match="pickle") as info:
        load_modelnet40(path, num_points=64)
    assert "pointllm data convert-modelnet --trust-pickle" in str(info.value)


def test_modelnet_load_drops_normals_and_normalizes(modelnet_dat):
    from pointllm.data.modelnet import load_modelnet40
    from pointllm.ops import farthest_point_sample_reference

    path, clouds, labels = modelnet_dat
    points, got_labels = load_modelnet40(path, trust_pickle=True, num_points=64)
    assert points.shape == (5, 64, 6) and points.dtype == np.float32
    assert got_labels.tolist() == labels.tolist() and got_labels.dtype == np.int64
    assert (points[..., 3:] == 0).all()
    for cloud, expected in zip(points, clouds, strict=True):
        np.testing.assert_allclose(cloud[:, :3], naive_normalize(expected[:, :3]), atol=1e-5)

    xyz_only, _ = load_modelnet40(path, trust_pickle=True, num_points=16, use_color=False)
    assert xyz_only.shape == (5, 16, 3)
    xyz = torch.from_numpy(clouds[:, :, :3].copy())
    idx = farthest_point_sample_reference(xyz, 16, torch.zeros(5, dtype=torch.long)).numpy()
    for k in range(5):
        np.testing.assert_allclose(xyz_only[k], naive_normalize(clouds[k, idx[k], :3]), atol=1e-5)
    with pytest.raises(ValueError, match="num_points"):
        load_modelnet40(path, trust_pickle=True, num_points=65)


def test_convert_modelnet_writes_a_safe_npz(modelnet_dat, tmp_path, capsys):
    from pointllm.data.modelnet import load_modelnet40

    path, clouds, labels = modelnet_dat
    out = tmp_path / "sub" / "modelnet40_test.npz"
    status, text = run_cli(capsys, "convert-modelnet", path, out)
    assert status == 1 and "pickle" in text and not out.exists()

    status, text = run_cli(capsys, "convert-modelnet", "--trust-pickle", path, out)
    assert status == 0 and "wrote 5 clouds" in text
    with np.load(out, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["labels", "points"]
        np.testing.assert_array_equal(archive["points"], clouds)
        np.testing.assert_array_equal(archive["labels"], labels)
    safe = load_modelnet40(out, num_points=64)
    trusted = load_modelnet40(path, trust_pickle=True, num_points=64)
    np.testing.assert_array_equal(safe[0], trusted[0])
    np.testing.assert_array_equal(safe[1], trusted[1])


def test_modelnet_bad_labels_and_files(tmp_path):
    from pointllm.data.modelnet import load_modelnet40

    bad = tmp_path / "bad.npz"
    np.savez(bad, points=np.zeros((2, 8, 6), np.float32), labels=np.array([0, 40]))
    with pytest.raises(ValueError, match=r"label 40 of cloud 1 is not in \[0, 40\)"):
        load_modelnet40(bad, num_points=8)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, clouds=np.zeros((2, 8, 6), np.float32))
    with pytest.raises(ValueError, match="expected arrays 'points' and 'labels'"):
        load_modelnet40(wrong, num_points=8)


# ---- Objaverse ----------------------------------------------------------------------------------


def test_objaverse_gt_and_prompts(tmp_path):
    from pointllm.data.objaverse import BENCHMARK_PROMPTS, benchmark_prompt, load_objaverse_gt

    gt = [
        record("id_b", qa("Summarize this 3D point cloud.", "A blue chair.")),
        record("id_a", qa("What is this?", "A red mug with a handle.")),
    ]
    path = tmp_path / "PointLLM_brief_description_val_200_GT.json"
    path.write_text(json.dumps(gt))
    assert load_objaverse_gt(path) == [
        ("id_b", "A blue chair."),
        ("id_a", "A red mug with a handle."),
    ]

    path.write_text(json.dumps(gt + gt[:1]))
    with pytest.raises(ValueError, match="sample 2 repeats object_id 'id_b'"):
        load_objaverse_gt(path)
    path.write_text(json.dumps([record("id_c", [{"from": "human", "value": "<point>"}])]))
    with pytest.raises(ValueError, match="no gpt reply"):
        load_objaverse_gt(path)

    assert BENCHMARK_PROMPTS == (
        "What is this?",
        "This is an object of ",
        "Caption this 3D model in detail.",
    )
    assert benchmark_prompt(1) == "This is an object of "
    with pytest.raises(ValueError, match="prompt index"):
        benchmark_prompt(3)
