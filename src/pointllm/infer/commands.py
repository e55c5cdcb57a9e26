"""`pointllm chat`: ask a checkpoint about a point cloud, once or interactively."""

from __future__ import annotations

import argparse
from pathlib import Path


def _chat(args: argparse.Namespace) -> int:
    """Load the checkpoint, then answer --prompt once or start the REPL."""
    from pointllm.data.io import PointCloudError
    from pointllm.infer.api import load
    from pointllm.infer.chat import run_chat

    # A mistyped path should fail before a model of many GB is loaded.
    if args.points is not None and not Path(args.points).is_file():
        raise PointCloudError(args.points, "no such file")
    llm = load(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize)
    gen = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    return run_chat(llm, args.points, args.prompt, gen)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a PointLLM checkpoint about a point cloud",
        description="Ask a PointLLM checkpoint about a point cloud. With --prompt, print the "
        "answer and exit; without it, start an interactive chat (/help lists its commands).",
    )
    p.add_argument(
        "--model", required=True, help="checkpoint directory or Hugging Face Hub id org/name[@rev]"
    )
    p.add_argument(
        "--points", help="point cloud or mesh file (npy, ply, pcd, xyz, obj, glb, ...); optional"
    )
    p.add_argument("--prompt", help="ask this one question, print the answer and exit")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens (256)")
    p.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy (0)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16 or fp16 (auto)")
    p.add_argument(
        "--quantize", choices=("8bit", "4bit"), help="bitsandbytes quantization (CUDA only)"
    )
    p.set_defaults(func=_chat)
