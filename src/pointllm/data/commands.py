"""`pointllm data ...`: make, inspect and convert point-cloud datasets.

Each subcommand is one `_add_*` function that builds its parser and names its handler; adding a
subcommand means writing one more and listing it in `_SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _synth(args: argparse.Namespace) -> int:
    """Generate a synthetic dataset in the PointLLM layout and print what was written."""
    import time

    from pointllm.data.synthetic import CATEGORIES, generate_dataset

    start = time.perf_counter()
    summary = generate_dataset(
        args.out, args.num, args.seed, num_points=args.num_points, val_fraction=args.val_fraction
    )
    seconds = time.perf_counter() - start
    counts = summary["counts"]
    print(
        f"wrote {counts['objects']} objects ({counts['train']} train, {counts['val']} val) of "
        f"{len(CATEGORIES)} categories to {summary['out_dir']} in {seconds:.1f} s "
        f"({counts['objects'] / seconds:.0f} objects/s)"
    )
    print(f"  points:  {summary['points_dir']}/<object_id>_{args.num_points}.npy")
    print(f"  stage 1: {summary['stage1']} ({counts['stage1']} conversations)")
    print(f"  stage 2: {summary['stage2']} ({counts['stage2']} conversations)")
    print(f"  val:     {summary['val_gt']}, {summary['val_cls']} ({counts['val']} objects)")
    print(f"  meta:    {summary['meta']}")
    return 0


def _show(args: argparse.Namespace) -> int:
    """Load a point cloud as the model would, print its statistics and write a PNG preview."""
    from pointllm.data.io import load_point_cloud
    from pointllm.data.preview import save_preview
    from pointllm.data.synthetic import nearest_color_name

    points = load_point_cloud(args.file, num_points=args.num_points, use_color=True)
    xyz, rgb = points[:, :3], points[:, 3:6]
    mean_rgb = rgb.mean(axis=0)
    fmt = " ".join
    print(f"{args.file}: {len(points)} points x {points.shape[1]} channels (xyz + rgb)")
    print(f"  xyz min:    {fmt(f'{v:+.3f}' for v in xyz.min(axis=0))}")
    print(f"  xyz max:    {fmt(f'{v:+.3f}' for v in xyz.max(axis=0))}")
    print(
        f"  mean color: {fmt(f'{v:.3f}' for v in mean_rgb)} "
        f"(nearest named: {nearest_color_name(mean_rgb)})"
    )
    file = Path(args.file)
    out = Path(args.out) if args.out else file.with_name(f"{file.stem}_preview.png")
    save_preview(points, out, title=file.name)
    print(f"  preview:    {out}")
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="generate a synthetic colored-object dataset (stage 1/2 annotations, val split)",
        description="Generate colored objects built from primitives, with captions and "
        "instructions, in the original PointLLM layout. Same seed, same bytes.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num", type=int, required=True, help="number of objects")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--num-points", type=int, default=8192, help="points per object (8192)")
    p.add_argument(
        "--val-fraction", type=float, default=0.2, help="held-out share of objects (0.2)"
    )
    p.set_defaults(func=_synth)


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show",
        help="print a point cloud's statistics and write a PNG preview",
        description="Load a point cloud or mesh (npy, ply, pcd, xyz, obj, glb, stl, off) as "
        "the model sees it, print its statistics and render three views to a PNG.",
    )
    p.add_argument("file", help="point cloud or mesh file")
    p.add_argument("--out", help="PNG path (default: <file stem>_preview.png next to the file)")
    p.add_argument("--num-points", type=int, default=8192, help="points to load (8192)")
    p.set_defaults(func=_show)


_SUBCOMMANDS = (_add_synth, _add_show)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `data` and its subcommands to the top-level `pointllm` parser."""
    data = subparsers.add_parser("data", help="make, inspect and convert point-cloud datasets")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
