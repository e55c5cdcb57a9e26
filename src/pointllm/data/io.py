"""Read point clouds and meshes from disk into the (N, 6) xyz + rgb arrays PointLLM consumes.

Formats (by extension, case-insensitive): ``.npy``/``.npz`` (N x 3 or N x 6 arrays, never
unpickled), ``.ply`` (ascii or binary; point clouds, or meshes sampled on their faces), ``.pcd``
(ascii, binary and binary_compressed; our own parser), ``.xyz``/``.txt`` (3 or 6 columns separated
by whitespace or commas) and the meshes ``.obj``/``.glb``/``.gltf``/``.stl``/``.off`` (sampled
on the surface with area weighting, colored from vertex colors, textures or material colors).

Colors: uint8 data, or data whose maximum exceeds 1, is read as 0-255 and divided by 255; other
colors are taken as [0, 1]. Input without color gets ``default_color``. Anything wrong with a file
raises :class:`PointCloudError`, a one-line ``ValueError`` that starts with the file's path.
"""

from __future__ import annotations

import importlib.util
import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pointllm.ops import farthest_point_sample, normalize_point_cloud

SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".npy",
    ".npz",
    ".ply",
    ".pcd",
    ".xyz",
    ".txt",
    ".obj",
    ".glb",
    ".gltf",
    ".stl",
    ".off",
)

# .npz members tried in this order when the archive holds more than one array.
_NPZ_POINT_KEYS = ("points", "point_cloud", "pointcloud", "pc", "xyz", "coords")
_NPZ_COLOR_KEYS = ("rgb", "colors", "color")
_PLY_COLOR_NAMES = (
    ("red", "green", "blue"),
    ("r", "g", "b"),
    ("diffuse_red", "diffuse_green", "diffuse_blue"),
)
_MESH_EXTS = (".obj", ".glb", ".gltf", ".stl", ".off")
# Optional packages (the `io` extra) each format needs; PLY meshes are sampled with trimesh.
_DEPENDENCIES = {".ply": ("plyfile", "trimesh"), **dict.fromkeys(_MESH_EXTS, ("trimesh",))}
_MAX_PROBLEM_CHARS = 300
# Rows checked for distinct points before scanning the whole cloud.
_DISTINCT_HEAD = 64


