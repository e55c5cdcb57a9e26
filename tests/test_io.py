"""Tests for pointllm.data.io: every format written for real into tmp_path, plus hostile files."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import plyfile
import pytest
import trimesh
from PIL import Image

from pointllm.data import io as pio
from pointllm.data.io import (
    SUPPORTED_EXTENSIONS,
    PointCloudError,
    check_declared_size,
    load_point_cloud,
    read_points,
)

RNG = np.random.default_rng(1234)
GRAY = (0.5, 0.5, 0.5)


# ---------------------------------------------------------------------------------------------
# helpers


def _cloud(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random xyz (n, 3) in [-3, 5) and colors (n, 3) in [0, 1)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-3, 5, (n, 3)), rng.uniform(0, 1, (n, 3))


def _normalized(xyz: np.ndarray) -> np.ndarray:
    """Naive reference normalization of xyz (N, 3) in float64."""
    centered = xyz - xyz.mean(axis=0)
    return centered / np.linalg.norm(centered, axis=1).max()


def _fps_reference(xyz: np.ndarray, count: int) -> np.ndarray:
    """Naive farthest point sampling of xyz (N, 3) starting at point 0 -> (count,) indices."""
    idx = [0]
    dist = np.full(len(xyz), np.inf)
    for _ in range(count - 1):
        dist = np.minimum(dist, ((xyz - xyz[idx[-1]]) ** 2).sum(axis=1))
        idx.append(int(dist.argmax()))
    return np.array(idx)


def _assert_unit_sphere(out: np.ndarray) -> None:
    """Centroid at the origin and largest point norm 1."""
    np.testing.assert_allclose(out[:, :3].mean(axis=0), 0, atol=1e-5)
    assert np.linalg.norm(out[:, :3], axis=1).max() == pytest.approx(1, abs=1e-5)


def _expect_error(path: Path, *fragments: str, **kwargs: object) -> str:
    """load_point_cloud(path) must raise a one-line PointCloudError naming the file."""
    with pytest.raises(PointCloudError) as info:
        load_point_cloud(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert info.value.path == str(path)
    for fragment in fragments:
        assert fragment in message, message
    return message


def _write_ply(
    path: Path,
    xyz: np.ndarray,
    colors: np.ndarray | None,
    *,
    text: bool,
    names: tuple[str, str, str] = ("red", "green", "blue"),
    faces: list | None = None,
    face_colors: np.ndarray | None = None,
) -> None:
    """Write a PLY point cloud or mesh with plyfile; colors keep their dtype (u1 or f4)."""
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if colors is not None:
        fields += [(name, colors.dtype.str) for name in names]
    vertex = np.empty(len(xyz), dtype=fields)
    for i, axis in enumerate("xyz"):
        vertex[axis] = xyz[:, i]
    for i, name in enumerate(names if colors is not None else ()):
        vertex[name] = colors[:, i]
    elements = [plyfile.PlyElement.describe(vertex, "vertex")]
    if faces is not None:
        face_fields = [("vertex_indices", "i4", (len(faces[0]),))]
        if face_colors is not None:
            face_fields += [(c, "u1") for c in ("red", "green", "blue")]
        face = np.empty(len(faces), dtype=face_fields)
        face["vertex_indices"] = faces
        for i, c in enumerate(("red", "green", "blue") if face_colors is not None else ()):
            face[c] = face_colors[:, i]
        elements.append(plyfile.PlyElement.describe(face, "face"))
    plyfile.PlyData(elements, text=text).write(str(path))


# A cube [-1, 1]^3 as 6 quads (fanned into triangles by the reader).
CUBE_VERTICES = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
CUBE_QUADS = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]


def _assert_on_cube(xyz: np.ndarray, half: float = 1.0) -> None:
    """Every point lies on the surface of the cube [-half, half]^3."""
    assert np.all(np.abs(xyz) <= half + 1e-6)
    np.testing.assert_allclose(np.abs(xyz).max(axis=1), half, atol=1e-6)


def _pcd_header(fields: str, sizes: str, types: str, n: int, data: str) -> bytes:
    count = " ".join("1" for _ in fields.split())
    return (
        f"# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS {fields}\nSIZE {sizes}\n"
        f"TYPE {types}\nCOUNT {count}\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
        f"POINTS {n}\nDATA {data}\n"
    ).encode()


def _packed_rgb(rgb8: np.ndarray) -> np.ndarray:
    """uint8 colors (N, 3) -> PCL's packed 0x00RRGGBB uint32 (N,)."""
    rgb = rgb8.astype(np.uint32)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


