"""Farthest point sampling: the original's loop as the reference, numba on CPU, Triton on CUDA."""

from __future__ import annotations

import numpy as np
import torch

from pointllm.ops import cpu_kernels, triton_fps
from pointllm.ops._checks import check_cloud, check_count
from pointllm.ops._cpu import kernel_arrays, map_clouds


def farthest_point_sample_reference(
    xyz: torch.Tensor, num_samples: int, start_idx: torch.Tensor | None = None
) -> torch.Tensor:
    """Naive FPS, as in the original PointLLM: one batched step per sample.

    xyz: (B, N, 3); start_idx: (B,) first index per cloud (default 0). Returns (B, S) int64.
    Ties (equal running distances, e.g. duplicated points): `argmax` takes the lowest index.
    Indices are unique as long as the cloud has at least S distinct points.
    Also the backend of devices other than CPU and CUDA: a loop over S, batched over B.
    """
    batch, num_points, _ = xyz.shape
    device = xyz.device
    if start_idx is None:
        start_idx = torch.zeros(batch, dtype=torch.long, device=device)
    idx = torch.empty(batch, num_samples, dtype=torch.long, device=device)
    # The original starts its running distance at 1e10 rather than inf; same result either way.
    distance = torch.full((batch, num_points), 1e10, dtype=xyz.dtype, device=device)
    rows = torch.arange(batch, device=device)
    farthest = start_idx.to(device=device, dtype=torch.long)
    for i in range(num_samples):
        idx[:, i] = farthest
        center = xyz[rows, farthest].unsqueeze(1)  # (B, 1, 3)
        distance = torch.minimum(distance, ((xyz - center) ** 2).sum(-1))  # (B, N)
        farthest = distance.argmax(-1)
    return idx


def _fps_numba(xyz: torch.Tensor, num_samples: int, start_idx: torch.Tensor) -> torch.Tensor:
    """CPU FPS with the numba kernel, one thread per cloud.

    xyz: (B, N, 3) CPU; start_idx: (B,). Returns (B, S) int64: the reference's sequence, ties
    included (the lowest index among equal distances), in float64 for float64 input and float32
    otherwise.
    """
    (clouds,) = kernel_arrays(xyz)  # (B, N, 3) float32 or float64
    starts = start_idx.tolist()
    rows = map_clouds(
        lambda b: _fps_one_cloud(np.ascontiguousarray(clouds[b]), num_samples, starts[b]),
        len(starts),
    )
    return torch.from_numpy(np.stack(rows))


def _fps_one_cloud(cloud: np.ndarray, num_samples: int, start: int) -> np.ndarray:
    """`cpu_kernels.farthest_point_sample` of cloud (N, 3), in float64 when squared float32
    distances overflow (coordinates beyond ~1e19), else by the reference loop -> (S,) int64."""
    idx = cpu_kernels.farthest_point_sample(cloud, num_samples, start)
    if idx is None and cloud.dtype == np.float32:
        idx = cpu_kernels.farthest_point_sample(cloud.astype(np.float64), num_samples, start)
    if idx is None:
        xyz = torch.from_numpy(cloud).unsqueeze(0)  # (1, N, 3)
        idx = farthest_point_sample_reference(xyz, num_samples, torch.tensor([start]))[0].numpy()
    return idx


def farthest_point_sample(
    xyz: torch.Tensor, num_samples: int, *, random_start: bool = False
) -> torch.Tensor:
    """Indices (B, S) int64 of farthest point sampling on xyz (B, N, 3).

    Deterministic: starts at point 0 of every cloud, which gives the original PointLLM sequence
    when its (random) start is 0. random_start=True draws each cloud's start from torch's RNG.
    Backend: the numba kernel on CPU, Triton on CUDA when installed, else the reference loop.
    All return the reference's sequence, ties included (Triton up to fused multiply-add
    rounding of the distances).
    """
    check_cloud("xyz", xyz, xyz_only=True)
    batch, num_points, _ = xyz.shape
    check_count("num_samples", num_samples, num_points)
    start_idx = None
    if random_start:
        start_idx = torch.randint(0, num_points, (batch,), device=xyz.device)
    return fps(xyz, num_samples, start_idx)


def fps(xyz: torch.Tensor, num_samples: int, start_idx: torch.Tensor | None = None) -> torch.Tensor:
    """`farthest_point_sample` on validated input: pick the backend. start_idx (B,), default 0."""
    if start_idx is None:
        start_idx = torch.zeros(xyz.shape[0], dtype=torch.long, device=xyz.device)
    if xyz.device.type == "cpu":
        return _fps_numba(xyz, num_samples, start_idx)
    if triton_fps.supports(xyz):
        try:
            return triton_fps.farthest_point_sample_triton(xyz, num_samples, start_idx)
        except Exception as exc:  # compiler/driver errors differ across Triton versions
            triton_fps.disable(exc)
    return farthest_point_sample_reference(xyz, num_samples, start_idx)
