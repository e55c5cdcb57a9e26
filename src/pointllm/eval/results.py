"""Benchmark results files: the original PointLLM format, and the files written beside them.

A results file is `{"prompt": str, "results": [{"object_id", "ground_truth", "model_output",
"label_name"?}]}` (ModelNet40: ground_truth is the label index, label_name the class name).
Evaluations of `X.json` go beside it as `X_evaluated_{kind}.json`, as the original names them
(`kind` = judge model name, `traditional` for caption metrics, `matcher` for the judge-free
classification score).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

TASKS = ("modelnet-cls", "objaverse-cls", "objaverse-caption")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; a missing or malformed file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what} file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid JSON {what} file ({exc})") from exc


def load_results(path: str | Path) -> dict:
    """A results file, checked: a prompt string and entries with object_id, ground_truth and
    model_output."""
    data = read_json(path, "results")
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
        raise ValueError(f"{path}: not a results file (expected an object with a 'prompt' string)")
    results = data.get("results")
    if not isinstance(results, list):
        raise ValueError(f"{path}: not a results file (expected a 'results' list)")
    for i, entry in enumerate(results):
        missing = [
            key
            for key in ("object_id", "ground_truth", "model_output")
            if not isinstance(entry, dict) or key not in entry
        ]
        if missing:
            raise ValueError(f"{path}: results[{i}] lacks {', '.join(missing)}")
        if not isinstance(entry["model_output"], str):
            raise ValueError(f"{path}: results[{i}].model_output is not a string")
    return data


def evaluated_path(results_path: str | Path, kind: str, suffix: str = ".json") -> Path:
    """`X.json` -> `X_evaluated_{kind}{suffix}` beside it (kind made filename-safe)."""
    path = Path(results_path)
    return path.with_name(f"{path.stem}_evaluated_{_UNSAFE.sub('-', kind)}{suffix}")


def infer_task(data: dict) -> str:
    """The benchmark a results file belongs to: integer ground truths are close-set
    classification; the detailed-caption prompt is captioning; anything else open-vocabulary
    classification."""
    from pointllm.data.objaverse import BENCHMARK_PROMPTS

    if data["results"] and all(isinstance(r["ground_truth"], int) for r in data["results"]):
        return "modelnet-cls"
    return "objaverse-caption" if data["prompt"] == BENCHMARK_PROMPTS[2] else "objaverse-cls"


def object_key(object_id: Any) -> str:
    """A hashable, type-preserving key for an object_id (ModelNet ids are ints, Objaverse str)."""
    return json.dumps(object_id)
