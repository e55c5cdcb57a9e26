"""Synthetic PointLLM data: colored objects built from surface-sampled primitives, with captions.

Each object is a handful of primitives (cylinders, cones, spheres, tori, boxes, triangles) whose
surfaces are sampled uniformly by area, so 16 categories stay distinguishable even at the ~1024
points / 32-64 groups a CPU demo encodes. Objects are y-up (like Objaverse), randomly turned about
the up axis with a small tilt, lightly noised, and normalized like PointLLM's `pc_norm`.

`generate_dataset` writes the original PointLLM layout (`points/{id}_{N}.npy`, annotation lists of
`{"object_id", "conversation_type", "conversations"}`), so any PointLLM loader reads it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pointllm.atomic import write_bytes, write_json

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "orange": (1.0, 0.55, 0.0),
    "yellow": (0.98, 0.88, 0.12),
    "green": (0.15, 0.68, 0.2),
    "blue": (0.12, 0.3, 0.9),
    "purple": (0.55, 0.2, 0.75),
    "white": (0.95, 0.95, 0.95),
    "black": (0.1, 0.1, 0.1),
}
COLOR_NAMES: tuple[str, ...] = tuple(PALETTE)
_PALETTE_RGB = np.array(list(PALETTE.values()), dtype=np.float64)  # (P, 3)

UP_AXIS = "y"
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def nearest_color_name(rgb: np.ndarray) -> str | list[str]:
    """Palette name nearest to one rgb triple (3,), or to each row of (M, 3)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    idx = np.linalg.norm(rgb[..., None, :] - _PALETTE_RGB, axis=-1).argmin(-1)
    return COLOR_NAMES[int(idx)] if idx.ndim == 0 else [COLOR_NAMES[i] for i in idx]


# --------------------------------------------------------------------------- surface primitives

Sampler = Callable[[np.random.Generator, int], np.ndarray]


@dataclass(frozen=True)
class Part:
    """A surface patch: its area and a sampler of n uniform points on it, (n, 3)."""

    area: float
    sample: Sampler
    secondary: bool = False

    def placed(
        self, offset: npt.ArrayLike = (0.0, 0.0, 0.0), rotation: np.ndarray | None = None
    ) -> Part:
        """The same patch rotated (3, 3) about the origin, then moved by offset (3,)."""
        inner, shift = self.sample, np.asarray(offset, dtype=np.float64)
        rot = np.eye(3) if rotation is None else rotation
        return Part(self.area, lambda rng, n: inner(rng, n) @ rot.T + shift, self.secondary)

    def tinted(self) -> Part:
        """The same patch painted in the object's secondary color."""
        return Part(self.area, self.sample, True)


def _rotation(axis: str, angle: float) -> np.ndarray:
    """Right-handed rotation matrix (3, 3) by angle (radians) about axis 'x', 'y' or 'z'."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


# Tori are sampled lying in the xz plane; this stands them up in the xy plane (handles, arches).
_UPRIGHT = _rotation("x", np.pi / 2)
# Frusta run along +y; this lays them along +x (bars, fuselages).
_ALONG_X = _rotation("z", -np.pi / 2)


def _ring_points(radius: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Points (n, 3) at distance radius (n,) from the y axis, height y (n,), angle theta (n,)."""
    return np.stack([radius * np.cos(theta), y, radius * np.sin(theta)], axis=-1)


def frustum(r0: float, r1: float, height: float) -> Part:
    """Side of a truncated cone along +y: radius r0 at y=0, r1 at y=height (cylinder, cone)."""
    area = np.pi * (r0 + r1) * np.hypot(height, r1 - r0)

    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        u, theta = rng.random(n), rng.uniform(0.0, 2 * np.pi, n)
        # Area density grows with the radius r(t) = r0 + (r1 - r0) t; invert its CDF.
        t = u if np.isclose(r0, r1) else (np.sqrt(r0**2 + u * (r1**2 - r0**2)) - r0) / (r1 - r0)
        return _ring_points(r0 + (r1 - r0) * t, t * height, theta)

    return Part(area, sample)


def disk(r_outer: float, r_inner: float = 0.0, y: float = 0.0) -> Part:
    """Flat annulus in the xz plane at height y."""

    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        rho = np.sqrt(r_inner**2 + rng.random(n) * (r_outer**2 - r_inner**2))
        return _ring_points(rho, np.full(n, y), rng.uniform(0.0, 2 * np.pi, n))

    return Part(np.pi * (r_outer**2 - r_inner**2), sample)


def sphere_zone(radius: float, y_lo: float | None = None, y_hi: float | None = None) -> Part:
    """Sphere about the origin between heights y_lo and y_hi (whole sphere by default)."""
    lo = -radius if y_lo is None else y_lo
    hi = radius if y_hi is None else y_hi

    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        # Archimedes: area is uniform in height, so y ~ U(lo, hi) is exact.
        y = rng.uniform(lo, hi, n)
        rho = np.sqrt(np.clip(radius**2 - y**2, 0.0, None))
        return _ring_points(rho, y, rng.uniform(0.0, 2 * np.pi, n))

    return Part(2 * np.pi * radius * (hi - lo), sample)


