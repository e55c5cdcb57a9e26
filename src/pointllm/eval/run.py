"""Benchmark generation: ask a PointLLM the benchmark prompt about every object, batched and
resumable, and write the results file in the original PointLLM format.

Resuming: results are rewritten atomically after every batch; a rerun of the same command loads
them, skips the objects already answered and continues in dataset order, so an interrupted and
resumed run ends with the same file as an uninterrupted one.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pointllm.atomic import write_json
from pointllm.eval.matcher import ClassSet, class_set_for, matcher_scores, modelnet40_class_set
from pointllm.eval.results import TASKS, evaluated_path, load_results, object_key, read_json

# The original's sampling settings (eval_modelnet_cls.py / eval_objaverse.py), for --sample.
ORIGINAL_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_k": 50, "top_p": 0.95}
DEFAULT_POINT_COUNT = 8192  # benchmark clouds: {object_id}_8192.npy files, ModelNet40 clouds


class AnswerModel(Protocol):
    """What the runner needs from a model: `pointllm.infer.api.PointLLM` satisfies it."""

    def generate_batch(self, items: Sequence[tuple[Any, str]], **gen: Any) -> list[str]: ...


@dataclass(frozen=True)
class BenchmarkItem:
    """One benchmark object: its points (an (N, C) array or a point file) and ground truth."""

    object_id: int | str
    points: np.ndarray | Path
    ground_truth: int | str
    label_name: str | None = None

    def entry(self, model_output: str) -> dict:
        """The results-file entry, keys in the original's order."""
        entry = {
            "object_id": self.object_id,
            "ground_truth": self.ground_truth,
            "model_output": model_output,
        }
        if self.label_name is not None:
            entry["label_name"] = self.label_name
        return entry


def point_file(data_dir: Path, object_id: str) -> Path:
    """The point file of an object: `{id}_8192.npy`, else the single `{id}_*.npy` there."""
    exact = data_dir / f"{object_id}_{DEFAULT_POINT_COUNT}.npy"
    if exact.is_file():
        return exact
    matches = sorted(
        glob.glob(os.path.join(glob.escape(str(data_dir)), f"{glob.escape(object_id)}_*.npy"))
    )
    if len(matches) != 1:
        found = (
            "none" if not matches else f"{len(matches)}: {', '.join(Path(m).name for m in matches)}"
        )
        raise FileNotFoundError(
            f"{data_dir}: expected one point file {object_id}_<points>.npy, found {found}"
        )
    return Path(matches[0])


def _classification_split(data_dir: Path, anno_path: Path) -> tuple[list[BenchmarkItem], ClassSet]:
    """Items of a classification split file: a list of {object_id, label, label_name}."""
    split = read_json(anno_path, "classification split")
    if not isinstance(split, list) or not all(
        isinstance(r, dict) and {"object_id", "label", "label_name"} <= r.keys() for r in split
    ):
        raise ValueError(
            f"{anno_path}: not a classification split (expected a list of "
            "{object_id, label, label_name})"
        )
    class_set = class_set_for(((int(r["label"]), r["label_name"]) for r in split), str(anno_path))
    items = [
        BenchmarkItem(
            r["object_id"],
            point_file(data_dir, str(r["object_id"])),
            int(r["label"]),
            r["label_name"],
        )
        for r in split
    ]
    return items, class_set


