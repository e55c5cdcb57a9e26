"""`pointllm pretrain-encoder`: stage 0 from flags or a recipe; the work is in `run`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pointllm.presets import POINT_BERT_PRESETS, POINT_BERT_SIZE_FIELDS

DEFAULT_CHECKPOINT = "point_bert.pt"


def _handle(args: argparse.Namespace) -> int:
    from pointllm.pretrain.recipe import read_recipe, resolve_encoder
    from pointllm.pretrain.run import pretrain_encoder

    options = read_recipe(args.config) if args.config else {}
    for key in (*POINT_BERT_SIZE_FIELDS, "num_points"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.preset:
        options["point_backbone"] = args.preset
    if args.no_color:
        options["use_color"] = False
    anno = args.anno or options.get("anno_path")
    points = args.points or options.get("data_path")
    checkpoint = (
        Path(args.out) / DEFAULT_CHECKPOINT if args.out else options.get("point_backbone_ckpt")
    )
    missing = [
        flag
        for flag, value in (("--anno", anno), ("--points", points), ("--out", checkpoint))
        if value is None
    ]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (give them, or a recipe with --config)")
    config, num_points = resolve_encoder(options)
    result = pretrain_encoder(
        anno,
        points,
        checkpoint,
        point_config=config,
        num_points=num_points,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        augment=not args.no_augment,
        eval_cls_path=args.eval_cls,
        seed=args.seed,
        device=args.device,
        bf16={"auto": None, "bf16": True, "fp32": False}[args.precision],
    )
    print(
        f"stage 0: {result.steps} steps on {result.num_train_objects} objects in "
        f"{result.seconds:.0f} s ({result.precision}), final loss {result.final_loss:.3f}"
    )
    if result.zero_shot_accuracy is not None:
        print(
            f"  zero-shot accuracy on {result.num_eval_objects} held-out objects: "
            f"{100 * result.zero_shot_accuracy:.1f} % ({result.num_classes} classes, chance "
            f"{100 / result.num_classes:.1f} %)"
        )
    print(f"  encoder: {result.checkpoint} (config {result.config_path})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain-encoder",
        help="stage 0: pre-train the Point-BERT encoder against caption embeddings",
        description="Stage 0: align a Point-BERT encoder with the sentence embeddings of the "
        "captions (frozen all-MiniLM-L6-v2, offline), ULIP-style, and save it in the original "
        "point_bert.pt format for `pointllm train --point_backbone_ckpt`; the checkpoint carries "
        "its encoder config, from which training builds the encoder. With --config, the encoder "
        "sizes, points per cloud, data and the checkpoint path come from a recipe (e.g. "
        "demo_stage0); flags win over the recipe.",
    )
    parser.add_argument("--config", help="recipe (YAML file or shipped name) to read settings from")
    parser.add_argument("--anno", help="annotation JSON; each object's first reply is its caption")
    parser.add_argument("--points", help="folder of {object_id}_8192.npy point clouds")
    parser.add_argument("--out", help=f"output folder (writes {DEFAULT_CHECKPOINT} and JSON files)")
    parser.add_argument("--eval-cls", help="held-out split [{object_id, label, label_name}]")
    parser.add_argument(
        "--preset", choices=sorted(POINT_BERT_PRESETS), help="encoder sizes (default v1.2)"
    )
    for key in POINT_BERT_SIZE_FIELDS:
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, help="size override")
    parser.add_argument("--num-points", type=int, help="points per cloud (default 8192)")
    parser.add_argument("--no-color", action="store_true", help="xyz only (default: xyz + rgb)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--no-augment", action="store_true", help="no random turns about up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 autocast where it is fast (CUDA, CPUs with AMX), else fp32",
    )
    parser.set_defaults(func=_handle)
