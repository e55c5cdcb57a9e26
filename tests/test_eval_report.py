"""`pointllm eval report`: runs collected from their files into Markdown and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pointllm.cli import main
from pointllm.eval.report import collect_run, render_markdown


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def modelnet_entry(object_id: int, label: int, name: str, output: str) -> dict:
    return {
        "object_id": object_id,
        "ground_truth": label,
        "model_output": output,
        "label_name": name,
    }


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A model folder in the original layout ({model}/evaluation/) with every kind of file."""
    folder = tmp_path / "my-model" / "evaluation"
    mn = folder / "ModelNet_classification_prompt0.json"
    dump(
        mn,
        {
            "prompt": "What is this?",
            "results": [
                modelnet_entry(0, 0, "airplane", "This is an aircraft."),  # matcher: right
                modelnet_entry(1, 0, "airplane", "A red car."),  # matcher: wrong
                modelnet_entry(2, 8, "chair", "a chair"),  # right
                modelnet_entry(3, 8, "chair", "hmm"),  # unmatched
            ],
        },
    )
    dump(
        folder / "ModelNet_classification_prompt0_evaluated_my-judge.json",
        {
            "clean_accuracy": 75.0,
            "accuracy": 60.0,
            "results": [
                {"object_id": 0, "ground_truth": 0, "correct": True},
                {"object_id": 1, "ground_truth": 0, "correct": False},
                {"object_id": 2, "ground_truth": 8, "correct": True},
                {"object_id": 3, "ground_truth": 8, "correct": True},
            ],
        },
    )
    # The original evaluator's outputs: accuracy as a "xx.xx%" string, scores as strings.
    cls = folder / "val_Objaverse_classification_prompt1.json"
    dump(
        cls,
        {
            "prompt": "This is an object of ",
            "results": [{"object_id": "a", "ground_truth": "a mug", "model_output": "cup"}],
        },
    )
    dump(
        folder / "val_Objaverse_classification_prompt1_evaluated_gpt-4-0613.json",
        {"accuracy": "51.00%"},
    )
    cap = folder / "val_Objaverse_captioning_prompt2.json"
    dump(
        cap,
        {
            "prompt": "Caption this 3D model in detail.",
            "results": [{"object_id": "a", "ground_truth": "a mug", "model_output": "a cup"}],
        },
    )
    dump(
        folder / "val_Objaverse_captioning_prompt2_evaluated_gpt-4-0613.json",
        {"average_score": "44.85"},
    )
    dump(
        folder / "val_Objaverse_captioning_prompt2_evaluated_traditional.json",
        {
            "overall_scores": {
                "bleu-1": "3.8700",
                "rouge-l": 7.5,
                "meteor": None,
                "sbert_similarity": 47.0,
            }
        },
    )
    dump(folder / "config.json", {"model_type": "pointllm"})  # not a results file: ignored
    return tmp_path / "my-model"


def test_collect_run_reads_ours_and_the_originals_files(run_dir):
    run = collect_run(run_dir)
    assert run.name == "my-model"
    assert run.scores == {
        "matcher_p0": 50.0,
        "modelnet_p0": 75.0,
        "objaverse_p1": 51.0,
        "caption_judge": 44.85,
        "sbert_similarity": 47.0,
        "bleu-1": 3.87,
        "rouge-l": 7.5,
    }
    tables = run.per_class["modelnet40"]
    assert tables["my-model P0 matcher"] == {"airplane": 50.0, "chair": 50.0}
    assert tables["my-model P0 judge"] == {"airplane": 50.0, "chair": 100.0}


def test_markdown_table_has_runs_published_rows_and_per_class(run_dir):
    other = run_dir.parent / "other"
    dump(
        other / "mn.json",
        {"prompt": "This is an object of ", "results": [modelnet_entry(0, 8, "chair", "chairs")]},
    )
    text = render_markdown([collect_run(run_dir), collect_run(other)])
    lines = text.splitlines()
    header = lines[0]
    assert header.startswith(
        "| Run | ModelNet40 P0 | ModelNet40 P1 | ModelNet40 matcher P0 | ModelNet40 matcher P1"
    )
    titles = [cell.strip() for cell in header.strip("|").split("|")]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in lines[2:5]
    }
    mine = dict(zip(titles, rows["my-model"], strict=True))
    assert mine["ModelNet40 P0"] == "75.00" and mine["ModelNet40 matcher P0"] == "50.00"
    assert mine["Objaverse cls P1"] == "51.00" and mine["Caption judge"] == "44.85"
    assert mine["SimCSE"] == "—"  # published only
    assert "METEOR" not in titles  # a column nobody has is left out
    assert dict(zip(titles, rows["other"], strict=True))["ModelNet40 matcher P1"] == "100.00"
    published = dict(zip(titles, rows["PointLLM-7B v1.2 (published)"], strict=True))
    assert published["ModelNet40 P0"] == "53.44" and published["ModelNet40 P1"] == "51.82"
    assert published["Objaverse cls P0"] == "55.00" and published["SimCSE"] == "48.55"
    assert "### Per-class accuracy (modelnet40)" in text
    assert "| chair | 50.00 | 100.00 | 100.00 |" in text


def test_report_cli_writes_markdown_and_png(run_dir, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "reports" / "bench.md"
    assert main(["eval", "report", str(run_dir / "evaluation"), "--output", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Benchmark report")
    assert "![benchmark chart](bench.png)" in text
    with Image.open(tmp_path / "reports" / "bench.png") as image:
        assert image.format == "PNG" and image.size[0] > 300
    assert "report of 1 run(s)" in capsys.readouterr().out


def test_report_of_a_missing_run_is_one_line_error(tmp_path, capsys):
    assert main(["eval", "report", str(tmp_path / "nope"), "--output", str(tmp_path / "r.md")]) == 1
    assert "nope: no such run folder or results file" in capsys.readouterr().err
