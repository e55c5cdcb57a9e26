"""Numba kernels for CPU point grouping: exact FPS over k-d leaves, exact kNN on a uniform grid.

One call handles one cloud, releases the GIL (`nogil=True`) and allocates only its own arrays, so
`pointllm.ops` runs one call per cloud on its thread pool. Compiled code is cached on disk
(`cache=True`: next to this file, else numba's user cache dir), so only the first call in a fresh
environment pays the compilation (seconds).

Exactness. Distances are squared Euclidean, computed as ((dx*dx + dy*dy) + dz*dz) in the cloud's
dtype, as the reference does in torch; numba emits no fused multiply-adds unless asked (no
`fastmath`). Ties are broken by the lower point index, which is `argmax`'s rule in the reference
FPS, so FPS returns the reference's sequence even with duplicated points. kNN returns the k
smallest (distance, index) pairs, nearest first.

- FPS (`farthest_point_sample`): points are split into k-d leaves of <= `LEAF_SIZE` points
  (midpoint of the widest side), leaves into runs of `LEAVES_PER_NODE`. Each leaf keeps the largest
  running distance in it. A new center can lower a running distance only where it is closer than
  that: a leaf (or run) whose bounding box is at least its largest distance away from the center
  is skipped. The skip is exact in floating point: rounding is monotone, so no point's computed
  distance can fall below the box's.
- kNN (`group`, `knn`): neighbours are searched on a uniform grid; for `group` its cell is the FPS
  covering radius (every point lies within it of some center), for `knn` a fraction of the
  cloud's extent. Cells are visited in order of a
  lower bound on their distance and skipped, or the search stopped, once that bound exceeds the
  current k-th distance (with a relative margin of `_MARGIN` for rounding). A query whose k-th
  neighbour lies beyond `GRID_SPAN` cells falls back to scanning every point.
"""

from __future__ import annotations

import numba
import numpy as np

# Measured on 8192-point torus clouds, 512 centers, one thread (FPS per cloud): leaves of 64
# points 0.90-0.93 ms, of 32 0.94-0.98, of 16 1.06-1.08; runs of 16 leaves ~13-20% faster than
# no runs (1 leaf), 4-64 leaves alike. kNN: a grid cell of one covering radius 1.5 ms; 0.7 and
# 0.5 radii 15% and 45% slower.
LEAF_SIZE = 64
LEAVES_PER_NODE = 16
GRID_SPAN = 4
# At most this many grid cells per point (the grid coarsens when the covering radius is small
# compared with the cloud, e.g. a few dense clusters far apart).
_CELLS_PER_POINT = 8.0
# Relative slack on squared distances when pruning kNN cells (float32 rounding of a squared
# distance is < 3e-7 relative), and absolute slack in cell units on cell bounds (float64 rounding
# of a coordinate divided by the cell size).
_MARGIN = 1e-6
_CELL_SLACK = 1e-9


