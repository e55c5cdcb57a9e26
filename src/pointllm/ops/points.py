"""Point-cloud operations used by the encoder and the data pipeline.

Each sampling/neighbourhood op has a naive reference that mirrors the original PointLLM
(`*_reference`) and a fast public entry point that picks a backend:

- `farthest_point_sample`: a Triton kernel for CUDA tensors when Triton is installed; on CPU the
  numba kernel of `pointllm.ops.cpu_kernels` when numba is installed, else the `fpsample`
  QuickFPS wheel; otherwise the reference loop.
- `knn`: on CPU a KD-tree per cloud, `pykdtree` when installed, else `scipy.spatial.cKDTree`;
  otherwise exact `torch.cdist` + `topk`, chunked over queries to bound memory.
- `group_points`: on CPU, one task per cloud computes the centers and neighbourhoods (the numba
  kernels, else fpsample then a KD-tree) and gathers the groups, all in numpy (the gather moves
  to torch when gradients must flow to the points).

CPU backends run one cloud per task on a thread pool (numba kernels, fpsample, pykdtree and
SciPy release the GIL); its size is `torch.get_num_threads()`, so `torch.set_num_threads(1)` (as
DataLoader workers do) keeps them single-threaded. The pool lives for the process and is
forgotten in a forked child, whose threads do not survive the fork.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

from pointllm.ops import triton_fps

try:  # optional exact CPU FPS and grouping kernels (numba)
    from pointllm.ops import cpu_kernels
except ImportError:  # pragma: no cover - depends on the environment
    cpu_kernels = None

try:  # optional fast CPU farthest point sampling, used when numba is missing
    import fpsample
except ImportError:  # pragma: no cover - depends on the environment
    fpsample = None

try:  # optional fast CPU kNN: float32 trees, ~1.4x faster than SciPy's for 8192 points
    from pykdtree import kdtree as pykdtree
except ImportError:  # pragma: no cover - depends on the environment
    pykdtree = None

try:  # optional CPU kNN, used when pykdtree is missing
    from scipy.spatial import cKDTree
except ImportError:  # pragma: no cover - depends on the environment
    cKDTree = None

# Height of fpsample's KD-line tree (buckets of N / 2**h points). For 8192 -> 512, counting the
# start replay (one level per h): h=4 took the least CPU; h=5 ~4% more, h=3 ~8%, h=6 ~18%.
_FPSAMPLE_TREE_HEIGHT = 4
# Upper bound on the (B, chunk, N) distance block of the torch kNN backend.
_KNN_CHUNK_BYTES = 64 * 2**20
# Points per pykdtree leaf. 8192-point clouds, 512 queries, k = 32, build + query: 32 to 64 are
# within noise of each other and ~7% faster than the default 16 (faster builds, same queries).
_PYKDTREE_LEAFSIZE = 32

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
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64):
        # numpy, on this thread: a parallel torch reduction would leave torch's OpenMP workers
        # spinning (~6 ms of CPU) while the CPU grouping's thread pool that follows needs the
        # cores (measured: 3 ms slower for 16 clouds on 2 cores).
        values = tensor.detach().numpy()
        return bool(np.isfinite(values.min()) and np.isfinite(values.max()))
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


# ---------------------------------------------------------------------------------------------
# CPU thread pool


def _map_clouds(fn: Callable[[int], _T], batch: int) -> list[_T]:
    """[fn(0), ..., fn(batch - 1)], on up to torch.get_num_threads() threads."""
    threads = torch.get_num_threads()
    if min(batch, threads) <= 1:
        return [fn(b) for b in range(batch)]
    return list(_thread_pool(threads).map(fn, range(batch)))


# One pool per process and thread count: starting threads on every call cost ~0.5 ms, ~1% of
# grouping 16 clouds. A pool that is replaced is not shut down (another caller may still be
# submitting to it); its idle threads exit when it is garbage collected.
_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _thread_pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of `threads` workers, created on first use or when the count changes."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != threads:
            executor = ThreadPoolExecutor(
                threads, thread_name_prefix="pointllm-ops", initializer=_single_openmp_thread
            )
            _pool = (threads, executor)
        return _pool[1]


def _forget_thread_pool() -> None:
    """In a forked child (e.g. a DataLoader worker): the parent's threads did not come along."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_thread_pool)