class PointCloudError(ValueError):
    """A point-cloud file is missing, unreadable or invalid.

    The message is one line, ``f"{path}: {problem}"``; ``path`` and ``problem`` are kept as
    attributes so callers that skip bad samples can count them by cause.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        # Parser messages may span lines or run long; the contract is one readable line.
        problem = " ".join(str(problem).split())
        if len(problem) > _MAX_PROBLEM_CHARS:
            problem = problem[: _MAX_PROBLEM_CHARS - 3] + "..."
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class _Options:
    """What a reader needs besides the path: mesh sample count, seed, color for bare surfaces."""

    mesh_samples: int
    seed: int
    default_color: tuple[float, float, float]


@dataclass
class _Surface:
    """A triangle mesh and the data that colors a point on it (all optional)."""

    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64 vertex indices
    vertex_colors: np.ndarray | None = None  # (V, 3) in [0, 1], interpolated barycentrically
    face_colors: np.ndarray | None = None  # (F, 3) in [0, 1]
    uv: np.ndarray | None = None  # (V, 2) texture coordinates into `texture`
    texture: Any = None  # PIL image
    tint: np.ndarray | None = None  # (3,) in [0, 1]: multiplies the texture, or the flat color


# A reader returns xyz (N, 3) and colors (N, 3) (any range, scaled later) or None.
_Raw = tuple[np.ndarray, np.ndarray | None]


def load_point_cloud(
    path: str | os.PathLike[str],
    num_points: int = 8192,
    use_color: bool = True,
    default_color: tuple[float, float, float] = (0.5, 0.5, 0.5),
    normalize: bool = True,
    seed: int = 0,
    max_points: int | None = None,
) -> np.ndarray:
    """Load a point cloud or mesh as a model-ready array.

    Returns float32 (num_points, 6) xyz + rgb in [0, 1], or (num_points, 3) when ``use_color`` is
    False. Files without color get ``default_color``. Clouds with more points are reduced by
    farthest point sampling (starting at point 0); clouds with fewer keep every point and draw
    the rest with replacement (seeded). Meshes are sampled with exactly ``num_points`` points.
    With ``normalize``, xyz is centered on its centroid and scaled into the unit sphere (max point
    norm 1) after resampling; rgb is untouched. An (N, 6) file with N == num_points is only
    loaded, validated and normalized. ``max_points`` bounds the points (and faces) a file may
    declare (see :func:`check_declared_size`). Raises PointCloudError for any problem with the file.
    """
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
        raise ValueError(f"num_points must be a positive integer, got {num_points!r}")
    points = read_points(
        path, mesh_samples=num_points, default_color=default_color, seed=seed, max_points=max_points
    )
    if not use_color:
        points = points[:, :3]
    elif points.shape[1] == 3:
        color = np.broadcast_to(np.asarray(default_color, dtype=np.float64), points.shape)
        points = np.concatenate([points, color], axis=1)
    points = _resample(points, num_points, seed)
    if normalize:
        points = normalize_point_cloud(points)
    return points.astype(np.float32)


def read_points(
    path: str | os.PathLike[str],
    *,
    mesh_samples: int = 8192,
    default_color: tuple[float, float, float] = (0.5, 0.5, 0.5),
    seed: int = 0,
    max_points: int | None = None,
) -> np.ndarray:
    """Read a file's points as stored, validated but neither resampled nor normalized.

    Returns float64 (N, 6) xyz + rgb in [0, 1] when the file has color, else (N, 3). Meshes are
    sampled with ``mesh_samples`` points (seeded); parts of a mesh without color get
    ``default_color`` when other parts have one. The counts a header declares are checked
    against the file's size (and ``max_points``) before any parser allocates for them. Raises
    PointCloudError for any problem.
    """
    default_color = _check_default_color(default_color)
    name = os.fspath(path)
    ext = os.path.splitext(name)[1].lower()
    if ext not in _READERS:
        raise PointCloudError(
            name,
            f"unsupported extension {ext or '(none)'!r}; supported: {', '.join(SUPPORTED_EXTENSIONS)}",
        )
    if not os.path.exists(name):
        raise PointCloudError(name, "no such file")
    if not os.path.isfile(name):
        raise PointCloudError(name, "not a regular file")
    if os.path.getsize(name) == 0:
        raise PointCloudError(name, "file is empty (0 bytes)")
    check_declared_size(name, max_points=max_points)
    _require_dependencies(ext)
    options = _Options(mesh_samples=mesh_samples, seed=seed, default_color=default_color)
    try:
        xyz, rgb = _READERS[ext](name, options)
    except PointCloudError:
        raise
    except Exception as exc:  # any parser failure (plyfile, trimesh, numpy, PIL) is a file problem
        raise PointCloudError(
            name, f"cannot read {ext} file ({type(exc).__name__}: {exc})"
        ) from exc
    return _validate(name, xyz, rgb)


def _check_default_color(color: tuple[float, float, float]) -> tuple[float, float, float]:
    """Return default_color as three floats in [0, 1], or raise ValueError naming it."""
    values = np.asarray(color, dtype=np.float64)
    if values.shape != (3,) or not np.all((values >= 0) & (values <= 1)):
        raise ValueError(f"default_color must be three floats in [0, 1], got {color!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


def _require_dependencies(ext: str) -> None:
    """Fail with an install hint when the optional package a format needs is missing."""
    for module in _DEPENDENCIES.get(ext, ()):
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(
                f"reading {ext} files needs the '{module}' package: pip install 'pointllm[io]'",
                name=module,
            )


def _validate(path: str, xyz: np.ndarray, rgb: np.ndarray | None) -> np.ndarray:
    """Check points (N, 3) and colors (N, 3) | None; return (N, 3|6) float64, rgb in [0, 1]."""
    if xyz.shape[0] == 0:
        raise PointCloudError(path, "contains no points")
    xyz = xyz.astype(np.float64, copy=False)
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        raise PointCloudError(
            path,
            f"{int(bad.sum())} of {len(xyz)} points have NaN or Inf coordinates "
            f"(first at row {int(np.argmax(bad))})",
        )
    distinct = _count_distinct(xyz, limit=3)
    if distinct < 3:
        raise PointCloudError(
            path, f"has only {distinct} distinct point(s) among {len(xyz)}; at least 3 are needed"
        )
    if rgb is None:
        return xyz
    return np.concatenate([xyz, _scale_colors(path, rgb)], axis=1)


def _count_distinct(xyz: np.ndarray, limit: int) -> int:
    """Number of distinct rows of xyz (N, 3), counting no further than ``limit`` (O(N * limit))."""
    # The first rows almost always settle it; scan everything only when they do not.
    for rows in (xyz[:_DISTINCT_HEAD], xyz):
        remaining, found = rows, 0
        while len(remaining) and found < limit:
            found += 1
            remaining = remaining[np.any(remaining != remaining[0], axis=1)]
        if found >= limit:
            return found
    return found


def _scale_colors(path: str, rgb: np.ndarray) -> np.ndarray:
    """Colors (N, 3) as float64 in [0, 1]: uint8, or any data above 1, is 0-255 and divided."""
    values = rgb.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        raise PointCloudError(path, "colors contain NaN or Inf")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise PointCloudError(
            path,
            f"color values span [{low:.4g}, {high:.4g}], expected [0, 1] or [0, 255] "
            "(are the last 3 columns normals?)",
        )
    if rgb.dtype == np.uint8 or high > 1:
        values = values / 255.0
    return values


def _resample(points: np.ndarray, num_points: int, seed: int) -> np.ndarray:
    """Points (N, C) -> (num_points, C): FPS when N is larger, all + seeded repeats when smaller."""
    n = len(points)
    if n == num_points:
        return points
    if n > num_points:
        xyz = torch.from_numpy(np.ascontiguousarray(points[:, :3]))
        idx = farthest_point_sample(xyz.unsqueeze(0), num_points)[0].numpy()  # (num_points,)
        return points[idx]
    extra = np.random.default_rng(seed).choice(n, num_points - n, replace=True)
    return points[np.concatenate([np.arange(n), extra])]


def _split_columns(path: str, array: np.ndarray) -> _Raw:
    """Split an (N, 3) or (N, 6) numeric array into xyz and rgb | None, checking shape and dtype."""
    if array.dtype.kind not in "fiu":
        raise PointCloudError(path, f"unsupported array dtype {array.dtype}; expected numbers")
    if array.ndim != 2 or array.shape[1] not in (3, 6):
        raise PointCloudError(
            path, f"expected an array of shape (N, 3) or (N, 6), got shape {tuple(array.shape)}"
        )
    return array[:, :3], (array[:, 3:] if array.shape[1] == 6 else None)


# ---------------------------------------------------------------------------------------------
# declared sizes

_PLY_SIZES = {
    **dict.fromkeys(("char", "int8", "uchar", "uint8"), 1),
    **dict.fromkeys(("short", "int16", "ushort", "uint16"), 2),
    **dict.fromkeys(("int", "int32", "uint", "uint32", "float", "float32"), 4),
    **dict.fromkeys(("double", "float64"), 8),
}
_PLY_MAX_HEADER_BYTES = 64 * 1024


def check_declared_size(path: str | os.PathLike[str], max_points: int | None = None) -> int | None:
    """Check the counts a file's header declares before anything allocates for them.

    A .npy array, the elements of a .ply (vertices, faces, ...) and a .pcd's points must fit in
    the file's size (so a tiny file cannot claim 10^9 faces), and none of them may exceed
    ``max_points``. Returns the declared number of points (None for formats without a header
    count: text, meshes); raises PointCloudError.
    """
    name = os.fspath(path)
    ext = os.path.splitext(name)[1].lower()
    check = {".npy": _npy_declared, ".ply": _ply_declared, ".pcd": _pcd_declared}.get(ext)
    if check is None:
        return None
    with open(name, "rb") as handle:
        head = handle.read(_PLY_MAX_HEADER_BYTES)
    counts = check(name, head, os.path.getsize(name))
    if counts is None:
        return None
    if max_points is not None:
        for what, count in counts.items():
            if count > max_points:
                raise PointCloudError(
                    name, f"declares {count} {what}; the limit is {max_points} per cloud"
                )
    return next(iter(counts.values()))


def _npy_declared(path: str, head: bytes, size: int) -> dict[str, int] | None:
    """{"points": rows} of a .npy header whose data fits the file; None: not a plain .npy."""
    stream = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    except Exception:  # not a .npy (np.load reads .npz too) or a header np.load will explain
        return None
    if dtype.hasobject:
        return None  # refused by np.load as a pickle
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    have = size - stream.tell()
    if need > have:
        raise PointCloudError(
            path,
            f"truncated: its header declares shape {tuple(shape)} ({need} bytes of data), "
            f"the file holds {have}",
        )
    return {"points": int(shape[0]) if shape else 1}


def _ply_declared(path: str, head: bytes, size: int) -> dict[str, int] | None:
    """{element name: count} of a PLY header, each checked against the bytes that follow it."""
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        if head.startswith(b"ply") and len(head) >= _PLY_MAX_HEADER_BYTES:
            raise PointCloudError(path, f"PLY header longer than {_PLY_MAX_HEADER_BYTES} bytes")
        return None  # plyfile explains what is wrong
    body = size - (head.find(b"\n", end) + 1)
    lines = head[:end].decode("ascii", errors="replace").splitlines()
    ascii_format = any(line.split()[:2] == ["format", "ascii"] for line in lines if line.strip())
    elements: list[list] = []  # [name, count, min bytes per row]
    for line in lines:
        words = line.split()
        if len(words) == 3 and words[0] == "element" and words[2].isdigit():
            elements.append([words[1], int(words[2]), 0])
        elif words[:1] == ["property"] and elements:
            if ascii_format:  # each value is at least one character and a separator
                elements[-1][2] += 2
            elif len(words) >= 5 and words[1] == "list":  # the list's count, maybe no items
                elements[-1][2] += _PLY_SIZES.get(words[2], 1)
            else:
                elements[-1][2] += _PLY_SIZES.get(words[1], 1) if len(words) >= 3 else 1
    need = 0
    for element, count, row in elements:
        need += count * max(row, 1)
        if need > body:
            raise PointCloudError(
                path,
                f"truncated: its header declares {count} {element} rows, needing at least "
                f"{need} bytes in all, but only {body} follow the header",
            )
    counts = {("points" if n == "vertex" else f"{n} elements"): c for n, c, _ in elements}
    return counts or None


def _pcd_declared(path: str, head: bytes, size: int) -> dict[str, int] | None:
    """{"points": POINTS} of a PCD header; each point takes at least one byte."""
    try:
        header, offset = _parse_pcd_header(path, head)
        if "POINTS" in header:
            count = int(header["POINTS"][0])
        else:
            count = int(header["WIDTH"][0]) * int(header.get("HEIGHT", ["1"])[0])
    except (PointCloudError, ValueError, KeyError, IndexError):
        return None  # the reader explains what is wrong
    mode = header["DATA"][0].lower() if header["DATA"] else ""
    if mode != "binary_compressed" and count > size - offset:
        raise PointCloudError(
            path,
            f"truncated: its header declares {count} points, but only {size - offset} bytes "
            "follow it",
        )
    return {"points": count}


# ---------------------------------------------------------------------------------------------
# numpy


def _read_numpy(path: str, options: _Options) -> _Raw:
    """.npy or .npz (chosen by content, not extension); pickled data is refused, never loaded."""
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return _split_columns(path, loaded)
    with loaded:
        keys = {key.lower(): key for key in loaded.files}
        if not keys:
            raise PointCloudError(path, "archive holds no arrays")
        if len(keys) == 1:
            return _split_columns(path, loaded[loaded.files[0]])
        point_key = next((keys[k] for k in _NPZ_POINT_KEYS if k in keys), None)
        if point_key is None:
            raise PointCloudError(
                path,
                f"cannot tell which array holds the points among {sorted(loaded.files)}; "
                f"name it one of {', '.join(_NPZ_POINT_KEYS)}",
            )
        xyz, rgb = _split_columns(path, loaded[point_key])
        color_key = next((keys[k] for k in _NPZ_COLOR_KEYS if k in keys), None)
        if rgb is None and color_key is not None:
            rgb = loaded[color_key]
            if rgb.shape != xyz.shape or rgb.dtype.kind not in "fiu":
                raise PointCloudError(
                    path,
                    f"array {color_key!r} has shape {tuple(rgb.shape)} and dtype {rgb.dtype}; "
                    f"expected numbers of shape {tuple(xyz.shape)} like {point_key!r}",
                )
        return xyz, rgb


# ---------------------------------------------------------------------------------------------
# text


def _read_text(path: str, options: _Options) -> _Raw:
    """.xyz / .txt: 3 or 6 columns per line, whitespace or commas; '#' and '//' start comments.

    A first line of column names (e.g. ``x,y,z,r,g,b``) is skipped.
    """
    with open(path, encoding="utf-8") as handle:
        text = handle.read().replace(",", " ")
    lines = text.splitlines()
    first = next(
        (
            i
            for i, line in enumerate(lines)
            if line.strip() and not line.lstrip().startswith(("#", "//"))
        ),
        None,
    )
    if first is None:
        raise PointCloudError(path, "contains no points")
    skip = first + 1 if not _is_numeric_row(lines[first]) else 0
    array = np.loadtxt(io.StringIO(text), comments=["#", "//"], skiprows=skip, ndmin=2)
    return _split_columns(path, array)


def _is_numeric_row(line: str) -> bool:
    """Whether every token of a text line parses as a float."""
    try:
        [float(token) for token in line.split()]
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# PLY


def _read_ply(path: str, options: _Options) -> _Raw:
    """ASCII or binary PLY: a point cloud, or a mesh (a non-empty face element) sampled on faces."""
    import plyfile

    ply = plyfile.PlyData.read(path, mmap=False)  # no memory map left holding the file open
    names = [element.name for element in ply.elements]
    if "vertex" not in names:
        raise PointCloudError(path, f"PLY has no 'vertex' element (elements: {names})")
    vertex = ply["vertex"].data
    missing = [axis for axis in "xyz" if axis not in (vertex.dtype.names or ())]
    if missing:
        raise PointCloudError(path, f"PLY vertex element lacks properties {missing}")
    xyz = np.stack([vertex[axis] for axis in "xyz"], axis=1)
    rgb = _ply_colors(vertex)
    face = ply["face"].data if "face" in names else None
    if face is None or len(face) == 0:
        return xyz, rgb
    index_name = next(
        (n for n in ("vertex_indices", "vertex_index") if n in face.dtype.names), None
    )
    if index_name is None:
        raise PointCloudError(path, "PLY face element has no vertex_indices property")
    faces, polygon = _triangulate(path, face[index_name], len(xyz))
    face_rgb = _ply_colors(face)
    surface = _Surface(
        vertices=xyz.astype(np.float64),
        faces=faces,
        vertex_colors=None if rgb is None else _scale_colors(path, rgb),
        face_colors=None if face_rgb is None else _scale_colors(path, face_rgb)[polygon],
    )
    return _sample_surfaces(path, [surface], options)


def _ply_colors(data: np.ndarray) -> np.ndarray | None:
    """Per-row colors (N, 3) of a PLY element's structured array, or None if it has none."""
    names = set(data.dtype.names or ())
    for triple in _PLY_COLOR_NAMES:
        if set(triple) <= names:
            channels = [data[name] for name in triple]
            dtype = np.uint8 if all(c.dtype == np.uint8 for c in channels) else np.float64
            return np.stack(channels, axis=1).astype(dtype)
    return None


