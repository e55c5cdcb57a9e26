"""Normalization of a cloud before the encoder, as the original PointLLM's `pc_norm`."""

from __future__ import annotations

import numpy as np
import torch

from pointllm.ops._checks import all_finite


def normalize_point_cloud(points: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Center xyz on its centroid and scale it into the unit sphere; other channels untouched.

    Same as the original `pc_norm`: subtract the xyz centroid, divide xyz by the largest point
    norm. A cloud whose points all coincide maps to the origin (the original divides by zero).

    points: (..., N, C) with C >= 3, a torch tensor or a numpy array (the data loader works in
    numpy). Returns a new tensor/array of the same type, shape and dtype.
    """
    if isinstance(points, np.ndarray):
        # torch.tensor copies, so read-only (e.g. memory-mapped) arrays are fine.
        return normalize_point_cloud(torch.tensor(points)).numpy()
    if not isinstance(points, torch.Tensor):
        raise ValueError(
            f"points must be a torch.Tensor or numpy array, got {type(points).__name__}"
        )
    if points.ndim < 2 or points.shape[-1] < 3 or points.numel() == 0:
        raise ValueError(
            f"points must have shape (..., N, C), non-empty, C >= 3, got {tuple(points.shape)}"
        )
    if not points.is_floating_point():
        raise ValueError(f"points must be floating point, got {points.dtype}")
    if not all_finite(points):
        raise ValueError("points contain NaN or Inf values")
    xyz = points[..., :3]
    xyz = xyz - xyz.mean(dim=-2, keepdim=True)
    scale = xyz.norm(dim=-1).amax(dim=-1, keepdim=True).clamp_min(1e-12)  # (..., 1)
    return torch.cat([xyz / scale.unsqueeze(-1), points[..., 3:]], dim=-1)
