"""Point ops: every backend against the naive references of the original PointLLM, plus errors."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
import torch

from pointllm.ops import (
    _cpu,
    cpu_kernels,
    farthest_point_sample,
    farthest_point_sample_reference,
    gather_points,
    group_points,
    group_points_reference,
    grouping,
    knn,
    knn_reference,
    neighbours,
    normalize_point_cloud,
    sampling,
    triton_fps,
)

# (B, N, S): includes N = S, a single point, sizes below and above one k-d leaf (64 points).
FPS_CASES = [(1, 1, 1), (2, 2, 2), (3, 50, 50), (4, 300, 37), (2, 1000, 64), (1, 2048, 128)]
KNN_CASES = [(1, 1, 1, 1), (2, 40, 5, 40), (3, 300, 37, 16), (2, 1024, 64, 32)]  # (B, N, S, k)
DTYPES = [torch.float32, torch.float64]


def cloud(
    batch: int, num_points: int, dtype: torch.dtype = torch.float32, seed: int = 0
) -> torch.Tensor:
    """Random continuous xyz (B, N, 3): no ties in distances."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, num_points, 3, generator=gen, dtype=dtype)


def fps_backends() -> list:
    """(name, fn(xyz, S, start) -> (B, S)) for every FPS backend usable on CPU here."""
    return [
        ("dispatch", lambda xyz, s, start: farthest_point_sample(xyz, s)),
        ("numba", sampling._fps_numba),
    ]


def knn_backends() -> list:
    """(name, fn(query, points, k) -> (B, S, k)) for every kNN backend usable on CPU here."""
    return [
        ("dispatch", knn),
        ("numba", neighbours._knn_numba),
        ("torch", neighbours._knn_torch),
        # A tiny memory bound forces one query per chunk.
        ("torch-chunked", lambda q, p, k: neighbours._knn_torch(q, p, k, chunk_bytes=1)),
    ]


# ---------------------------------------------------------------------------------------------
# normalize_point_cloud


def original_pc_norm(pc: np.ndarray) -> np.ndarray:
    """The original PointLLM's `pc_norm`, verbatim in behaviour."""
    xyz = pc[:, :3] - np.mean(pc[:, :3], axis=0)
    m = np.max(np.sqrt(np.sum(xyz**2, axis=1)))
    return np.concatenate((xyz / m, pc[:, 3:]), axis=1)


def test_normalize_matches_original_on_numpy_and_keeps_type():
    rng = np.random.default_rng(0)
    pc = np.concatenate([rng.normal(5.0, 3.0, (200, 3)), rng.uniform(0, 1, (200, 3))], axis=1)
    for dtype in (np.float32, np.float64):
        out = normalize_point_cloud(pc.astype(dtype))
        assert isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == pc.shape
        np.testing.assert_allclose(out, original_pc_norm(pc), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out[:, 3:], pc[:, 3:].astype(dtype))  # rgb untouched


def test_normalize_torch_batched_unit_sphere_and_readonly_numpy():
    points = torch.cat([torch.randn(2, 3, 100, 3) * 7 + 2, torch.rand(2, 3, 100, 3)], dim=-1)
    out = normalize_point_cloud(points)
    assert isinstance(out, torch.Tensor) and out.shape == points.shape
    torch.testing.assert_close(out[..., :3].mean(-2), torch.zeros(2, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[..., :3].norm(dim=-1).amax(-1), torch.ones(2, 3))
    assert torch.equal(out[..., 3:], points[..., 3:])
    readonly = points[0, 0].numpy().copy()
    readonly.setflags(write=False)
    np.testing.assert_allclose(
        normalize_point_cloud(readonly), out[0, 0].numpy(), rtol=1e-6, atol=1e-6
    )


def test_normalize_degenerate_cloud_goes_to_origin():
    points = torch.tensor([[[1.0, 2.0, 3.0, 0.5, 0.5, 0.5]] * 4])
    out = normalize_point_cloud(points)
    assert torch.equal(out[..., :3], torch.zeros(1, 4, 3))
    assert torch.equal(out[..., 3:], points[..., 3:])


# ---------------------------------------------------------------------------------------------
# Farthest point sampling


def test_fps_reference_is_farthest_point_sampling():
    """Independent check of the reference: each pick maximises the distance to those before."""
    xyz = cloud(2, 200, torch.float64)
    idx = farthest_point_sample_reference(xyz, 20)
    assert idx[:, 0].tolist() == [0, 0]
    for b in range(2):
        for i in range(1, 20):
            chosen = xyz[b, idx[b, :i]]  # (i, 3)
            min_dist = torch.cdist(xyz[b], chosen).amin(-1)  # (N,)
            assert min_dist[idx[b, i]] == min_dist.max()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "num_points", "num_samples"), FPS_CASES)