def _openmp_thread_setters() -> list[Callable[[int], None]]:
    """`omp_set_num_threads` of each OpenMP runtime that pykdtree's queries may run on.

    pykdtree splits every query over an OpenMP team as large as the calling thread's OpenMP
    setting, which in a fresh thread is OMP_NUM_THREADS or every core: nested in our pool of
    torch.get_num_threads() threads, that oversubscribes the cores (measured on 2 cores, 16
    clouds: 60 ms instead of 48 while another process was busy, the same when idle; a pool of
    T threads would run T teams of every core). The setting is per runtime and per thread, and
    pykdtree's OpenMP calls bind to the first runtime the dynamic linker finds: torch's libgomp
    (loaded globally) when torch was imported first, else the one the pykdtree wheel ships.
    """
    if pykdtree is None:
        return []
    setters: dict[int, Callable[[int], None]] = {}
    for library in (None, pykdtree.__file__):  # None: the global scope
        try:
            setter = ctypes.CDLL(library).omp_set_num_threads
        except (OSError, TypeError, AttributeError):  # no dlopen(NULL) (Windows), or no OpenMP
            continue
        setters[ctypes.cast(setter, ctypes.c_void_p).value] = setter
    return list(setters.values())


_OPENMP_THREAD_SETTERS = _openmp_thread_setters()


def _single_openmp_thread() -> None:
    """Pool-thread initializer: OpenMP code this thread calls (pykdtree) runs on it alone."""
    for set_num_threads in _OPENMP_THREAD_SETTERS:
        set_num_threads(1)


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
        # Build only the child that holds the point, in its post-swap order (one `take` of
        # column indices is ~3x faster than copying and then fancy-assigning the swaps).
        if pos < count:
            order = np.arange(count)
            order[left_bad] = right_bad
        else:
            order = np.arange(count, n)
            order[right_bad - count] = left_bad
            offset, pos = offset + count, pos - count
        coords = coords.take(order, axis=1)
    return offset + pos


def _fps_one_cloud_fpsample(xyz: np.ndarray, num_samples: int, start: int) -> np.ndarray:
    """Exact FPS of one cloud xyz (N, 3) float32 from `start` with fpsample -> (S,) int64."""
    num_points = xyz.shape[0]
    height = min(_FPSAMPLE_TREE_HEIGHT, num_points.bit_length() - 1)
    if height >= 1:
        position = _kdline_start_position(xyz, start, height)
        idx = fpsample.bucket_fps_kdline_sampling(xyz, num_samples, h=height, start_idx=position)
        # Guards: the start must be ours, and a repeated-index bug was reported upstream.
        # (Marking a mask is ~10x faster than np.unique.)
        seen = np.zeros(num_points, dtype=bool)
        seen[idx] = True
        if idx[0] == start and np.count_nonzero(seen) == num_samples:
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


def _fps_numba(xyz: torch.Tensor, num_samples: int, start_idx: torch.Tensor) -> torch.Tensor:
    """CPU FPS with the numba kernel (`cpu_kernels`), one thread per cloud.

    xyz: (B, N, 3) CPU; start_idx: (B,). Returns (B, S) int64: the reference's sequence, ties
    included (the lowest index among equal distances), in float64 for float64 input and float32
    otherwise.
    """
    (clouds,) = _tree_arrays(xyz)  # (B, N, 3) float32 or float64
    starts = start_idx.tolist()
    rows = _map_clouds(
        lambda b: _fps_one_cloud_numba(np.ascontiguousarray(clouds[b]), num_samples, starts[b]),
        len(starts),
    )
    return torch.from_numpy(np.stack(rows))


def _fps_one_cloud_numba(cloud: np.ndarray, num_samples: int, start: int) -> np.ndarray:
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
    Backend: Triton on CUDA when installed; on CPU numba's kernel, else fpsample, when
    installed; else the reference loop. All return the reference's sequence on inputs without
    ties; the numba kernel also with ties. See each backend for ties.
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
    if xyz.device.type == "cpu" and cpu_kernels is not None:
        return _fps_numba(xyz, num_samples, start_idx)
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


