"""Collect benchmark runs into a Markdown table and a bar chart, with the published PointLLM
numbers as reference rows and per-class accuracy for close-set classification.

A run is a folder of results files (or the original layout's `{model}/evaluation/`); each results
file contributes its judge summary (`X_evaluated_{judge}.json`, ours or the original's), its
caption metrics (`X_evaluated_traditional.json`) and, for close-set classification, the matcher
accuracy (recomputed from the results, so it is there even for results made by other tools).
Judge columns show the clean numbers (invalid judge replies left out), which is how the original
reported open-vocabulary accuracy and caption scores.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pointllm.eval.matcher import class_set_for, matcher_scores, modelnet40_class_set
from pointllm.eval.results import infer_task, load_results, read_json

# (key, title): the table's columns, in order.
COLUMNS = (
    ("modelnet_p0", "ModelNet40 P0"),
    ("modelnet_p1", "ModelNet40 P1"),
    ("matcher_p0", "ModelNet40 matcher P0"),
    ("matcher_p1", "ModelNet40 matcher P1"),
    ("objaverse_p0", "Objaverse cls P0"),
    ("objaverse_p1", "Objaverse cls P1"),
    ("caption_judge", "Caption judge"),
    ("sbert_similarity", "Sentence-BERT"),
    ("simcse_similarity", "SimCSE"),
    ("bleu-1", "BLEU-1"),
    ("rouge-l", "ROUGE-L"),
    ("meteor", "METEOR"),
)
# PointLLM-7B v1.2 as published (GPT-4 judge; Sentence-BERT all-mpnet-base-v2, SimCSE
# sup-simcse-roberta-large). The 13B numbers are left out: the original README shows its result
# tables only as images.
PUBLISHED = {
    "PointLLM-7B v1.2 (published)": {
        "modelnet_p0": 53.44,
        "modelnet_p1": 51.82,
        "objaverse_p0": 55.00,
        "objaverse_p1": 51.00,
        "caption_judge": 44.85,
        "sbert_similarity": 47.47,
        "simcse_similarity": 48.55,
    }
}
_LOCAL_KINDS = ("traditional", "matcher")


@dataclass
class Run:
    """One row: a name, its scores by column key, and per-class accuracy tables."""

    name: str
    scores: dict[str, float] = field(default_factory=dict)
    # class set name -> column label (e.g. "run P0 matcher") -> class name -> accuracy
    per_class: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


def _number(value) -> float | None:
    """A score as written by us (float) or by the original ("53.44%", "12.3400")."""
    if value is None:
        return None
    return float(str(value).rstrip("%")) if isinstance(value, str) else float(value)


def _judge_summary(results_path: Path, judge: str | None) -> dict | None:
    """The judge summary beside a results file: the one for `judge`, else the newest."""
    stem = glob.escape(results_path.stem)
    candidates = [
        path
        for path in results_path.parent.glob(f"{stem}_evaluated_*.json")
        if path.stem.rsplit("_evaluated_", 1)[1] not in _LOCAL_KINDS
    ]
    if judge is not None:
        candidates = [p for p in candidates if p.stem.endswith(f"_evaluated_{judge}")]
    if not candidates:
        return None
    return read_json(max(candidates, key=lambda p: p.stat().st_mtime), "judge summary")


def _judge_score(summary: dict) -> float | None:
    for key in ("clean_accuracy", "clean_average_score", "accuracy", "average_score"):
        if key in summary:
            return _number(summary[key])
    return None


def _is_results_file(path: Path) -> bool:
    return "_evaluated_" not in path.stem and path.suffix == ".json"


def _results_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in (*path.glob("*.json"), *path.glob("evaluation/*.json")))
    return [p for p in files if _is_results_file(p)]


def _run_name(path: Path) -> str:
    folder = path if path.is_dir() else path.parent
    return folder.parent.name if folder.name == "evaluation" else folder.name


def collect_run(path: str | Path, judge: str | None = None) -> Run:
    """Scores of one run: a folder of results files, or a single results file."""
    from pointllm.data.objaverse import BENCHMARK_PROMPTS

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run folder or results file")
    run = Run(_run_name(path))
    class_sets = set()
    for results_path in _results_files(path):
        try:
            data = load_results(results_path)
        except ValueError:
            continue  # another JSON file in the folder (a config, a split)
        task = infer_task(data)
        index = (
            BENCHMARK_PROMPTS.index(data["prompt"]) if data["prompt"] in BENCHMARK_PROMPTS else None
        )
        summary = _judge_summary(results_path, judge)
        judge_score = _judge_score(summary) if summary else None
        if task == "modelnet-cls" and index in (0, 1):
            pairs = [
                (r["ground_truth"], r["label_name"]) for r in data["results"] if "label_name" in r
            ]
            class_set = class_set_for(pairs, str(results_path)) if pairs else modelnet40_class_set()
            class_sets.add(class_set.name)
            matcher = matcher_scores(data["results"], class_set)
            run.scores[f"matcher_p{index}"] = matcher["accuracy"]
            tables = run.per_class.setdefault(class_set.name, {})
            tables[f"{run.name} P{index} matcher"] = matcher["per_class_accuracy"]
            if judge_score is not None:
                run.scores[f"modelnet_p{index}"] = judge_score
                tables[f"{run.name} P{index} judge"] = _per_class_judge(summary, class_set.classes)
        elif task == "objaverse-cls" and index in (0, 1) and judge_score is not None:
            run.scores[f"objaverse_p{index}"] = judge_score
        elif task == "objaverse-caption":
            if judge_score is not None:
                run.scores["caption_judge"] = judge_score
            traditional = results_path.with_name(f"{results_path.stem}_evaluated_traditional.json")
            if traditional.is_file():
                overall = read_json(traditional, "caption metrics").get("overall_scores", {})
                for key in ("sbert_similarity", "simcse_similarity", "bleu-1", "rouge-l", "meteor"):
                    if _number(overall.get(key)) is not None:
                        run.scores[key] = _number(overall[key])
    if class_sets - {"modelnet40"}:
        run.name += f" ({', '.join(sorted(class_sets - {'modelnet40'}))} classes)"
    return run


def _per_class_judge(summary: dict, classes: Sequence[str]) -> dict[str, float]:
    """Per-class accuracy from our judge records (invalid replies count as wrong)."""
    counts: dict[str, list[int]] = {}
    for record in summary.get("results", []):
        if "correct" not in record:
            return {}  # the original's records: no per-item correctness to count
        hits = counts.setdefault(classes[int(record["ground_truth"])], [0, 0])
        hits[0] += bool(record["correct"])
        hits[1] += 1
    return {name: 100.0 * counts[name][0] / counts[name][1] for name in classes if name in counts}


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def render_markdown(runs: Sequence[Run], published: bool = True) -> str:
    """The benchmark table (runs, then the published reference rows) and per-class tables."""
    rows = [(run.name, run.scores) for run in runs]
    if published:
        rows += list(PUBLISHED.items())
    used = [(key, title) for key, title in COLUMNS if any(key in scores for _, scores in rows)]
    lines = [
        "| Run | " + " | ".join(title for _, title in used) + " |",
        "|---|" + "---:|" * len(used),
    ]
    lines += [
        f"| {name} | " + " | ".join(_cell(scores.get(key)) for key, _ in used) + " |"
        for name, scores in rows
    ]
    lines += [
        "",
        "Judge columns: clean accuracy / clean average score (invalid judge replies left out). "
        "Matcher: judge-free class-name matching. Caption metrics x100.",
    ]
    tables: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        for class_set_name, columns in run.per_class.items():
            tables.setdefault(class_set_name, {}).update(columns)
    for class_set_name, columns in tables.items():
        classes = sorted({name for column in columns.values() for name in column})
        lines += [
            "",
            f"### Per-class accuracy ({class_set_name})",
            "",
            "| Class | " + " | ".join(columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        lines += [
            f"| {name} | " + " | ".join(_cell(col.get(name)) for col in columns.values()) + " |"
            for name in classes
        ]
    return "\n".join(lines) + "\n"


def plot_runs(runs: Sequence[Run], path: str | Path, published: bool = True) -> None:
    """A grouped bar chart (one group per benchmark column, one bar per run) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pointllm.atomic import write_bytes

    rows = [(run.name, run.scores) for run in runs]
    if published:
        rows += list(PUBLISHED.items())
    used = [(key, title) for key, title in COLUMNS if any(key in scores for _, scores in rows)]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(used) + 2), 4.5))
    for i, (name, scores) in enumerate(rows):
        xs = [j + i * width for j, (key, _) in enumerate(used) if key in scores]
        ax.bar(xs, [scores[key] for key, _ in used if key in scores], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(used))])
    ax.set_xticklabels([title for _, title in used], rotation=30, ha="right")
    ax.set_ylabel("score (x100)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def write_report(
    paths: Sequence[str | Path],
    output: str | Path,
    chart: str | Path | None = None,
    *,
    judge: str | None = None,
    published: bool = True,
) -> list[Run]:
    """Collect runs, write the Markdown report and its chart (default: beside it, .png)."""
    from pointllm.atomic import write_text

    runs = [collect_run(path, judge) for path in paths]
    output = Path(output)
    chart = Path(chart) if chart else output.with_suffix(".png")
    markdown = render_markdown(runs, published)
    link = Path(os.path.relpath(chart.resolve(), output.resolve().parent)).as_posix()
    markdown = f"# Benchmark report\n\n{markdown}\n![benchmark chart]({link})\n"
    plot_runs(runs, chart, published)
    write_text(output, markdown)
    return runs