def _grid_offsets(span: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell offsets (M, 3) within `span` cells, by a lower bound on their distance from any point
    of the center cell (in squared cell units, (M,)), then by their own distance."""
    steps = np.arange(-span, span + 1)
    offsets = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(-1, 3)
    gaps = np.maximum(np.abs(offsets) - 1 - _CELL_SLACK, 0.0)  # (M, 3)
    bound = (gaps**2).sum(axis=1)
    ranked = np.lexsort(((offsets**2).sum(axis=1), bound))
    return np.ascontiguousarray(offsets[ranked]), np.ascontiguousarray(bound[ranked])


_OFFSETS, _OFFSET_BOUNDS = _grid_offsets(GRID_SPAN)


@numba.njit(nogil=True, inline="always")
def _gap(low, high, value, zero):
    """Distance from value to the interval [low, high] (zero inside), in value's dtype."""
    gap = low - value
    above = value - high
    if above > gap:
        gap = above
    if gap < zero:
        gap = zero
    return gap


@numba.njit(nogil=True, inline="always")
def _box_distance2(box, b, cx, cy, cz, zero):
    """Squared distance from (cx, cy, cz) to box b of box (6, L): rows min xyz, max xyz."""
    gx = _gap(box[0, b], box[3, b], cx, zero)
    gy = _gap(box[1, b], box[4, b], cy, zero)
    gz = _gap(box[2, b], box[5, b], cz, zero)
    return gx * gx + gy * gy + gz * gz


@numba.njit(cache=True, nogil=True)
def _leaves(xyz, leaf_size):
    """k-d leaves of xyz (N, 3): order (N,) point indices leaf by leaf, starts (L + 1,) leaf
    bounds in order, coords (3, N) in that order, box (6, L) each leaf's min and max xyz, and
    whether squared distances stay finite in xyz's dtype."""
    n = xyz.shape[0]
    soa = np.empty((3, n), xyz.dtype)  # (3, N) in input order
    for t in range(n):
        for a in range(3):
            soa[a, t] = xyz[t, a]
    order = np.arange(n)
    below = np.empty(n, np.int64)
    above = np.empty(n, np.int64)
    starts = np.empty(n + 1, np.int64)
    num_leaves = 0
    # Depth-first over nodes (start, stop, tight) with their boxes: left children pop first, so
    # leaves come out in order. A child's box is its parent's cut at the split (loose); when its
    # midpoint misses the points, the node is split again on its points' own (tight) box.
    stack = np.empty((n + 1, 3), np.int64)
    stack_box = np.empty((n + 1, 6), xyz.dtype)
    for a in range(3):
        stack_box[0, a] = soa[a].min()
        stack_box[0, 3 + a] = soa[a].max()
    # Squared distances are bounded by the squared diagonal (rounding is monotone): all are
    # finite when it is.
    diagonal2 = stack_box[0, 3] - stack_box[0, 3]
    for a in range(3):
        side = stack_box[0, 3 + a] - stack_box[0, a]
        diagonal2 += side * side
    finite = np.isfinite(diagonal2)
    stack[0, 0] = 0
    stack[0, 1] = n
    stack[0, 2] = 1
    top = 1
    while top > 0:
        top -= 1
        lo = stack[top, 0]
        hi = stack[top, 1]
        dim = 0
        extent = stack_box[top, 3] - stack_box[top, 0]
        for a in range(1, 3):
            side = stack_box[top, 3 + a] - stack_box[top, a]
            if side > extent:
                dim = a
                extent = side
        if hi - lo > leaf_size and extent > 0:
            split = stack_box[top, dim] + extent * 0.5
            row = soa[dim]
            num_below = 0
            num_above = 0
            for t in range(lo, hi):  # stable, branch-free partition
                p = order[t]
                is_below = row[p] < split
                below[num_below] = p
                above[num_above] = p
                num_below += is_below
                num_above += 1 - is_below
            if num_below > 0 and num_above > 0:
                order[lo : lo + num_below] = below[:num_below]
                order[lo + num_below : hi] = above[:num_above]
                mid = lo + num_below
                stack[top, 0] = mid
                stack[top, 1] = hi
                stack[top, 2] = 0
                stack_box[top + 1] = stack_box[top]
                stack_box[top, dim] = split
                top += 1
                stack[top, 0] = lo
                stack[top, 1] = mid
                stack[top, 2] = 0
                stack_box[top, 3 + dim] = split
                top += 1
                continue
            if stack[top, 2] == 0:
                for a in range(3):
                    stack_box[top, a] = soa[a, order[lo]]
                    stack_box[top, 3 + a] = soa[a, order[lo]]
                    for t in range(lo + 1, hi):
                        value = soa[a, order[t]]
                        stack_box[top, a] = min(stack_box[top, a], value)
                        stack_box[top, 3 + a] = max(stack_box[top, 3 + a], value)
                stack[top, 2] = 1
                top += 1
                continue
        starts[num_leaves] = lo
        num_leaves += 1
    starts[num_leaves] = n
    coords = np.empty((3, n), xyz.dtype)
    for t in range(n):
        for a in range(3):
            coords[a, t] = soa[a, order[t]]
    box = np.empty((6, num_leaves), xyz.dtype)
    for b in range(num_leaves):
        first = starts[b]
        for a in range(3):
            box[a, b] = coords[a, first]
            box[3 + a, b] = coords[a, first]
        for t in range(first + 1, starts[b + 1]):
            for a in range(3):
                box[a, b] = min(box[a, b], coords[a, t])
                box[3 + a, b] = max(box[3 + a, b], coords[a, t])
    return order, starts[: num_leaves + 1].copy(), coords, box, finite


@numba.njit(cache=True, nogil=True)
def _fps(order, starts, coords, box, num_samples, start, leaves_per_node):
    """Exact FPS from point `start` over `_leaves` output -> (positions (S,) in leaf order, the
    squared covering radius of the S centers: the largest distance from a point to them)."""
    n = coords.shape[1]
    num_leaves = starts.shape[0] - 1
    zero = coords[0, 0] - coords[0, 0]
    num_nodes = (num_leaves + leaves_per_node - 1) // leaves_per_node
    node_box = np.empty((6, num_nodes), coords.dtype)
    for s in range(num_nodes):
        first = s * leaves_per_node
        for a in range(6):
            node_box[a, s] = box[a, first]
        for b in range(first + 1, min(num_leaves, first + leaves_per_node)):
            for a in range(3):
                node_box[a, s] = min(node_box[a, s], box[a, b])
                node_box[3 + a, s] = max(node_box[3 + a, s], box[3 + a, b])
    distance = np.full(n, np.inf, coords.dtype)  # running distance to the nearest center
    leaf_max = np.full(num_leaves, np.inf, coords.dtype)
    leaf_arg = starts[:num_leaves].copy()  # position of each leaf's farthest point
    node_max = np.full(num_nodes, np.inf, coords.dtype)
    node_arg = np.zeros(num_nodes, np.int64)
    centers = np.empty(num_samples, np.int64)
    current = 0
    for t in range(n):
        if order[t] == start:
            current = t
    best_max = zero
    for i in range(num_samples):
        centers[i] = current
        cx = coords[0, current]
        cy = coords[1, current]
        cz = coords[2, current]
        best = -1
        best_max = zero
        best_index = n
        for s in range(num_nodes):
            if _box_distance2(node_box, s, cx, cy, cz, zero) < node_max[s]:
                run_max = zero
                run_arg = 0
                run_index = n
                for b in range(s * leaves_per_node, min(num_leaves, (s + 1) * leaves_per_node)):
                    if _box_distance2(box, b, cx, cy, cz, zero) < leaf_max[b]:
                        most = zero
                        for t in range(starts[b], starts[b + 1]):
                            dx = coords[0, t] - cx
                            dy = coords[1, t] - cy
                            dz = coords[2, t] - cz
                            d = min(distance[t], dx * dx + dy * dy + dz * dz)
                            distance[t] = d
                            most = max(most, d)
                        arg = starts[b]
                        arg_index = n
                        for t in range(starts[b], starts[b + 1]):
                            if distance[t] == most and order[t] < arg_index:
                                arg = t
                                arg_index = order[t]
                        leaf_max[b] = most
                        leaf_arg[b] = arg
                    value = leaf_max[b]
                    index = order[leaf_arg[b]]
                    if value > run_max or (value == run_max and index < run_index):
                        run_max = value
                        run_arg = leaf_arg[b]
                        run_index = index
                node_max[s] = run_max
                node_arg[s] = run_arg
            value = node_max[s]
            index = order[node_arg[s]]
            if best < 0 or value > best_max or (value == best_max and index < best_index):
                best = s
                best_max = value
                best_index = index
        current = node_arg[best]
    return centers, best_max


@numba.njit(nogil=True)
def _scan(grid, grid_index, start, stop, qx, qy, qz, nearest, nearest_index):
    """Merge points start:stop of grid (3, N) (indices grid_index) into the ascending lists of
    the k smallest (squared distance, index) pairs to (qx, qy, qz)."""
    last = nearest.shape[0] - 1
    for t in range(start, stop):
        dx = grid[0, t] - qx
        dy = grid[1, t] - qy
        dz = grid[2, t] - qz
        d = dx * dx + dy * dy + dz * dz
        if d > nearest[last]:  # most points stop here
            continue
        index = grid_index[t]
        if d == nearest[last] and index > nearest_index[last]:
            continue
        j = last
        while j > 0 and (
            nearest[j - 1] > d or (nearest[j - 1] == d and nearest_index[j - 1] > index)
        ):
            nearest[j] = nearest[j - 1]
            nearest_index[j] = nearest_index[j - 1]
            j -= 1
        nearest[j] = d
        nearest_index[j] = index


@numba.njit(cache=True, nogil=True)
def _knn_grid(order, coords, queries, k, cell, offsets, offset_bounds, span, cells_per_point):
    """k nearest points (S, k) original indices, nearest first, of each query queries (3, S)
    among all points coords (3, N) (original indices `order`). `cell`: the grid's cell size,
    <= 0 to derive one from the cloud's extent."""
    n = coords.shape[1]
    low = np.empty(3)
    high = np.empty(3)
    for a in range(3):
        low[a] = coords[a].min()
        high[a] = coords[a].max()
    if not cell > 0:
        cell = max(high[0] - low[0], high[1] - low[1], high[2] - low[2]) / 16.0
        if not cell > 0:
            cell = 1.0
    while (high[0] - low[0] + cell) * (high[1] - low[1] + cell) * (
        high[2] - low[2] + cell
    ) > cells_per_point * n * cell * cell * cell:
        cell *= 1.25
    size = np.empty(3, np.int64)
    for a in range(3):
        size[a] = int((high[a] - low[a]) / cell) + 1
    # Counting sort of the points by cell.
    cell_of = np.empty(n, np.int64)
    bounds = np.zeros(size[0] * size[1] * size[2] + 1, np.int64)
    for t in range(n):
        ix = min(int((coords[0, t] - low[0]) / cell), size[0] - 1)
        iy = min(int((coords[1, t] - low[1]) / cell), size[1] - 1)
        iz = min(int((coords[2, t] - low[2]) / cell), size[2] - 1)
        cell_of[t] = (ix * size[1] + iy) * size[2] + iz
        bounds[cell_of[t] + 1] += 1
    for c in range(bounds.shape[0] - 1):
        bounds[c + 1] += bounds[c]
    fill = bounds[:-1].copy()
    grid = np.empty((3, n), coords.dtype)
    grid_index = np.empty(n, np.int64)
    for t in range(n):
        slot = fill[cell_of[t]]
        fill[cell_of[t]] += 1
        for a in range(3):
            grid[a, slot] = coords[a, t]
        grid_index[slot] = order[t]

    num_queries = queries.shape[1]
    out = np.empty((num_queries, k), np.int64)
    nearest = np.empty(k, coords.dtype)
    nearest_index = np.empty(k, np.int64)
    cell2 = cell * cell
    beyond_span = span * span * cell2  # no unvisited point is closer than this
    for i in range(num_queries):
        qx = queries[0, i]
        qy = queries[1, i]
        qz = queries[2, i]
        fx = (qx - low[0]) / cell
        fy = (qy - low[1]) / cell
        fz = (qz - low[2]) / cell
        for j in range(k):
            nearest[j] = np.inf
            nearest_index[j] = n
        # A query more than `span` cells outside the grid has no grid cell within reach: it
        # goes straight to the full scan (which also keeps huge cell numbers out of int).
        near_grid = (
            -span <= fx < size[0] + span
            and -span <= fy < size[1] + span
            and -span <= fz < size[2] + span
        )
        if near_grid:
            # The query's own cell (maybe outside the grid): the offsets' bounds hold from it.
            ix = int(np.floor(fx))
            iy = int(np.floor(fy))
            iz = int(np.floor(fz))
            for o in range(offsets.shape[0]):
                bound = nearest[k - 1] * (1 + _MARGIN)
                if offset_bounds[o] * cell2 > bound:
                    break  # every later offset is at least as far
                gx = ix + offsets[o, 0]
                gy = iy + offsets[o, 1]
                gz = iz + offsets[o, 2]
                if gx < 0 or gy < 0 or gz < 0 or gx >= size[0] or gy >= size[1] or gz >= size[2]:
                    continue
                ux = max(max(gx - fx, fx - (gx + 1)) - _CELL_SLACK, 0.0)
                uy = max(max(gy - fy, fy - (gy + 1)) - _CELL_SLACK, 0.0)
                uz = max(max(gz - fz, fz - (gz + 1)) - _CELL_SLACK, 0.0)
                if (ux * ux + uy * uy + uz * uz) * cell2 > bound:
                    continue
                c = (gx * size[1] + gy) * size[2] + gz
                _scan(
                    grid, grid_index, bounds[c], bounds[c + 1], qx, qy, qz, nearest, nearest_index
                )
        if not nearest[k - 1] * (1 + _MARGIN) < beyond_span:
            for j in range(k):
                nearest[j] = np.inf
                nearest_index[j] = n
            _scan(grid, grid_index, 0, n, qx, qy, qz, nearest, nearest_index)
        for j in range(k):
            out[i, j] = nearest_index[j]
    return out


def farthest_point_sample(xyz: np.ndarray, num_samples: int, start: int) -> np.ndarray | None:
    """Exact FPS of one cloud xyz (N, 3) float32/float64 from point `start` -> (S,) int64.

    The reference's sequence, ties included (lowest index). None when squared distances would
    overflow xyz's dtype (the caller falls back to another backend).
    """
    order, starts, coords, box, finite = _leaves(xyz, LEAF_SIZE)
    if not finite:
        return None
    positions, _ = _fps(order, starts, coords, box, num_samples, start, LEAVES_PER_NODE)
    return order[positions]


def group(xyz: np.ndarray, num_group: int, group_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Point-BERT grouping indices of one cloud xyz (N, 3) float32/float64.

    Returns FPS centers from point 0 (num_group,) and each center's group_size nearest points
    (num_group, group_size), nearest first (so each group starts with its center), as int64
    indices into xyz; None when squared distances would overflow xyz's dtype.
    """
    order, starts, coords, box, finite = _leaves(xyz, LEAF_SIZE)
    if not finite:
        return None
    positions, radius2 = _fps(order, starts, coords, box, num_group, 0, LEAVES_PER_NODE)
    # The FPS covering radius: every point lies within it of some center.
    neighbours = _search(order, coords, coords[:, positions], group_size, float(np.sqrt(radius2)))
    return order[positions], neighbours


def knn(xyz: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray | None:
    """Indices (S, k) int64 of the k nearest points of xyz (N, 3) to each of queries (S, 3), both
    float32 or both float64, nearest first, ties by the lower index; None when squared distances
    would overflow their dtype."""
    corners = np.stack([xyz.min(0), xyz.max(0), queries.min(0), queries.max(0)])  # (4, 3)
    with np.errstate(over="ignore", invalid="ignore"):
        extent = corners.max(0) - corners.min(0)  # (3,)
        if not np.isfinite((extent * extent).sum()):
            return None
    coords = np.ascontiguousarray(xyz.T)  # (3, N)
    order = np.arange(xyz.shape[0])
    return _search(order, coords, np.ascontiguousarray(queries.T), k, 0.0)


def _search(order, coords, queries, k, cell):
    """`_knn_grid` with this module's grid settings."""
    return _knn_grid(
        order, coords, queries, k, cell, _OFFSETS, _OFFSET_BOUNDS, GRID_SPAN, _CELLS_PER_POINT
    )
