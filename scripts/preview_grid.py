"""A picture of a trained demo: held-out objects as the model sees them, each with a question and
the model's answer, in one small PNG.

    python scripts/preview_grid.py runs/demo --out docs/demo_grid.png
    python scripts/preview_grid.py runs/demo --out docs/demo_grid.png --ask 6

It reads the chat examples `pointllm demo` saved (`chat/examples.json`); `--ask N` also asks the
demo's final model (`stage2/`) about N more held-out objects (`synth/anno/val_cls.json`), one per
category. Each object is drawn by `pointllm.data.save_preview` (the picture `pointllm data show`
makes). The PNG is palette-compressed and shrunk until it fits `--max-kb`.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

DEFAULT_QUESTION = "What is this?"
MAX_ANSWER_CHARS = 220  # longer answers are cut with an ellipsis, so panels stay one size
TEXT_WIDTH = 70  # characters per line in a panel


@dataclass
class Panel:
    object_id: str
    category: str
    question: str
    answer: str
    points: Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preview_grid.py", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("demo_dir", type=Path, help="a finished `pointllm demo` folder")
    parser.add_argument(
        "--out", type=Path, help="PNG to write (default: DEMO_DIR/preview_grid.png)"
    )
    parser.add_argument("--ask", type=int, default=0, help="also ask the model about N objects (0)")
    parser.add_argument("--question", default=DEFAULT_QUESTION, help="question for --ask")
    parser.add_argument("--columns", type=int, default=3, help="panels per row (3)")
    parser.add_argument("--max-kb", type=int, default=300, help="largest PNG size in KB (300)")
    parser.add_argument("--device", default="auto", help="device for --ask: auto, cpu, cuda")
    return parser


def _points_file(demo_dir: Path, object_id: str, recorded: str | None) -> Path:
    from pointllm.eval.run import point_file

    try:
        return point_file(demo_dir / "synth" / "points", object_id)
    except (FileNotFoundError, ValueError):
        if recorded and Path(recorded).is_file():
            return Path(recorded)
        raise FileNotFoundError(
            f"{demo_dir / 'synth' / 'points'}: no point file for object {object_id!r}"
        ) from None


def saved_examples(demo_dir: Path) -> list[Panel]:
    """The demo's chat examples (object, question, answer), or [] when there are none."""
    path = demo_dir / "chat" / "examples.json"
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text())
        return [
            Panel(
                r["object_id"],
                r["category"],
                r["question"],
                r["answer"],
                _points_file(demo_dir, r["object_id"], r.get("points")),
            )
            for r in records
        ]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a demo examples file ({exc})") from None


def ask_model(
    demo_dir: Path, count: int, question: str, exclude: set[str], device: str = "auto"
) -> list[Panel]:
    """Ask the demo's final model `question` about `count` held-out objects, one per category
    first (then more of the same categories), skipping object ids in `exclude`."""
    import pointllm

    split = demo_dir / "synth" / "anno" / "val_cls.json"
    if not split.is_file():
        raise FileNotFoundError(f"{split}: the demo's held-out split is missing")
    rows = [r for r in json.loads(split.read_text()) if r["object_id"] not in exclude]
    first_of_category, rest, seen = [], [], set()
    for row in rows:
        (rest if row["label_name"] in seen else first_of_category).append(row)
        seen.add(row["label_name"])
    chosen = (first_of_category + rest)[:count]
    if not chosen:
        return []
    llm = pointllm.load(demo_dir / "stage2", device=device)
    files = [_points_file(demo_dir, r["object_id"], None) for r in chosen]
    answers = llm.generate_batch([(f, question) for f in files], max_new_tokens=64)
    return [
        Panel(r["object_id"], r["label_name"], question, a, f)
        for r, a, f in zip(chosen, answers, files)
    ]


def _caption(panel: Panel) -> str:
    answer = " ".join(panel.answer.split())
    if len(answer) > MAX_ANSWER_CHARS:
        answer = answer[: MAX_ANSWER_CHARS - 1].rstrip() + "…"
    lines = textwrap.wrap(f"Q: {panel.question}", TEXT_WIDTH)
    lines += textwrap.wrap(f"A: {answer}", TEXT_WIDTH)
    return "\n".join(lines)


def _preview_images(panels: list[Panel], num_points: int) -> list:
    """Each object drawn by save_preview (three views), as an RGB array."""
    from matplotlib.image import imread

    from pointllm.data import load_point_cloud, save_preview

    images = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, panel in enumerate(panels):
            cloud = load_point_cloud(panel.points, num_points=num_points)
            png = save_preview(cloud, Path(scratch) / f"{i}.png", title=f"a {panel.category}")
            images.append(imread(png)[:, :, :3])
    return images


def render_grid(
    panels: list[Panel], out: Path, columns: int = 3, max_kb: int = 300, num_points: int = 8192
) -> tuple[int, int]:
    """Write the grid PNG (atomically); returns its (width, height) in pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    from pointllm.atomic import write_bytes

    if not panels:
        raise ValueError("nothing to draw: no examples and no --ask")
    if columns < 1:
        raise ValueError(f"--columns must be >= 1, got {columns}")
    images = _preview_images(panels, num_points)
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    cell_w, image_h, text_h = 6.0, 2.2, 1.3  # inches: a preview is 12 x 4.4 at half size
    fig = Figure(figsize=(columns * cell_w, rows * (image_h + text_h)), facecolor="white")
    FigureCanvasAgg(fig)
    height = rows * (image_h + text_h)
    for i, (panel, image) in enumerate(zip(panels, images)):
        row, col = divmod(i, columns)
        top = 1 - row * (image_h + text_h) / height
        ax = fig.add_axes((col / columns, top - image_h / height, 1 / columns, image_h / height))
        ax.imshow(image)
        ax.set_axis_off()
        fig.text(
            col / columns + 0.01,
            top - image_h / height - 0.01,
            _caption(panel),
            va="top",
            ha="left",
            fontsize=8.5,
            family="DejaVu Sans",
        )
    for dpi in (100, 85, 70, 55, 40):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").quantize(colors=128)
        packed = io.BytesIO()
        image.save(packed, format="PNG", optimize=True)
        if packed.tell() <= max_kb * 1024:
            write_bytes(out, packed.getvalue())
            return image.size
    raise ValueError(f"cannot fit {len(panels)} panels into {max_kb} KB; use fewer (--ask)")


def model_num_points(demo_dir: Path) -> int:
    """Points per cloud the demo's model reads (its config), else the demo's 1024."""
    config = demo_dir / "stage2" / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("num_points", 1024))
    return 1024


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    demo_dir: Path = args.demo_dir
    out = args.out or demo_dir / "preview_grid.png"
    try:
        if not demo_dir.is_dir():
            raise FileNotFoundError(f"{demo_dir}: no such demo folder (run `pointllm demo`)")
        panels = saved_examples(demo_dir)
        if args.ask:
            seen = {p.object_id for p in panels}
            panels += ask_model(demo_dir, args.ask, args.question, seen, device=args.device)
        if not panels:
            raise FileNotFoundError(
                f"{demo_dir / 'chat' / 'examples.json'}: no chat examples; finish the demo or use --ask N"
            )
        width, height = render_grid(
            panels, out, args.columns, args.max_kb, model_num_points(demo_dir)
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"preview_grid: error: {exc}", file=sys.stderr)
        return 1
    print(f"{out}: {len(panels)} objects, {width}x{height} px, {out.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
