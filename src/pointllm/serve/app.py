"""`pointllm serve`: an OpenAI-compatible HTTP API (and optionally the web demo) for a checkpoint.

Endpoints: `POST /v1/chat/completions` (JSON, or server-sent events with `"stream": true`),
`GET /v1/models`, `GET /v1/models/{id}`, `GET /health`, and the Gradio demo at `/ui` with `--ui`.
Requests are validated on the event loop (point files are read in a worker thread) and then queued
for the model's single worker thread, which batches them (see `pointllm.serve.batching`).

Safety: point clouds arrive as base64 bytes of a .npy or .ply file (never unpickled) or as a path
that must resolve, symlinks followed, inside a directory the operator allowed; nothing is fetched
from URLs. Bodies over `--max-request-mb` get 413 before they are parsed, and every bad request
gets a 4xx in OpenAI's error shape.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from pointllm.data.io import PointCloudError
from pointllm.infer.api import PointLLM
from pointllm.serve import (
    DEFAULT_HOST,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_REQUEST_MB,
    DEFAULT_PORT,
)
from pointllm.serve.batching import Batcher, GenerationRequest
from pointllm.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionMeta,
    PointCloudSource,
    StopMatcher,
    parse_chat_request,
    to_conversation,
    usage,
)

log = logging.getLogger(__name__)

_DATA_URL_PREFIX = re.compile(r"^data:[^,]*;base64,")
_MAGIC_SUFFIXES = ((b"\x93NUMPY", ".npy"), (b"ply\n", ".ply"), (b"ply\r\n", ".ply"))


@dataclass
class ServeSettings:
    """How the server treats requests. Allowed directories are resolved (symlinks followed) and
    must exist; `max_request_bytes` bounds a request body; `max_new_tokens` is the answer length
    when a request names none (and in the web demo)."""

    allowed_dirs: Sequence[str | os.PathLike] = ()
    api_key: str | None = None
    max_batch: int = DEFAULT_MAX_BATCH
    max_request_bytes: int = int(DEFAULT_MAX_REQUEST_MB * 2**20)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    ui: bool = False
    resolved_dirs: tuple[Path, ...] = field(init=False)

    def __post_init__(self) -> None:
        resolved = []
        for raw in self.allowed_dirs:
            path = Path(raw).expanduser().resolve()
            if not path.is_dir():
                raise ValueError(f"--allowed-dir {raw}: not a directory")
            resolved.append(path)
        self.resolved_dirs = tuple(resolved)
        if self.max_batch < 1:
            raise ValueError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.max_request_bytes < 1:
            raise ValueError(f"--max-request-mb must be > 0, got {self.max_request_bytes} bytes")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("--api-key must not be empty")


# ---- point clouds -----------------------------------------------------------------------------


def resolve_allowed_path(raw: str, allowed: Sequence[Path]) -> Path:
    """The file `raw` names, which must resolve (symlinks followed) inside an allowed directory.
    A relative path is looked up in each allowed directory in turn."""
    param = "point_cloud.path"
    if not allowed:
        raise APIError(
            403,
            "point_cloud.path is disabled on this server (the operator allowed no directory "
            "with --allowed-dir); send the file's bytes as point_cloud.data",
            param=param,
        )
    if "\x00" in raw:
        raise APIError(400, "point_cloud.path contains a NUL character", param=param)
    given = Path(raw)
    candidates = [given] if given.is_absolute() else [d / given for d in allowed]
    try:
        resolved = [c.resolve() for c in candidates]
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise APIError(
            400, f"point_cloud.path {raw}: cannot be resolved ({exc})", param=param
        ) from exc
    inside = [r for r in resolved if any(r.is_relative_to(d) for d in allowed)]
    if not inside:
        raise APIError(403, f"point_cloud.path {raw}: outside the allowed directories", param=param)
    for path in inside:
        if path.is_file():
            return path
    raise APIError(400, f"point_cloud.path {raw}: no such file", param=param)


def decode_point_data(data: str) -> tuple[bytes, str]:
    """base64 text (a data: URL prefix and line breaks allowed) -> (file bytes, '.npy' | '.ply'),
    the format told by the bytes' magic, not by anything the client claims."""
    param = "point_cloud.data"
    text = _DATA_URL_PREFIX.sub("", "".join(data.split()), count=1)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, f"point_cloud.data is not valid base64 ({exc})", param=param) from exc
    for magic, suffix in _MAGIC_SUFFIXES:
        if raw.startswith(magic):
            return raw, suffix
    raise APIError(
        400,
        "point_cloud.data must hold the bytes of a .npy or .ply file (unknown file header)",
        param=param,
    )