def torus(major: float, minor: float, theta0: float = 0.0, theta1: float = 2 * np.pi) -> Part:
    """Torus around the y axis (ring in the xz plane), swept from angle theta0 to theta1."""

    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        # The tube angle phi has density ~ (major + minor cos phi): rejection sampling.
        phis: list[np.ndarray] = []
        have = 0
        while have < n:
            phi = rng.uniform(0.0, 2 * np.pi, 2 * (n - have) + 16)
            keep = phi[rng.random(phi.size) * (major + minor) < major + minor * np.cos(phi)]
            phis.append(keep)
            have += keep.size
        phi = np.concatenate(phis)[:n]
        theta = rng.uniform(theta0, theta1, n)
        return _ring_points(major + minor * np.cos(phi), minor * np.sin(phi), theta)

    return Part((theta1 - theta0) * major * 2 * np.pi * minor, sample)


def triangles(vertices: np.ndarray, faces: np.ndarray) -> Part:
    """Surface of a triangle mesh: vertices (V, 3), faces (F, 3) vertex indices."""
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]  # (F, 3, 3)
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)

    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        face = rng.choice(len(tri), size=n, p=areas / areas.sum())
        s, v = np.sqrt(rng.random(n)), rng.random(n)
        a, b, c = tri[face, 0], tri[face, 1], tri[face, 2]  # (n, 3) each
        return (1 - s)[:, None] * a + (s * (1 - v))[:, None] * b + (s * v)[:, None] * c

    return Part(float(areas.sum()), sample)


_BOX_FACES = {  # two triangles per face over the corners indexed by bits (x, y, z)
    "-x": [(0, 1, 3), (0, 3, 2)],
    "+x": [(4, 6, 7), (4, 7, 5)],
    "-y": [(0, 4, 5), (0, 5, 1)],
    "+y": [(2, 3, 7), (2, 7, 6)],
    "-z": [(0, 2, 6), (0, 6, 4)],
    "+z": [(1, 5, 7), (1, 7, 3)],
}


def box(
    size: npt.ArrayLike,
    center: npt.ArrayLike = (0.0, 0.0, 0.0),
    faces: tuple[str, ...] = tuple(_BOX_FACES),
) -> Part:
    """Faces (names like '+y') of an axis-aligned box of size (3,) centered at center (3,)."""
    bits = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=np.float64)
    corners = (bits - 0.5) * np.asarray(size) + np.asarray(center)
    return triangles(corners, np.array([t for name in faces for t in _BOX_FACES[name]]))


def cylinder(
    radius: float, height: float, base: npt.ArrayLike = (0.0, 0.0, 0.0), caps: bool = True
) -> list[Part]:
    """Closed (or open) upright cylinder standing on base (3,)."""
    parts = [frustum(radius, radius, height)]
    if caps:
        parts += [disk(radius), disk(radius, y=height)]
    return [p.placed(base) for p in parts]


# --------------------------------------------------------------------------- categories


@dataclass(frozen=True)
class Geometry:
    """What a category builder made: parts plus the facts the captions talk about."""

    parts: list[Part]
    adjective: str | None  # proportion word, e.g. "tall" / "short"
    features: list[str]  # noun phrases for "It has ...", e.g. "four legs"
    counts: dict[str, int]  # countable parts by singular noun, e.g. {"leg": 4}


def _four_legs(radius: float, height: float, x: float, z: float) -> list[Part]:
    """Open cylinders standing at (+-x, 0, +-z), in the secondary color."""
    return [
        leg.tinted()
        for sx in (-1, 1)
        for sz in (-1, 1)
        for leg in cylinder(radius, height, (sx * x, 0, sz * z), False)
    ]


def _mug(rng: np.random.Generator) -> Geometry:
    r, h = rng.uniform(0.35, 0.5), rng.uniform(0.7, 1.1)
    major, minor = h * rng.uniform(0.25, 0.32), rng.uniform(0.04, 0.06)
    handle = torus(major, minor, -np.pi / 2, np.pi / 2).placed((r, h / 2, 0.0), _UPRIGHT)
    inner_floor = disk(r * 0.92, y=h * 0.12)  # shows the mug is open at the top
    return Geometry(
        [frustum(r, r, h), disk(r), inner_floor, handle.tinted()],
        "tall" if h / (2 * r) > 1.1 else "short",
        ["a cylindrical body", "a curved handle on its side"],
        {"handle": 1},
    )


def _table(rng: np.random.Generator) -> Geometry:
    w = rng.uniform(1.0, 2.0)
    d, height, t = w / rng.uniform(1.0, 2.2), rng.uniform(0.55, 0.9), 0.06
    r, inset = rng.uniform(0.03, 0.05), 0.08
    legs = _four_legs(r, height - t, w / 2 - inset, d / 2 - inset)
    long = w / d > 1.5
    return Geometry(
        [box((w, t, d), (0.0, height - t / 2, 0.0)), *legs],
        "long" if long else "square",
        ["a long rectangular top" if long else "a square top", "four legs"],
        {"leg": 4},
    )