def _lzf_literals(data: bytes) -> bytes:
    """Valid LZF made of literal runs only (ctrl byte n - 1, then n <= 32 bytes)."""
    out = bytearray()
    for start in range(0, len(data), 32):
        chunk = data[start : start + 32]
        out += bytes([len(chunk) - 1]) + chunk
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# numpy


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("columns", [3, 6])
def test_npy_values_shapes_and_normalization(tmp_path, dtype, columns):
    xyz, rgb = _cloud(64)
    stored = np.concatenate([xyz, rgb], axis=1)[:, :columns].astype(dtype)
    path = tmp_path / "cloud.npy"
    np.save(path, stored)
    out = load_point_cloud(path, num_points=64)
    assert out.shape == (64, 6) and out.dtype == np.float32
    _assert_unit_sphere(out)
    np.testing.assert_allclose(out[:, :3], _normalized(stored[:, :3].astype(np.float64)), atol=1e-6)
    expected_rgb = stored[:, 3:].astype(np.float64) if columns == 6 else np.tile(GRAY, (64, 1))
    np.testing.assert_allclose(out[:, 3:], expected_rgb, atol=1e-6)
    xyz_only = load_point_cloud(path, num_points=64, use_color=False)
    assert xyz_only.shape == (64, 3)
    np.testing.assert_array_equal(xyz_only, out[:, :3])


def test_npy_equal_count_skips_fps_and_keeps_raw_values_without_normalize(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("FPS must not run when N == num_points")

    monkeypatch.setattr(pio, "farthest_point_sample", forbidden)
    xyz, rgb = _cloud(128, seed=3)
    stored = np.concatenate([xyz, rgb], axis=1).astype(np.float32)
    np.save(tmp_path / "obj_8192.npy", stored)
    out = load_point_cloud(tmp_path / "obj_8192.npy", num_points=128, normalize=False)
    np.testing.assert_array_equal(out, stored)


def test_more_points_uses_farthest_point_sampling(tmp_path):
    xyz, rgb = _cloud(300, seed=5)
    np.save(tmp_path / "big.npy", np.concatenate([xyz, rgb], axis=1))
    out = load_point_cloud(tmp_path / "big.npy", num_points=40)
    idx = _fps_reference(xyz, 40)
    np.testing.assert_allclose(out[:, :3], _normalized(xyz[idx]), atol=1e-6)
    np.testing.assert_allclose(out[:, 3:], rgb[idx], atol=1e-6)
    _assert_unit_sphere(out)


def test_fewer_points_keeps_all_and_repeats_with_seeded_replacement(tmp_path):
    xyz, rgb = _cloud(10, seed=6)
    stored = np.concatenate([xyz, rgb], axis=1)
    np.save(tmp_path / "small.npy", stored)
    out = load_point_cloud(tmp_path / "small.npy", num_points=25, normalize=False)
    assert out.shape == (25, 6)
    # Each output row is an input row, and every input row is present.
    match = np.abs(out[:, None, :] - stored[None].astype(np.float32)).max(axis=2) < 1e-6  # (25, 10)
    assert match.any(axis=1).all() and match.any(axis=0).all()
    again = load_point_cloud(tmp_path / "small.npy", num_points=25, normalize=False)
    other = load_point_cloud(tmp_path / "small.npy", num_points=25, normalize=False, seed=1)
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, other)
    _assert_unit_sphere(load_point_cloud(tmp_path / "small.npy", num_points=25))


def test_npy_colors_in_0_255_are_rescaled(tmp_path):
    xyz, rgb = _cloud(32, seed=7)
    rgb255 = np.round(rgb * 255)
    np.save(tmp_path / "c.npy", np.concatenate([xyz, rgb255], axis=1).astype(np.float32))
    out = load_point_cloud(tmp_path / "c.npy", num_points=32)
    np.testing.assert_allclose(out[:, 3:], rgb255 / 255, atol=1e-6)


