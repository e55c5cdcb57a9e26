"""Input validation shared by the point ops: one clear ValueError naming the bad argument."""

from __future__ import annotations

import numpy as np
import torch


def check_cloud(name: str, tensor: torch.Tensor, *, xyz_only: bool) -> None:
    """Raise ValueError unless `tensor` is a finite floating (B, N, 3) (or (B, N, C>=3)) tensor."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    expected = "(B, N, 3)" if xyz_only else "(B, N, C) with C >= 3"
    if tensor.ndim != 3 or (tensor.shape[-1] != 3 if xyz_only else tensor.shape[-1] < 3):
        raise ValueError(f"{name} must have shape {expected}, got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {tensor.dtype}")
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)})")
    if not all_finite(tensor):
        raise ValueError(f"{name} contains NaN or Inf values")


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether a non-empty tensor has no NaN/Inf; min/max propagate both, ~10x faster than isfinite."""
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64):
        # numpy, on this thread: a parallel torch reduction would leave torch's OpenMP workers
        # spinning (~6 ms of CPU) while the CPU grouping's thread pool that follows needs the
        # cores (measured: 3 ms slower for 16 clouds on 2 cores).
        values = tensor.detach().numpy()
        return bool(np.isfinite(values.min()) and np.isfinite(values.max()))
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def check_count(name: str, value: int, num_points: int) -> None:
    """Raise ValueError unless 1 <= value <= num_points."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if value > num_points:
        raise ValueError(f"{name}={value} exceeds the number of points N={num_points}")
