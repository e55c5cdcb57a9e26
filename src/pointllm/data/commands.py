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


def _check(args: argparse.Namespace) -> int:
    """Check an annotation file against its point files; print a table; 1 if anything is wrong."""
    from pointllm.data.check import check_annotations, write_clean_annotations
    from pointllm.data.dataset import read_annotations

    tokenizer = _tokenizer_with_point_tokens(args.tokenizer) if args.tokenizer else None
    records = read_annotations(args.anno)
    report = check_annotations(
        records,
        args.data_dir,
        tokenizer=tokenizer,
        template=args.template,
        num_point_tokens=args.num_point_tokens,
        max_length=args.max_length,
        num_points=args.num_points,
        deep=args.deep,
    )
    print(f"{args.anno} (points in {args.data_dir}):")
    print(report.table())
    if args.write_clean:
        written = write_clean_annotations(records, report, args.write_clean)
        print(f"wrote {written} good samples to {args.write_clean}")
    return 1 if report.problems else 0


def _tokenizer_with_point_tokens(name_or_path: str):
    """The tokenizer of a PointLLM checkpoint or LLM folder, with the point tokens it may lack
    (added here only to count lengths)."""
    from transformers import AutoTokenizer

    from pointllm.config import POINT_END_TOKEN, POINT_PATCH_TOKEN, POINT_START_TOKEN
    from pointllm.model.backbones import resolve_backbone

    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(name_or_path))
    tokenizer.add_tokens(
        [POINT_PATCH_TOKEN, POINT_START_TOKEN, POINT_END_TOKEN], special_tokens=True
    )
    return tokenizer


def _convert_modelnet(args: argparse.Namespace) -> int:
    """Rewrite the pickled ModelNet40 test set as a plain .npz that loads without trust."""
    from pointllm.data.modelnet import convert_modelnet40

    count = convert_modelnet40(args.src, args.dst, trust_pickle=args.trust_pickle)
    print(f"wrote {count} clouds to {args.dst} (loads without --trust-pickle)")
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


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="check an annotation file and its point files; optionally write a cleaned copy",
        description="Check every sample of a PointLLM annotation JSON: schema, conversation "
        "roles, <point> count, that its {object_id}_8192.npy exists and holds an (N, 6) float "
        "array and, with --tokenizer, that it fits --max-length tokens. Prints a summary table; "
        "exit status 1 if any sample is bad.",
    )
    p.add_argument("--anno", required=True, help="annotation JSON file")
    p.add_argument("--data-dir", required=True, help="folder of {object_id}_8192.npy files")
    p.add_argument("--write-clean", metavar="OUT", help="write the good samples to this JSON")
    p.add_argument(
        "--tokenizer", help="tokenizer folder (or smollm2-135m) to check lengths; else skipped"
    )
    p.add_argument(
        "--template",
        choices=("chat_template", "vicuna_v1_1"),
        default="chat_template",
        help="prompt template for the length check (chat_template)",
    )
    p.add_argument("--num-point-tokens", type=int, default=513, help="tokens per point block (513)")
    p.add_argument("--max-length", type=int, default=2048, help="model max length (2048)")
    p.add_argument("--num-points", type=int, default=8192, help="points the model samples (8192)")
    p.add_argument(
        "--deep",
        action="store_true",
        help="load every point file fully (slower), not just its header",
    )
    p.set_defaults(func=_check, needs_model=False)


def _add_convert_modelnet(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-modelnet",
        help="convert the pickled ModelNet40 .dat test set to a safe .npz",
        description="Rewrite modelnet40_test_8192pts_fps.dat (a pickle: loading it runs code) as "
        "a plain .npz of points and labels that loads without trusting the file.",
    )
    p.add_argument("src", help="modelnet40_test_8192pts_fps.dat")
    p.add_argument("dst", help="output .npz")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="unpickle SRC: only for a file from a source you trust",
    )
    p.set_defaults(func=_convert_modelnet, needs_model=False)


_SUBCOMMANDS = (_add_synth, _add_show, _add_check, _add_convert_modelnet)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `data` and its subcommands to the top-level `pointllm` parser."""
    data = subparsers.add_parser("data", help="make, inspect and convert point-cloud datasets")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