def test_npz_single_array_named_points_and_split_xyz_rgb(tmp_path):
    xyz, rgb = _cloud(32, seed=8)
    both = np.concatenate([xyz, rgb], axis=1)
    np.savez(tmp_path / "single.npz", both)
    np.savez(tmp_path / "named.npz", points=both, label=np.array([3]))
    np.savez_compressed(tmp_path / "split.npz", xyz=xyz, rgb=rgb.astype(np.float32))
    for name in ("single.npz", "named.npz", "split.npz"):
        out = load_point_cloud(tmp_path / name, num_points=32, normalize=False)
        np.testing.assert_allclose(out, both, atol=1e-5, err_msg=name)
    np.savez(tmp_path / "vague.npz", a=both, b=both)
    _expect_error(tmp_path / "vague.npz", "['a', 'b']", "points")


def test_default_color_is_applied_and_validated(tmp_path):
    xyz, _ = _cloud(16)
    np.save(tmp_path / "p.npy", xyz)
    out = load_point_cloud(tmp_path / "p.npy", num_points=16, default_color=(0.1, 0.2, 0.3))
    np.testing.assert_allclose(out[:, 3:], np.tile([0.1, 0.2, 0.3], (16, 1)), atol=1e-7)
    with pytest.raises(ValueError, match="default_color"):
        load_point_cloud(tmp_path / "p.npy", default_color=(0, 0, 2))
    with pytest.raises(ValueError, match="num_points"):
        load_point_cloud(tmp_path / "p.npy", num_points=0)


# ---------------------------------------------------------------------------------------------
# PLY


@pytest.mark.parametrize("text", [True, False], ids=["ascii", "binary"])
@pytest.mark.parametrize("kind", ["uchar", "float", "rgb_names", "none"])
def test_ply_point_clouds(tmp_path, text, kind):
    xyz, rgb = _cloud(50, seed=9)
    xyz = xyz.astype(np.float32)
    rgb8 = np.round(rgb * 255).astype(np.uint8)
    colors = {"uchar": rgb8, "float": rgb.astype(np.float32), "rgb_names": rgb8, "none": None}[kind]
    names = ("r", "g", "b") if kind == "rgb_names" else ("red", "green", "blue")
    path = tmp_path / "cloud.ply"
    _write_ply(path, xyz, colors, text=text, names=names)
    raw = read_points(path)
    assert raw.shape == (50, 3 if kind == "none" else 6)
    np.testing.assert_allclose(raw[:, :3], xyz, atol=1e-6)
    expected = {"uchar": rgb8 / 255, "rgb_names": rgb8 / 255, "float": rgb, "none": None}[kind]
    if expected is not None:
        np.testing.assert_allclose(raw[:, 3:], expected, atol=1e-6)
    out = load_point_cloud(path, num_points=50)
    _assert_unit_sphere(out)
    np.testing.assert_allclose(
        out[:, 3:], expected if expected is not None else np.tile(GRAY, (50, 1)), atol=1e-6
    )


def test_ply_uchar_colors_are_0_255_even_when_all_small(tmp_path):
    xyz, _ = _cloud(10)
    colors = np.tile(np.array([[0, 1, 1]], np.uint8), (10, 1))
    _write_ply(tmp_path / "dark.ply", xyz, colors, text=False)
    np.testing.assert_allclose(read_points(tmp_path / "dark.ply")[:, 3:], colors / 255)


def test_ply_mesh_is_sampled_on_faces_with_barycentric_vertex_colors(tmp_path):
    # Vertex colors linear in position, so interpolated colors must equal (p + 1) / 2 exactly.
    colors = ((CUBE_VERTICES + 1) / 2).astype(np.float32)
    path = tmp_path / "cube.ply"
    _write_ply(path, CUBE_VERTICES, colors, text=False, faces=CUBE_QUADS)
    out = load_point_cloud(path, num_points=1200, normalize=False)
    assert out.shape == (1200, 6)
    _assert_on_cube(out[:, :3])
    np.testing.assert_allclose(out[:, 3:], (out[:, :3] + 1) / 2, atol=1e-5)
    # Uniform on every face: a quad fanned into only one triangle would shift its mean by ~1/3.
    for axis in range(3):
        for side in (-1, 1):
            on_face = out[np.isclose(out[:, axis], side), :3]
            assert 150 < len(on_face) < 250
            assert np.abs(np.delete(on_face, axis, axis=1).mean(axis=0)).max() < 0.15
    np.testing.assert_array_equal(out, load_point_cloud(path, num_points=1200, normalize=False))