def _chair(rng: np.random.Generator) -> Geometry:
    s, seat_h, t = rng.uniform(0.45, 0.6), rng.uniform(0.42, 0.55), 0.05
    back_h, r, inset = rng.uniform(0.4, 0.8), 0.03, 0.04
    legs = _four_legs(r, seat_h - t, s / 2 - inset, s / 2 - inset)
    seat = box((s, t, s), (0.0, seat_h - t / 2, 0.0))
    back = box((s, back_h, t), (0.0, seat_h + back_h / 2, -(s - t) / 2))
    return Geometry(
        [seat, back, *legs],
        "high-backed" if back_h > 0.6 else "low-backed",
        ["a square seat", "a backrest", "four legs"],
        {"leg": 4},
    )


def _lamp(rng: np.random.Generator) -> Geometry:
    r_base, pole, base_t = rng.uniform(0.2, 0.28), rng.uniform(0.8, 1.3), 0.04
    r0 = rng.uniform(0.32, 0.45)
    r1, shade_h = r0 * rng.uniform(0.4, 0.6), rng.uniform(0.3, 0.45)
    stand = [
        frustum(r_base, r_base, base_t),
        disk(r_base, y=base_t),
        *cylinder(0.025, pole, caps=False),
    ]
    return Geometry(
        [
            *(p.tinted() for p in stand),
            frustum(r0, r1, shade_h).placed((0.0, pole - shade_h / 2, 0.0)),
        ],
        "tall" if pole > 1.05 else "short",
        ["a round base", "a thin pole", "a cone-shaped shade"],
        {},
    )


def _bottle(rng: np.random.Generator) -> Geometry:
    r, body_h = rng.uniform(0.22, 0.32), rng.uniform(0.6, 1.0)
    shoulder_h, neck_h = rng.uniform(0.12, 0.22), rng.uniform(0.15, 0.3)
    r_neck = rng.uniform(0.07, 0.1)
    top = body_h + shoulder_h + neck_h
    cap = [p.tinted() for p in cylinder(r_neck * 1.15, 0.07, (0.0, top - 0.035, 0.0))]
    return Geometry(
        [
            disk(r),
            frustum(r, r, body_h),
            frustum(r, r_neck, shoulder_h).placed((0.0, body_h, 0.0)),
            frustum(r_neck, r_neck, neck_h).placed((0.0, body_h + shoulder_h, 0.0)),
            *cap,
        ],
        "slim" if body_h / (2 * r) > 1.5 else "wide",
        ["a round body", "a narrow neck", "a small cap"],
        {},
    )


def _traffic_cone(rng: np.random.Generator) -> Geometry:
    b, base_t = rng.uniform(0.65, 0.8), 0.05
    r0, r1, h = b * rng.uniform(0.36, 0.42), rng.uniform(0.03, 0.05), rng.uniform(0.8, 1.1)
    # The cone is cut into three bands so the middle one can carry a stripe of the second color.
    cuts = [0.0, 0.45, 0.65, 1.0]
    radius = [r0 + (r1 - r0) * c for c in cuts]
    bands = [
        frustum(radius[i], radius[i + 1], (cuts[i + 1] - cuts[i]) * h).placed(
            (0.0, base_t + cuts[i] * h, 0.0)
        )
        for i in range(3)
    ]
    return Geometry(
        [
            box((b, base_t, b), (0.0, base_t / 2, 0.0)),
            bands[0],
            bands[1].tinted(),
            bands[2],
            disk(r1, y=base_t + h),
        ],
        "tall" if h / (2 * r0) > 1.6 else "squat",
        ["a square base", "a tapering cone"],
        {},
    )


def _ball(rng: np.random.Generator) -> Geometry:
    stripe = 0.5 * rng.uniform(0.1, 0.16)
    return Geometry(
        [
            sphere_zone(0.5, -0.5, -stripe),
            sphere_zone(0.5, -stripe, stripe).tinted(),
            sphere_zone(0.5, stripe, 0.5),
        ],
        None,
        ["a smooth round surface"],
        {},
    )


def _donut(rng: np.random.Generator) -> Geometry:
    major = rng.uniform(0.35, 0.45)
    ratio = rng.uniform(0.28, 0.55)
    return Geometry(
        [torus(major, major * ratio)],
        "thick" if ratio > 0.42 else "thin",
        ["a ring shape", "a round hole in the middle"],
        {},
    )


def _box(rng: np.random.Generator) -> Geometry:
    size = rng.uniform(0.5, 1.2, 3)
    sides = ("-x", "+x", "-y", "-z", "+z")
    return Geometry(
        [box(size, faces=sides), box(size, faces=("+y",)).tinted()],
        "cube-shaped" if size.max() / size.min() < 1.3 else "rectangular",
        ["six flat faces", "sharp corners"],
        {},
    )


