"""scripts/preview_grid.py on a small fake demo folder: saved examples, --ask with a tiny model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_model
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def grid():
    spec = importlib.util.spec_from_file_location("preview_grid", ROOT / "scripts/preview_grid.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def cloud(seed: int, n: int = 600) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n, 3)) * np.array([1.0, 0.4, 0.2])
    rgb = np.broadcast_to(rng.random(3), (n, 3))
    return np.concatenate([xyz, rgb], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, base_tokenizer):
    """A demo folder as `pointllm demo` leaves it, reduced to what the script reads: point files,
    the held-out split, chat examples and a tiny final model."""
    from pointllm.model.pointllm import save_pointllm

    root = tmp_path_factory.mktemp("demo")
    points = root / "synth" / "points"
    points.mkdir(parents=True)
    split = []
    for i, category in enumerate(["mug", "chair", "rocket", "mug", "lamp"]):
        object_id = f"synth_{i:06d}"
        np.save(points / f"{object_id}_8192.npy", cloud(i))
        split.append({"object_id": object_id, "label": i, "label_name": category})
    (root / "synth" / "anno").mkdir()
    (root / "synth" / "anno" / "val_cls.json").write_text(json.dumps(split))
    (root / "chat").mkdir()
    examples = [
        {
            "object_id": "synth_000000",
            "category": "mug",
            "question": "What is this?",
            "answer": "A red mug with a handle. " * 20,  # long: cut to one panel's size
            "points": "/elsewhere/synth_000000_8192.npy",  # recorded from another directory
        },
        {
            "object_id": "synth_000001",
            "category": "chair",
            "question": "What color is this object?",
            "answer": "It is blue.",
        },
    ]
    (root / "chat" / "examples.json").write_text(json.dumps(examples))
    model, tokenizer = make_tiny_model(base_tokenizer, arch="qwen2", num_points=256)
    save_pointllm(model, tokenizer, root / "stage2")
    return root


def test_grid_of_saved_examples(grid, demo_dir, tmp_path):
    out = tmp_path / "grid.png"
    assert grid.main([str(demo_dir), "--out", str(out), "--columns", "2"]) == 0
    image = Image.open(out)
    width, height = image.size
    assert out.stat().st_size <= 300 * 1024
    # two panels side by side: each half holds a drawn cloud (not just the white background)
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    top = pixels[: height // 2]
    for half in (top[:, : width // 2], top[:, width // 2 :]):
        assert (np.abs(half - 255).sum(axis=2) > 60).mean() > 0.2
    assert width > height  # one row of two panels


def test_captions_are_cut_to_one_size(grid, demo_dir):
    panels = grid.saved_examples(demo_dir)
    assert [p.object_id for p in panels] == ["synth_000000", "synth_000001"]
    assert panels[0].points == demo_dir / "synth" / "points" / "synth_000000_8192.npy"
    caption = grid._caption(panels[0])
    assert caption.startswith("Q: What is this?\nA: A red mug")
    assert caption.endswith("…")
    assert len(caption) <= grid.MAX_ANSWER_CHARS + 40


def test_ask_answers_other_categories_first_with_the_models_answers(grid, demo_dir, tmp_path):
    import pointllm

    asked = grid.ask_model(demo_dir, 3, "What is this?", {"synth_000000", "synth_000001"}, "cpu")
    # one per category first (rocket, mug, lamp), the already-shown objects skipped
    assert [p.object_id for p in asked] == ["synth_000002", "synth_000003", "synth_000004"]
    llm = pointllm.load(demo_dir / "stage2", device="cpu")
    expected = llm.generate_batch([(p.points, "What is this?") for p in asked], max_new_tokens=64)
    assert [p.answer for p in asked] == expected

    out = tmp_path / "asked.png"
    assert grid.main([str(demo_dir), "--out", str(out), "--ask", "2", "--columns", "3"]) == 0
    width, height = Image.open(out).size
    assert width > height  # 4 panels in 3 columns: 2 rows of wide panels


def test_bad_input_is_one_line(grid, tmp_path, capsys):
    assert grid.main([str(tmp_path / "missing")]) == 1
    assert "no such demo folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert grid.main([str(empty)]) == 1
    assert "examples.json: no chat examples" in capsys.readouterr().err
    (empty / "chat").mkdir()
    (empty / "chat" / "examples.json").write_text("[{")
    assert grid.main([str(empty)]) == 1
    assert "not a demo examples file" in capsys.readouterr().err
