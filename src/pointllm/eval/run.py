"""Benchmark generation: ask a PointLLM the benchmark prompt about every object, batched and
resumable, and write the results file in the original PointLLM format.

Resuming: results are rewritten atomically after every batch, in dataset order; a rerun of the
same command loads them, skips the objects already answered and answers the rest, so an
interrupted and resumed run ends with the same file as an uninterrupted one.

Several processes (`--nproc N`, torchrun): rank r answers the batches k with k % N == r (whole
batches, so every object is answered in the same batch as in a one-process run), each into its own
resumable shard `X.json.parts/rank{r}-of-{N}.json`; when every rank has finished, the launcher
merges the shards into `X.json` in dataset order and removes them. A later run, with any number of
processes, takes its answers from the results file and from any shards it finds.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pointllm.atomic import write_json
from pointllm.eval.matcher import ClassSet, class_set_for, matcher_scores, modelnet40_class_set
from pointllm.eval.results import TASKS, evaluated_path, load_results, object_key, read_json

if TYPE_CHECKING:
    from pointllm.train.launch import LaunchOutcome

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


def _read_checked(path: Path, prompt: str) -> dict:
    """A results file that must hold answers to `prompt`."""
    data = load_results(path)
    if data["prompt"] != prompt:
        raise ValueError(
            f"{path} holds results for the prompt {data['prompt']!r}, not {prompt!r}: "
            "choose another --output or remove it"
        )
    return data


def existing_results(output: Path, items: Sequence[BenchmarkItem], prompt: str) -> dict:
    """The results file to continue: it must hold the same prompt and only objects of `items`;
    a new one if there is none."""
    if not output.exists():
        return {"prompt": prompt, "results": []}
    data = _read_checked(output, prompt)
    known = {object_key(item.object_id) for item in items}
    strangers = [r["object_id"] for r in data["results"] if object_key(r["object_id"]) not in known]
    if strangers:
        raise ValueError(
            f"{output} holds results for objects outside this benchmark (e.g. "
            f"{strangers[0]!r}): choose another --output or remove it"
        )
    return data


def _answers_in(paths: Iterable[Path], prompt: str, wanted: set[str]) -> dict[str, dict]:
    """Entries for the object keys in `wanted` found in the results files `paths` (missing files
    are skipped, the first answer wins)."""
    found: dict[str, dict] = {}
    for path in paths:
        if path.is_file():
            for entry in _read_checked(path, prompt)["results"]:
                key = object_key(entry["object_id"])
                if key in wanted:
                    found.setdefault(key, entry)
    return found


def _in_order(entries: Iterable[dict], items: Sequence[BenchmarkItem]) -> list[dict]:
    order = {object_key(item.object_id): i for i, item in enumerate(items)}
    return sorted(entries, key=lambda entry: order[object_key(entry["object_id"])])


def parts_dir(output: str | Path) -> Path:
    """The folder of the per-rank shards of a results file: `X.json` -> `X.json.parts`."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def shard_path(output: str | Path, rank: int, world_size: int) -> Path:
    return parts_dir(output) / f"rank{rank}-of-{world_size}.json"


def shard_items(
    items: Sequence[BenchmarkItem], rank: int, world_size: int, batch_size: int
) -> list[BenchmarkItem]:
    """Rank `rank`'s objects: the batches k (of `batch_size` consecutive objects) with
    k % world_size == rank, so each object is answered in the same batch as in one process."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    return [item for i, item in enumerate(items) if (i // batch_size) % world_size == rank]


def _resume(
    items: Sequence[BenchmarkItem],
    prompt: str,
    output: Path,
    resume_from: Sequence[Path] = (),
) -> tuple[dict, list[BenchmarkItem]]:
    """(the results so far, in dataset order, and the items still to answer). Answers found in
    the files `resume_from` are added to `output` (rewritten at once when they add any)."""
    data = existing_results(output, items, prompt)
    done = {object_key(r["object_id"]) for r in data["results"]}
    todo = {object_key(item.object_id) for item in items} - done
    found = _answers_in(resume_from, prompt, todo)
    if found:
        data["results"] = _in_order([*data["results"], *found.values()], items)
        write_json(output, data)
        done |= found.keys()
    return data, [item for item in items if object_key(item.object_id) not in done]


def run_benchmark(
    model: AnswerModel,
    items: Sequence[BenchmarkItem],
    prompt: str,
    output: str | Path,
    *,
    batch_size: int = 8,
    generation: dict[str, Any] | None = None,
    progress: bool = True,
    resume_from: Sequence[Path] = (),
) -> dict:
    """Answer `prompt` for every item not yet in `output`, batch by batch; returns the results.

    The results file is rewritten atomically after each batch. An existing file must hold the
    same prompt and only objects of `items`; answers to the same prompt in the files
    `resume_from` (shards of an earlier run) count as done.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    output = Path(output)
    data, pending = _resume(items, prompt, output, resume_from)
    return _answer(
        model, items, pending, data, output, batch_size, generation or {}, progress=progress
    )


