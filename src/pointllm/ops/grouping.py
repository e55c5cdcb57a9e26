"""Point-BERT grouping (FPS centers, kNN neighbourhoods, xyz relative to the center) and gathers.

On CPU one task per cloud runs the numba kernels and gathers the groups in numpy; elsewhere the
public FPS and kNN ops run in turn and torch gathers. `group_points_reference` composes the naive
references of the original PointLLM.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pointllm.ops import cpu_kernels
from pointllm.ops._checks import check_cloud, check_count
from pointllm.ops._cpu import kernel_arrays, map_clouds
from pointllm.ops.neighbours import knn_reference, nearest
from pointllm.ops.sampling import farthest_point_sample_reference, fps


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather points (B, N, C) at integer idx (B, ...) with values in [0, N) -> (B, ..., C)."""
    if points.ndim != 3 or idx.ndim < 1 or idx.shape[0] != points.shape[0]:
        raise ValueError(
            f"gather_points needs points (B, N, C) and idx (B, ...), got {tuple(points.shape)} and {tuple(idx.shape)}"
        )
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise ValueError(f"gather_points needs integer idx, got {idx.dtype}")
    if idx.numel() > 0:
        low, high = (int(value) for value in torch.aminmax(idx))
        if low < 0 or high >= points.shape[1]:
            raise ValueError(
                f"gather_points idx must lie in [0, {points.shape[1]}), got [{low}, {high}]"
            )
    return _gather(points, idx)


def _gather(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """`gather_points` for idx already known to lie in [0, N) (our backends' output)."""
    batch, num_points, channels = points.shape
    flat = idx.reshape(batch, -1).to(device=points.device, dtype=torch.long)  # (B, M)
    # Rows of the flattened batch, copied whole by index_select: ~4x faster on CPU than
    # torch.gather with an index expanded over C. Differentiable with respect to points.
    offsets = torch.arange(0, batch * num_points, num_points, device=points.device)  # (B,)
    rows = (flat + offsets.unsqueeze(1)).reshape(-1)  # (B * M,)
    out = points.reshape(batch * num_points, channels).index_select(0, rows)  # (B * M, C)
    return out.reshape(*idx.shape, channels)


def _check_group(points: torch.Tensor, num_group: int, group_size: int) -> None:
    """Raise ValueError unless `group_points` can group points (B, N, C) as asked."""
    check_cloud("points", points, xyz_only=False)
    check_count("num_group", num_group, points.shape[1])
    check_count("group_size", group_size, points.shape[1])


def _gather_groups(
    points: torch.Tensor, center_idx: torch.Tensor, neighbour_idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighborhoods (B, G, K, C), xyz relative to their centers (B, G, 3), gathered in torch.

    Differentiable with respect to points. center_idx: (B, G); neighbour_idx: (B, G, K).
    """
    centers = _gather(points[..., :3], center_idx)  # (B, G, 3)
    neighborhood = _gather(points, neighbour_idx)  # (B, G, K, C)
    # In place on the freshly gathered tensor (gather's backward does not need its output).
    neighborhood[..., :3] -= centers.unsqueeze(2)
    return neighborhood, centers


def _group_with(
    points: torch.Tensor,
    num_group: int,
    group_size: int,
    sample: Callable[[torch.Tensor, int], torch.Tensor],
    neighbours: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-BERT grouping with the given FPS and kNN functions; see `group_points`.

    Validates once here; `sample` and `neighbours` get clean input.
    """
    _check_group(points, num_group, group_size)
    xyz = points[..., :3].contiguous()  # (B, N, 3)
    center_idx = sample(xyz, num_group)  # (B, G)
    neighbour_idx = neighbours(_gather(xyz, center_idx), xyz, group_size)  # (B, G, K)
    return _gather_groups(points, center_idx, neighbour_idx)


def _group_indices(
    cloud: np.ndarray, num_group: int, group_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Centers (G,) and neighbours (G, K) of cloud (N, 3) by the numba kernels, in float64 when
    squared float32 distances overflow."""
    found = cpu_kernels.group(cloud, num_group, group_size)
    if found is None and cloud.dtype == np.float32:
        found = cpu_kernels.group(cloud.astype(np.float64), num_group, group_size)
    if found is None:
        raise ValueError(
            f"points are too large to group: squared distances overflow float64 "
            f"(largest |coordinate| {np.abs(cloud).max():.3g})"
        )
    return found


def _group_cpu(
    points: torch.Tensor, num_group: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`group_points` on validated CPU points (B, N, C), one pool task per cloud, in numpy.

    Each task copies its cloud's xyz, finds its centers and neighbours with the numba kernels
    and, unless gradients must flow to points (or the dtype has no numpy twin), gathers its
    groups straight into the output. So the call runs no torch parallel op: those leave torch's
    OpenMP workers spinning (~6 ms of CPU each time) while the pool needs the cores. Same
    indices as `farthest_point_sample` then `knn` on the gathered centers, same values as
    `_gather_groups`.
    """
    batch, _, channels = points.shape
    (clouds,) = kernel_arrays(points[..., :3])  # (B, N, 3) views, float32 or float64
    center_idx = np.empty((batch, num_group), dtype=np.int64)
    neighbour_idx = np.empty((batch, num_group, group_size), dtype=np.int64)
    differentiable = torch.is_grad_enabled() and points.requires_grad
    gather_here = not differentiable and points.dtype in (torch.float32, torch.float64)
    if gather_here:
        like = {"dtype": points.dtype, "device": points.device}
        neighborhood = torch.empty(batch, num_group, group_size, channels, **like)
        centers = torch.empty(batch, num_group, 3, **like)
        source = points.detach().numpy()  # (B, N, C)
        groups, middles = neighborhood.numpy(), centers.numpy()  # (B, G, K, C), (B, G, 3)

    def one(b: int) -> None:
        cloud = np.ascontiguousarray(clouds[b])  # (N, 3): copies happen here, on the pool
        center_idx[b], neighbour_idx[b] = _group_indices(cloud, num_group, group_size)
        if gather_here:
            flat = groups[b].reshape(num_group * group_size, channels)  # a view
            # mode="clip" skips take's buffered bounds check; the indices are valid.
            np.take(source[b], neighbour_idx[b].reshape(-1), axis=0, out=flat, mode="clip")
            middles[b] = cloud[center_idx[b]]
            groups[b, :, :, :3] -= middles[b][:, None, :]

    map_clouds(one, batch)
    if gather_here:
        return neighborhood, centers
    return _gather_groups(points, torch.from_numpy(center_idx), torch.from_numpy(neighbour_idx))


def group_points(
    points: torch.Tensor, num_group: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-BERT grouping: FPS centers from point 0, kNN neighbourhoods, xyz relative to the center.

    points: (B, N, C) with xyz first (C = 3 or 6). Returns neighborhood (B, G, K, C) whose xyz is
    relative to its center and whose other channels are unchanged, and centers (B, G, 3).
    Neighbours are ordered nearest first, so each group starts at its center. Same result as
    `farthest_point_sample` then `knn` and a gather (on CPU fused into one task per cloud, ties
    broken by the lower point index). Differentiable with respect to points.
    """
    if points.device.type == "cpu":
        _check_group(points, num_group, group_size)
        return _group_cpu(points, num_group, group_size)
    return _group_with(points, num_group, group_size, fps, nearest)


def group_points_reference(
    points: torch.Tensor, num_group: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`group_points` with the naive reference FPS and kNN of the original PointLLM."""
    return _group_with(
        points, num_group, group_size, farthest_point_sample_reference, knn_reference
    )