def load_benchmark(
    task: str,
    data_path: str | Path,
    anno_path: str | Path | None = None,
    *,
    trust_pickle: bool = False,
) -> tuple[list[BenchmarkItem], ClassSet | None]:
    """The objects of a benchmark, in dataset order, and the class set of close-set tasks.

    modelnet-cls: `data_path` is the ModelNet40 test file (.dat pickle, only with trust_pickle,
    or its safe .npz conversion), object ids are dataset indices; or `data_path` is a folder of
    point files and `anno_path` a classification split ({object_id, label, label_name} list,
    e.g. the synthetic dataset's val_cls.json). objaverse-cls / objaverse-caption: `data_path`
    is the folder of `{object_id}_8192.npy` files and `anno_path` the ground-truth captions file
    (PointLLM_brief_description_val_200_GT.json, or the synthetic val_gt.json).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    data_path = Path(data_path)
    if not data_path.exists():
        raise FileNotFoundError(f"{data_path}: no such file or folder")
    if task == "modelnet-cls":
        if data_path.is_dir():
            if anno_path is None:
                raise ValueError(
                    f"{data_path} is a folder: give the classification split with --anno-path "
                    "(or pass the ModelNet40 .dat/.npz file as --data-path)"
                )
            return _classification_split(data_path, Path(anno_path))
        if anno_path is not None:
            raise ValueError("--anno-path is not used with a ModelNet40 file as --data-path")
        from pointllm.data.modelnet import load_modelnet40

        class_set = modelnet40_class_set()
        points, labels = load_modelnet40(
            data_path, trust_pickle=trust_pickle, num_points=DEFAULT_POINT_COUNT
        )
        items = [
            BenchmarkItem(i, points[i], int(label), class_set.classes[int(label)])
            for i, label in enumerate(labels)
        ]
        return items, class_set
    if anno_path is None:
        raise ValueError(f"task {task} needs --anno-path (the ground-truth captions file)")
    if not data_path.is_dir():
        raise ValueError(f"{data_path}: task {task} needs the folder of point files as --data-path")
    from pointllm.data.objaverse import load_objaverse_gt

    items = [
        BenchmarkItem(object_id, point_file(data_path, object_id), caption)
        for object_id, caption in load_objaverse_gt(anno_path)
    ]
    return items, None


def run_benchmark(
    model: AnswerModel,
    items: Sequence[BenchmarkItem],
    prompt: str,
    output: str | Path,
    *,
    batch_size: int = 8,
    generation: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict:
    """Answer `prompt` for every item not yet in `output`, batch by batch; returns the results.

    The results file is rewritten atomically after each batch. An existing file must hold the
    same prompt and only objects of `items`.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    output = Path(output)
    known = {object_key(item.object_id) for item in items}
    if output.exists():
        data = load_results(output)
        if data["prompt"] != prompt:
            raise ValueError(
                f"{output} holds results for the prompt {data['prompt']!r}, not {prompt!r}: "
                "choose another --output or remove it"
            )
        strangers = [
            r["object_id"] for r in data["results"] if object_key(r["object_id"]) not in known
        ]
        if strangers:
            raise ValueError(
                f"{output} holds results for objects outside this benchmark (e.g. "
                f"{strangers[0]!r}): choose another --output or remove it"
            )
    else:
        data = {"prompt": prompt, "results": []}
    done = {object_key(r["object_id"]) for r in data["results"]}
    pending = [item for item in items if object_key(item.object_id) not in done]
    bar = None
    if progress and pending:
        from tqdm import tqdm

        bar = tqdm(total=len(items), initial=len(items) - len(pending), unit="obj", file=sys.stderr)
    try:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            answers = model.generate_batch(
                [(item.points, prompt) for item in batch], **(generation or {})
            )
            data["results"].extend(
                item.entry(answer.strip()) for item, answer in zip(batch, answers, strict=True)
            )
            write_json(output, data)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    if not output.exists():  # nothing was pending: still leave a (complete) results file
        write_json(output, data)
    return data


def generation_settings(sample: bool, max_new_tokens: int) -> dict[str, Any]:
    """Greedy decoding, or the original's sampling with --sample."""
    if max_new_tokens < 1:
        raise ValueError(f"max new tokens must be >= 1, got {max_new_tokens}")
    base = dict(ORIGINAL_SAMPLING) if sample else {"do_sample": False}
    return base | {"max_new_tokens": max_new_tokens}


def evaluate_model(
    task: str,
    model_path: str | Path,
    data_path: str | Path,
    prompt_index: int,
    output: str | Path,
    *,
    anno_path: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    sample: bool = False,
    seed: int = 0,
    max_new_tokens: int = 256,
    device: str = "auto",
    dtype: str = "auto",
    trust_pickle: bool = False,
    progress: bool = True,
) -> dict:
    """`pointllm eval run`: load the benchmark and the model, generate (resuming), and for
    close-set classification write the judge-free matcher score to `X_evaluated_matcher.json`.

    Returns {"output", "total", "prompt", "matcher": matcher summary or None}.
    """
    from pointllm.data.objaverse import benchmark_prompt

    prompt = benchmark_prompt(prompt_index)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    items, class_set = load_benchmark(task, data_path, anno_path, trust_pickle=trust_pickle)
    items = items[:limit]
    generation = generation_settings(sample, max_new_tokens)

    import torch

    from pointllm.infer.api import load

    model = load(model_path, device=device, dtype=dtype)
    if sample:
        torch.manual_seed(seed)
    data = run_benchmark(
        model,
        items,
        prompt,
        output,
        batch_size=batch_size,
        generation=generation,
        progress=progress,
    )
    matcher = None
    if class_set is not None:
        matcher = {"inference_prompt": data["prompt"], **matcher_scores(data["results"], class_set)}
        write_json(evaluated_path(output, "matcher"), matcher)
    return {
        "output": str(output),
        "total": len(data["results"]),
        "prompt": data["prompt"],
        "matcher": matcher,
    }
