"""Point-cloud operations used by the encoder and the data pipeline.

Each sampling/neighbourhood op has a naive reference that mirrors the original PointLLM
(`*_reference`) and a fast public entry point that picks a backend:

- `farthest_point_sample`: a Triton kernel for CUDA tensors when Triton is installed; the
  `fpsample` QuickFPS wheel on CPU when it is installed; otherwise the reference loop.
- `knn`: `scipy.spatial.cKDTree` on CPU when SciPy is installed; otherwise exact `torch.cdist` +
  `topk`, chunked over queries to bound memory.

CPU backends run one cloud per task on a small thread pool (both libraries release the GIL); its
size is `torch.get_num_threads()`, so `torch.set_num_threads(1)` (as DataLoader workers do) keeps
them single-threaded. The pool is created per call because threads do not survive a fork.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

from pointllm.ops import triton_fps

try:  # optional fast CPU farthest point sampling
    import fpsample
except ImportError:  # pragma: no cover - depends on the environment
    fpsample = None

try:  # optional fast CPU kNN
    from scipy.spatial import cKDTree
except ImportError:  # pragma: no cover - depends on the environment
    cKDTree = None

# Height of fpsample's KD-line tree (buckets of N / 2**h points); h=5 was fastest for 8192 -> 512.
_FPSAMPLE_TREE_HEIGHT = 5
# Upper bound on the (B, chunk, N) distance block of the torch kNN backend.
_KNN_CHUNK_BYTES = 64 * 2**20

_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------
# Validation


def _check_cloud(name: str, tensor: torch.Tensor, *, xyz_only: bool) -> None:
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
    if not _all_finite(tensor):
        raise ValueError(f"{name} contains NaN or Inf values")


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether a non-empty tensor has no NaN/Inf; min/max propagate both, ~10x faster than isfinite."""
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _check_count(name: str, value: int, num_points: int) -> None:
    """Raise ValueError unless 1 <= value <= num_points."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if value > num_points:
        raise ValueError(f"{name}={value} exceeds the number of points N={num_points}")


def _map_clouds(fn: Callable[[int], _T], batch: int) -> list[_T]:
    """[fn(0), ..., fn(batch - 1)], on up to torch.get_num_threads() threads."""
    workers = min(batch, torch.get_num_threads())
    if workers <= 1:
        return [fn(b) for b in range(batch)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, range(batch)))


# ---------------------------------------------------------------------------------------------
# Normalization


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
    if not _all_finite(points):
        raise ValueError("points contain NaN or Inf values")
    xyz = points[..., :3]
    xyz = xyz - xyz.mean(dim=-2, keepdim=True)
    scale = xyz.norm(dim=-1).amax(dim=-1, keepdim=True).clamp_min(1e-12)  # (..., 1)
    return torch.cat([xyz / scale.unsqueeze(-1), points[..., 3:]], dim=-1)


# ---------------------------------------------------------------------------------------------
# Farthest point sampling


def farthest_point_sample_reference(
    xyz: torch.Tensor, num_samples: int, start_idx: torch.Tensor | None = None
) -> torch.Tensor:
    """Naive FPS, as in the original PointLLM: one batched step per sample.

    xyz: (B, N, 3); start_idx: (B,) first index per cloud (default 0). Returns (B, S) int64.
    Ties (equal running distances, e.g. duplicated points): `argmax` takes the lowest index.
    Indices are unique as long as the cloud has at least S distinct points.
    Also the fallback backend: a vectorized loop over S, batched over B, on any device.
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


