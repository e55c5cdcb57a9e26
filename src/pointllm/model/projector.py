"""Projector from encoder tokens to the LLM's embedding space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers.activations import ACT2FN


class PointProjector(nn.Sequential):
    """Linear layers with an activation between them: (B, T, in_dim) -> (B, T, out_dim).

    With hidden_dims [1024, 2048] the module indices are 0, 2, 4 for the three Linear layers,
    matching `model.point_proj.{0,2,4}` of PointLLM v1.2; with [] it is one Linear (v1.1), whose
    original key `model.point_proj` is mapped onto index 0 when loading.
    """

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dims: Sequence[int] = (), act: str = "gelu"
    ):
        dims = [in_dim, *hidden_dims, out_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            if i:
                layers.append(ACT2FN[act])
            layers.append(nn.Linear(d_in, d_out))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)
