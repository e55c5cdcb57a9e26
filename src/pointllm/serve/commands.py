"""`pointllm serve`: the OpenAI-compatible HTTP API, and with --ui the web demo."""

from __future__ import annotations

import argparse
import os

from pointllm.serve import (
    API_KEY_ENV,
    DEFAULT_HOST,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_DECODE_MB,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_POINTS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_REQUEST_MB,
    DEFAULT_MAX_STOP_CHARS,
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_PORT,
    DEFAULT_QUEUE_TIMEOUT_S,
)


def _serve(args: argparse.Namespace) -> int:
    from pointllm.serve.app import serve

    return serve(
        args.model,
        host=args.host,
        port=args.port,
        allowed_dirs=args.allowed_dir,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_batch=args.max_batch,
        max_request_mb=args.max_request_mb,
        max_new_tokens=args.max_new_tokens,
        ui=args.ui,
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
        max_stop_chars=args.max_stop_chars,
        max_text_chars=args.max_text_chars,
        max_points=args.max_points,
        max_decode_mb=args.max_decode_mb,
        max_queue=args.max_queue,
        queue_timeout_s=args.queue_timeout,
        allowed_hosts=args.allowed_host,
        served_model_name=args.served_model_name,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a checkpoint over an OpenAI-compatible HTTP API (and a web demo)",
        description="Serve a PointLLM checkpoint: POST /v1/chat/completions (OpenAI's format; "
        "point clouds as base64 .npy/.ply bytes or as paths inside --allowed-dir), GET /v1/models, "
        "GET /health; with --ui, a web demo at /ui.",
    )
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on ({DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    p.add_argument(
        "--served-model-name",
        metavar="NAME",
        help="the model id clients send and /v1/models lists (default: the checkpoint "
        "directory's name)",
    )
    p.add_argument(
        "--allowed-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory whose files requests may name by point_cloud.path (repeatable; "
        "without it, only uploaded bytes are accepted)",
    )
    p.add_argument(
        "--api-key",
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}; none: open)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help="most requests decoding together (continuous batching); 1 answers one request at "
        f"a time ({DEFAULT_MAX_BATCH})",
    )
    p.add_argument(
        "--max-request-mb",
        type=float,
        default=DEFAULT_MAX_REQUEST_MB,
        help=f"largest request body in MiB; larger ones get 413 ({DEFAULT_MAX_REQUEST_MB:g})",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help="answer length for requests without max_tokens, and in the web demo "
        f"({DEFAULT_MAX_NEW_TOKENS})",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name requests may carry (repeatable; '*': any). Needed when --host is not "
        "a loopback address; by default only localhost, 127.0.0.1 and ::1 are accepted",
    )
    limits = p.add_argument_group("limits (requests beyond them get a 4xx error)")
    limits.add_argument(
        "--max-stop-chars",
        type=int,
        default=DEFAULT_MAX_STOP_CHARS,
        help=f"longest stop string, in characters ({DEFAULT_MAX_STOP_CHARS})",
    )
    limits.add_argument(
        "--max-text-chars",
        type=int,
        default=DEFAULT_MAX_TEXT_CHARS,
        help=f"message text of one request, in characters ({DEFAULT_MAX_TEXT_CHARS})",
    )
    limits.add_argument(
        "--max-points",
        type=int,
        default=DEFAULT_MAX_POINTS,
        help=f"points (or mesh faces) a point file may declare ({DEFAULT_MAX_POINTS})",
    )
    limits.add_argument(
        "--max-decode-mb",
        type=float,
        default=DEFAULT_MAX_DECODE_MB,
        help="uploaded point-file data decoded at once over all requests, in MiB; others wait "
        f"({DEFAULT_MAX_DECODE_MB:g})",
    )
    limits.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help=f"requests waiting for the model; more get 429 ({DEFAULT_MAX_QUEUE})",
    )
    limits.add_argument(
        "--queue-timeout",
        type=float,
        default=DEFAULT_QUEUE_TIMEOUT_S,
        metavar="SECONDS",
        help=f"a request not started within this time gets 503 ({DEFAULT_QUEUE_TIMEOUT_S:g})",
    )
    p.add_argument("--ui", action="store_true", help="also serve the web demo at /ui")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16 or fp16 (auto)")
    p.add_argument(
        "--quantize", choices=("8bit", "4bit"), help="bitsandbytes quantization (CUDA only)"
    )
    p.set_defaults(func=_serve)
