"""Sizes of the published Point-BERT encoders and projectors, and the names of the size fields.

Plain data without imports, so argparse-level code (command registration, help texts) can read
it without loading transformers; `pointllm.config` re-exports every name.
"""

from __future__ import annotations

from typing import Any

# The fields that fix an encoder's architecture (and so its checkpoint's tensor shapes), besides
# `point_dims` (3 for xyz, 6 with color). Recipes, `pointllm train` and stage 0 all use this list.
POINT_BERT_SIZE_FIELDS = (
    "trans_dim",
    "depth",
    "num_heads",
    "num_group",
    "group_size",
    "encoder_dims",
)
# DESIGN.md §2: v1.2 = PointTransformer_8192point_2layer, v1.1 = PointTransformer_base_8192point.
POINT_BERT_PRESETS: dict[str, dict[str, Any]] = {
    "v1.2": dict(
        trans_dim=384, depth=12, num_heads=6, num_group=512, group_size=32, encoder_dims=256
    ),
    "v1.1": dict(
        trans_dim=1152, depth=12, num_heads=12, num_group=512, group_size=48, encoder_dims=512
    ),
}
# Projector hidden sizes of the published models, keyed like the presets.
PROJECTOR_PRESETS: dict[str, list[int]] = {"v1.2": [1024, 2048], "v1.1": []}