def _pyramid(rng: np.random.Generator) -> Geometry:
    h = rng.uniform(0.55, 1.0)
    corners = np.array([[-0.5, 0, -0.5], [0.5, 0, -0.5], [0.5, 0, 0.5], [-0.5, 0, 0.5], [0, h, 0]])
    faces = np.array([[0, 1, 2], [0, 2, 3], [0, 4, 1], [1, 4, 2], [2, 4, 3], [3, 4, 0]])
    return Geometry(
        [triangles(corners, faces)],
        "tall" if h > 0.8 else "low",
        ["a square base", "four triangular sides", "a pointed top"],
        {"side": 4},
    )


def _arch(rng: np.random.Generator) -> Geometry:
    r, height, span = rng.uniform(0.08, 0.12), rng.uniform(0.4, 0.9), rng.uniform(0.6, 1.1)
    x = span / 2 + r
    pillars = [p for sx in (-1, 1) for p in cylinder(r, height, (sx * x, 0.0, 0.0))]
    top = torus(x, r, -np.pi, 0.0).placed((0.0, height, 0.0), _UPRIGHT)
    return Geometry(
        [*pillars, top],
        "tall" if height / span > 0.75 else "wide",
        ["two pillars", "a curved top joining them"],
        {"pillar": 2},
    )


def _dumbbell(rng: np.random.Generator) -> Geometry:
    length, r_bar, radius = rng.uniform(0.7, 1.1), rng.uniform(0.04, 0.06), rng.uniform(0.18, 0.28)
    weights = [sphere_zone(radius).placed((sx * length / 2, radius, 0.0)) for sx in (-1, 1)]
    bar = frustum(r_bar, r_bar, length).placed((-length / 2, radius, 0.0), _ALONG_X)
    return Geometry(
        [*weights, bar.tinted()],
        "long" if length / radius > 4 else "short",
        ["two round weights", "a bar joining them"],
        {"weight": 2},
    )


def _mushroom(rng: np.random.Generator) -> Geometry:
    r_stem, stem_h = rng.uniform(0.1, 0.17), rng.uniform(0.3, 0.6)
    cap_r, cut = rng.uniform(0.35, 0.5), rng.uniform(0.0, 0.3)
    center = stem_h + cap_r * cut
    stem = [disk(r_stem * 1.15), frustum(r_stem * 1.15, r_stem, stem_h)]
    return Geometry(
        [
            *(p.tinted() for p in stem),
            sphere_zone(cap_r, -cap_r * cut, cap_r).placed((0.0, center, 0.0)),
            disk(cap_r * np.sqrt(1 - cut**2), r_stem, y=stem_h),
        ],
        "tall" if stem_h > cap_r else "short",
        ["a thick stem", "a round cap"],
        {},
    )


def _rocket(rng: np.random.Generator) -> Geometry:
    r, body_h, nose_h = rng.uniform(0.14, 0.2), rng.uniform(0.9, 1.4), rng.uniform(0.3, 0.5)
    fins = int(rng.integers(3, 5))
    fin_h, fin_w = body_h * rng.uniform(0.3, 0.4), rng.uniform(0.2, 0.3)
    # One fin in the xy plane; copies are turned about the up axis.
    fin = triangles(
        np.array([[r, fin_h, 0], [r, 0, 0], [r + fin_w, -0.1, 0]]), np.array([[0, 1, 2]])
    )
    start = rng.uniform(0, 2 * np.pi)
    fin_parts = [
        fin.placed(rotation=_rotation("y", start + 2 * np.pi * k / fins)).tinted()
        for k in range(fins)
    ]
    return Geometry(
        [
            disk(r),
            frustum(r, r, body_h),
            frustum(r, 0.0, nose_h).placed((0.0, body_h, 0.0)).tinted(),
            *fin_parts,
        ],
        "slender" if body_h / (2 * r) > 3.5 else "stubby",
        ["a cylindrical body", "a pointed nose cone", f"{_NUMBER_WORDS[fins]} fins"],
        {"fin": fins},
    )


def _bowl(rng: np.random.Generator) -> Geometry:
    depth = rng.uniform(0.45, 0.9)
    squash = np.diag([1.0, depth, 1.0])  # flattens the hemispheres into a shallower bowl
    outer = sphere_zone(0.5, -0.5, 0.0).placed((0.0, 0.5 * depth, 0.0), squash)
    inner = sphere_zone(0.46, -0.46, 0.0).placed((0.0, 0.5 * depth, 0.0), squash)
    return Geometry(
        [outer, inner, disk(0.5, 0.46, y=0.5 * depth)],
        "deep" if depth > 0.7 else "shallow",
        ["a rounded hollow body", "an open top"],
        {},
    )