def test_fps_backends_match_reference(batch, num_points, num_samples, dtype):
    xyz = cloud(batch, num_points, dtype, seed=num_points)
    expected = farthest_point_sample_reference(xyz, num_samples)
    start = torch.zeros(batch, dtype=torch.long)
    for name, fn in fps_backends():
        got = fn(xyz, num_samples, start)
        assert got.dtype == torch.int64 and got.shape == (batch, num_samples), name
        assert torch.equal(got, expected), name


def test_fps_from_any_start_and_random_start():
    xyz = cloud(4, 700, seed=3)
    start = torch.tensor([0, 699, 350, 17])
    expected = farthest_point_sample_reference(xyz, 40, start)
    assert torch.equal(sampling._fps_numba(xyz, 40, start), expected)

    torch.manual_seed(5)
    got = farthest_point_sample(xyz, 40, random_start=True)
    torch.manual_seed(5)
    drawn = torch.randint(0, 700, (4,))
    assert torch.equal(got[:, 0], drawn)
    assert torch.equal(got, farthest_point_sample_reference(xyz, 40, drawn))


def test_fps_duplicated_points_give_unique_indices():
    """40 distinct points, each present 3 times in shuffled order: 40 samples hit each once."""
    gen = torch.Generator().manual_seed(1)
    distinct = torch.randn(40, 3, generator=gen)
    order = torch.randperm(120, generator=gen)
    xyz = distinct.repeat(3, 1)[order].unsqueeze(0)  # (1, 120, 3)
    start = torch.zeros(1, dtype=torch.long)
    backends = [("reference", farthest_point_sample_reference), *fps_backends()]
    for name, fn in backends:
        idx = fn(xyz, 40, start)[0]
        assert idx.unique().numel() == 40, name
        # Every distinct position is sampled exactly once.
        hits = torch.cdist(xyz[0, idx], distinct).argmin(-1)
        assert sorted(hits.tolist()) == list(range(40)), name


def test_fps_all_points_is_a_permutation():
    xyz = cloud(2, 64)
    idx = farthest_point_sample(xyz, 64)
    assert torch.equal(idx.sort(-1).values, torch.arange(64).expand(2, -1))


# ---------------------------------------------------------------------------------------------
# kNN


def test_knn_reference_is_nearest_first():
    query, points = cloud(2, 30, torch.float64, seed=1), cloud(2, 200, torch.float64, seed=2)
    idx = knn_reference(query, points, 10)  # (B, S, k)
    dist = torch.cdist(query, points)  # (B, S, N)
    expected = dist.argsort(-1)[..., :10]
    assert torch.equal(idx, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "num_points", "num_queries", "k"), KNN_CASES)
def test_knn_backends_match_reference(batch, num_points, num_queries, k, dtype):
    points = cloud(batch, num_points, dtype, seed=num_points)
    query = cloud(batch, num_queries, dtype, seed=num_points + 1)
    expected = knn_reference(query, points, k).sort(-1).values
    exact = torch.cdist(query.double(), points.double())  # (B, S, N)
    for name, fn in knn_backends():
        got = fn(query, points, k)
        assert got.dtype == torch.int64 and got.shape == (batch, num_queries, k), name
        # Same neighbour sets; the order is nearest first by exact distances. (The reference's
        # float32 distance expansion may swap neighbours whose distances differ by ~1e-6.)
        assert torch.equal(got.sort(-1).values, expected), name
        assert (exact.gather(-1, got).diff(dim=-1) >= 0).all(), name