def test_ply_mesh_face_colors_and_area_weighting(tmp_path):
    # Two disjoint squares, areas 1 and 4, red and blue: ~20 % of the samples on the small one.
    vertices = np.array(
        [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [5, 0, 0], [7, 0, 0], [7, 2, 0], [5, 2, 0]],
        float,
    )
    quads = [[0, 1, 2, 3], [4, 5, 6, 7]]
    face_colors = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    path = tmp_path / "squares.ply"
    _write_ply(path, vertices, None, text=True, faces=quads, face_colors=face_colors)
    out = load_point_cloud(path, num_points=2000, normalize=False)
    small = out[:, 0] <= 1
    assert 0.16 < small.mean() < 0.24
    np.testing.assert_array_equal(out[small, 3:], np.tile([1, 0, 0], (small.sum(), 1)))
    np.testing.assert_array_equal(out[~small, 3:], np.tile([0, 0, 1], ((~small).sum(), 1)))
    assert np.all(out[:, 2] == 0)


# ---------------------------------------------------------------------------------------------
# PCD


@pytest.mark.parametrize("packed_type", ["F", "U"])
def test_pcd_ascii_with_packed_rgb(tmp_path, packed_type):
    xyz, rgb = _cloud(20, seed=10)
    xyz = xyz.astype(np.float32)
    rgb8 = np.round(rgb * 255).astype(np.uint8)
    packed = _packed_rgb(rgb8).view(np.float32) if packed_type == "F" else _packed_rgb(rgb8)
    rows = "".join(
        f"{x!r} {y!r} {z!r} {float(c)!r}\n" for (x, y, z), c in zip(xyz.tolist(), packed)
    )
    path = tmp_path / "a.pcd"
    path.write_bytes(
        _pcd_header("x y z rgb", "4 4 4 4", f"F F F {packed_type}", 20, "ascii") + rows.encode()
    )
    raw = read_points(path)
    np.testing.assert_allclose(raw[:, :3], xyz, atol=1e-6)
    np.testing.assert_allclose(raw[:, 3:], rgb8 / 255, atol=1e-9)


@pytest.mark.parametrize("compressed", [False, True], ids=["binary", "binary_compressed"])
def test_pcd_binary_with_packed_rgb(tmp_path, compressed):
    xyz, rgb = _cloud(20, seed=11)
    xyz = xyz.astype(np.float32)
    rgb8 = np.round(rgb * 255).astype(np.uint8)
    packed = _packed_rgb(rgb8)
    header = _pcd_header(
        "x y z _ rgb", "4 4 4 4 4", "F F F U F", 20, "binary_compressed" if compressed else "binary"
    )
    pad = np.zeros(20, np.uint32)
    if compressed:  # one field after another (structure of arrays), LZF compressed
        raw_body = b"".join(
            a.tobytes() for a in (xyz[:, 0], xyz[:, 1], xyz[:, 2], pad, packed.view(np.float32))
        )
        lzf = _lzf_literals(raw_body)
        body = struct.pack("<II", len(lzf), len(raw_body)) + lzf
    else:
        record = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("_", "<u4"), ("rgb", "<f4")])
        table = np.empty(20, record)
        for i, axis in enumerate("xyz"):
            table[axis] = xyz[:, i]
        table["_"], table["rgb"] = pad, packed.view(np.float32)
        body = table.tobytes()
    path = tmp_path / "b.pcd"
    path.write_bytes(header + body)
    raw = read_points(path)
    np.testing.assert_array_equal(raw[:, :3], xyz)
    np.testing.assert_allclose(raw[:, 3:], rgb8 / 255, atol=1e-9)
    out = load_point_cloud(path, num_points=20)
    _assert_unit_sphere(out)