def load_request_points(
    llm: PointLLM, source: PointCloudSource, allowed: Sequence[Path]
) -> torch.Tensor:
    """The request's point cloud as model input (num_points, C); problems are 4xx APIErrors.
    Blocking (file reading, sampling): call it from a worker thread."""
    if source.path is not None:
        return _prepare(llm, resolve_allowed_path(source.path, allowed), source.path, "path")
    raw, suffix = decode_point_data(source.data)
    with tempfile.TemporaryDirectory(prefix="pointllm-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(raw)
        return _prepare(llm, path, f"point_cloud.data ({suffix} file)", "data")


def _prepare(llm: PointLLM, path: Path, shown: str, field_name: str) -> torch.Tensor:
    try:
        return llm.prepare_points(path)
    except PointCloudError as exc:
        raise APIError(400, f"{shown}: {exc.problem}", param=f"point_cloud.{field_name}") from exc
    except ValueError as exc:
        problem = str(exc).replace(str(path), shown)
        raise APIError(400, f"{shown}: {problem}", param=f"point_cloud.{field_name}") from exc


# ---- generation settings ----------------------------------------------------------------------


def generation_settings(
    request: ChatCompletionRequest, llm: PointLLM, prompt_tokens: int, default_max_new: int
) -> dict[str, object]:
    """transformers generate kwargs for a request: max_new_tokens (the request's, else
    `default_max_new`, bounded by the context window), sampling when temperature > 0, and stop
    strings for early stopping."""
    asked = request.max_completion_tokens or request.max_tokens
    max_new = asked or default_max_new
    context = getattr(llm.config.text_config, "max_position_embeddings", None)
    if context is not None and prompt_tokens + max_new > context:
        room = context - prompt_tokens
        if asked is not None or room < 1:
            raise APIError(
                400,
                f"the prompt has {prompt_tokens} tokens; with max_tokens {max_new} it exceeds "
                f"the model's context of {context} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        max_new = room
    gen: dict[str, object] = {"max_new_tokens": max_new}
    if request.temperature:  # 0 or absent: greedy
        gen["temperature"] = request.temperature
        if request.top_p is not None:
            gen["top_p"] = request.top_p
    if request.stop_sequences:
        # Stops generation early; the text is cut before the stop by StopMatcher.
        gen["stop_strings"] = request.stop_sequences
        gen["tokenizer"] = llm.tokenizer
    return gen


def _prompt_tokens(llm: PointLLM, history: list[dict[str, str]], with_points: bool) -> int:
    try:
        return len(llm.prompt_ids(history, with_points=with_points))
    except ValueError as exc:  # roles that do not alternate, an empty turn, ...
        raise APIError(400, f"messages: {exc}", param="messages") from exc


def _finish_reason(llm: PointLLM, text: str, stopped: bool, max_new: int) -> tuple[str, int]:
    # Tokens of the returned text, re-tokenized: the API does not report the generated count.
    completion_tokens = llm.count_tokens(text)
    if stopped:
        return "stop", completion_tokens
    return ("length" if completion_tokens >= max_new else "stop"), completion_tokens


# ---- the app ----------------------------------------------------------------------------------


def _error_response(error: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes (by its
    Content-Length, or while it streams in), so an oversized request is never parsed."""
    too_large = APIError(
        413,
        f"the request body exceeds the server's limit of {limit} bytes",
        code="request_too_large",
    )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, f"invalid Content-Length header {declared!r}")
        if int(declared) > limit:
            raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def create_app(llm: PointLLM, settings: ServeSettings) -> FastAPI:
    """The ASGI app serving `llm`. Its lifespan starts and stops the batching worker."""
    batcher = Batcher(llm, max_batch=settings.max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            batcher.close()

    # The API is OpenAI's and documented there; no /docs of our own.
    app = FastAPI(
        title="pointllm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.batcher = batcher

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _error_response(APIError(exc.status_code, message))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s", request.url.path, exc_info=exc)
        return _error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}"))

    def check_api_key(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        valid = scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), settings.api_key.encode()
        )
        if not valid:
            raise APIError(
                401,
                "missing or invalid API key; send the header Authorization: Bearer <key>",
                code="invalid_api_key",
            )

    api = APIRouter(prefix="/v1", dependencies=[Depends(check_api_key)])

    def model_card() -> dict[str, object]:
        return {"id": llm.model_name, "object": "model", "created": 0, "owned_by": "pointllm"}

    @api.get("/models")
    async def list_models() -> dict[str, object]:
        return {"object": "list", "data": [model_card()]}

    @api.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, object]:
        if model_id != llm.model_name:
            raise APIError(404, f"model {model_id!r} not found", code="model_not_found")
        return model_card()

    @api.post("/chat/completions")
    async def chat_completions(request: Request):
        body = await _read_body(request, settings.max_request_bytes)
        chat = parse_chat_request(body)
        if chat.model != llm.model_name:
            raise APIError(
                404,
                f"model {chat.model!r} not found; this server serves {llm.model_name!r}",
                param="model",
                code="model_not_found",
            )
        history, source = to_conversation(chat.messages)
        points = None
        if source is not None:
            points = await run_in_threadpool(
                load_request_points, llm, source, settings.resolved_dirs
            )
        prompt_tokens = await run_in_threadpool(_prompt_tokens, llm, history, points is not None)
        gen = generation_settings(chat, llm, prompt_tokens, settings.max_new_tokens)
        job = GenerationRequest(history, points, gen, chat.seed)
        meta = CompletionMeta(llm.model_name)
        if chat.stream:
            include_usage = chat.stream_options is not None and chat.stream_options.include_usage
            events = _sse_events(
                batcher, job, meta, chat.stop_sequences, prompt_tokens, include_usage
            )
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            answer = await batcher.generate(job)
        except Exception as exc:
            log.error("generation failed", exc_info=exc)
            raise APIError(500, f"generation failed: {type(exc).__name__}: {exc}") from exc
        matcher = StopMatcher(chat.stop_sequences)
        text = matcher.feed(answer) + matcher.flush()
        finish, completion_tokens = _finish_reason(
            llm, text, matcher.stopped, gen["max_new_tokens"]
        )
        return meta.completion(text, finish, usage(prompt_tokens, completion_tokens))

    app.include_router(api)

    @app.get("/health")
    async def health() -> dict[str, object]:
        return {
            "status": "ok",
            "model": llm.model_name,
            "device": str(llm.device),
            "batching": {"max_batch": batcher.max_batch, **asdict(batcher.stats)},
        }

    if settings.ui:
        import gradio as gr

        from pointllm.serve.ui import build_ui

        key = settings.api_key

        def ui_auth(username: str, password: str) -> bool:
            return hmac.compare_digest(password.encode(), key.encode())

        gr.mount_gradio_app(
            app,
            build_ui(llm, batcher, max_new_tokens=settings.max_new_tokens),
            path="/ui",
            auth=ui_auth if key is not None else None,
            auth_message="Any user name; the password is the server's API key.",
            max_file_size=settings.max_request_bytes,
        )

        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            return RedirectResponse("/ui/")

    return app


def _sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


async def _sse_events(
    batcher: Batcher,
    job: GenerationRequest,
    meta: CompletionMeta,
    stops: list[str],
    prompt_tokens: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    """chat.completion.chunk events: the role, text deltas, the finish reason, usage when asked,
    then `[DONE]`. A failure mid-stream becomes an error event (the status is already sent)."""
    yield _sse(meta.chunk({"role": "assistant", "content": ""}))
    matcher = StopMatcher(stops)
    pieces: list[str] = []
    try:
        async with contextlib.aclosing(batcher.stream(job)) as chunks:
            async for chunk in chunks:
                text = matcher.feed(chunk)
                if text:
                    pieces.append(text)
                    yield _sse(meta.chunk({"content": text}))
                if matcher.stopped:
                    break  # closing the stream cancels the generation
        tail = matcher.flush()
        if tail:
            pieces.append(tail)
            yield _sse(meta.chunk({"content": tail}))
    except Exception as exc:
        log.error("generation failed", exc_info=exc)
        yield _sse(APIError(500, f"generation failed: {type(exc).__name__}: {exc}").body())
        yield _sse("[DONE]")
        return
    llm = batcher.llm
    finish, completion_tokens = _finish_reason(
        llm, "".join(pieces), matcher.stopped, job.gen["max_new_tokens"]
    )
    yield _sse(meta.chunk({}, finish))
    if include_usage:
        yield _sse(meta.chunk(None, usage=usage(prompt_tokens, completion_tokens)))
    yield _sse("[DONE]")


def serve(
    model_path: str | os.PathLike,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allowed_dirs: Sequence[str | os.PathLike] = (),
    api_key: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ui: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str | None = None,
) -> None:
    """Load the checkpoint and serve it until interrupted (settings are checked first)."""
    import uvicorn

    from pointllm.infer.api import load

    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    settings = ServeSettings(
        allowed_dirs=allowed_dirs,
        api_key=api_key,
        max_batch=max_batch,
        max_request_bytes=int(max_request_mb * 2**20),
        max_new_tokens=max_new_tokens,
        ui=ui,
    )
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"pointllm serve: warning: listening on {host} without --api-key; anyone who can "
            "reach this port can use the model",
            file=sys.stderr,
        )
    llm = load(model_path, device=device, dtype=dtype, quantize=quantize)
    app = create_app(llm, settings)
    shown = f"[{host}]" if ":" in host else host
    extra = f", web demo at http://{shown}:{port}/ui" if ui else ""
    print(f"pointllm serve: {llm.model_name} at http://{shown}:{port}/v1{extra}", flush=True)
    uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=5)