def _tree_arrays(*tensors: torch.Tensor) -> list[np.ndarray]:
    """CPU tensors as numpy arrays of one KD-tree precision, views when the dtype matches.

    float64 when any tensor is float64, else float32: pykdtree computes in the data's dtype and
    needs queries of that dtype, and neither tree library has half-precision code.
    """
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return [t.detach().to(dtype).numpy() for t in tensors]


def _tree_knn(
    cloud: np.ndarray, queries: np.ndarray, k: int, out: np.ndarray, workers: int
) -> None:
    """Write the k nearest points of cloud (N, 3) to each of queries (S, 3) into out (S, k).

    cloud and queries share a dtype (see `_tree_arrays`). Nearest first. pykdtree computes
    distances in that dtype as sums of squared coordinate differences (float64 when float32
    overflows); cKDTree in float64. Ties: which tied points fill the last slots and their order
    follow the tree traversal. workers: threads for cKDTree's query; pykdtree's OpenMP team
    follows the OpenMP setting of the calling thread.
    """
    if pykdtree is not None:
        idx = _pykdtree_query(cloud, queries, k)
        if idx.max() >= len(cloud) and cloud.dtype == np.float32:
            # pykdtree marks neighbours whose squared distance overflows (coordinates beyond
            # ~1e19) with index 2**32 - 1; float64 ranks them, as cKDTree always did.
            idx = _pykdtree_query(cloud.astype(np.float64), queries.astype(np.float64), k)
    else:
        # Measured on 8192-point clouds, 512 queries: unbalanced, uncompacted trees build ~1.7x
        # faster and query nearly as fast; leaves of 32 points are ~5% faster than 16.
        tree = cKDTree(cloud, leafsize=32, balanced_tree=False, compact_nodes=False)
        idx = tree.query(queries, k=k, workers=workers)[1]  # (S, k) int64, (S,) when k == 1
    if idx.max() >= len(cloud):  # both libraries return out-of-range indices on overflow
        raise ValueError(
            f"points are too large for kNN: squared distances overflow float64 "
            f"(largest |coordinate| {np.abs(cloud).max():.3g})"
        )
    out[...] = idx.reshape(out.shape)