def _airplane(rng: np.random.Generator) -> Geometry:
    length, r, span = rng.uniform(1.6, 2.0), rng.uniform(0.09, 0.13), rng.uniform(1.4, 1.9)
    chord, sweep, nose = rng.uniform(0.25, 0.38), rng.uniform(0.1, 0.3), 0.25
    body = length - nose - 0.3
    x0 = -length / 2 + 0.3  # the fuselage runs along +x: tail cone, body, nose
    hull = [
        frustum(r, r, body).placed((x0, 0.0, 0.0), _ALONG_X),
        frustum(r, r * 0.2, nose).placed((x0 + body, 0.0, 0.0), _ALONG_X),
        frustum(r, r * 0.4, 0.3).placed((x0, 0.0, 0.0), _rotation("z", np.pi / 2)),
    ]
    wx = rng.uniform(-0.05, 0.15)
    wing = np.array(
        [
            [wx + chord / 2, 0, 0],
            [wx - chord / 2, 0, 0],
            [wx - sweep - chord / 4, 0, span / 2],
            [wx - sweep + chord / 4, 0, span / 2],
        ]
    )
    wings = [triangles(wing * [1, 1, sz], np.array([[0, 1, 2], [0, 2, 3]])) for sz in (-1, 1)]
    tx, tail_span = -length / 2 + 0.15, span * 0.3
    stabilizer = box((0.2, 0.02, tail_span), (tx, 0.0, 0.0))
    fin = triangles(
        np.array([[tx + 0.2, r, 0], [tx - 0.12, r, 0], [tx - 0.12, r + 0.3, 0]]),
        np.array([[0, 1, 2]]),
    )
    return Geometry(
        [*hull, *wings, stabilizer.tinted(), fin.tinted()],
        "long" if length > span else "wide",
        ["a long fuselage", "two wings", "a tail fin"],
        {"wing": 2},
    )


@dataclass(frozen=True)
class CategorySpec:
    """A category: its builder, synonyms, purpose, and the part a second color goes on."""

    name: str
    build: Callable[[np.random.Generator], Geometry]
    synonyms: tuple[str, ...]
    use: str  # completes "It is used ..."
    secondary_part: str | None  # the tinted parts, e.g. "legs"; None: single-colored category
    secondary_plural: bool = False
    secondary_feature: str | None = None  # a feature only visible in two colors, e.g. a stripe


_STRIPE = "a stripe around the middle"
_SPECS = (
    CategorySpec("mug", _mug, ("cup", "coffee mug"), "for drinking coffee or tea", "handle"),
    CategorySpec("table", _table, ("desk",), "for eating or working at", "legs", True),
    CategorySpec("chair", _chair, ("seat", "stool"), "for sitting", "legs", True),
    CategorySpec("lamp", _lamp, ("desk lamp", "floor lamp", "light"), "for lighting", "stand"),
    CategorySpec("bottle", _bottle, ("flask",), "for holding and pouring liquids", "cap"),
    CategorySpec(
        "traffic cone",
        _traffic_cone,
        ("cone", "pylon"),
        "to guide traffic",
        "stripe",
        False,
        _STRIPE,
    ),
    CategorySpec("ball", _ball, ("sphere", "orb"), "for playing games", "stripe", False, _STRIPE),
    CategorySpec("donut", _donut, ("doughnut", "torus", "ring"), "as a sweet snack", None),
    CategorySpec(
        "box", _box, ("cube", "crate", "cuboid"), "for storing things", "lid", False, "a lid"
    ),
    CategorySpec("pyramid", _pyramid, (), "as a monument or a decoration", None),
    CategorySpec("arch", _arch, ("archway", "gate"), "as a gateway", None),
    CategorySpec("dumbbell", _dumbbell, ("barbell", "weight"), "for strength training", "bar"),
    CategorySpec("mushroom", _mushroom, ("toadstool", "fungus"), "as food", "stem"),
    CategorySpec(
        "rocket", _rocket, ("spaceship", "missile"), "for space flight", "nose and fins", True
    ),
    CategorySpec("bowl", _bowl, ("dish",), "for holding soup or cereal", None),
    CategorySpec("airplane", _airplane, ("plane", "aircraft", "jet"), "for flying", "tail"),
)
_SPEC_BY_NAME = {spec.name: spec for spec in _SPECS}

CATEGORIES: tuple[str, ...] = tuple(spec.name for spec in _SPECS)  # label index = position
CATEGORY_SYNONYMS: dict[str, list[str]] = {spec.name: list(spec.synonyms) for spec in _SPECS}


# --------------------------------------------------------------------------- objects


def _allocate(areas: np.ndarray, n: int) -> np.ndarray:
    """Split n points over parts in proportion to area (largest remainders get the leftovers)."""
    exact = n * areas / areas.sum()
    counts = np.floor(exact).astype(np.int64)
    leftover = n - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:leftover]] += 1
    return counts


