"""PointLLM instruction data: an annotation JSON plus `{object_id}_8192.npy` clouds -> samples.

The annotation file is the original PointLLM list of `{"object_id", "conversation_type",
"conversations": [{"from": "human"|"gpt", "value"}...]}`; the first human turn holds `<point>`.
A record without `object_id` is a text-only sample and must not contain `<point>`.

Everything that can be known without reading a cloud is checked when the dataset is built: bad
records, conversations and point counts, missing point files and samples too long for the model
are dropped and counted by reason (`PointLLMDataset.stats`). A sample that fails later (its cloud
does not load) is counted and replaced by the next good one, so one bad file never stops a run.

Tokenizing costs ~0.3-0.6 ms per sample on one CPU core (minutes for the 660K stage-1 captions),
so it happens in `__getitem__`, in the DataLoader workers. Lengths are still settled when the
dataset is built, cheaply: every token of a byte-level BPE or SentencePiece vocabulary covers at
least one UTF-8 byte of its text, so the byte count of a conversation plus its template bounds its
token count; only samples whose bound exceeds the limit are tokenized then, to drop or count them.

Each point block is tokenized as a stand-in block with a single `<point_patch>` that is expanded
to `num_point_tokens` patches afterwards. The point tokens are added special tokens, which the
tokenizer splits off before anything else, so the ids equal those of the full block.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pointllm.config import (
    POINT_END_TOKEN,
    POINT_PATCH_TOKEN,
    POINT_START_TOKEN,
    TEMPLATES,
    PointLLMConfig,
)
from pointllm.data.conversation import (
    IGNORE_INDEX,
    ConversationError,
    ConversationTooLong,
    insert_point_block,
    normalize_messages,
    point_block,
    render_segments,
    tokenize_conversation,
)

logger = logging.getLogger("pointllm.data")

# The original treats a record without `conversation_type` as a stage-1 caption.
DEFAULT_CONVERSATION_TYPE = "simple_description"
# Clouds of the published data are stored with this many points whatever the model samples.
STORED_NUM_POINTS = 8192
# Reasons a sample is dropped (or, for the first two, kept), in the order summaries list them.
REASONS = (
    "ok",
    "truncated",
    "filtered_type",
    "bad_conversation",
    "point_count",
    "missing_points",
    "too_long",
    "corrupt_points",
)
_RESERVED_TOKENS = (POINT_PATCH_TOKEN, POINT_START_TOKEN, POINT_END_TOKEN)


class RecordError(ValueError):
    """One annotation record that cannot be used; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def read_annotations(path: str | os.PathLike[str]) -> list[Any]:
    """The top-level list of an annotation JSON file; a one-line ValueError naming the file if it
    cannot be read, is not JSON, or is not a list."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read annotation file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: expected a JSON list of samples at the top level, got {type(data).__name__}"
        )
    return data


def conversation_type(record: Any) -> str | None:
    """The record's `conversation_type` (default simple_description); None if not a record."""
    if not isinstance(record, dict):
        return None
    return str(record.get("conversation_type", DEFAULT_CONVERSATION_TYPE))


def parse_record(record: Any, block: str) -> tuple[str | None, list[dict[str, str]]]:
    """Validate one annotation record and return (object_id or None, chat messages with `block`
    in place of `<point>`). Raises RecordError with reason bad_conversation or point_count.

    A record with an `object_id` needs exactly one `<point>`, in its first human turn; one without
    needs none. The conversation must end with a reply, and no text may spell a point token.
    """
    if not isinstance(record, dict):
        raise RecordError("bad_conversation", f"sample is a {type(record).__name__}, not an object")
    object_id = record.get("object_id")
    if object_id is not None and (not isinstance(object_id, str) or not object_id.strip()):
        raise RecordError("bad_conversation", f"object_id {object_id!r} is not a non-empty string")
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise RecordError("bad_conversation", "`conversations` is missing or not a list")
    try:
        messages = normalize_messages(turns)
    except ConversationError as exc:
        raise RecordError("bad_conversation", str(exc)) from None
    if messages[-1]["role"] != "assistant":
        raise RecordError("bad_conversation", "the conversation does not end with a gpt reply")
    for token in _RESERVED_TOKENS:
        if any(token in m["content"] for m in messages):
            raise RecordError("point_count", f"the text contains the reserved token {token}")
    try:
        messages = insert_point_block(messages, block if object_id is not None else None)
    except ConversationError as exc:
        raise RecordError("point_count", str(exc)) from None
    return object_id, messages