def _kdline_start_position(xyz: np.ndarray, point: int, height: int) -> int:
    """Where fpsample's KD-line tree build moves point `point` of xyz (N, 3) float32.

    fpsample 0.3.x partitions its point array in place while building the tree and then starts
    sampling at *array position* `start_idx`, not at point `start_idx`. This replays the build
    (split on the widest bbox axis at the float32 running-sum mean, Hoare partition, stop at
    `height` or at single points) along the path of `point` only, and returns its final position.
    The caller checks the first sampled index, so a mismatch can only cost speed, never results.
    """
    coords = np.ascontiguousarray(xyz.T)  # (3, n): the current node in tree-build order
    offset, pos = 0, point
    for _ in range(height):
        n = coords.shape[1]
        if n == 1:
            break
        dim = int(np.argmax(coords.max(axis=1) - coords.min(axis=1)))  # first widest axis
        values = coords[dim]
        # np.add.accumulate sums sequentially in float32, like the C++ loop.
        split = np.add.accumulate(values)[-1] / np.float32(n)
        below = values < split  # (n,)
        count = int(np.count_nonzero(below))
        if count in (0, n):
            # Nothing moves; fpsample still splits off one point to avoid an empty child.
            size = 1 if count == 0 else n - 1
            if pos < size:
                coords = coords[:, :size]
            else:
                coords, offset, pos = coords[:, size:], offset + size, pos - size
            continue
        # Hoare partition: the k-th misplaced value from the left (>= split, before `count`)
        # swaps with the k-th misplaced value from the right (< split, from `count` on).
        left_bad = np.flatnonzero(~below[:count])
        right_bad = np.flatnonzero(below[count:])[::-1] + count
        if pos < count and not below[pos]:
            pos = int(right_bad[np.searchsorted(left_bad, pos)])
        elif pos >= count and below[pos]:
            pos = int(left_bad[np.searchsorted(-right_bad, -pos)])
        # Build only the child that holds the point, in its post-swap order.
        if pos < count:
            child = coords[:, :count].copy()
            child[:, left_bad] = coords[:, right_bad]
        else:
            child = coords[:, count:].copy()
            child[:, right_bad - count] = coords[:, left_bad]
            offset, pos = offset + count, pos - count
        coords = child
    return offset + pos


def _fps_one_cloud_fpsample(xyz: np.ndarray, num_samples: int, start: int) -> np.ndarray:
    """Exact FPS of one cloud xyz (N, 3) float32 from `start` with fpsample -> (S,) int64."""
    num_points = xyz.shape[0]
    height = min(_FPSAMPLE_TREE_HEIGHT, num_points.bit_length() - 1)
    if height >= 1:
        position = _kdline_start_position(xyz, start, height)
        idx = fpsample.bucket_fps_kdline_sampling(xyz, num_samples, h=height, start_idx=position)
        # Guards: the start must be ours, and a repeated-index bug was reported upstream.
        if idx[0] == start and np.unique(idx).size == num_samples:
            return idx.astype(np.int64)
    # Plain FPS honours start_idx; it is exact but ~7x slower than QuickFPS.
    return fpsample.fps_sampling(xyz, num_samples, start_idx=start).astype(np.int64)


def _fps_fpsample(xyz: torch.Tensor, num_samples: int, start_idx: torch.Tensor) -> torch.Tensor:
    """CPU FPS with the fpsample wheel (QuickFPS KD-line buckets), one thread per cloud.

    xyz: (B, N, 3) CPU; start_idx: (B,). Returns (B, S) int64, the reference's sequence.
    Distances are float32 whatever the input dtype. Exact FPS, so indices are unique when the
    cloud has >= S distinct points; among exactly tied distances the pick may differ from the
    reference's lowest index (bucket order decides).
    """
    clouds = xyz.detach().to(torch.float32).contiguous().numpy()  # (B, N, 3)
    starts = start_idx.tolist()
    rows = _map_clouds(
        lambda b: _fps_one_cloud_fpsample(clouds[b], num_samples, starts[b]), len(starts)
    )
    return torch.from_numpy(np.stack(rows))


def farthest_point_sample(
    xyz: torch.Tensor, num_samples: int, *, random_start: bool = False
) -> torch.Tensor:
    """Indices (B, S) int64 of farthest point sampling on xyz (B, N, 3).

    Deterministic: starts at point 0 of every cloud, which gives the original PointLLM sequence
    when its (random) start is 0. random_start=True draws each cloud's start from torch's RNG.
    Backend: Triton on CUDA when installed, fpsample on CPU when installed, else the reference
    loop; all return the reference's sequence on inputs without ties. See each backend for ties.
    """
    _check_cloud("xyz", xyz, xyz_only=True)
    batch, num_points, _ = xyz.shape
    _check_count("num_samples", num_samples, num_points)
    start_idx = None
    if random_start:
        start_idx = torch.randint(0, num_points, (batch,), device=xyz.device)
    return _farthest_point_sample(xyz, num_samples, start_idx)


def _farthest_point_sample(
    xyz: torch.Tensor, num_samples: int, start_idx: torch.Tensor | None = None
) -> torch.Tensor:
    """`farthest_point_sample` on validated input: pick the backend. start_idx (B,), default 0."""
    if start_idx is None:
        start_idx = torch.zeros(xyz.shape[0], dtype=torch.long, device=xyz.device)
    if xyz.is_cuda and triton_fps.supports(xyz):
        try:
            return triton_fps.farthest_point_sample_triton(xyz, num_samples, start_idx)
        except Exception as exc:  # compiler/driver errors differ across Triton versions
            triton_fps.disable(exc)
    if xyz.device.type == "cpu" and fpsample is not None:
        return _fps_fpsample(xyz, num_samples, start_idx)
    return farthest_point_sample_reference(xyz, num_samples, start_idx)