def _answer(
    model: AnswerModel,
    items: Sequence[BenchmarkItem],
    pending: Sequence[BenchmarkItem],
    data: dict,
    output: Path,
    batch_size: int,
    generation: dict[str, Any],
    *,
    progress: bool,
) -> dict:
    """Generate the pending answers batch by batch into `data`, saving `output` after each."""
    bar = None
    if progress and pending:
        from tqdm import tqdm

        bar = tqdm(total=len(items), initial=len(items) - len(pending), unit="obj", file=sys.stderr)
    try:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            answers = model.generate_batch(
                [(item.points, data["prompt"]) for item in batch], **generation
            )
            new = [item.entry(answer.strip()) for item, answer in zip(batch, answers, strict=True)]
            data["results"] = _in_order([*data["results"], *new], items)
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


class ShardsFailed(RuntimeError):
    """A `--nproc` run whose workers did not all finish (their finished batches are kept)."""


def torchrun_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) of a process started by torchrun; (0, 1, 0) otherwise."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def rank_device(device: str, local_rank: int) -> str:
    """The device of the process with this local rank: cuda:LOCAL_RANK for auto/cuda when CUDA
    is available, else the CPU (auto) or `device` as given (cpu)."""
    if device.startswith("cuda:"):
        raise ValueError(
            f"--device {device} names one GPU, but with --nproc each process uses "
            "cuda:LOCAL_RANK: use --device auto or cuda"
        )
    if device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu" if device == "auto" else device  # cuda: load() says CUDA is missing
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"process {local_rank} of this node needs cuda:{local_rank}, but {count} GPU(s) are "
            f"visible: use --nproc {count} or fewer"
        )
    return f"cuda:{local_rank}"


def _benchmark(
    task: str,
    data_path: str | Path,
    anno_path: str | Path | None,
    limit: int | None,
    trust_pickle: bool,
    batch_size: int,
) -> tuple[list[BenchmarkItem], ClassSet | None]:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    items, class_set = load_benchmark(task, data_path, anno_path, trust_pickle=trust_pickle)
    return items[:limit], class_set


def _part_files(output: Path) -> list[Path]:
    return sorted(parts_dir(output).glob("*.json"))


def _drop_merged_parts(output: Path, data: dict) -> None:
    """Remove the shards once every answer in them is in the results file."""
    parts = _part_files(output)
    merged = {object_key(r["object_id"]) for r in data["results"]}
    if all(
        object_key(r["object_id"]) in merged
        for path in parts
        for r in _read_checked(path, data["prompt"])["results"]
    ):
        shutil.rmtree(parts_dir(output), ignore_errors=True)


def _shard_start(
    items: Sequence[BenchmarkItem], prompt: str, output: Path, target: Path
) -> tuple[dict, list[BenchmarkItem]]:
    """A worker's shard so far, from its own file, the results file and every other shard (an
    earlier run may have had another process count), and the items still to answer."""
    wanted = {object_key(item.object_id) for item in items}
    found = _answers_in([output, *_part_files(output)], prompt, wanted)
    data = {"prompt": prompt, "results": _in_order(found.values(), items)}
    if found:
        write_json(target, data)
    return data, [item for item in items if object_key(item.object_id) not in found]