def points_file_candidates(object_id: str, num_points: int) -> tuple[str, ...]:
    """File names that may hold a cloud, preferred first: `{id}_{num_points}.npy`, then the
    `{id}_8192.npy` of the published data (resampled on load)."""
    names = (f"{object_id}_{num_points}.npy", f"{object_id}_{STORED_NUM_POINTS}.npy")
    return tuple(dict.fromkeys(names))


def list_file_names(data_dir: str | os.PathLike[str]) -> set[str]:
    """Names in `data_dir`, read once: one directory scan is far cheaper than a stat per sample
    on the network file systems of clusters."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir}: point-cloud directory not found")
    with os.scandir(data_dir) as entries:
        return {entry.name for entry in entries}


@dataclass
class TokenizedSample:
    """Stand-in ids (T',) int64 and labels (T',); `patch_at` is the index of the single stand-in
    `<point_patch>` (-1 for text-only)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    patch_at: int
    truncated: bool


class SampleTokenizer:
    """Tokenize conversations whose point block is the stand-in `self.block` (see module doc).

    Messages come from `parse_record(record, self.block)`. Errors are RecordError: too_long when a
    sample cannot fit `max_length` (the point block is never cut), point_count when the ids do not
    hold exactly one point block (text-only samples: none).
    """

    def __init__(
        self,
        tokenizer,
        template: str,
        *,
        num_point_tokens: int,
        use_start_end: bool = True,
        max_length: int = 2048,
        system_prompt: str | None = None,
    ) -> None:
        if num_point_tokens < 1:
            raise ValueError(f"num_point_tokens must be >= 1, got {num_point_tokens}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
        tokens = _RESERVED_TOKENS if use_start_end else (POINT_PATCH_TOKEN,)
        vocab = tokenizer.get_vocab()
        missing = [t for t in tokens if t not in vocab]
        if missing:
            raise ValueError(
                f"the tokenizer lacks the point tokens {missing}; use the tokenizer of a PointLLM "
                "checkpoint or one prepared by PointLLMForCausalLM.setup_point_tokens"
            )
        self.tokenizer = tokenizer
        self.template = template
        self.system_prompt = system_prompt
        self.num_point_tokens = num_point_tokens
        self.max_length = max_length
        self.block = point_block(1, use_start_end)
        self.patch_id = vocab[POINT_PATCH_TOKEN]
        self._block_ids = torch.tensor([vocab[t] for t in tokens])  # each once in a point block
        self._overhead: dict[tuple[str, ...], int] = {}  # role sequence -> template token bound

    def __call__(self, messages: list[dict[str, str]], has_points: bool) -> TokenizedSample:
        extra = self.num_point_tokens - 1 if has_points else 0
        try:
            result = tokenize_conversation(
                messages,
                self.tokenizer,
                self.template,
                max_length=self.max_length - extra,
                protected_prefix_text=self.block if has_points else None,
                system_prompt=self.system_prompt,
            )
        except ConversationTooLong as exc:
            # The stand-in block is `extra` tokens shorter than the real one; the limit above is
            # lowered by as much, so cuts and drops are those of the full block.
            raise RecordError(
                "too_long",
                f"does not fit max length {self.max_length} with a {self.num_point_tokens}-token "
                f"point block ({exc})",
            ) from None
        except ConversationError as exc:
            raise RecordError("bad_conversation", str(exc)) from None
        input_ids = torch.tensor(result.input_ids, dtype=torch.long)
        counts = (input_ids[:, None] == self._block_ids[None, :]).sum(dim=0)  # per block token
        if (counts != (1 if has_points else 0)).any():
            raise RecordError("point_count", "the ids do not hold exactly one point block")
        patch_at = int((input_ids == self.patch_id).nonzero()[0, 0]) if has_points else -1
        labels = torch.tensor(result.labels, dtype=torch.long)
        return TokenizedSample(input_ids, labels, patch_at, result.truncated)

    def expand(self, sample: TokenizedSample) -> tuple[torch.Tensor, torch.Tensor]:
        """Full input_ids (T,) and labels (T,): the stand-in patch grown to num_point_tokens."""
        if sample.patch_at < 0:
            return sample.input_ids, sample.labels
        at, n = sample.patch_at, self.num_point_tokens
        ids, labels = sample.input_ids, sample.labels
        patches = torch.full((n,), self.patch_id, dtype=torch.long)
        ignored = torch.full((n,), IGNORE_INDEX, dtype=torch.long)
        return (
            torch.cat([ids[:at], patches, ids[at + 1 :]]),
            torch.cat([labels[:at], ignored, labels[at + 1 :]]),
        )

    def length_bound(self, messages: list[dict[str, str]], has_points: bool) -> int:
        """An upper bound of the token count with the full point block, without tokenizing:
        UTF-8 bytes of the contents, plus a bound for what the template adds around them."""
        roles = tuple(m["role"] for m in messages)
        if roles not in self._overhead:
            # The template's own text for these roles: render them around one-byte contents.
            # One more token per tokenizer call (a SentencePiece prefix space) and one for BOS.
            probe = [{"role": role, "content": "x"} for role in roles]
            segments = render_segments(
                probe, self.tokenizer, self.template, system_prompt=self.system_prompt
            )
            text_bytes = sum(len(text.encode()) for text, _ in segments)
            self._overhead[roles] = text_bytes - len(roles) + len(segments) + 1
        content_bytes = sum(len(m["content"].encode()) for m in messages)
        extra = self.num_point_tokens - 1 if has_points else 0
        return content_bytes + self._overhead[roles] + extra

    def check_length(self, messages: list[dict[str, str]], has_points: bool) -> bool:
        """Whether the sample would be truncated; RecordError too_long if it cannot fit. Only
        samples whose `length_bound` exceeds max_length are tokenized."""
        if self.length_bound(messages, has_points) <= self.max_length:
            return False
        return self(messages, has_points).truncated


def _format_counts(stats: Counter, reasons: Sequence[str]) -> str:
    return ", ".join(f"{r} {stats[r]}" for r in reasons if stats[r]) or "none"


class PointLLMDataset(torch.utils.data.Dataset):
    """Training samples: `{"input_ids" (T,), "labels" (T,), "point_clouds" (num_points, 6|3) or
    None, "object_id"}` ("" for text-only), from an annotation JSON and a folder of
    `{object_id}_8192.npy` clouds (or `{object_id}_{num_points}.npy` when present).

    `conversation_types` keeps only those types (None: all). Samples longer than
    `model_max_length` are cut after the point block (counted as truncated) or, when no reply
    would remain, dropped as too_long. `system_prompt` leads every conversation that has no system
    message (None: the template's own default).
    """

    def __init__(
        self,
        anno_path: str | os.PathLike[str],
        data_dir: str | os.PathLike[str],
        tokenizer,
        *,
        template: str,
        num_point_tokens: int,
        use_start_end: bool = True,
        use_color: bool = True,
        num_points: int = 8192,
        conversation_types: Sequence[str] | None = None,
        model_max_length: int = 2048,
        system_prompt: str | None = None,
    ) -> None:
        start = time.perf_counter()
        self.anno_path = str(anno_path)
        self.data_dir = Path(data_dir)
        self.use_color = use_color
        self.num_points = num_points
        self.conversation_types = (
            tuple(conversation_types) if conversation_types is not None else None
        )
        self.tokenize = SampleTokenizer(
            tokenizer,
            template,
            num_point_tokens=num_point_tokens,
            use_start_end=use_start_end,
            max_length=model_max_length,
            system_prompt=system_prompt,
        )
        self.stats: Counter = Counter()
        self.first_problem: dict[str, str] = {}  # reason -> first message, for the log
        self.num_tokenized = 0  # samples near the length limit, tokenized while building
        records = read_annotations(anno_path)
        names = list_file_names(data_dir)
        kept: list[bytes] = []
        for index, record in enumerate(records):
            try:
                kept.append(self._prepare(record, names))
            except RecordError as exc:
                self.stats[exc.reason] += 1
                self.first_problem.setdefault(exc.reason, f"sample {index}: {exc}")
        # Samples live in one byte buffer: DataLoader workers forked from this process share it,
        # where millions of small Python objects would be copied into each worker over time.
        self._offsets = np.cumsum([0] + [len(blob) for blob in kept], dtype=np.int64)
        self._blobs = np.frombuffer(b"".join(kept), dtype=np.uint8)
        self.stats["ok"] = len(kept)
        self._skipped: set[int] = set()  # samples that failed in __getitem__, in this process
        self.seconds = time.perf_counter() - start
        self._log_summary(len(records))

    @classmethod
    def for_model(
        cls, anno_path, data_dir, tokenizer, config: PointLLMConfig, **kw
    ) -> PointLLMDataset:
        """A dataset whose template, point block and point loading follow the model's config."""
        return cls(
            anno_path,
            data_dir,
            tokenizer,
            template=config.template,
            num_point_tokens=config.num_point_tokens,
            use_start_end=config.mm_use_point_start_end,
            use_color=config.use_color,
            num_points=config.num_points,
            system_prompt=config.system_prompt,
            **kw,
        )

    # ---- construction -------------------------------------------------------------------------

    def _prepare(self, record: Any, names: set[str]) -> bytes:
        """The sample as compact JSON `[object_id, messages]`, or RecordError saying why not."""
        if self.conversation_types is not None:
            kind = conversation_type(record)
            if kind is not None and kind not in self.conversation_types:
                raise RecordError("filtered_type", f"conversation_type {kind!r}")
        object_id, messages = parse_record(record, self.tokenize.block)
        has_points = object_id is not None
        if has_points:
            candidates = points_file_candidates(object_id, self.num_points)
            if not any(name in names for name in candidates):
                raise RecordError("missing_points", f"{self.data_dir / candidates[0]} not found")
        if self.tokenize.length_bound(messages, has_points) > self.tokenize.max_length:
            self.num_tokenized += 1
            if self.tokenize(messages, has_points).truncated:
                self.stats["truncated"] += 1
        return json.dumps([object_id, messages], ensure_ascii=False).encode()

    def summary(self) -> str:
        """One line: samples kept, truncated, and dropped by reason."""
        return (
            f"{self.anno_path}: {self.stats['ok']} samples ok ({self.stats['truncated']} "
            f"truncated; {self.num_tokenized} near the length limit tokenized to check); "
            f"dropped: {_format_counts(self.stats, REASONS[2:])}"
        )

    def _log_summary(self, total: int) -> None:
        bad = [r for r in REASONS[2:] if r != "filtered_type" and self.stats[r]]
        level = logging.WARNING if bad or not len(self) else logging.INFO
        logger.log(level, "%s; %d records read in %.1f s", self.summary(), total, self.seconds)
        for reason in bad:
            logger.warning("first %s: %s", reason, self.first_problem[reason])

    # ---- items --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def points_path(self, object_id: str) -> Path:
        """The file that holds `object_id`'s cloud (the preferred name when none exists)."""
        candidates = points_file_candidates(object_id, self.num_points)
        for name in candidates:
            if (self.data_dir / name).is_file():
                return self.data_dir / name
        return self.data_dir / candidates[0]

    def _item(self, i: int) -> dict[str, Any]:
        from pointllm.data.io import load_point_cloud

        blob = self._blobs[self._offsets[i] : self._offsets[i + 1]].tobytes()
        object_id, messages = json.loads(blob)
        has_points = object_id is not None
        input_ids, labels = self.tokenize.expand(self.tokenize(messages, has_points))
        points = None
        if has_points:
            cloud = load_point_cloud(self.points_path(object_id), self.num_points, self.use_color)
            points = torch.from_numpy(cloud)  # (num_points, 6|3) float32
        return {
            "input_ids": input_ids,
            "labels": labels,
            "point_clouds": points,
            "object_id": object_id or "",
        }

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Sample i; if it fails (its cloud does not load), the next sample, cyclically, that
        does not."""
        from pointllm.data.io import PointCloudError

        i = range(len(self))[i]  # IndexError out of range; negative indices count from the end
        for step in range(len(self)):
            j = (i + step) % len(self)
            if j in self._skipped:
                continue
            try:
                return self._item(j)
            except PointCloudError as exc:
                reason, message = "corrupt_points", str(exc)
            except RecordError as exc:  # the length bound or the template let it through
                reason, message = exc.reason, str(exc)
            # Counted per process: each DataLoader worker keeps its own copy of the stats.
            self._skipped.add(j)
            self.stats[reason] += 1
            logger.warning("skipping sample %d (%s): %s", j, reason, message)
        raise ValueError(f"{self.anno_path}: no sample can be loaded")
