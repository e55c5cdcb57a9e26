"""Batch PointLLM samples: right-pad text, stack the clouds of the samples that have one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pointllm.data.conversation import IGNORE_INDEX


@dataclass
class PointLLMCollator:
    """Collate `PointLLMDataset` items into model inputs.

    Returns input_ids (B, T) right-padded with the tokenizer's pad id, attention_mask (B, T),
    labels (B, T) padded with IGNORE_INDEX and, when any sample has a cloud, point_clouds (P, N, C)
    float32: one per such sample, in row order, as `PointLLMForCausalLM` expects. T is the longest
    sample, rounded up to `pad_to_multiple_of` when given.
    """

    tokenizer: Any
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")
        if self.tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token; set one (e.g. tokenizer.pad_token = "
                "tokenizer.eos_token) before collating"
            )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        lengths = [len(f["input_ids"]) for f in features]
        for row, (feature, length) in enumerate(zip(features, lengths, strict=True)):
            if len(feature["labels"]) != length:
                raise ValueError(
                    f"sample {row} has {length} input_ids but {len(feature['labels'])} labels"
                )
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch_size = len(features)
        input_ids = torch.full((batch_size, width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
        for row, (feature, length) in enumerate(zip(features, lengths, strict=True)):
            input_ids[row, :length] = torch.as_tensor(feature["input_ids"])
            labels[row, :length] = torch.as_tensor(feature["labels"])
            attention_mask[row, :length] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        clouds = [
            torch.as_tensor(f["point_clouds"], dtype=torch.float32)
            for f in features
            if f.get("point_clouds") is not None
        ]
        if clouds:
            shapes = {tuple(c.shape) for c in clouds}
            if len(shapes) > 1:
                raise ValueError(f"point clouds in one batch differ in shape: {sorted(shapes)}")
            batch["point_clouds"] = torch.stack(clouds)  # (P, N, C)
        return batch