def test_knn_query_points_from_the_cloud_find_themselves_first():
    points = cloud(3, 500, seed=7)
    centers_idx = farthest_point_sample(points, 20)  # (B, G)
    idx = knn(gather_points(points, centers_idx), points, 8)
    assert torch.equal(idx[..., 0], centers_idx)


def test_knn_ranks_float32_overflow_in_float64():
    """Squared float32 distances overflow beyond ~1e19: the kernel reruns in float64."""
    points = cloud(2, 300, seed=8) * 1e20
    query = points[:, :40]
    expected = torch.cdist(query.double(), points.double()).argsort(-1)[..., :5]  # (B, S, 5)
    assert torch.equal(knn(query, points, 5), expected)


def test_knn_float64_overflow_is_a_clear_error():
    points = cloud(1, 50, torch.float64) * 1e160
    with pytest.raises(ValueError, match="too large for kNN: squared distances overflow"):
        knn(points, points, 3)


def test_knn_finds_neighbours_of_queries_anywhere():
    """Queries inside, beside and far outside the cloud's grid (the full-scan fallback), on a
    lattice where distances tie exactly: the k smallest (distance, index) pairs, in order."""
    lattice = np.stack(np.meshgrid(*[np.arange(5)] * 3, indexing="ij"), -1).reshape(-1, 3)
    xyz = np.random.default_rng(0).permutation(lattice).astype(np.float64)  # (125, 3)
    queries = np.array([[2.0, 2.0, 2.0], [2.5, 0.5, 4.0], [-3.0, 1.0, 7.0], [1e6, -1e6, 0.0]])
    got = knn(torch.from_numpy(queries)[None], torch.from_numpy(xyz)[None], 9)[0].numpy()
    diff = xyz[None] - queries[:, None]  # (S, N, 3)
    squared = diff * diff
    distance = (squared[..., 0] + squared[..., 1]) + squared[..., 2]  # (S, N)
    expected = [np.lexsort((np.arange(len(xyz)), d))[:9] for d in distance]
    np.testing.assert_array_equal(got, np.stack(expected))


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="needs os.fork")
def test_thread_pool_is_renewed_in_a_forked_child(monkeypatch):
    """DataLoader workers are forks: the parent's pool threads do not exist there."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert _cpu.map_clouds(lambda b: b, 2) == [0, 1]  # the parent's pool now exists
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()
    child = context.Process(target=lambda: results.put(_cpu.map_clouds(lambda b: b * 2, 4)))
    child.start()
    child.join(timeout=60)
    if child.is_alive():  # waiting on threads that were never forked
        child.kill()
        pytest.fail("the forked child hung on its parent's thread pool")
    assert child.exitcode == 0 and results.get() == [0, 2, 4, 6]


# ---------------------------------------------------------------------------------------------
# Gathering and grouping


def test_gather_points_matches_indexing():
    points = torch.randn(2, 10, 6)
    idx = torch.randint(0, 10, (2, 4, 3))
    out = gather_points(points, idx)
    assert out.shape == (2, 4, 3, 6)
    for b in range(2):
        assert torch.equal(out[b], points[b][idx[b]])


# The fused CPU path (groups gathered in numpy, or in torch when gradients flow; serially with
# one thread), and the separate FPS + chunked kNN that devices other than CPU use.
@pytest.mark.parametrize("setup", ["fused", "one thread", "gradients", "separate ops"])
@pytest.mark.parametrize(
    ("batch", "channels", "dtype"), [(2, 6, torch.float32), (1, 3, torch.float64)]
)
def test_group_points_matches_reference_and_layout(setup, batch, channels, dtype, monkeypatch):
    if setup == "separate ops":
        monkeypatch.setattr(
            grouping,
            "_group_cpu",
            lambda p, g, k: grouping._group_with(p, g, k, sampling.fps, neighbours._knn_torch),
        )
    if setup == "one thread":  # as in DataLoader workers: no pool, clouds in turn
        monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    colors = torch.rand(batch, 400, 3, dtype=dtype)
    points = torch.cat([cloud(batch, 400, dtype, seed=9), colors], dim=-1)[..., :channels]
    points.requires_grad_(setup == "gradients")
    neighborhood, centers = group_points(points, 16, 8)
    ref_neighborhood, ref_centers = group_points_reference(points, 16, 8)
    assert neighborhood.shape == (batch, 16, 8, channels) and centers.shape == (batch, 16, 3)
    assert neighborhood.dtype == centers.dtype == dtype
    assert torch.equal(centers, ref_centers)
    # Same points in each group (sorting each channel over K ignores the neighbour order).
    assert torch.equal(neighborhood.sort(dim=2).values, ref_neighborhood.sort(dim=2).values)
    # Exactly the public ops composed: same centers, same neighbours in the same order.
    xyz = points[..., :3].contiguous()
    assert torch.equal(centers, gather_points(xyz, farthest_point_sample(xyz, 16)))
    expected = gather_points(points, knn(centers, xyz, 8))  # (B, G, K, C)
    expected[..., :3] -= centers.unsqueeze(2)
    assert torch.equal(neighborhood, expected)
    # Nearest first: each group starts with its center, at relative position 0.
    assert torch.equal(neighborhood[:, :, 0, :3], torch.zeros(batch, 16, 3, dtype=dtype))


def test_group_points_is_differentiable_in_points_and_gathers_alike_without():
    points = torch.cat([cloud(2, 100, seed=3), torch.rand(2, 100, 3)], dim=-1).requires_grad_()
    neighborhood, centers = group_points(points, 8, 4)
    (neighborhood.sum() + centers.sum()).backward()
    ref = points.detach().clone().requires_grad_()
    ref_neighborhood, ref_centers = group_points_reference(ref, 8, 4)
    (ref_neighborhood.sum() + ref_centers.sum()).backward()
    torch.testing.assert_close(points.grad, ref.grad)
    # Without gradients the CPU path gathers in numpy: bit for bit the same values.
    with torch.no_grad():
        plain_neighborhood, plain_centers = group_points(points, 8, 4)
    assert not plain_neighborhood.requires_grad and not plain_centers.requires_grad
    assert torch.equal(plain_neighborhood, neighborhood.detach())
    assert torch.equal(plain_centers, centers.detach())


# ---------------------------------------------------------------------------------------------
# numba kernels (exact FPS and grouping on CPU)


def brute_force_neighbours(xyz: np.ndarray, centers: np.ndarray, k: int) -> np.ndarray:
    """(G, k) indices of the k smallest (squared distance, index) pairs, distances computed as
    the kernels do: ((dx*dx + dy*dy) + dz*dz) in xyz's dtype."""
    diff = xyz[None, :, :] - xyz[centers][:, None, :]  # (G, N, 3)
    squared = diff * diff
    distance = (squared[..., 0] + squared[..., 1]) + squared[..., 2]  # (G, N)
    index = np.broadcast_to(np.arange(len(xyz)), distance.shape)
    return np.stack([np.lexsort((i, d))[:k] for d, i in zip(distance, index)])