def _finish(output: Path, data: dict, class_set: ClassSet | None) -> dict:
    """Write the matcher score of close-set classification; the summary of the run."""
    matcher = None
    if class_set is not None:
        matcher = {"inference_prompt": data["prompt"], **matcher_scores(data["results"], class_set)}
        write_json(evaluated_path(output, "matcher"), matcher)
    return {
        "output": str(output),
        "total": len(data["results"]),
        "prompt": data["prompt"],
        "matcher": matcher,
        "rank": None,
    }


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

    Under torchrun (WORLD_SIZE > 1) this process answers only its shard (`shard_items`) into
    `shard_path(output, rank, world_size)` on cuda:LOCAL_RANK (or the CPU); `merge_shards`
    writes `output` afterwards. The model is loaded only when something is left to answer.

    Returns {"output", "total", "prompt", "matcher": matcher summary or None, "rank": the rank
    of a shard worker or None}.
    """
    from pointllm.data.objaverse import benchmark_prompt

    prompt = benchmark_prompt(prompt_index)
    items, class_set = _benchmark(task, data_path, anno_path, limit, trust_pickle, batch_size)
    generation = generation_settings(sample, max_new_tokens)
    output = Path(output)
    rank, world_size, local_rank = torchrun_rank()
    if world_size > 1:
        items = shard_items(items, rank, world_size, batch_size)
        target = shard_path(output, rank, world_size)
        data, pending = _shard_start(items, prompt, output, target)
        device = rank_device(device, local_rank)
        progress = progress and rank == 0
    else:
        target = output
        data, pending = _resume(items, prompt, output, _part_files(output))
    if pending:
        import torch

        from pointllm.infer.api import load

        if device.startswith("cuda:"):
            torch.cuda.set_device(device)
        model = load(model_path, device=device, dtype=dtype)
        if sample:
            torch.manual_seed(seed)
        data = _answer(
            model, items, pending, data, target, batch_size, generation, progress=progress
        )
    elif not target.exists():  # nothing to answer: still leave a (complete) file
        write_json(target, data)
    if world_size > 1:
        return {
            "output": str(target),
            "total": len(data["results"]),
            "prompt": prompt,
            "matcher": None,
            "rank": rank,
        }
    _drop_merged_parts(output, data)
    return _finish(output, data, class_set)


def merge_shards(items: Sequence[BenchmarkItem], prompt: str, output: str | Path) -> dict:
    """Write `output` from the shards of a finished `--nproc` run (and any results already in
    it), in dataset order, then remove the shards; returns the results."""
    output = Path(output)
    wanted = {object_key(item.object_id) for item in items}
    found = _answers_in([output, *_part_files(output)], prompt, wanted)
    missing = [item.object_id for item in items if object_key(item.object_id) not in found]
    if missing:
        raise ValueError(
            f"{parts_dir(output)}: no answer for {len(missing)} of {len(items)} objects (e.g. "
            f"{missing[0]!r}); rerun the same command to answer them"
        )
    data = {"prompt": prompt, "results": _in_order(found.values(), items)}
    write_json(output, data)
    _drop_merged_parts(output, data)
    return data


def _failure(outcome: LaunchOutcome, nproc: int, output: Path) -> str:
    """One line: which ranks failed (or the signal), and that a rerun continues."""
    import signal as signals

    if outcome.signal is not None:
        what = f"stopped by {outcome.signal}"
    else:
        reasons = {
            rank: f"killed by {signals.Signals(-code).name}"
            if code is not None and code < 0
            else f"exit code {code}"
            for rank, code in sorted(outcome.failed_ranks.items())
        }
        if len(reasons) == 1:
            ((rank, reason),) = reasons.items()
            what = f"rank {rank} of {nproc} failed ({reason})"
        else:
            what = (
                f"ranks {', '.join(map(str, reasons))} of {nproc} failed ("
                + "; ".join(f"rank {rank}: {reason}" for rank, reason in reasons.items())
                + ")"
            )
    return (
        f"{what}; finished batches stay in {parts_dir(output)}: rerun the same command to "
        "continue (the output above shows the cause)"
    )


def evaluate_with_workers(
    nproc: int,
    worker_argv: Sequence[str],
    task: str,
    data_path: str | Path,
    prompt_index: int,
    output: str | Path,
    *,
    anno_path: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    trust_pickle: bool = False,
    verbose: bool = False,
) -> dict:
    """`pointllm eval run --nproc N`: check the input, run `pointllm eval run WORKER_ARGV` in N
    processes under torchrun (one node), then merge their shards into `output` and score it.

    Raises ShardsFailed naming the failed ranks; their shards stay for a rerun to continue.
    Returns the summary of `evaluate_model`.
    """
    from pointllm.data.objaverse import benchmark_prompt
    from pointllm.train.launch import launch_parser, run_torchrun

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    prompt = benchmark_prompt(prompt_index)
    items, class_set = _benchmark(task, data_path, anno_path, limit, trust_pickle, batch_size)
    output = Path(output)
    # Refuse a mismatched results file or shard before starting N processes.
    existing_results(output, items, prompt)
    _answers_in(_part_files(output), prompt, set())
    rank_device(device, nproc - 1)
    options = launch_parser().parse_args(["--nproc", str(nproc)])
    outcome = run_torchrun(options, worker_argv, verbose, command=("eval", "run"))
    if not outcome.ok:
        raise ShardsFailed(_failure(outcome, nproc, output))
    return _finish(output, merge_shards(items, prompt, output), class_set)
