"""Benchmark: `pointllm data check` on a large annotation file, and building a PointLLMDataset.

Writes, in a temporary folder, an annotation JSON of `--records` samples (stage-2 style: detailed
descriptions, single- and multi-round Q&A with random words) over `--objects` object ids whose
`{id}_8192.npy` files are symlinks to a few real (8192, 6) clouds, then times:

1. `check`: reading the JSON, then checking every record (schema, conversation, `<point>` count,
   point file exists, .npy header) without a tokenizer. Target: < 60 s for 100K records.
2. `dataset`: building `PointLLMDataset` (embedded SmolLM2 tokenizer, chat template, 513 point
   tokens) on the first `--dataset-samples` records, against the baseline of pre-tokenizing every
   conversation with its full 513-token point block (measured on `--baseline-samples` records and
   scaled); then the cost of `dataset[i]` (tokenize + load an (8192, 6) cloud), paid in workers.

    python benchmarks/data_check.py                       # 100K check, 70K dataset
    python benchmarks/data_check.py --records 20000 --dataset-samples 5000

Prints a Markdown table: seconds, samples per second, and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = [
    "red",
    "blue",
    "green",
    "small",
    "large",
    "wooden",
    "metal",
    "round",
    "square",
    "tall",
    "short",
    "chair",
    "table",
    "lamp",
    "mug",
    "bottle",
    "handle",
    "leg",
    "top",
    "base",
    "shiny",
    "matte",
    "object",
    "model",
    "shape",
    "color",
    "surface",
    "edge",
    "corner",
    "side",
    "with",
    "and",
    "the",
    "a",
    "of",
    "is",
    "has",
    "on",
    "in",
    "it",
    "this",
    "that",
    "used",
    "for",
    "sitting",
    "holding",
    "light",
    "water",
]
NUM_POINT_TOKENS = 513


def _sentence(rng: np.random.Generator, low: int, high: int) -> str:
    words = rng.choice(WORDS, size=int(rng.integers(low, high)))
    return " ".join(words).capitalize() + "."


def make_records(num_records: int, num_objects: int, seed: int = 0) -> list[dict]:
    """Stage-2 style annotation records: a third detailed, single-round and multi-round each."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num_records):
        kind = ("detailed_description", "single_round", "multi_round")[i % 3]
        rounds = int(rng.integers(2, 4)) if kind == "multi_round" else 1
        turns = []
        for r in range(rounds):
            question = _sentence(rng, 5, 15).rstrip(".") + "?"
            answer = " ".join(
                _sentence(rng, 8, 20) for _ in range(6 if kind == "detailed_description" else 2)
            )
            turns += [
                {"from": "human", "value": f"<point>\n{question}" if r == 0 else question},
                {"from": "gpt", "value": answer},
            ]
        records.append(
            {
                "object_id": f"obj{i % num_objects:08d}",
                "conversation_type": kind,
                "conversations": turns,
            }
        )
    return records


def make_points_dir(root: Path, num_objects: int, num_real: int = 4) -> Path:
    """`num_objects` `{id}_8192.npy` names, symlinks to `num_real` real (8192, 6) clouds."""
    points = root / "points"
    points.mkdir()
    rng = np.random.default_rng(0)
    real = []
    for k in range(num_real):
        path = root / f"real{k}.npy"
        np.save(path, rng.random((8192, 6), dtype=np.float32))
        real.append(path)
    for i in range(num_objects):
        (points / f"obj{i:08d}_8192.npy").symlink_to(real[i % num_real])
    return points


def bench_check(anno: Path, points: Path) -> dict[str, float]:
    from pointllm.data.check import check_annotations
    from pointllm.data.dataset import read_annotations

    start = time.perf_counter()
    records = read_annotations(anno)
    parsed = time.perf_counter()
    report = check_annotations(records, points, progress=False)
    done = time.perf_counter()
    if report.problems:
        raise RuntimeError(f"unexpected problems:\n{report.table()}")
    return {"json": parsed - start, "check": done - parsed, "total": done - start}


def bench_dataset(anno: Path, points: Path, records: list[dict], baseline_samples: int):
    from transformers import AutoTokenizer

    from pointllm.data.conversation import (
        insert_point_block,
        normalize_messages,
        point_block,
        tokenize_conversation,
    )
    from pointllm.data.dataset import PointLLMDataset
    from pointllm.model.backbones import embedded_backbone_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_backbone_dir())
    tokenizer.add_tokens(["<point_patch>", "<point_start>", "<point_end>"], special_tokens=True)
    start = time.perf_counter()
    dataset = PointLLMDataset(
        anno,
        points,
        tokenizer,
        template="chat_template",
        num_point_tokens=NUM_POINT_TOKENS,
        num_points=8192,
    )
    ours = time.perf_counter() - start
    block = point_block(NUM_POINT_TOKENS)
    start = time.perf_counter()
    for record in records[:baseline_samples]:
        messages = insert_point_block(normalize_messages(record["conversations"]), block)
        tokenize_conversation(
            messages, tokenizer, "chat_template", max_length=2048, protected_prefix_text=block
        )
    baseline = (time.perf_counter() - start) / baseline_samples * len(dataset)
    torch.set_num_threads(1)  # as in DataLoader workers, which set it so
    start = time.perf_counter()
    for i in range(baseline_samples):
        dataset[i]
    item = (time.perf_counter() - start) / baseline_samples
    return dataset, ours, baseline, item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--dataset-samples", type=int, default=70_000, help="0: skip")
    parser.add_argument("--baseline-samples", type=int, default=2_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="pointllm-bench-") as tmp:
        root = Path(tmp)
        records = make_records(args.records, args.objects)
        anno = root / "anno.json"
        anno.write_text(json.dumps(records))
        points = make_points_dir(root, args.objects)
        size_mb = anno.stat().st_size / 2**20
        print(
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
            f"{args.records} records ({size_mb:.0f} MB JSON), {args.objects} point files"
        )
        print()
        print("| step | samples | seconds | samples/s | vs baseline |")
        print("|---|---:|---:|---:|---:|")
        check = bench_check(anno, points)
        for step in ("json", "check", "total"):
            rate = args.records / check[step]
            print(f"| check: {step} | {args.records} | {check[step]:.1f} | {rate:,.0f} | |")
        if args.dataset_samples:
            subset = records[: args.dataset_samples]
            sub_anno = root / "anno_subset.json"
            sub_anno.write_text(json.dumps(subset))
            dataset, ours, baseline, item = bench_dataset(
                sub_anno, points, subset, args.baseline_samples
            )
            n = len(dataset)
            print(
                f"| dataset: full-block tokenization (baseline, scaled from "
                f"{args.baseline_samples}) | {n} | {baseline:.1f} | {n / baseline:,.0f} | 1.00 |"
            )
            print(
                f"| dataset: PointLLMDataset build | {n} | {ours:.1f} | {n / ours:,.0f} | "
                f"{baseline / ours:.2f} |"
            )
            print(
                f"| dataset: dataset[i], tokenize + load (mean of {args.baseline_samples}) | 1 | "
                f"{item:.4f} | {1 / item:,.0f} | |"
            )
            print()
            print(dataset.summary())


if __name__ == "__main__":
    main()