def test_pcd_separate_rgb_fields_and_no_color(tmp_path):
    xyz, rgb = _cloud(12, seed=12)
    rows = "".join(
        f"{x} {y} {z} {r} {g} {b}\n"
        for (x, y, z), (r, g, b) in zip(xyz, np.round(rgb * 255).astype(int))
    )
    (tmp_path / "c.pcd").write_bytes(
        _pcd_header("x y z r g b", "4 4 4 1 1 1", "F F F U U U", 12, "ascii") + rows.encode()
    )
    np.testing.assert_allclose(
        read_points(tmp_path / "c.pcd")[:, 3:], np.round(rgb * 255) / 255, atol=1e-9
    )
    body = "".join(f"{x} {y} {z}\n" for x, y, z in xyz)
    (tmp_path / "d.pcd").write_bytes(
        _pcd_header("x y z", "4 4 4", "F F F", 12, "ascii") + body.encode()
    )
    assert read_points(tmp_path / "d.pcd").shape == (12, 3)


def test_lzf_back_references_including_overlapping_copies():
    # "abc" literal, then copy 6 bytes from offset 3 back (overlapping): "abcabcabc".
    data = bytes([2]) + b"abc" + bytes([(4 << 5) | 0, 2])
    assert pio._lzf_decompress("x.pcd", data, 9) == b"abcabcabc"
    # Long form (length field 7 + extra byte): 7 + 3 + 2 = 12 copies of "z".
    data = bytes([0]) + b"z" + bytes([(7 << 5) | 0, 3, 0])
    assert pio._lzf_decompress("x.pcd", data, 13) == b"z" * 13
    with pytest.raises(PointCloudError, match="before the start"):
        pio._lzf_decompress("x.pcd", bytes([(1 << 5), 5]), 3)


# ---------------------------------------------------------------------------------------------
# text


@pytest.mark.parametrize("ext,sep,header", [(".xyz", " ", ""), (".txt", ",", "x,y,z,r,g,b\n")])
def test_text_points_with_0_255_colors(tmp_path, ext, sep, header):
    xyz, rgb = _cloud(30, seed=13)
    rgb255 = np.round(rgb * 255).astype(int)
    lines = [
        sep.join([*(f"{v:.6f}" for v in p), *(str(c) for c in col)]) for p, col in zip(xyz, rgb255)
    ]
    path = tmp_path / f"points{ext}"
    path.write_text("# exported\n" + header + "\n".join(lines) + "\n")
    raw = read_points(path)
    np.testing.assert_allclose(raw[:, :3], xyz, atol=1e-6)
    np.testing.assert_allclose(raw[:, 3:], rgb255 / 255, atol=1e-9)
    out = load_point_cloud(path, num_points=30)
    _assert_unit_sphere(out)


def test_text_xyz_only(tmp_path):
    xyz, _ = _cloud(10, seed=14)
    np.savetxt(tmp_path / "p.xyz", xyz)
    out = load_point_cloud(tmp_path / "p.xyz", num_points=10, normalize=False)
    np.testing.assert_allclose(out[:, :3], xyz, atol=1e-6)
    np.testing.assert_allclose(out[:, 3:], np.tile(GRAY, (10, 1)))


# ---------------------------------------------------------------------------------------------
# meshes via trimesh


def test_obj_vertex_colors_are_interpolated(tmp_path):
    box = trimesh.creation.box(extents=(2, 2, 2))
    box.visual.vertex_colors = np.c_[
        np.round((box.vertices + 1) / 2 * 255), np.full(8, 255)
    ].astype(np.uint8)
    path = tmp_path / "box.obj"
    box.export(path)
    out = load_point_cloud(path, num_points=400, normalize=False)
    _assert_on_cube(out[:, :3])
    np.testing.assert_allclose(out[:, 3:], (out[:, :3] + 1) / 2, atol=1e-5)


