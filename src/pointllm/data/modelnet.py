"""ModelNet40 test set of the PointLLM benchmark (`modelnet40_test_8192pts_fps.dat`).

The published file is a pickle of `(list_of_points, list_of_labels)`: clouds (8192, 6) of xyz +
normals and labels (class indices, as 1-element arrays). Unpickling runs whatever code the file's
author chose, so it needs `trust_pickle=True`; `convert_modelnet40` rewrites the same arrays as a
plain `.npz` (`points` (M, N, C) float32, `labels` (M,) int64) that loads without trust.

As in the original, normals are dropped, xyz is normalized into the unit sphere, and rgb is zero
when the model uses color.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from pointllm.atomic import atomic_file
from pointllm.ops import farthest_point_sample, normalize_point_cloud

# The original's modelnet40_shape_names_modified.txt: the official order, "_" -> " ".
MODELNET40_CLASSES: tuple[str, ...] = (
    "airplane",
    "bathtub",
    "bed",
    "bench",
    "bookshelf",
    "bottle",
    "bowl",
    "car",
    "chair",
    "cone",
    "cup",
    "curtain",
    "desk",
    "door",
    "dresser",
    "flower pot",
    "glass box",
    "guitar",
    "keyboard",
    "lamp",
    "laptop",
    "mantel",
    "monitor",
    "night stand",
    "person",
    "piano",
    "plant",
    "radio",
    "range hood",
    "sink",
    "sofa",
    "stairs",
    "stool",
    "table",
    "tent",
    "toilet",
    "tv stand",
    "vase",
    "wardrobe",
    "xbox",
)
_ZIP_MAGIC = b"PK\x03\x04"  # an .npz is a zip archive
_CHUNK = 256  # clouds processed at once: bounds the temporary memory of FPS and normalization


def read_modelnet40(
    path: str | os.PathLike[str], *, trust_pickle: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The stored arrays: points (M, N, C) float32 (C >= 3; xyz first) and labels (M,) int64.

    Accepts the `.npz` written by `convert_modelnet40` (never unpickled) or, with
    `trust_pickle=True`, the original pickled `.dat`. Raises ValueError naming the file otherwise.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_ZIP_MAGIC))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: ModelNet40 file not found") from None
    if magic == _ZIP_MAGIC:
        points, labels = _read_npz(path)
    elif not trust_pickle:
        raise ValueError(
            f"{path}: is a pickle, and unpickling runs code chosen by whoever wrote the file; if "
            f"you trust it, convert it once with `pointllm data convert-modelnet --trust-pickle "
            f"{path} OUT.npz` (or pass trust_pickle=True) and use the .npz"
        )
    else:
        points, labels = _read_pickle(path)
    _validate(path, points, labels)
    return points, labels


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in ("points", "labels") if name in archive}
            names = sorted(archive.files)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read the .npz archive: {exc}") from None
    if len(arrays) != 2:
        raise ValueError(f"{path}: expected arrays 'points' and 'labels', found {names}")
    return arrays["points"], arrays["labels"]


def _read_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            content = pickle.load(f)  # only with trust_pickle=True
    except Exception as exc:  # unpickling can fail in many ways; all mean a bad file
        raise ValueError(f"{path}: cannot unpickle: {type(exc).__name__}: {exc}") from None
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise ValueError(f"{path}: expected a pickled (list_of_points, list_of_labels) pair")
    clouds, labels = content
    try:
        points = np.stack([np.asarray(cloud, dtype=np.float32) for cloud in clouds])
        labels = np.array([np.asarray(label).reshape(-1)[0] for label in labels])
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"{path}: clouds or labels are malformed: {exc}") from None
    return points, labels


def _validate(path: Path, points: np.ndarray, labels: np.ndarray) -> None:
    if points.ndim != 3 or points.shape[2] < 3 or points.shape[1] == 0:
        raise ValueError(f"{path}: points have shape {points.shape}, expected (M, N, C>=3)")
    if points.dtype.kind != "f":
        raise ValueError(f"{path}: points have dtype {points.dtype}, expected floats")
    if labels.shape != (len(points),) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{path}: labels have shape {labels.shape} dtype {labels.dtype}, expected "
            f"({len(points)},) integers"
        )
    bad = (labels < 0) | (labels >= len(MODELNET40_CLASSES))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{path}: label {labels[i]} of cloud {i} is not in [0, 40)")
    finite = np.isfinite(points[..., :3]).all(axis=(1, 2))
    if not finite.all():
        raise ValueError(f"{path}: cloud {int(np.argmin(finite))} has NaN or Inf coordinates")


def load_modelnet40(
    path: str | os.PathLike[str],
    *,
    trust_pickle: bool = False,
    num_points: int = 8192,
    use_color: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Model-ready clouds (M, num_points, 6) float32 (xyz + zero rgb; (M, num_points, 3) without
    color) and labels (M,) int64 indexing MODELNET40_CLASSES.

    Normals are dropped; clouds with more than num_points points are reduced by farthest point
    sampling from point 0; xyz is centered and scaled into the unit sphere.
    """
    stored, labels = read_modelnet40(path, trust_pickle=trust_pickle)
    count, stored_points = stored.shape[:2]
    if not 1 <= num_points <= stored_points:
        raise ValueError(
            f"{path}: clouds have {stored_points} points; num_points must be in [1, "
            f"{stored_points}], got {num_points}"
        )
    channels = 6 if use_color else 3
    out = np.zeros((count, num_points, channels), dtype=np.float32)  # rgb stays zero
    for lo in range(0, count, _CHUNK):
        xyz = torch.from_numpy(np.ascontiguousarray(stored[lo : lo + _CHUNK, :, :3]))  # (b, N, 3)
        if num_points < stored_points:
            idx = farthest_point_sample(xyz, num_points)  # (b, num_points)
            xyz = torch.gather(xyz, 1, idx.unsqueeze(-1).expand(-1, -1, 3))
        out[lo : lo + _CHUNK, :, :3] = normalize_point_cloud(xyz).numpy()
    return out, labels.astype(np.int64)


def convert_modelnet40(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, trust_pickle: bool = False
) -> int:
    """Rewrite a ModelNet40 `.dat` pickle (or .npz) as a plain `.npz` with the stored arrays,
    atomically. Returns the number of clouds."""
    points, labels = read_modelnet40(src, trust_pickle=trust_pickle)
    with atomic_file(dst, "wb") as f:  # a file object: numpy does not append ".npz" to its name
        np.savez(f, points=points.astype(np.float32), labels=labels.astype(np.int64))
    return len(labels)