def _random_pose(rng: np.random.Generator) -> np.ndarray:
    """Rotation (3, 3): any turn about the up axis, then a tilt of at most ~10 degrees."""
    tilt_x, tilt_z = np.clip(rng.normal(0.0, np.radians(4.0), 2), -np.radians(10), np.radians(10))
    return (
        _rotation("x", tilt_x) @ _rotation("z", tilt_z) @ _rotation("y", rng.uniform(0, 2 * np.pi))
    )


def _normalize(xyz: np.ndarray) -> np.ndarray:
    """Center on the centroid and scale into the unit sphere, like PointLLM's pc_norm. (N, 3)."""
    xyz = xyz - xyz.mean(axis=0)
    max_sq = float(np.einsum("ij,ij->i", xyz, xyz).max())  # faster than linalg.norm here
    return xyz / max(np.sqrt(max_sq), 1e-12)


def make_object(
    category: str,
    rng: np.random.Generator,
    num_points: int = 8192,
    *,
    noise: float = 0.004,
) -> tuple[np.ndarray, dict]:
    """One random object of a category.

    Returns points (num_points, 6) float32 (xyz in the unit sphere, rgb in [0, 1], shuffled) and an
    info dict: category, label, color, secondary_color (None when single-colored), secondary_part,
    secondary_plural, adjective, features, counts. noise is the xyz jitter's standard deviation
    in object units (objects are about one unit across before normalization).
    """
    spec = _SPEC_BY_NAME.get(category)
    if spec is None:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    geometry = spec.build(rng)
    color_idx = int(rng.integers(len(COLOR_NAMES)))
    second_idx = None
    if spec.secondary_part is not None and rng.random() < 0.5:
        second_idx = (color_idx + int(rng.integers(1, len(COLOR_NAMES)))) % len(COLOR_NAMES)

    parts = geometry.parts
    counts = _allocate(np.array([p.area for p in parts]), num_points)
    xyz = np.concatenate([p.sample(rng, int(c)) for p, c in zip(parts, counts)])  # (N, 3)
    secondary = np.repeat([p.secondary for p in parts], counts)  # (N,)

    # Each object gets its own shade of the palette color; points get a little speckle.
    base = _PALETTE_RGB[color_idx] + rng.uniform(-0.05, 0.05, 3)
    rgb = np.broadcast_to(base, (num_points, 3)).copy()
    if second_idx is not None:
        rgb[secondary] = _PALETTE_RGB[second_idx] + rng.uniform(-0.05, 0.05, 3)
    rgb = np.clip(rgb + 0.02 * rng.standard_normal(rgb.shape, dtype=np.float32), 0.0, 1.0)

    xyz = _normalize(xyz @ _random_pose(rng).T + rng.normal(0.0, noise, xyz.shape))
    order = rng.permutation(num_points)
    points = np.concatenate([xyz, rgb], axis=1)[order].astype(np.float32)
    features = list(geometry.features)
    if second_idx is not None and spec.secondary_feature:
        features.append(spec.secondary_feature)
    info = {
        "category": spec.name,
        "label": CATEGORIES.index(spec.name),
        "color": COLOR_NAMES[color_idx],
        "secondary_color": None if second_idx is None else COLOR_NAMES[second_idx],
        "secondary_part": spec.secondary_part if second_idx is not None else None,
        "secondary_plural": spec.secondary_plural,
        "adjective": geometry.adjective,
        "features": features,
        "counts": dict(geometry.counts),
    }
    return points, info


# --------------------------------------------------------------------------- text

POINT_TOKEN = "<point>"

BRIEF_PROMPTS = (
    "What is this?",
    "Summarize this 3D point cloud briefly.",
    "What kind of object is depicted by this point cloud?",
    "Provide a short explanation of this 3D structure.",
    "What does this collection of points represent?",
    "Offer a succinct summary of this 3D object.",
    "Can you give a brief overview of this point cloud?",
    "Characterize the object this point cloud is illustrating.",
    "Share a brief interpretation of this 3D point cloud.",
    "What object is this point cloud rendering?",
    "Deliver a quick description of the object represented here.",
    "How would you describe the 3D form shown in this point cloud?",
    "Give a concise interpretation of the 3D data presented here.",
    "Briefly describe this object.",
)
DETAILED_PROMPTS = (
    "Caption this 3D model in detail.",
    "Describe this 3D object in detail.",
    "Give a detailed description of this point cloud.",
    "What can you tell me about this object? Please be detailed.",
    "Describe the shape, parts and color of this object.",
    "Write a few sentences describing this 3D model.",
)


def _a(phrase: str) -> str:
    """Phrase with its indefinite article: 'an orange mug', 'a red mug'."""
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _noun(info: dict, with_adjective: bool = True) -> str:
    """'tall red mug' (adjective, color, category)."""
    words = [info["adjective"]] if with_adjective and info["adjective"] else []
    return " ".join([*words, info["color"], info["category"]])