@pytest.mark.parametrize("ext", [".glb", ".gltf", ".obj"])
def test_texture_colors_follow_uv(tmp_path, ext):
    # Quadrants: u < 0.5 red, else blue; v > 0.5 (the image's top rows) adds green.
    image = np.zeros((8, 16, 3), np.uint8)
    image[:, :8, 0] = 255
    image[:, 8:, 2] = 255
    image[:4, :, 1] = 255
    texture = Image.fromarray(image)
    material = (
        trimesh.visual.material.SimpleMaterial(image=texture)  # written as OBJ + MTL + PNG
        if ext == ".obj"
        else trimesh.visual.material.PBRMaterial(baseColorTexture=texture)
    )
    quad = trimesh.Trimesh(
        vertices=[[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]],
        faces=[[0, 1, 2], [0, 2, 3]],
        visual=trimesh.visual.TextureVisuals(
            uv=[[0, 0], [1, 0], [1, 1], [0, 1]], material=material
        ),
        process=False,
    )  # uv == xy
    path = tmp_path / f"quad{ext}"
    if ext == ".gltf":  # JSON plus separate buffer files, resolved next to the .gltf
        for name, blob in trimesh.Scene([quad]).export(file_type="gltf").items():
            (tmp_path / ("quad.gltf" if name.endswith(".gltf") else name)).write_bytes(blob)
    else:
        quad.export(path)
    out = load_point_cloud(path, num_points=400, normalize=False)
    assert np.all(out[:, 2] == 0) and np.all((out[:, :2] >= 0) & (out[:, :2] <= 1))
    for x_low, y_low, color in [
        (1, 1, (1, 0, 0)),
        (0, 1, (0, 0, 1)),
        (1, 0, (1, 1, 0)),
        (0, 0, (0, 1, 1)),
    ]:
        x_ok = out[:, 0] < 0.4 if x_low else out[:, 0] > 0.6
        y_ok = out[:, 1] < 0.4 if y_low else out[:, 1] > 0.6
        quadrant = out[x_ok & y_ok]
        assert len(quadrant) > 20
        np.testing.assert_allclose(quadrant[:, 3:], np.tile(color, (len(quadrant), 1)), atol=1e-6)


def test_scene_with_colored_and_bare_parts(tmp_path):
    red = trimesh.creation.box(extents=(1, 1, 1))
    red.visual.face_colors = (255, 0, 0, 255)
    bare = trimesh.creation.box(extents=(1, 1, 1))
    bare.apply_translation((3, 0, 0))
    path = tmp_path / "scene.glb"
    trimesh.Scene([red, bare]).export(path)
    out = load_point_cloud(path, num_points=400, normalize=False, default_color=(0.2, 0.2, 0.2))
    on_red = out[:, 0] < 1.5
    assert 0.3 < on_red.mean() < 0.7
    np.testing.assert_allclose(out[on_red, 3:], np.tile([1, 0, 0], (on_red.sum(), 1)))
    np.testing.assert_allclose(out[~on_red, 3:], np.tile([0.2, 0.2, 0.2], ((~on_red).sum(), 1)))


@pytest.mark.parametrize("ext", [".stl", ".off"])
def test_colorless_meshes_get_default_color(tmp_path, ext):
    path = tmp_path / f"box{ext}"
    trimesh.creation.box(extents=(2, 2, 2)).export(path)
    out = load_point_cloud(path, num_points=200, normalize=False)
    assert out.shape == (200, 6)
    _assert_on_cube(out[:, :3])
    np.testing.assert_array_equal(out[:, 3:], np.full((200, 3), 0.5, np.float32))
    _assert_unit_sphere(load_point_cloud(path, num_points=200))


def test_supported_extensions_are_all_readable():
    assert set(SUPPORTED_EXTENSIONS) == set(pio._READERS)


# ---------------------------------------------------------------------------------------------
# hostile files


