"""k nearest neighbours: the original's distance matrix + topk as the reference, numba on CPU,
chunked exact `cdist` + `topk` on other devices."""

from __future__ import annotations

import numpy as np
import torch

from pointllm.ops import cpu_kernels
from pointllm.ops._checks import check_cloud, check_count
from pointllm.ops._cpu import kernel_arrays, map_clouds

# Upper bound on the (B, chunk, N) distance block of the torch backend.
_KNN_CHUNK_BYTES = 64 * 2**20


def knn_reference(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """Naive kNN, as in the original PointLLM: full squared-distance matrix + topk.

    query: (B, S, 3), points: (B, N, 3). Returns (B, S, k) int64, nearest first. Distances use
    the original's |q|^2 - 2 q.p + |p|^2 expansion (rounding ~1e-7 relative to |x|^2); the
    original asks topk for unsorted output, which its max-pooling encoder does not notice.
    Ties: which of the tied points fill the last slots, and their order, is unspecified.
    """
    dist = -2 * torch.matmul(query, points.transpose(1, 2))  # (B, S, N)
    dist += (query**2).sum(-1).unsqueeze(-1)
    dist += (points**2).sum(-1).unsqueeze(1)
    return dist.topk(k, dim=-1, largest=False).indices


def _knn_torch(
    query: torch.Tensor, points: torch.Tensor, k: int, chunk_bytes: int = _KNN_CHUNK_BYTES
) -> torch.Tensor:
    """Exact-difference `cdist` + `topk`, over query chunks whose (B, chunk, N) block fits chunk_bytes.

    Any device. Returns (B, S, k) int64, nearest first; tie handling as in `knn_reference`.
    """
    batch, num_queries, _ = query.shape
    per_query = batch * points.shape[1] * points.element_size()
    chunk = max(1, chunk_bytes // per_query)
    # The matmul form of cdist loses precision for near-equal distances; differences do not.
    parts = [
        torch.cdist(query[:, i : i + chunk], points, compute_mode="donot_use_mm_for_euclid_dist")
        .topk(k, dim=-1, largest=False)
        .indices
        for i in range(0, num_queries, chunk)
    ]
    return torch.cat(parts, dim=1)


def _knn_numba(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """CPU kNN with the numba grid kernel, one thread per cloud.

    query: (B, S, 3), points: (B, N, 3). Returns (B, S, k) int64, nearest first by squared
    distances in float32 (float64 for float64 input, or when float32 overflows); ties by the
    lower index.
    """
    queries, clouds = kernel_arrays(query, points)  # (B, S, 3), (B, N, 3)

    def one(b: int) -> np.ndarray:
        cloud, asked = np.ascontiguousarray(clouds[b]), np.ascontiguousarray(queries[b])
        idx = cpu_kernels.knn(cloud, asked, k)
        if idx is None and cloud.dtype == np.float32:
            idx = cpu_kernels.knn(cloud.astype(np.float64), asked.astype(np.float64), k)
        if idx is None:
            raise ValueError(
                f"points are too large for kNN: squared distances overflow float64 "
                f"(largest |coordinate| {max(np.abs(cloud).max(), np.abs(asked).max()):.3g})"
            )
        return idx

    return torch.from_numpy(np.stack(map_clouds(one, len(clouds))))


def knn(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, S, k) int64 of the k nearest points (B, N, 3) to each query (B, S, 3), nearest first.

    Returns the reference's neighbour sets on inputs without ties; result on query's device.
    Backend: the numba grid kernel on CPU, else chunked exact `cdist` + `topk`. See each
    backend for precision and ties.
    """
    check_cloud("query", query, xyz_only=True)
    check_cloud("points", points, xyz_only=True)
    if query.shape[0] != points.shape[0] or query.device != points.device:
        raise ValueError(
            f"query {tuple(query.shape)} on {query.device} and points {tuple(points.shape)} on "
            f"{points.device} must share batch size and device"
        )
    check_count("k", k, points.shape[1])
    return nearest(query, points, k)


def nearest(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """`knn` on validated input: pick the backend."""
    if points.device.type == "cpu":
        return _knn_numba(query, points, k)
    return _knn_torch(query, points.to(query.dtype), k)