def _second_color_phrase(info: dict) -> str:
    """'a white handle' / 'blue legs'."""
    phrase = f"{info['secondary_color']} {info['secondary_part']}"
    return phrase if info["secondary_plural"] else _a(phrase)


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def brief_caption(info: dict, rng: np.random.Generator) -> str:
    """One-sentence caption naming color and category, e.g. 'A red mug with a handle.'"""
    noun = _noun(info, with_adjective=rng.random() < 0.5)
    if info["secondary_color"]:
        feature = _second_color_phrase(info)
    else:
        feature = _pick(rng, info["features"]) if rng.random() < 0.6 else None
    subject = _pick(rng, ("{}", "This is {}", "A 3D model of {}", "It is {}")).format(_a(noun))
    text = f"{subject} with {feature}" if feature else subject
    return text[0].upper() + text[1:] + "."


def detailed_description(info: dict, rng: np.random.Generator) -> str:
    """Two or three sentences: what it is, its parts, then its colors or purpose."""
    first = _pick(rng, ("This is {}.", "The point cloud shows {}.", "This 3D model depicts {}."))
    sentences = [
        first.format(_a(_noun(info))),
        _pick(rng, ("It has {}.", "It consists of {}.", "It is made of {}.")).format(
            _join(info["features"])
        ),
    ]
    if info["secondary_color"]:
        verb = "are" if info["secondary_plural"] else "is"
        sentences.append(
            f"Its {info['secondary_part']} {verb} {info['secondary_color']}, while the rest is {info['color']}."
        )
    else:
        use = _SPEC_BY_NAME[info["category"]].use
        sentences.append(f"{_a(info['category']).capitalize()} like this is used {use}.")
    return " ".join(sentences)


def _qa_identity(info: dict, rng: np.random.Generator) -> tuple[str, str]:
    q = _pick(
        rng,
        (
            "What is this object?",
            "What kind of object is this?",
            "What does this point cloud represent?",
            "Can you identify this object?",
        ),
    )
    a = _pick(rng, ("This is {}.", "It is {}.", "It looks like {}.")).format(_a(info["category"]))
    return q, a


def _qa_color(info: dict, rng: np.random.Generator) -> tuple[str, str]:
    q = _pick(
        rng,
        (
            "What color is this object?",
            "What color is it?",
            "What is the main color of this object?",
        ),
    )
    if info["secondary_color"]:
        verb = "are" if info["secondary_plural"] else "is"
        return (
            q,
            f"It is mostly {info['color']}, and its {info['secondary_part']} {verb} {info['secondary_color']}.",
        )
    return q, _pick(rng, ("It is {color}.", "The {category} is {color}.")).format(**info)


def _qa_parts(info: dict, rng: np.random.Generator) -> tuple[str, str]:
    q = _pick(
        rng,
        (
            "What parts does this object have?",
            "Describe the structure of this object.",
            "What is this object made of?",
        ),
    )
    return q, f"It is {_a(info['category'])} with {_join(info['features'])}."


def _qa_use(info: dict, rng: np.random.Generator) -> tuple[str, str]:
    q = _pick(rng, ("What is this object used for?", "What could this object be used for?"))
    return q, f"It is {_a(info['category'])}, used {_SPEC_BY_NAME[info['category']].use}."


def _qa_yes_no(info: dict, rng: np.random.Generator) -> tuple[str, str]:
    if rng.random() < 0.5:
        return f"Is this {_a(info['category'])}?", f"Yes, it is {_a(_noun(info))}."
    other = _pick(rng, [c for c in CATEGORIES if c != info["category"]])
    return f"Is this {_a(other)}?", f"No, it is {_a(info['category'])}, not {_a(other)}."


def _qa_count(info: dict, rng: np.random.Generator) -> tuple[str, str]:
    noun, n = _pick(rng, sorted(info["counts"].items()))
    plural = noun if n == 1 else f"{noun}s"
    return (
        f"How many {noun}s does this {info['category']} have?",
        f"It has {_NUMBER_WORDS[n]} {plural}.",
    )


def _qa_shape(info: dict, rng: np.random.Generator) -> tuple[str, str]:
    q = _pick(rng, ("How would you describe its shape?", "What does its overall shape look like?"))
    return q, f"It is {_a(_noun(info))} with {_join(info['features'])}."


def _questions(info: dict) -> list[Callable[[dict, np.random.Generator], tuple[str, str]]]:
    """The question kinds that make sense for this object."""
    kinds = [_qa_identity, _qa_color, _qa_parts, _qa_use, _qa_yes_no]
    if info["counts"]:
        kinds.append(_qa_count)
    if info["adjective"]:
        kinds.append(_qa_shape)
    return kinds


def qa_pairs(info: dict, rng: np.random.Generator, k: int) -> list[tuple[str, str]]:
    """k question/answer pairs about the object, each of a different kind."""
    kinds = _questions(info)
    chosen = rng.choice(len(kinds), size=min(k, len(kinds)), replace=False)
    return [kinds[int(i)](info, rng) for i in chosen]