class _Bomb:
    """Unpickling this creates a marker file, so a test can prove nothing was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_array_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.npy"
    np.save(path, np.array([_Bomb(str(marker))], dtype=object), allow_pickle=True)
    assert not marker.exists()
    _expect_error(path, "allow_pickle")
    np.savez(tmp_path / "evil.npz", points=np.array([_Bomb(str(marker))], dtype=object))
    _expect_error(tmp_path / "evil.npz")
    assert not marker.exists()


def test_truncated_binary_ply(tmp_path):
    xyz, rgb = _cloud(40)
    path = tmp_path / "t.ply"
    _write_ply(path, xyz, np.round(rgb * 255).astype(np.uint8), text=False)
    path.write_bytes(path.read_bytes()[:-25])
    # Found from the header and the file size, before plyfile reads anything.
    _expect_error(path, "truncated: its header declares 40 vertex rows, needing at least 600")


@pytest.mark.parametrize("claimed", [500, 10**11])
@pytest.mark.parametrize("text", [True, False], ids=["ascii", "binary"])
def test_ply_header_lying_about_vertex_count(tmp_path, text, claimed):
    xyz, _ = _cloud(5)
    path = tmp_path / "lie.ply"
    _write_ply(path, xyz, None, text=text)
    lie = f"element vertex {claimed}\n".encode()
    path.write_bytes(path.read_bytes().replace(b"element vertex 5\n", lie))
    _expect_error(path)


def test_ply_face_pointing_past_the_vertices(tmp_path):
    path = tmp_path / "bad_face.ply"
    _write_ply(path, CUBE_VERTICES, None, text=True, faces=[[0, 1, 2], [0, 2, 99]])
    _expect_error(path, "vertex 99")


def test_text_renamed_ply_and_garbage_mesh_files(tmp_path):
    (tmp_path / "fake.ply").write_text("1 2 3\n4 5 6\n7 8 9\n")
    _expect_error(tmp_path / "fake.ply", "ply")
    (tmp_path / "fake.glb").write_bytes(RNG.bytes(256))
    _expect_error(tmp_path / "fake.glb")
    (tmp_path / "fake.pcd").write_text("hello\nworld\n")
    _expect_error(tmp_path / "fake.pcd", "not a PCD")


def test_truncated_npy_and_pcd(tmp_path):
    xyz, _ = _cloud(64)
    np.save(tmp_path / "t.npy", xyz)
    (tmp_path / "t.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:-100])
    _expect_error(tmp_path / "t.npy")
    header = _pcd_header("x y z", "4 4 4", "F F F", 64, "binary")
    (tmp_path / "t.pcd").write_bytes(header + xyz.astype(np.float32).tobytes()[:-12])
    _expect_error(tmp_path / "t.pcd", "truncated", "768 bytes")


def test_empty_and_missing_files_and_unknown_extension(tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    _expect_error(tmp_path / "empty.npy", "empty")
    _expect_error(tmp_path / "missing.ply", "no such file")
    (tmp_path / "cloud.las").write_bytes(b"LASF")
    message = _expect_error(tmp_path / "cloud.las", "'.las'")
    assert all(ext in message for ext in SUPPORTED_EXTENSIONS)
    (tmp_path / "dir.npy").mkdir()
    _expect_error(tmp_path / "dir.npy", "not a regular file")


def test_nan_rows(tmp_path):
    xyz, _ = _cloud(20)
    xyz[7] = np.nan
    xyz[11, 2] = np.inf
    np.save(tmp_path / "nan.npy", xyz)
    _expect_error(tmp_path / "nan.npy", "2 of 20 points", "row 7")
    np.savetxt(tmp_path / "nan.xyz", xyz)
    _expect_error(tmp_path / "nan.xyz", "NaN")


def test_degenerate_clouds(tmp_path):
    np.save(tmp_path / "two.npy", np.array([[0, 0, 0], [1, 0, 0]], np.float32))
    _expect_error(tmp_path / "two.npy", "2 distinct")
    np.save(tmp_path / "same.npy", np.ones((3, 6), np.float32) * 0.5)
    _expect_error(tmp_path / "same.npy", "1 distinct")
    np.save(tmp_path / "none.npy", np.zeros((0, 3), np.float32))
    _expect_error(tmp_path / "none.npy", "no points")
    # Two distinct points hidden after many duplicates (past the quick head check).
    many = np.zeros((500, 3))
    many[400] = 1
    np.save(tmp_path / "many.npy", many)
    _expect_error(tmp_path / "many.npy", "2 distinct")
    many[450] = 2
    np.save(tmp_path / "ok.npy", many)
    assert load_point_cloud(tmp_path / "ok.npy", num_points=8).shape == (8, 6)


def test_wrong_shapes_and_normals_as_colors(tmp_path):
    np.save(tmp_path / "four.npy", np.ones((10, 4), np.float32))
    _expect_error(tmp_path / "four.npy", "(10, 4)")
    np.save(tmp_path / "flat.npy", np.arange(30, dtype=np.float32))
    _expect_error(tmp_path / "flat.npy", "(30,)")
    np.save(tmp_path / "text.npy", np.array([["a", "b", "c"]] * 4))
    _expect_error(tmp_path / "text.npy", "dtype")
    xyz, _ = _cloud(10)
    normals = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    np.save(tmp_path / "normals.npy", np.concatenate([xyz, normals], axis=1))
    _expect_error(tmp_path / "normals.npy", "normals")
    (tmp_path / "five.txt").write_text("1 2 3 4 5\n6 7 8 9 10\n")
    _expect_error(tmp_path / "five.txt", "(2, 5)")


def test_degenerate_meshes(tmp_path):
    nan_vertices = CUBE_VERTICES.copy()
    nan_vertices[3] = np.nan
    _write_ply(tmp_path / "nan.ply", nan_vertices, None, text=False, faces=CUBE_QUADS)
    _expect_error(tmp_path / "nan.ply", "NaN")
    path = tmp_path / "flat.ply"
    _write_ply(
        path, np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], float), None, text=True, faces=[[0, 1, 2]]
    )
    _expect_error(path, "no surface area")


def test_missing_optional_dependency_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "box.stl"
    trimesh.creation.box().export(path)
    real_find_spec = pio.importlib.util.find_spec
    monkeypatch.setattr(
        pio.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "trimesh" else real_find_spec(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match=r"trimesh.*pointllm\[io\]"):
        load_point_cloud(path)


# ---- header counts are checked against the file size before any parser allocates -----------


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


@pytest.mark.parametrize("text", [True, False], ids=["ascii", "binary"])
def test_ply_claiming_a_billion_faces_is_refused_at_once(tmp_path, text):
    path = tmp_path / "bomb.ply"
    _write_ply(path, CUBE_VERTICES, None, text=text, faces=[[0, 1, 2]])
    path.write_bytes(path.read_bytes().replace(b"element face 1\n", b"element face 1000000000\n"))
    assert path.stat().st_size < 1000
    before, started = _rss_mb(), time.monotonic()
    _expect_error(path, "truncated: its header declares 1000000000 face rows")
    assert time.monotonic() - started < 1.0
    assert _rss_mb() - before < 50  # plyfile used to allocate ~9 GB here


def test_npy_header_larger_than_its_file_is_refused(tmp_path):
    path = tmp_path / "lie.npy"
    np.save(path, np.zeros((10, 6), np.float32))
    path.write_bytes(path.read_bytes().replace(b"(10, 6)", b"(99999999, 6)"))
    _expect_error(path, "declares shape (99999999, 6)")


def test_pcd_header_larger_than_its_file_is_refused(tmp_path):
    path = tmp_path / "lie.pcd"
    header = "FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nPOINTS 5000000\nDATA ascii\n"
    path.write_text(header + "0 0 0\n1 0 0\n0 1 0\n")
    _expect_error(path, "declares 5000000 points")


def test_points_per_cloud_limit(tmp_path):
    path = tmp_path / "big.npy"
    np.save(path, np.random.default_rng(0).random((2000, 6)).astype(np.float32))
    assert check_declared_size(path, max_points=2000) == 2000
    with pytest.raises(PointCloudError, match="declares 2000 points; the limit is 1999 per cloud"):
        check_declared_size(path, max_points=1999)
    with pytest.raises(PointCloudError, match="the limit is 100"):
        load_point_cloud(path, num_points=64, max_points=100)
    assert load_point_cloud(path, num_points=64).shape == (64, 6)
    mesh = tmp_path / "mesh.ply"
    _write_ply(mesh, CUBE_VERTICES, None, text=True, faces=[[0, 1, 2]] * 10)
    assert len(CUBE_VERTICES) <= 9
    with pytest.raises(PointCloudError, match="declares 10 face elements; the limit is 9"):
        check_declared_size(mesh, max_points=9)
