"""Stage-0 settings from a YAML recipe: the encoder sizes, points per cloud, data and output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pointllm.config import POINT_BERT_SIZE_FIELDS, PointBertConfig
from pointllm.train.args import read_recipe_file

# The recipe fields that describe the encoder and its data (others are ignored).
RECIPE_FIELDS = (
    *POINT_BERT_SIZE_FIELDS,
    "point_backbone",
    "point_backbone_ckpt",
    "num_points",
    "use_color",
    "data_path",
    "anno_path",
)


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The encoder and data fields of a YAML recipe, a file or a shipped recipe's name such as
    `demo_stage0` (the same reader as `pointllm train --config`); other fields are ignored."""
    data = read_recipe_file(path)
    return {k: data[k] for k in RECIPE_FIELDS if data.get(k) is not None}


def resolve_encoder(options: dict[str, Any]) -> tuple[PointBertConfig, int]:
    """A PointBertConfig and points per cloud from recipe-style fields (`point_backbone` preset,
    size overrides, `use_color`, `num_points`), defaulting like `pointllm train` does."""
    sizes = {k: int(options[k]) for k in POINT_BERT_SIZE_FIELDS if options.get(k) is not None}
    color = options.get("use_color", True)
    config = PointBertConfig.from_preset(
        options.get("point_backbone") or "v1.2", point_dims=6 if color else 3, **sizes
    )
    return config, int(options.get("num_points") or 8192)