def _pykdtree_query(cloud: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """pykdtree indices (S, k) uint32 ((S,) when k == 1) of the k nearest points of cloud."""
    tree = pykdtree.KDTree(cloud, leafsize=_PYKDTREE_LEAFSIZE)
    return tree.query(queries, k=k, sqr_dists=True)[1]


def _has_tree() -> bool:
    """Whether a CPU KD-tree library (pykdtree or SciPy) is installed."""
    return pykdtree is not None or cKDTree is not None


def _knn_tree(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """CPU kNN with a KD-tree per cloud (pykdtree, else cKDTree), one thread per cloud.

    query: (B, S, 3), points: (B, N, 3). Returns (B, S, k) int64, nearest first; precision and
    ties as in `_tree_knn`. A single cloud splits its queries over the threads instead
    (cKDTree's workers, or pykdtree's OpenMP team in the calling thread).
    """
    queries, clouds = _tree_arrays(query, points)  # (B, S, 3), (B, N, 3)
    batch, num_queries, _ = queries.shape
    out = np.empty((batch, num_queries, k), dtype=np.int64)
    workers = torch.get_num_threads() if batch == 1 else 1
    _map_clouds(lambda b: _tree_knn(clouds[b], queries[b], k, out[b], workers), batch)
    return torch.from_numpy(out)


def knn(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, S, k) int64 of the k nearest points (B, N, 3) to each query (B, S, 3), nearest first.

    Returns the reference's neighbour sets on inputs without ties; result on query's device.
    Backend: on CPU a KD-tree (pykdtree, else SciPy's cKDTree) when installed, else chunked
    exact `cdist` + `topk`. See each backend for precision and ties.
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
    if points.device.type == "cpu" and _has_tree():
        return _knn_tree(query, points, k)
    return _knn_torch(query, points.to(query.dtype), k)


# ---------------------------------------------------------------------------------------------
# Gathering and grouping


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
    _check_cloud("points", points, xyz_only=False)
    _check_count("num_group", num_group, points.shape[1])
    _check_count("group_size", group_size, points.shape[1])


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


def _group_indices_numba(
    cloud: np.ndarray, num_group: int, group_size: int, workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """Centers (G,) and neighbours (G, K) of cloud (N, 3) by the numba kernels, in float64 when
    squared float32 distances overflow. workers: unused (one thread per cloud)."""
    found = cpu_kernels.group(cloud, num_group, group_size)
    if found is None and cloud.dtype == np.float32:
        found = cpu_kernels.group(cloud.astype(np.float64), num_group, group_size)
    if found is None:
        raise ValueError(
            f"points are too large to group: squared distances overflow float64 "
            f"(largest |coordinate| {np.abs(cloud).max():.3g})"
        )
    return found


def _group_indices_libraries(
    cloud: np.ndarray, num_group: int, group_size: int, workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """Centers (G,) and neighbours (G, K) of cloud (N, 3) by fpsample then a KD-tree, whose
    queries use `workers` threads (cKDTree) or the calling thread's OpenMP team (pykdtree)."""
    center_idx = _fps_one_cloud_fpsample(cloud.astype(np.float32, copy=False), num_group, 0)
    neighbour_idx = np.empty((num_group, group_size), dtype=np.int64)
    _tree_knn(cloud, cloud[center_idx], group_size, neighbour_idx, workers)
    return center_idx, neighbour_idx


def _group_cpu(
    points: torch.Tensor, num_group: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`group_points` on validated CPU points (B, N, C), one pool task per cloud, in numpy.

    Each task copies its cloud's xyz, finds its centers and neighbours (the numba kernels when
    installed, else fpsample and a KD-tree) and, unless gradients must flow to points (or the
    dtype has no numpy twin), gathers its groups straight into the output. So the call runs no
    torch parallel op: those leave torch's OpenMP workers spinning (~6 ms of CPU each time)
    while the pool needs the cores. Same indices as `farthest_point_sample` then `knn` on the
    gathered centers (up to the order of neighbours at equal distances), same values as
    `_gather_groups`.
    """
    batch, _, channels = points.shape
    (clouds,) = _tree_arrays(points[..., :3])  # (B, N, 3) views, float32 or float64
    center_idx = np.empty((batch, num_group), dtype=np.int64)
    neighbour_idx = np.empty((batch, num_group, group_size), dtype=np.int64)
    indices = _group_indices_numba if cpu_kernels is not None else _group_indices_libraries
    workers = torch.get_num_threads() if batch == 1 else 1
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
        center_idx[b], neighbour_idx[b] = indices(cloud, num_group, group_size, workers)
        if gather_here:
            flat = groups[b].reshape(num_group * group_size, channels)  # a view
            # mode="clip" skips take's buffered bounds check; the indices are valid.
            np.take(source[b], neighbour_idx[b].reshape(-1), axis=0, out=flat, mode="clip")
            middles[b] = cloud[center_idx[b]]
            groups[b, :, :, :3] -= middles[b][:, None, :]

    _map_clouds(one, batch)
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
    `farthest_point_sample` then `knn` and a gather, up to the order of equally distant
    neighbours (on CPU fused into one task per cloud; the numba kernels break distance ties by
    the lower point index). Differentiable with respect to points.
    """
    fused = cpu_kernels is not None or (fpsample is not None and _has_tree())
    if points.device.type == "cpu" and fused:
        _check_group(points, num_group, group_size)
        return _group_cpu(points, num_group, group_size)
    return _group_with(points, num_group, group_size, _farthest_point_sample, _knn)


def group_points_reference(
    points: torch.Tensor, num_group: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`group_points` with the naive reference FPS and kNN of the original PointLLM."""
    return _group_with(
        points, num_group, group_size, farthest_point_sample_reference, knn_reference
    )