def _conversation(object_id: str, kind: str, turns: list[tuple[str, str]]) -> dict:
    """Annotation record; the point placeholder opens the first human turn, as in PointLLM."""
    messages = []
    for i, (question, answer) in enumerate(turns):
        value = f"{POINT_TOKEN}\n{question}" if i == 0 else question
        messages += [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]
    return {"object_id": object_id, "conversation_type": kind, "conversations": messages}


# --------------------------------------------------------------------------- dataset


def _plan(num_objects: int, seed: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels (num_objects,) and a held-out mask (num_objects,), both balanced by class."""
    order = np.random.default_rng([seed]).permutation(num_objects)
    labels = np.empty(num_objects, dtype=np.int64)
    labels[order] = np.arange(num_objects) % len(CATEGORIES)
    num_val = min(int(round(num_objects * val_fraction)), num_objects - 1)
    is_val = np.zeros(num_objects, dtype=bool)
    is_val[order[:num_val]] = True
    return labels, is_val


def generate_dataset(
    out_dir: str | Path,
    num_objects: int,
    seed: int,
    num_points: int = 8192,
    val_fraction: float = 0.2,
) -> dict:
    """Write a synthetic dataset in the original PointLLM layout; same seed, same bytes.

    Layout: points/{object_id}_{num_points}.npy (num_points, 6) float32; anno/stage1_brief.json
    (simple_description), anno/stage2_instruct.json (detailed_description, single_round and
    multi_round for every training object), anno/val_gt.json (held-out objects, in the format of
    PointLLM_brief_description_val_200_GT.json), anno/val_cls.json ({object_id, label, label_name}),
    meta.json. Each object draws from its own seeded stream, so an object does not depend on
    num_objects. Returns the written paths and counts.
    """
    if num_objects < 1:
        raise ValueError(f"num_objects must be >= 1, got {num_objects}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = Path(out_dir)
    paths = {
        "points_dir": out / "points",
        "stage1": out / "anno" / "stage1_brief.json",
        "stage2": out / "anno" / "stage2_instruct.json",
        "val_gt": out / "anno" / "val_gt.json",
        "val_cls": out / "anno" / "val_cls.json",
        "meta": out / "meta.json",
    }
    labels, is_val = _plan(num_objects, seed, val_fraction)
    stage1: list[dict] = []
    stage2: list[dict] = []
    val_gt: list[dict] = []
    val_cls: list[dict] = []
    objects: dict[str, dict] = {}
    for i in range(num_objects):
        object_id = f"synth_{i:06d}"
        points, info = make_object(
            CATEGORIES[labels[i]], np.random.default_rng([seed, i, 0]), num_points
        )
        buffer = io.BytesIO()
        np.save(buffer, points)
        write_bytes(paths["points_dir"] / f"{object_id}_{num_points}.npy", buffer.getvalue())

        rng = np.random.default_rng([seed, i, 1])  # text stream, independent of the geometry
        brief = _conversation(
            object_id, "simple_description", [(_pick(rng, BRIEF_PROMPTS), brief_caption(info, rng))]
        )
        split = "val" if is_val[i] else "train"
        if is_val[i]:
            val_gt.append(brief)
            val_cls.append(
                {"object_id": object_id, "label": info["label"], "label_name": info["category"]}
            )
        else:
            stage1.append(brief)
            detailed = (_pick(rng, DETAILED_PROMPTS), detailed_description(info, rng))
            stage2 += [
                _conversation(object_id, "detailed_description", [detailed]),
                _conversation(object_id, "single_round", qa_pairs(info, rng, 1)),
                _conversation(
                    object_id, "multi_round", qa_pairs(info, rng, int(rng.integers(2, 4)))
                ),
            ]
        objects[object_id] = {
            "category": info["category"],
            "label": info["label"],
            "color": info["color"],
            "secondary_color": info["secondary_color"],
            "split": split,
        }

    counts = {
        "objects": num_objects,
        "train": int((~is_val).sum()),
        "val": int(is_val.sum()),
        "stage1": len(stage1),
        "stage2": len(stage2),
    }
    write_json(paths["stage1"], stage1)
    write_json(paths["stage2"], stage2)
    write_json(paths["val_gt"], val_gt)
    write_json(paths["val_cls"], val_cls)
    write_json(
        paths["meta"],
        {
            "generator": "pointllm.data.synthetic",
            "format_version": 1,
            "seed": seed,
            "num_points": num_points,
            "val_fraction": val_fraction,
            "up_axis": UP_AXIS,
            "categories": list(CATEGORIES),
            "category_synonyms": CATEGORY_SYNONYMS,
            "colors": {name: list(rgb) for name, rgb in PALETTE.items()},
            "counts": counts,
            "split": {
                "train": [oid for oid, o in objects.items() if o["split"] == "train"],
                "val": [oid for oid, o in objects.items() if o["split"] == "val"],
            },
            "objects": objects,
        },
    )
    return {"out_dir": str(out), **{k: str(v) for k, v in paths.items()}, "counts": counts}