def check_kernel_grouping(xyz: np.ndarray, num_group: int, group_size: int) -> None:
    """cpu_kernels.group equals the reference FPS and brute-force neighbours, order included."""
    centers, neighbours = cpu_kernels.group(xyz, num_group, group_size)
    expected = farthest_point_sample_reference(torch.from_numpy(xyz)[None], num_group)[0]
    np.testing.assert_array_equal(centers, expected.numpy())
    np.testing.assert_array_equal(neighbours, brute_force_neighbours(xyz, centers, group_size))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("num_points", "num_group", "group_size"),
    [(1, 1, 1), (2, 2, 2), (40, 40, 40), (300, 37, 16), (3000, 128, 32)],
)
def test_kernel_grouping_is_exact_on_random_clouds(num_points, num_group, group_size, dtype):
    xyz = cloud(1, num_points, seed=num_points)[0].numpy().astype(dtype)
    check_kernel_grouping(xyz, num_group, group_size)


def test_kernels_break_distance_ties_by_the_lower_index():
    """A shuffled integer lattice, each point twice: distances tie everywhere, exactly."""
    gen = np.random.default_rng(0)
    lattice = np.stack(np.meshgrid(*[np.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3)
    xyz = gen.permutation(np.concatenate([lattice, lattice])).astype(np.float32)  # (432, 3)
    check_kernel_grouping(xyz, 64, 27)
    same = np.zeros((50, 3), dtype=np.float32)  # one point, 50 times: FPS repeats index 0
    check_kernel_grouping(same, 5, 7)


def test_kernel_grouping_on_clusters_and_outliers():
    """Far outliers (their neighbours lie beyond the grid span: the full-scan fallback) and
    two tiny clusters far apart (a covering radius far below the cloud's size: a coarser grid)."""
    gen = np.random.default_rng(1)
    cluster = gen.normal(size=(2000, 3)) * 0.01
    outliers = gen.normal(size=(12, 3)) * 50
    check_kernel_grouping(np.concatenate([cluster, outliers]).astype(np.float32), 64, 32)
    pair = np.concatenate([cluster[:1000], cluster[1000:] + 1e4]).astype(np.float64)
    check_kernel_grouping(pair, 256, 16)
    # The k-d split still finds the points inside a box that is mostly empty space.
    _, starts, *_ = cpu_kernels._leaves(pair, 32)
    assert np.diff(starts).max() <= 32


def test_kernel_fps_from_any_start():
    xyz = cloud(1, 500, seed=4)[0].numpy()
    for start in (0, 1, 250, 499):
        got = cpu_kernels.farthest_point_sample(xyz, 60, start)
        expected = farthest_point_sample_reference(
            torch.from_numpy(xyz)[None], 60, torch.tensor([start])
        )[0]
        np.testing.assert_array_equal(got, expected.numpy())


def test_kernels_retry_float32_overflow_in_float64_and_reject_float64_overflow():
    points = cloud(2, 300, seed=8) * 1e20  # squared float32 distances overflow
    neighborhood, centers = group_points(points, 16, 8)
    center_idx = farthest_point_sample(points.double(), 16)
    assert torch.equal(farthest_point_sample(points, 16), center_idx)
    assert torch.equal(centers, gather_points(points, center_idx))
    # kNN ranks float32 overflow in float64 too.
    expected = gather_points(points, knn(centers, points, 8))  # (B, G, K, 3)
    expected -= centers.unsqueeze(2)
    assert torch.equal(neighborhood, expected)
    with pytest.raises(ValueError, match="too large to group: squared distances overflow float64"):
        group_points(cloud(1, 50, torch.float64) * 1e160, 4, 3)


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: farthest_point_sample(torch.randn(10, 3), 2),
            r"xyz must have shape \(B, N, 3\), got \(10, 3\)",
        ),
        (
            lambda: farthest_point_sample(torch.randn(1, 10, 6), 2),
            r"xyz must have shape \(B, N, 3\)",
        ),
        (lambda: farthest_point_sample(torch.randint(0, 5, (1, 10, 3)), 2), "floating point"),
        (lambda: farthest_point_sample(np.zeros((1, 10, 3)), 2), "torch.Tensor"),
        (
            lambda: farthest_point_sample(torch.randn(1, 10, 3), 11),
            "num_samples=11 exceeds .* N=10",
        ),
        (
            lambda: farthest_point_sample(torch.randn(1, 10, 3), 0),
            "num_samples must be positive, got 0",
        ),
        (lambda: farthest_point_sample(torch.randn(1, 10, 3), 2.0), "num_samples must be an int"),
        (
            lambda: farthest_point_sample(torch.randn(1, 0, 3), 1),
            r"xyz is empty \(shape \(1, 0, 3\)\)",
        ),
        (lambda: knn(torch.randn(1, 2, 3), torch.randn(1, 5, 3), 6), "k=6 exceeds .* N=5"),
        (lambda: knn(torch.randn(1, 2, 3), torch.randn(1, 5, 3), -1), "k must be positive"),
        (lambda: knn(torch.randn(2, 2, 3), torch.randn(1, 5, 3), 1), "share batch size"),
        (
            lambda: knn(torch.randn(1, 2, 2), torch.randn(1, 5, 3), 1),
            r"query must have shape \(B, N, 3\)",
        ),
        (
            lambda: group_points(torch.randn(1, 10, 2), 2, 2),
            r"points must have shape \(B, N, C\) with C >= 3",
        ),
        (lambda: group_points(torch.randn(1, 10, 6), 11, 2), "num_group=11 exceeds"),
        (lambda: group_points(torch.randn(1, 10, 6), 2, 11), "group_size=11 exceeds"),
        (
            lambda: normalize_point_cloud(np.zeros((10, 2))),
            r"points must have shape \(\.\.\., N, C\), non-empty",
        ),
        (lambda: normalize_point_cloud(np.zeros((10, 3), dtype=np.int64)), "floating point"),
        (lambda: normalize_point_cloud([[0.0, 0.0, 0.0]]), "torch.Tensor or numpy array"),
        (
            lambda: gather_points(torch.randn(2, 5, 3), torch.zeros(3, 1, dtype=torch.long)),
            "gather_points needs",
        ),
        (
            lambda: gather_points(torch.randn(2, 5, 3), torch.tensor([[0], [5]])),
            r"gather_points idx must lie in \[0, 5\), got \[0, 5\]",
        ),
        (
            lambda: gather_points(torch.randn(2, 5, 3), torch.tensor([[-1], [0]])),
            r"gather_points idx must lie in \[0, 5\), got \[-1, 0\]",
        ),
        (
            lambda: gather_points(torch.randn(2, 5, 3), torch.zeros(2, 1)),
            "gather_points needs integer idx, got torch.float32",
        ),
    ],
)
def test_bad_input_raises_one_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# float32/float64 on CPU are checked in numpy, other dtypes with torch.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_rejected(bad, dtype):
    xyz = torch.randn(1, 10, 3, dtype=dtype)
    xyz[0, 3, 1] = bad
    with pytest.raises(ValueError, match="xyz contains NaN or Inf"):
        farthest_point_sample(xyz, 2)
    with pytest.raises(ValueError, match="points contains NaN or Inf"):
        knn(torch.randn(1, 2, 3, dtype=dtype), xyz, 2)
    with pytest.raises(ValueError, match="points contain NaN or Inf"):
        normalize_point_cloud(xyz)
    points = torch.cat([torch.randn(1, 10, 3, dtype=dtype), xyz], dim=-1)  # bad color channel
    with pytest.raises(ValueError, match="points contains NaN or Inf"):
        group_points(points, 2, 2)


# ---------------------------------------------------------------------------------------------
# CUDA (opt in with -m gpu)


def test_triton_module_imports_without_triton_and_declines_cpu_tensors():
    assert not triton_fps.supports(torch.randn(1, 10, 3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("batch", "num_points", "num_samples"), [*FPS_CASES, (3, 8192, 512), (2, 16384, 64)]
)
def test_triton_fps_matches_reference_on_cuda(batch, num_points, num_samples, dtype):
    pytest.importorskip("triton")
    xyz = cloud(batch, num_points, dtype, seed=num_points).cuda()
    start = torch.randint(0, num_points, (batch,), device="cuda")
    expected = farthest_point_sample_reference(xyz, num_samples, start)
    got = triton_fps.farthest_point_sample_triton(xyz, num_samples, start)
    assert torch.equal(got, expected)
    # The dispatcher picks Triton on CUDA and keeps results on the device.
    dispatched = farthest_point_sample(xyz, num_samples)
    assert dispatched.is_cuda
    assert torch.equal(dispatched, farthest_point_sample_reference(xyz, num_samples))