# ---------------------------------------------------------------------------------------------
# k nearest neighbours


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


def _knn_kdtree(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """CPU kNN with scipy's cKDTree (float64 distances), one thread per cloud.

    Returns (B, S, k) int64, nearest first. Ties: which tied points fill the last slots and
    their order follow the tree traversal.
    """
    queries = query.detach().cpu().numpy()  # (B, S, 3)
    clouds = points.detach().cpu().numpy()  # (B, N, 3)
    batch, num_queries, _ = queries.shape
    # A single cloud splits its queries over the threads instead.
    workers = torch.get_num_threads() if batch == 1 else 1

    def one(b: int) -> np.ndarray:
        # Measured on 8192-point clouds, 512 queries: unbalanced, uncompacted trees build ~1.7x
        # faster and query nearly as fast; leaves of 32 points are ~5% faster than 16.
        tree = cKDTree(clouds[b], leafsize=32, balanced_tree=False, compact_nodes=False)
        return tree.query(queries[b], k=k, workers=workers)[1].reshape(num_queries, k)

    return torch.from_numpy(np.stack(_map_clouds(one, batch)).astype(np.int64))


def knn(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, S, k) int64 of the k nearest points (B, N, 3) to each query (B, S, 3), nearest first.

    Returns the reference's neighbour sets on inputs without ties; result on query's device.
    Backend: cKDTree on CPU when SciPy is installed, else chunked exact `cdist` + `topk`.
    """
    _check_cloud("query", query, xyz_only=True)
    _check_cloud("points", points, xyz_only=True)
    if query.shape[0] != points.shape[0] or query.device != points.device:
        raise ValueError(
            f"query {tuple(query.shape)} on {query.device} and points {tuple(points.shape)} on "
            f"{points.device} must share batch size and device"
        )
    _check_count("k", k, points.shape[1])
    return _knn(query, points, k)


def _knn(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """`knn` on validated input: pick the backend."""
    if points.device.type == "cpu" and cKDTree is not None:
        return _knn_kdtree(query, points, k)
    return _knn_torch(query, points.to(query.dtype), k)


# ---------------------------------------------------------------------------------------------
# Gathering and grouping


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather points (B, N, C) at integer idx (B, ...) -> (B, ..., C)."""
    if points.ndim != 3 or idx.ndim < 1 or idx.shape[0] != points.shape[0]:
        raise ValueError(
            f"gather_points needs points (B, N, C) and idx (B, ...), got {tuple(points.shape)} and {tuple(idx.shape)}"
        )
    batch, _, channels = points.shape
    flat = idx.reshape(batch, -1).to(points.device)  # (B, M)
    out = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, channels))  # (B, M, C)
    return out.reshape(*idx.shape, channels)


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
    _check_cloud("points", points, xyz_only=False)
    _check_count("num_group", num_group, points.shape[1])
    _check_count("group_size", group_size, points.shape[1])
    xyz = points[..., :3].contiguous()  # (B, N, 3)
    centers = gather_points(xyz, sample(xyz, num_group))  # (B, G, 3)
    neighborhood = gather_points(points, neighbours(centers, xyz, group_size))  # (B, G, K, C)
    # In place on the freshly gathered tensor (gather's backward does not need its output).
    neighborhood[..., :3] -= centers.unsqueeze(2)
    return neighborhood, centers


def group_points(
    points: torch.Tensor, num_group: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-BERT grouping: FPS centers from point 0, kNN neighbourhoods, xyz relative to the center.

    points: (B, N, C) with xyz first (C = 3 or 6). Returns neighborhood (B, G, K, C) whose xyz is
    relative to its center and whose other channels are unchanged, and centers (B, G, 3).
    Neighbours are ordered nearest first, so each group starts with its center.
    """
    return _group_with(points, num_group, group_size, _farthest_point_sample, _knn)


def group_points_reference(
    points: torch.Tensor, num_group: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`group_points` with the naive reference FPS and kNN of the original PointLLM."""
    return _group_with(
        points, num_group, group_size, farthest_point_sample_reference, knn_reference
    )