def _triangulate(
    path: str, polygons: np.ndarray, num_vertices: int
) -> tuple[np.ndarray, np.ndarray]:
    """PLY face lists (object array of index arrays) -> triangles (T, 3) and their polygon (T,).

    A polygon with k corners is fanned into triangles (0, j, j + 1) for j = 1 .. k - 2.
    """
    sizes = np.array([len(polygon) for polygon in polygons])
    if (sizes < 3).any():
        raise PointCloudError(path, f"face {int(np.argmax(sizes < 3))} has fewer than 3 vertices")
    triangles, owners = [], []
    for size in np.unique(sizes):
        which = np.flatnonzero(sizes == size)
        corners = np.stack([polygons[i] for i in which]).astype(np.int64)  # (M, size)
        for j in range(1, size - 1):
            triangles.append(corners[:, [0, j, j + 1]])
            owners.append(which)
    faces, owner = np.concatenate(triangles), np.concatenate(owners)
    if faces.min() < 0 or faces.max() >= num_vertices:
        bad = int(faces.min()) if faces.min() < 0 else int(faces.max())
        raise PointCloudError(path, f"a face refers to vertex {bad}, but there are {num_vertices}")
    return faces, owner


# ---------------------------------------------------------------------------------------------
# PCD

_PCD_TYPES = {
    ("F", 4): "f4",
    ("F", 8): "f8",
    ("U", 1): "u1",
    ("U", 2): "u2",
    ("U", 4): "u4",
    ("U", 8): "u8",
    ("I", 1): "i1",
    ("I", 2): "i2",
    ("I", 4): "i4",
    ("I", 8): "i8",
}
_PCD_MAX_HEADER_LINES = 64


