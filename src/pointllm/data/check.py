"""`pointllm data check`: find the records of an annotation file that training would drop.

Every problem `PointLLMDataset` skips at build time is counted here by reason, with a few examples
each, without building a dataset; the good records can be written to a clean annotation file.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pointllm.atomic import atomic_file
from pointllm.data.conversation import point_block
from pointllm.data.dataset import (
    RecordError,
    SampleTokenizer,
    list_file_names,
    parse_record,
    points_file_candidates,
)

CHECK_REASONS = (
    "ok",
    "bad_conversation",
    "point_count",
    "missing_points",
    "corrupt_points",
    "bad_shape",
    "too_long",
)
CHECK_LABELS = {
    "ok": "ok",
    "bad_conversation": "bad conversation",
    "point_count": "bad <point> count",
    "missing_points": "missing points",
    "corrupt_points": "corrupt points",
    "bad_shape": "bad shape",
    "too_long": "too long",
    "truncated": "truncated (kept)",
}


@dataclass
class CheckReport:
    """What `check_annotations` found: counts by reason, up to a few examples per reason, and
    the indices of the good records."""

    total: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    good: list[int] = field(default_factory=list)
    length_checked: bool = False

    @property
    def problems(self) -> int:
        return sum(self.counts[r] for r in CHECK_REASONS[1:])

    def add(self, reason: str, index: int, message: str, keep: int = 3) -> None:
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < keep:
            examples.append(f"sample {index}: {message}")

    def table(self) -> str:
        """The summary table, one reason per line, with examples of each problem."""
        width = max(len(label) for label in CHECK_LABELS.values())
        lines = [f"{self.total} samples checked"]
        shown = [r for r in CHECK_REASONS if r == "ok" or self.counts[r]]
        if self.counts["truncated"]:
            shown.append("truncated")
        for reason in shown:
            lines.append(f"  {CHECK_LABELS[reason]:<{width}}  {self.counts[reason]:>8}")
            lines.extend(f"      {example}" for example in self.examples.get(reason, ()))
        if not self.length_checked:
            lines.append("  (length not checked: pass --tokenizer to count tokens)")
        return "\n".join(lines)


def check_points_file(path: str | os.PathLike[str], *, deep: bool = False) -> tuple[str, str]:
    """(reason, message) for one cloud file: ok, corrupt_points or bad_shape. Reads only the
    .npy header (memory-mapped) unless `deep`, which loads and validates every point."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        return "corrupt_points", f"{path}: cannot read as .npy ({' '.join(str(exc).split())})"
    if not isinstance(array, np.ndarray):
        return "corrupt_points", f"{path}: not a single .npy array"
    if array.ndim != 2 or array.shape[1] != 6 or array.shape[0] == 0 or array.dtype.kind != "f":
        return (
            "bad_shape",
            f"{path}: shape {tuple(array.shape)} dtype {array.dtype}, expected (N, 6) float",
        )
    if deep:
        from pointllm.data.io import PointCloudError, read_points

        try:
            read_points(path)
        except PointCloudError as exc:
            return "corrupt_points", str(exc)
    return "ok", ""


def check_annotations(
    records: list[Any],
    data_dir: str | os.PathLike[str],
    *,
    tokenizer=None,
    template: str = "chat_template",
    num_point_tokens: int = 513,
    use_start_end: bool = True,
    max_length: int = 2048,
    num_points: int = 8192,
    deep: bool = False,
    progress: bool = True,
) -> CheckReport:
    """Check every record (from `read_annotations`): its schema and conversation, its `<point>`
    count, that its cloud file exists and has an (N, 6) float array (each file read once), and,
    with a tokenizer, that it fits `max_length` tokens with a `num_point_tokens` point block.
    Samples that would be truncated are counted but stay good."""
    from tqdm import tqdm

    names = list_file_names(data_dir)
    tokenize = (
        SampleTokenizer(
            tokenizer,
            template,
            num_point_tokens=num_point_tokens,
            use_start_end=use_start_end,
            max_length=max_length,
        )
        if tokenizer is not None
        else None
    )
    block = tokenize.block if tokenize else point_block(1, use_start_end)
    report = CheckReport(total=len(records), length_checked=tokenize is not None)
    file_status: dict[str, tuple[str, str]] = {}  # object_id -> (reason, message)
    for index, record in enumerate(
        tqdm(records, desc="checking", unit="sample", disable=None if progress else True)
    ):
        try:
            object_id, messages = parse_record(record, block)
            if object_id is not None:
                if object_id not in file_status:
                    file_status[object_id] = _check_object(
                        data_dir, names, object_id, num_points, deep
                    )
                reason, message = file_status[object_id]
                if reason != "ok":
                    raise RecordError(reason, message)
            if tokenize is not None and tokenize.check_length(messages, object_id is not None):
                report.counts["truncated"] += 1
        except RecordError as exc:
            report.add(exc.reason, index, str(exc))
            continue
        report.counts["ok"] += 1
        report.good.append(index)
    return report


def _check_object(
    data_dir: str | os.PathLike[str], names: set[str], object_id: str, num_points: int, deep: bool
) -> tuple[str, str]:
    candidates = points_file_candidates(object_id, num_points)
    found = next((name for name in candidates if name in names), None)
    if found is None:
        return "missing_points", f"{Path(data_dir) / candidates[0]} not found"
    return check_points_file(Path(data_dir) / found, deep=deep)


def write_clean_annotations(
    records: list[Any], report: CheckReport, out: str | os.PathLike[str]
) -> int:
    """Write the good records (unchanged, in order) to `out` atomically; returns how many."""
    good = [records[i] for i in report.good]
    with atomic_file(out, "w") as f:
        json.dump(good, f, ensure_ascii=False)
        f.write("\n")
    return len(good)
