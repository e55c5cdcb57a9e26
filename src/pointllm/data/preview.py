"""PNG previews of colored point clouds: three views side by side, drawn with matplotlib's Agg."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pointllm.atomic import write_bytes

# (title, elevation, azimuth) in matplotlib's z-up frame; the cloud is y-up, see _to_plot_frame.
_VIEWS = (("front", 10.0, -90.0), ("side", 10.0, 0.0), ("oblique", 35.0, -55.0))
_MAX_DRAWN = 4096  # drawing more points only slows the scatter down
_BACKGROUND = "#8c8c8c"  # mid gray, so white and black objects both show


def _to_plot_frame(xyz: np.ndarray) -> np.ndarray:
    """y-up cloud (N, 3) -> matplotlib's z-up frame (N, 3), a proper rotation (no mirroring)."""
    return np.stack([xyz[:, 0], -xyz[:, 2], xyz[:, 1]], axis=1)


def save_preview(points: np.ndarray, path: str | Path, title: str | None = None) -> Path:
    """Render points (N, 6) xyz+rgb (or (N, 3), drawn gray) to a PNG at path, written atomically."""
    # Imported here: matplotlib costs ~0.5 s and only previews need it. The Figure API with an
    # explicit Agg canvas avoids pyplot's global backend and figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] not in (3, 6) or len(points) == 0:
        raise ValueError(
            f"preview needs points of shape (N, 3) or (N, 6) with N > 0, got {points.shape}"
        )
    if not np.isfinite(points).all():
        raise ValueError("preview needs finite point values; got NaN or inf")
    step = max(1, len(points) // _MAX_DRAWN)
    shown = points[::step]
    xyz = _to_plot_frame(shown[:, :3].astype(np.float64))
    rgb = np.clip(shown[:, 3:6], 0.0, 1.0) if shown.shape[1] == 6 else np.full((len(shown), 3), 0.8)
    limit = float(np.abs(xyz).max()) or 1.0

    fig = Figure(figsize=(12, 4.4), dpi=100, facecolor=_BACKGROUND)
    FigureCanvasAgg(fig)
    for i, (name, elev, azim) in enumerate(_VIEWS):
        ax = fig.add_subplot(1, len(_VIEWS), i + 1, projection="3d")
        ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=rgb, s=3, depthshade=False, linewidths=0)
        ax.view_init(elev=elev, azim=azim)
        ax.set(xlim=(-limit, limit), ylim=(-limit, limit), zlim=(-limit, limit))
        ax.set_box_aspect((1, 1, 1), zoom=1.5)  # the unit cloud never reaches the cube corners
        ax.set_axis_off()
        ax.set_facecolor(_BACKGROUND)
        # At the bottom: a title above the panel would collide with the figure's title.
        ax.text2D(0.5, 0.04, name, transform=ax.transAxes, ha="center", color="white")
    if title:
        fig.suptitle(title, color="white")
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.9, wspace=0)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor=_BACKGROUND)
    path = Path(path)
    write_bytes(path, buffer.getvalue())
    return path
