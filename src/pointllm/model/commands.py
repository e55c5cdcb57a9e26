"""`pointllm convert`: original PointLLM checkpoints to pointllm's layout, and back."""

from __future__ import annotations

import argparse
from pathlib import Path


def _convert(args: argparse.Namespace) -> int:
    """Check the target, then convert in the direction asked."""
    from pointllm.model import checkpoint, legacy
    from pointllm.model.backbones import resolve_model_path

    source, target = resolve_model_path(args.source), Path(args.target)
    if checkpoint.config_kind(source) is checkpoint.Kind.UNKNOWN:
        raise FileNotFoundError(f"{source}: not a checkpoint directory (no config.json)")
    if target.resolve() == source.resolve():
        raise ValueError(f"{target}: the target must differ from the source")
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not args.overwrite:
        raise ValueError(f"{target}: exists and is not empty (pass --overwrite to replace it)")
    options = {"dtype": None if args.dtype == "auto" else args.dtype}
    if args.max_shard_size:
        options["max_shard_size"] = args.max_shard_size
    if args.to_original:
        model = legacy.convert_to_original(source, target, weight_format=args.format, **options)
        layout = f"original PointLLM layout, {args.format}"
    else:
        model = legacy.convert_to_native(source, target, **options)
        layout = "pointllm layout, safetensors"
    dtype_name = str(model.language_model.get_input_embeddings().weight.dtype).removeprefix(
        "torch."
    )
    print(f"wrote {target} ({layout}, {dtype_name})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an original PointLLM checkpoint to pointllm's layout, or back",
        description="Convert an original PointLLM checkpoint (PointLLM_7B_v1.2, ...) into "
        "pointllm's self-describing layout (safetensors). With --to-original, convert a pointllm "
        "checkpoint into the original layout, for the original code. Loading needs no "
        "conversion: pointllm reads original checkpoints as they are.",
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        help="checkpoint directory (or Hub id org/name[@revision]) to read",
    )
    p.add_argument("--to", dest="target", required=True, help="directory to write")
    p.add_argument(
        "--to-original",
        action="store_true",
        help="write the original PointLLM layout instead of pointllm's",
    )
    p.add_argument(
        "--format",
        choices=("bin", "safetensors"),
        default="bin",
        help="weight files with --to-original (bin: readable by the original code's "
        "transformers 4.28 without extra packages) (bin)",
    )
    p.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="weight dtype to write; auto keeps the one config.json names (auto)",
    )
    p.add_argument(
        "--max-shard-size",
        help="split weight files above this size, e.g. 2GB (5GB; 10GB with --to-original, as "
        "the original checkpoints)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty target directory")
    p.set_defaults(func=_convert)
