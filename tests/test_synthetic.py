"""Synthetic dataset generator, its PointLLM layout, previews, and `pointllm data synth/show`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pointllm.cli import main
from pointllm.data import synthetic as S
from pointllm.data.preview import save_preview

CONVERSATION_TYPES = {"simple_description", "detailed_description", "single_round", "multi_round"}


def _load_json(path: Path):
    return json.loads(path.read_text())


def _assert_normalized(points: np.ndarray, n: int) -> None:
    assert points.shape == (n, 6) and points.dtype == np.float32
    np.testing.assert_allclose(points[:, :3].mean(0), 0.0, atol=1e-5)
    assert np.linalg.norm(points[:, :3], axis=1).max() == pytest.approx(1.0, abs=1e-5)
    assert points[:, 3:].min() >= 0.0 and points[:, 3:].max() <= 1.0


def test_categories_and_synonyms_are_unambiguous():
    assert len(S.CATEGORIES) >= 12 and len(set(S.CATEGORIES)) == len(S.CATEGORIES)
    assert set(S.CATEGORY_SYNONYMS) == set(S.CATEGORIES)
    assert S.CATEGORY_SYNONYMS["mug"] and "cup" in S.CATEGORY_SYNONYMS["mug"]
    # A matcher maps any name to one category: no synonym may be another category or synonym.
    names = [n for c in S.CATEGORIES for n in [c, *S.CATEGORY_SYNONYMS[c]]]
    assert len(names) == len(set(names)), Counter(names).most_common(3)
    assert len(S.PALETTE) >= 8


@pytest.mark.parametrize("category", S.CATEGORIES)
def test_make_object_is_normalized_colored_and_deterministic(category):
    points, info = S.make_object(category, np.random.default_rng(7), 300)
    _assert_normalized(points, 300)
    assert info["category"] == category and info["label"] == S.CATEGORIES.index(category)
    assert info["color"] in S.PALETTE and info["secondary_color"] in (None, *S.PALETTE)
    assert info["secondary_color"] != info["color"]
    again, info_again = S.make_object(category, np.random.default_rng(7), 300)
    np.testing.assert_array_equal(points, again)
    assert info == info_again
    other, _ = S.make_object(category, np.random.default_rng(8), 300)
    assert not np.array_equal(points, other)


def test_make_object_rejects_unknown_category():
    with pytest.raises(ValueError, match="unknown category 'spoon'"):
        S.make_object("spoon", np.random.default_rng(0), 10)


def test_color_names_match_point_colors():
    two_colored = 0
    for category in S.CATEGORIES:
        for seed in range(6):
            points, info = S.make_object(category, np.random.default_rng([seed, 1]), 400)
            ranked = [
                name for name, _ in Counter(S.nearest_color_name(points[:, 3:])).most_common()
            ]
            assert ranked[0] == info["color"], (category, info, ranked)
            if info["secondary_color"] is None:
                assert ranked == [info["color"]]
                assert S.nearest_color_name(points[:, 3:].mean(0)) == info["color"]
            else:
                assert ranked == [info["color"], info["secondary_color"]]
                two_colored += 1
    assert two_colored > 10  # the second-color path is exercised


def _shape_features(points: np.ndarray) -> np.ndarray:
    """Rotation-invariant shape statistics: covariance eigenvalues and a radial histogram."""
    xyz = points[:, :3] - points[:, :3].mean(0)
    eigen = np.sort(np.linalg.eigvalsh(np.cov(xyz.T)))[::-1]
    radial = np.histogram(np.linalg.norm(xyz, axis=1), bins=8, range=(0, 1))[0] / len(xyz)
    return np.concatenate([4 * eigen, radial])


def test_categories_are_geometrically_distinct():
    """A nearest-centroid classifier on crude shape features separates fresh objects."""

    def sample(stream: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
        feats, labels = [], []
        for label, category in enumerate(S.CATEGORIES):
            for i in range(per_class):
                points, _ = S.make_object(category, np.random.default_rng([stream, label, i]), 512)
                feats.append(_shape_features(points))
                labels.append(label)
        return np.array(feats), np.array(labels)

    train_x, train_y = sample(1, 12)
    test_x, test_y = sample(2, 6)
    centroids = np.stack([train_x[train_y == c].mean(0) for c in range(len(S.CATEGORIES))])
    pred = np.linalg.norm(test_x[:, None] - centroids[None], axis=-1).argmin(1)
    assert (pred == test_y).mean() > 0.6


def test_text_mentions_what_the_object_is():
    rng = np.random.default_rng(3)
    _, info = S.make_object("table", rng, 64)
    info = {**info, "color": "orange", "secondary_color": None, "secondary_part": None}
    for _ in range(20):
        caption = S.brief_caption(info, rng)
        assert "orange table" in caption and caption.endswith(".") and caption[0].isupper()
        assert "a orange" not in caption.lower()
        detailed = S.detailed_description(info, rng)
        assert (
            2 <= detailed.count(". ") + 1 <= 3 and "table" in detailed and "four legs" in detailed
        )
    answers = dict(S._qa_count(info, rng) for _ in range(3))
    assert answers == {"How many legs does this table have?": "It has four legs."}
    question, answer = S._qa_color(info, rng)
    assert "color" in question and "orange" in answer
    pairs = S.qa_pairs(info, rng, 3)
    assert len({q for q, _ in pairs}) == 3


def test_two_colored_text_names_both_colors():
    rng = np.random.default_rng(0)
    _, info = S.make_object("chair", rng, 64)
    info = {**info, "color": "white", "secondary_color": "blue", "secondary_part": "legs"}
    assert "white chair with blue legs" in S.brief_caption(info, rng)
    assert "Its legs are blue, while the rest is white." in S.detailed_description(info, rng)


def _check_conversation(entry: dict, allowed_ids: set[str]) -> None:
    assert set(entry) == {"object_id", "conversation_type", "conversations"}
    assert entry["object_id"] in allowed_ids
    assert entry["conversation_type"] in CONVERSATION_TYPES
    turns = entry["conversations"]
    assert len(turns) >= 2 and len(turns) % 2 == 0
    for i, turn in enumerate(turns):
        assert set(turn) == {"from", "value"}
        assert turn["from"] == ("human" if i % 2 == 0 else "gpt")
        assert isinstance(turn["value"], str) and turn["value"].strip()
    assert turns[0]["value"].startswith("<point>\n")
    assert sum(t["value"].count("<point>") for t in turns) == 1
    rounds = len(turns) // 2
    expected = {"multi_round": (2, 3)}.get(entry["conversation_type"], (1, 1))
    assert expected[0] <= rounds <= expected[1]


def test_generate_dataset_layout_and_schema(tmp_path):
    summary = S.generate_dataset(tmp_path, 40, seed=5)
    anno = tmp_path / "anno"
    assert summary["stage1"] == str(anno / "stage1_brief.json")
    assert summary["counts"] == {"objects": 40, "train": 32, "val": 8, "stage1": 32, "stage2": 96}
    meta = _load_json(tmp_path / "meta.json")
    assert meta["categories"] == list(S.CATEGORIES) and meta["seed"] == 5
    assert meta["num_points"] == 8192 and set(meta["colors"]) == set(S.PALETTE)
    train, val = set(meta["split"]["train"]), set(meta["split"]["val"])
    assert not train & val and train | val == {f"synth_{i:06d}" for i in range(40)}

    stage1 = _load_json(anno / "stage1_brief.json")
    stage2 = _load_json(anno / "stage2_instruct.json")
    val_gt = _load_json(anno / "val_gt.json")
    for entry in stage1 + stage2:
        _check_conversation(entry, train)
    for entry in val_gt:
        _check_conversation(entry, val)
    assert {e["conversation_type"] for e in stage1 + val_gt} == {"simple_description"}
    assert {e["object_id"] for e in stage1} == train
    assert Counter((e["object_id"], e["conversation_type"]) for e in stage2) == {
        (oid, kind): 1 for oid in train for kind in CONVERSATION_TYPES - {"simple_description"}
    }
    # Captions name the object's real category and color.
    for entry in stage1 + val_gt:
        obj = meta["objects"][entry["object_id"]]
        caption = entry["conversations"][1]["value"]
        assert obj["category"] in caption and obj["color"] in caption
    # The original evaluator turns the GT list into {object_id: caption}.
    gt = {a["object_id"]: a["conversations"][1]["value"] for a in val_gt}
    assert set(gt) == val

    val_cls = _load_json(anno / "val_cls.json")
    assert {c["object_id"] for c in val_cls} == val
    for item in val_cls:
        assert set(item) == {"object_id", "label", "label_name"}
        assert S.CATEGORIES[item["label"]] == item["label_name"]
        assert meta["objects"][item["object_id"]]["category"] == item["label_name"]

    files = sorted((tmp_path / "points").iterdir())
    assert [f.name for f in files] == [f"synth_{i:06d}_8192.npy" for i in range(40)]
    for f in files:
        _assert_normalized(np.load(f, allow_pickle=False), 8192)
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


def test_val_split_is_class_balanced(tmp_path):
    S.generate_dataset(tmp_path, 64, seed=2, num_points=16, val_fraction=0.25)
    labels = [c["label"] for c in _load_json(tmp_path / "anno" / "val_cls.json")]
    assert sorted(labels) == list(range(16))


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_generate_dataset_is_byte_deterministic(tmp_path):
    S.generate_dataset(tmp_path / "a", 12, seed=9, num_points=256)
    S.generate_dataset(tmp_path / "b", 12, seed=9, num_points=256)
    S.generate_dataset(tmp_path / "c", 12, seed=10, num_points=256)
    a, b, c = (_file_bytes(tmp_path / x) for x in "abc")
    assert len(a) == 12 + 5 and a == b
    assert a.keys() == c.keys()
    differing = [name for name in a if a[name] != c[name]]
    assert "anno/stage1_brief.json" in differing
    assert sum(name.startswith("points/") for name in differing) == 12


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_objects": 0}, "num_objects must be >= 1, got 0"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\), got 1.0"),
        ({"num_points": 0}, "num_points must be >= 1, got 0"),
    ],
)
def test_generate_dataset_rejects_bad_arguments(tmp_path, kwargs, message):
    args = {"out_dir": tmp_path, "num_objects": 4, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        S.generate_dataset(**args)


def test_save_preview_draws_the_cloud_colors(tmp_path):
    from matplotlib.image import imread

    points, _ = S.make_object("ball", np.random.default_rng(0), 2000)
    points[:, 3:] = (0.0, 0.0, 1.0)  # pure blue
    path = save_preview(points, tmp_path / "p.png", title="blue ball")
    image = imread(path)[..., :3]  # (H, W, 3) in [0, 1]
    blue = (image[..., 2] > 0.8) & (image[..., :2].max(-1) < 0.2)
    assert blue.sum() > 3000  # three views of 2000 points
    with pytest.raises(ValueError, match=r"shape \(N, 3\) or \(N, 6\)"):
        save_preview(np.zeros((5, 4)), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_cli_synth_then_show(tmp_path, capsys):
    out = tmp_path / "ds"
    assert (
        main(
            ["data", "synth", "--out", str(out), "--num", "8", "--seed", "1", "--num-points", "128"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "wrote 8 objects (6 train, 2 val) of" in printed
    meta = _load_json(out / "meta.json")
    assert meta["counts"]["objects"] == 8 and meta["num_points"] == 128

    single = next(oid for oid, o in meta["objects"].items() if o["secondary_color"] is None)
    cloud = out / "points" / f"{single}_128.npy"
    preview = tmp_path / "preview.png"
    assert main(["data", "show", str(cloud), "--out", str(preview), "--num-points", "128"]) == 0
    printed = capsys.readouterr().out
    assert "128 points x 6 channels" in printed
    assert f"(nearest named: {meta['objects'][single]['color']})" in printed
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and preview.stat().st_size > 10_000


def test_cli_show_bad_file_fails_with_one_line(tmp_path, capsys):
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"this is not a point cloud")
    assert main(["data", "show", str(bad), "--out", str(tmp_path / "p.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pointllm data: error:") and "broken.npy" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "p.png").exists()