def _read_pcd(path: str, options: _Options) -> _Raw:
    """PCD v0.7 (PCL): DATA ascii, binary or binary_compressed; fields x y z, optional color.

    Color comes from a packed ``rgb``/``rgba`` field (float or uint32 bits 0x00RRGGBB) or from
    separate ``r g b`` fields.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    header, offset = _parse_pcd_header(path, data)
    fields = _pcd_fields(path, header, data, offset)
    xyz = np.stack([fields[axis][:, 0] for axis in "xyz"], axis=1)
    packed = next((fields[n] for n in ("rgb", "rgba") if n in fields), None)
    if packed is not None:
        if packed.dtype.kind == "f":
            # PCL stores the 0x00RRGGBB integer's bits in a float32 (ascii prints that float).
            bits = packed[:, 0].astype(np.float32).view(np.uint32)
        else:
            bits = packed[:, 0].astype(np.uint32)
        rgb = np.stack([(bits >> shift) & 0xFF for shift in (16, 8, 0)], axis=1).astype(np.uint8)
        return xyz, rgb
    if all(channel in fields for channel in "rgb"):
        return xyz, np.stack([fields[channel][:, 0] for channel in "rgb"], axis=1)
    return xyz, None


def _parse_pcd_header(path: str, data: bytes) -> tuple[dict[str, list[str]], int]:
    """PCD header entries (upper-case key -> values) and the byte offset where the data starts."""
    header: dict[str, list[str]] = {}
    offset = 0
    for _ in range(_PCD_MAX_HEADER_LINES):
        end = data.find(b"\n", offset)
        if end < 0:
            break
        line = data[offset:end].decode("ascii", errors="replace").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            break
    if "DATA" not in header or "FIELDS" not in header:
        raise PointCloudError(path, "not a PCD file (no FIELDS/DATA header lines)")
    return header, offset


def _pcd_fields(
    path: str, header: dict[str, list[str]], data: bytes, offset: int
) -> dict[str, np.ndarray]:
    """Decode the PCD body into field name -> (P, COUNT) array."""
    names = header["FIELDS"]
    sizes = [int(v) for v in header.get("SIZE", [])]
    types = [t.upper() for t in header.get("TYPE", [])]
    counts = [int(v) for v in header.get("COUNT", ["1"] * len(names))]
    if not len(names) == len(sizes) == len(types) == len(counts):
        raise PointCloudError(path, "PCD header FIELDS, SIZE, TYPE and COUNT differ in length")
    unknown = [(t, s) for t, s in zip(types, sizes) if (t, s) not in _PCD_TYPES]
    if unknown:
        raise PointCloudError(path, f"PCD field TYPE/SIZE {unknown[0]} is not supported")
    missing = [axis for axis in "xyz" if axis not in names]
    if missing:
        raise PointCloudError(path, f"PCD has no {'/'.join(missing)} field (FIELDS: {names})")
    if "POINTS" in header:
        num_points = int(header["POINTS"][0])
    else:
        num_points = int(header["WIDTH"][0]) * int(header.get("HEIGHT", ["1"])[0])
    # Padding fields are all named "_"; give every field a unique key.
    keys = [name if names.index(name) == i else f"{name}#{i}" for i, name in enumerate(names)]
    dtypes = [np.dtype("<" + _PCD_TYPES[(t, s)]) for t, s in zip(types, sizes)]
    mode = header["DATA"][0].lower() if header["DATA"] else ""
    body = data[offset:]
    if mode == "ascii":
        table = np.loadtxt(io.StringIO(body.decode("ascii")), ndmin=2, dtype=np.float64)
        if table.size == 0:
            table = table.reshape(0, sum(counts))
        if table.shape != (num_points, sum(counts)):
            raise PointCloudError(
                path,
                f"PCD header promises {num_points} points of {sum(counts)} values, "
                f"data has {table.shape[0]} rows of {table.shape[1]}",
            )
        starts = np.cumsum([0, *counts])
        # Back to the declared types: a packed float rgb must become float32 to expose its bits.
        return {
            k: table[:, starts[i] : starts[i + 1]].astype(dtypes[i]) for i, k in enumerate(keys)
        }
    row = sum(d.itemsize * c for d, c in zip(dtypes, counts))
    if mode == "binary":
        _check_length(path, len(body), num_points * row, "point data")
        record = np.dtype([(k, d, (c,)) for k, d, c in zip(keys, dtypes, counts)])
        table = np.frombuffer(body, dtype=record, count=num_points)
        return {k: table[k].reshape(num_points, -1) for k in keys}
    if mode == "binary_compressed":
        _check_length(path, len(body), 8, "compressed block sizes")
        compressed, uncompressed = struct.unpack("<II", body[:8])
        _check_length(path, len(body) - 8, compressed, "compressed point data")
        if uncompressed != num_points * row:
            raise PointCloudError(
                path,
                f"PCD says {uncompressed} uncompressed bytes, {num_points} points need {num_points * row}",
            )
        raw = _lzf_decompress(path, body[8 : 8 + compressed], uncompressed)
        # binary_compressed stores each field's values for all points contiguously.
        result, start = {}, 0
        for key, dtype, count in zip(keys, dtypes, counts):
            size = num_points * count * dtype.itemsize
            result[key] = np.frombuffer(raw[start : start + size], dtype=dtype).reshape(
                num_points, count
            )
            start += size
        return result
    raise PointCloudError(path, f"unknown PCD DATA mode {mode!r}")


def _check_length(path: str, have: int, need: int, what: str) -> None:
    """Raise PointCloudError when a file has fewer bytes than its header promises."""
    if have < need:
        raise PointCloudError(path, f"truncated: {what} needs {need} bytes, file has {have}")


def _lzf_decompress(path: str, data: bytes, expected: int) -> bytes:
    """Decompress LZF (liblzf, as written by PCL) to exactly ``expected`` bytes."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:  # literal run of ctrl + 1 bytes
            length = ctrl + 1
            if i + length > n:
                raise PointCloudError(path, "corrupt LZF data: literal run past the end")
            out += data[i : i + length]
            i += length
            continue
        length = ctrl >> 5
        if length == 7:  # long back reference: the length continues in the next byte
            if i >= n:
                raise PointCloudError(path, "corrupt LZF data: back reference past the end")
            length += data[i]
            i += 1
        if i >= n:
            raise PointCloudError(path, "corrupt LZF data: back reference past the end")
        ref = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
        i += 1
        length += 2
        if ref < 0:
            raise PointCloudError(path, "corrupt LZF data: back reference before the start")
        if ref + length <= len(out):
            out += out[ref : ref + length]
        else:  # an overlapping copy repeats the last len(out) - ref bytes
            period = bytes(out[ref:])
            out += (period * (length // len(period) + 1))[:length]
    if len(out) != expected:
        raise PointCloudError(path, f"LZF data gives {len(out)} bytes, header says {expected}")
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# meshes (trimesh)


def _read_mesh(path: str, options: _Options) -> _Raw:
    """A mesh or scene file via trimesh: surfaces are sampled; a file of bare points is read."""
    import trimesh

    scene = trimesh.load_scene(path)
    geometries = scene.dump()  # copies moved to their instance transforms
    surfaces = [
        _surface_from_trimesh(g)
        for g in geometries
        if isinstance(g, trimesh.Trimesh) and len(g.faces)
    ]
    if surfaces:
        return _sample_surfaces(path, surfaces, options)
    clouds = [g for g in geometries if isinstance(g, trimesh.PointCloud) and len(g.vertices)]
    if not clouds:
        raise PointCloudError(path, "contains no faces and no points")
    xyz = np.concatenate([c.vertices for c in clouds])
    colored = all(len(c.colors) == len(c.vertices) for c in clouds)
    rgb = np.concatenate([np.asarray(c.colors)[:, :3] for c in clouds]) if colored else None
    return xyz, rgb


def _surface_from_trimesh(mesh: Any) -> _Surface:
    """Geometry and coloring of a trimesh.Trimesh (vertex/face colors, texture or material)."""
    from trimesh.visual.material import PBRMaterial
    from trimesh.visual.texture import TextureVisuals

    surface = _Surface(
        vertices=np.asarray(mesh.vertices, np.float64), faces=np.asarray(mesh.faces, np.int64)
    )
    visual = mesh.visual
    if isinstance(visual, TextureVisuals):
        material = visual.material
        if isinstance(material, PBRMaterial):
            texture, factor = material.baseColorTexture, material.baseColorFactor
        else:  # SimpleMaterial (OBJ/MTL): the texture replaces the diffuse color
            texture = getattr(material, "image", None)
            factor = None if texture is not None else getattr(material, "diffuse", None)
        if factor is not None:
            surface.tint = np.asarray(factor, np.float64)[:3] / 255.0
        uv = visual.uv
        if texture is not None and uv is not None and len(uv) == len(surface.vertices):
            surface.uv, surface.texture = np.asarray(uv, np.float64), texture
    elif visual.kind == "vertex":
        surface.vertex_colors = np.asarray(visual.vertex_colors)[:, :3] / 255.0
    elif visual.kind == "face":
        surface.face_colors = np.asarray(visual.face_colors)[:, :3] / 255.0
    return surface


def _sample_surfaces(path: str, surfaces: list[_Surface], options: _Options) -> _Raw:
    """Sample ``options.mesh_samples`` points over all surfaces at once, weighted by area."""
    import trimesh

    for surface in surfaces:
        if not np.isfinite(surface.vertices).all():
            raise PointCloudError(path, "mesh vertices contain NaN or Inf")
    starts = np.cumsum([0] + [len(s.faces) for s in surfaces])  # face offset of each surface
    vertex_starts = np.cumsum([0] + [len(s.vertices) for s in surfaces])
    combined = trimesh.Trimesh(
        vertices=np.concatenate([s.vertices for s in surfaces]),
        faces=np.concatenate([s.faces + vertex_starts[i] for i, s in enumerate(surfaces)]),
        process=False,
    )
    if not combined.area > 0:
        raise PointCloudError(path, "mesh has no surface area (all faces degenerate)")
    xyz, face_index, bary = trimesh.sample.sample_surface(
        combined, options.mesh_samples, return_barycentric=True, seed=options.seed
    )  # (S, 3), (S,), (S, 3)
    owner = np.searchsorted(starts, face_index, side="right") - 1  # (S,) surface of each sample
    rgb = np.empty((len(xyz), 3))
    colored = False
    for i, surface in enumerate(surfaces):
        mine = owner == i
        colors = _surface_colors(surface, face_index[mine] - starts[i], bary[mine])
        rgb[mine] = options.default_color if colors is None else colors
        colored |= colors is not None
    return xyz, (rgb if colored else None)


def _surface_colors(surface: _Surface, faces: np.ndarray, bary: np.ndarray) -> np.ndarray | None:
    """Colors (S, 3) in [0, 1] of points on ``faces`` (S,) at barycentric ``bary`` (S, 3)."""
    corners = surface.faces[faces]  # (S, 3) vertex indices
    if surface.texture is not None:
        from trimesh.visual.color import uv_to_interpolated_color

        uv = np.einsum("sk,skc->sc", bary, surface.uv[corners])  # (S, 2)
        texels = uv_to_interpolated_color(uv, surface.texture)[:, :3] / 255.0
        return texels if surface.tint is None else texels * surface.tint
    if surface.vertex_colors is not None:
        return np.einsum("sk,skc->sc", bary, surface.vertex_colors[corners])
    if surface.face_colors is not None:
        return surface.face_colors[faces]
    if surface.tint is not None:
        return np.broadcast_to(surface.tint, (len(faces), 3))
    return None


_READERS: dict[str, Callable[[str, _Options], _Raw]] = {
    ".npy": _read_numpy,
    ".npz": _read_numpy,
    ".ply": _read_ply,
    ".pcd": _read_pcd,
    ".xyz": _read_text,
    ".txt": _read_text,
    **dict.fromkeys(_MESH_EXTS, _read_mesh),
}
