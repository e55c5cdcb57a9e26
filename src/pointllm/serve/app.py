"""`pointllm serve`: an OpenAI-compatible HTTP API (and optionally the web demo) for a checkpoint.

Endpoints: `POST /v1/chat/completions` (JSON, or server-sent events with `"stream": true`),
`GET /v1/models`, `GET /v1/models/{id}`, `GET /health`, `GET /metrics` (Prometheus), and the
Gradio demo at `/ui` with `--ui`. Requests are validated on the event loop (point files are read
in a worker thread) and then queued for the model's single worker thread, which decodes them
together with continuous batching (see `pointllm.serve.batching`).

Safety: point clouds arrive as base64 bytes of a .npy or .ply file (never unpickled) or as a path
that must resolve, symlinks followed, inside a directory the operator allowed; nothing is fetched
from URLs. Bodies over `--max-request-mb` get 413 before they are parsed; only `application/json`
bodies are read, and only for a `Host` the operator allowed (loopback names by default), so a web
page cannot post to the API from a browser. Every bad request gets a 4xx in OpenAI's error shape;
limits on stop strings, text, points, concurrent uploads and the queue keep one request from
taking the server's memory or time (docs/serving.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import hmac
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from pointllm.data.io import PointCloudError, check_declared_size
from pointllm.infer.api import PointLLM
from pointllm.serve import (
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
    LOOPBACK_HOSTS,
)
from pointllm.serve.batching import (
    Answer,
    Batcher,
    GenerationRequest,
    QueueFull,
    QueueTimeout,
    WorkerDied,
)
from pointllm.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from pointllm.serve.metrics import render as render_metrics
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
# Exit status of a server whose generation worker died (EX_SOFTWARE): a supervisor restarts it.
WORKER_DIED_EXIT_CODE = 70
_RETRY_AFTER_S = 5
_SHOWN_PATH_CHARS = 120


@dataclass
class ServeSettings:
    """How the server treats requests. Allowed directories are resolved (symlinks followed) and
    must exist; `max_request_bytes` bounds a request body; `max_new_tokens` is the answer length
    when a request names none (and in the web demo).

    Limits (docs/serving.md): characters per stop string, message text characters in all,
    points (and mesh faces) a point file may declare, point-file bytes decoded at once over all
    requests, requests waiting for the model (more get 429), seconds a request may wait before
    it starts (then 503). `allowed_hosts`: the `Host` names requests may carry ("*": any).
    `served_model_name`: the model id clients name (None: the checkpoint directory's name).
    """

    allowed_dirs: Sequence[str | os.PathLike] = ()
    api_key: str | None = None
    max_batch: int = DEFAULT_MAX_BATCH
    max_request_bytes: int = int(DEFAULT_MAX_REQUEST_MB * 2**20)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    ui: bool = False
    max_stop_chars: int = DEFAULT_MAX_STOP_CHARS
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    max_points: int = DEFAULT_MAX_POINTS
    max_decode_bytes: int = int(DEFAULT_MAX_DECODE_MB * 2**20)
    max_queue: int = DEFAULT_MAX_QUEUE
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS
    served_model_name: str | None = None
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
        for flag, value in (
            ("--max-stop-chars", self.max_stop_chars),
            ("--max-text-chars", self.max_text_chars),
            ("--max-points", self.max_points),
            ("--max-decode-mb", self.max_decode_bytes),
            ("--max-queue", self.max_queue),
            ("--queue-timeout", self.queue_timeout_s),
        ):
            if not value > 0:
                raise ValueError(f"{flag} must be > 0, got {value}")
        if not self.allowed_hosts:
            raise ValueError("--allowed-host: give at least one host name (or '*')")
        self.allowed_hosts = tuple(host.strip().lower() for host in self.allowed_hosts)
        if self.served_model_name is not None and not self.served_model_name.strip():
            raise ValueError("--served-model-name must not be empty")


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
    shown = raw if len(raw) <= _SHOWN_PATH_CHARS else raw[:_SHOWN_PATH_CHARS] + "..."
    if "\x00" in raw:
        raise APIError(400, "point_cloud.path contains a NUL character", param=param)
    try:
        given = Path(raw)
        candidates = [given] if given.is_absolute() else [d / given for d in allowed]
        resolved = [c.resolve() for c in candidates]
        inside = [r for r in resolved if any(r.is_relative_to(d) for d in allowed)]
        if not inside:
            raise APIError(
                403, f"point_cloud.path {shown}: outside the allowed directories", param=param
            )
        found = next((path for path in inside if path.is_file()), None)
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        # The OS message would name the resolved (server) path: say only what kind of problem.
        reason = errno.errorcode.get(getattr(exc, "errno", None) or 0, type(exc).__name__)
        raise APIError(
            400, f"point_cloud.path {shown}: cannot be resolved ({reason})", param=param
        ) from exc
    if found is None:
        raise APIError(400, f"point_cloud.path {shown}: no such file", param=param)
    return found


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
    llm: PointLLM,
    source: PointCloudSource,
    allowed: Sequence[Path],
    max_points: int = DEFAULT_MAX_POINTS,
) -> torch.Tensor:
    """The request's point cloud as model input (num_points, C); problems are 4xx APIErrors.
    A file may declare at most `max_points` points (or faces). Blocking (file reading,
    sampling): call it from a worker thread."""
    if source.path is not None:
        path = resolve_allowed_path(source.path, allowed)
        shown = source.path if len(source.path) <= _SHOWN_PATH_CHARS else "the file"
        return _prepare(llm, path, shown, "path", max_points)
    raw, suffix = decode_point_data(source.data)
    with tempfile.TemporaryDirectory(prefix="pointllm-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(raw)
        del raw
        return _prepare(llm, path, f"point_cloud.data ({suffix} file)", "data", max_points)


def _prepare(
    llm: PointLLM, path: Path, shown: str, field_name: str, max_points: int
) -> torch.Tensor:
    try:
        check_declared_size(path, max_points=max_points)  # before any parser allocates
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
    """Generation settings for a request (`GenerationRequest.gen`): max_new_tokens (the
    request's, else `default_max_new`, bounded by the context window), sampling when
    temperature > 0, and stop strings for early stopping."""
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
        if request.top_k is not None:
            gen["top_k"] = request.top_k
    if request.repetition_penalty is not None:
        gen["repetition_penalty"] = request.repetition_penalty
    if request.stop_sequences:
        # Ends the row early; the text is cut before the stop by StopMatcher.
        gen["stop_strings"] = request.stop_sequences
    return gen


def _prompt_ids(llm: PointLLM, history: list[dict[str, str]], with_points: bool) -> list[int]:
    try:
        return llm.prompt_ids(history, with_points=with_points)
    except ValueError as exc:  # roles that do not alternate, an empty turn, ...
        raise APIError(400, f"messages: {exc}", param="messages") from exc


def _finish_reason(answer: Answer, stopped: bool, max_new: int) -> str:
    """Why the answer ended: at a stop string or the end of the turn ("stop"), or at
    max_tokens ("length")."""
    if stopped or answer.ended_by_eos:
        return "stop"
    return "length" if answer.completion_tokens >= max_new else "stop"


def _check_text_size(history: list[dict[str, str]], limit: int) -> None:
    """Refuse long text by its characters, before the tokenizer spends time and memory on it."""
    chars = sum(len(turn["content"]) for turn in history)
    if chars > limit:
        raise APIError(
            400,
            f"the messages hold {chars} characters of text; this server accepts at most {limit}",
            param="messages",
            code="context_length_exceeded",
        )


class _ByteBudget:
    """Bytes of point files being decoded at once, over all requests: a request waits up to
    `timeout` seconds for room, then gets 429."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, size: int, timeout: float) -> AsyncIterator[None]:
        size = min(size, self.limit)  # one request alone may always proceed
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.used + size <= self.limit), timeout
                )
            except TimeoutError:
                raise _busy(429, "too many point clouds are being decoded; retry later") from None
            self.used += size
        try:
            yield
        finally:
            async with self._changed:
                self.used -= size
                self._changed.notify_all()


def _busy(status: int, message: str, code: str = "server_busy") -> APIError:
    return APIError(status, message, code=code, headers={"Retry-After": str(_RETRY_AFTER_S)})


async def _until_disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body must have been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _host_name(host: str) -> str:
    """A Host header without its port: `[::1]:8000` -> `::1`, `Example.org:80` -> `example.org`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _HostCheck:
    """ASGI middleware: refuse requests whose `Host` is not an allowed name, so a web page on
    another site cannot reach the server by DNS rebinding."""

    def __init__(self, app, allowed: Sequence[str]):
        self.app = app
        self.allowed = {_host_name(host) for host in allowed}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket") and "*" not in self.allowed:
            headers = dict(scope.get("headers") or [])
            host = _host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.allowed:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                error = APIError(
                    400,
                    f"Host {host[:100]!r} is not served here; start the server with "
                    "--allowed-host NAME to accept it",
                    code="invalid_host",
                )
                await _error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ---- the app ----------------------------------------------------------------------------------


def _error_response(error: APIError) -> JSONResponse:
    headers = dict(error.headers or {})
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error.body(), status_code=error.status, headers=headers or None)


def _check_json_content_type(request: Request) -> None:
    """Only JSON bodies: browsers send text/plain and form posts cross-site without asking."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise APIError(
            415,
            f"the request body must be sent as Content-Type: application/json, "
            f"not {media_type[:100] or 'none'!r}",
            code="unsupported_media_type",
        )


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


def create_app(
    llm: PointLLM,
    settings: ServeSettings,
    on_worker_death: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The ASGI app serving `llm`. Its lifespan starts and stops the batching worker; if the
    worker dies, /health answers 503 and `on_worker_death` is called (from the worker thread)."""
    batcher = Batcher(
        llm, max_batch=settings.max_batch, max_queue=settings.max_queue, on_death=on_worker_death
    )
    model_name = settings.served_model_name or llm.model_name
    decoding = _ByteBudget(settings.max_decode_bytes)

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
    app.add_middleware(_HostCheck, allowed=settings.allowed_hosts)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _error_response(APIError(exc.status_code, message))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        # The details (which may name server paths) go to the log, not to the client.
        log.error("unexpected error on %s", request.url.path, exc_info=exc)
        message = f"internal error ({type(exc).__name__}); the server log has the details"
        return _error_response(APIError(500, message))

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
        return {"id": model_name, "object": "model", "created": 0, "owned_by": "pointllm"}

    @api.get("/models")
    async def list_models() -> dict[str, object]:
        return {"object": "list", "data": [model_card()]}

    @api.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, object]:
        if model_id != model_name:
            raise APIError(404, f"model {model_id!r} not found", code="model_not_found")
        return model_card()

    @api.post("/chat/completions")
    async def chat_completions(request: Request):
        _check_json_content_type(request)
        body = await _read_body(request, settings.max_request_bytes)
        chat = parse_chat_request(body, max_stop_chars=settings.max_stop_chars)
        del body
        if chat.model != model_name:
            raise APIError(
                404,
                f"model {chat.model!r} not found; this server serves {model_name!r}",
                param="model",
                code="model_not_found",
            )
        history, source = to_conversation(chat.messages)
        _check_text_size(history, settings.max_text_chars)
        if not batcher.alive:
            raise _busy(503, "the generation worker has stopped", code="worker_died")
        points = None
        if source is not None:
            size = len(source.data or "")
            async with decoding.hold(size, settings.queue_timeout_s):
                points = await run_in_threadpool(
                    load_request_points,
                    llm,
                    source,
                    settings.resolved_dirs,
                    settings.max_points,
                )
        prompt = await run_in_threadpool(_prompt_ids, llm, history, points is not None)
        prompt_tokens = len(prompt)
        gen = generation_settings(chat, llm, prompt_tokens, settings.max_new_tokens)
        job = GenerationRequest(history, points, gen, chat.seed, prompt_ids=prompt)
        meta = CompletionMeta(model_name)
        if chat.stream:
            include_usage = chat.stream_options is not None and chat.stream_options.include_usage
            events = _sse_events(
                batcher, job, meta, chat.stop_sequences, prompt_tokens, include_usage
            )
            _check_queue_room(batcher)
            return StreamingResponse(events, media_type="text/event-stream")
        answer = await _generate_or_hang_up(request, batcher, job, settings.queue_timeout_s)
        if answer is None:  # the client left; its job was cancelled
            return Response(status_code=499)
        matcher = StopMatcher(chat.stop_sequences)
        text = matcher.feed(answer.text) + matcher.flush()
        finish = _finish_reason(answer, matcher.stopped, gen["max_new_tokens"])
        return meta.completion(text, finish, usage(prompt_tokens, answer.completion_tokens))

    app.include_router(api)

    @app.get("/health")
    async def health() -> JSONResponse:
        alive = batcher.alive
        body = {
            "status": "ok" if alive else "error",
            "model": model_name,
            "device": str(llm.device),
            "batching": {
                "max_batch": batcher.max_batch,
                "max_queue": batcher.max_queue,
                **asdict(batcher.stats),
            },
        }
        if not alive:
            body["error"] = "the generation worker has stopped"
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(render_metrics(batcher, model_name), media_type=METRICS_CONTENT_TYPE)

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
    answer = Answer()
    try:
        async with contextlib.aclosing(batcher.stream(job, answer)) as chunks:
            async for chunk in chunks:
                text = matcher.feed(chunk)
                if text:
                    yield _sse(meta.chunk({"content": text}))
                if matcher.stopped:
                    break  # closing the stream cancels the generation
        tail = matcher.flush()
        if tail:
            yield _sse(meta.chunk({"content": tail}))
    except Exception as exc:
        error = _generation_error(exc)
        yield _sse(error.body())
        yield _sse("[DONE]")
        return
    yield _sse(meta.chunk({}, _finish_reason(answer, matcher.stopped, job.gen["max_new_tokens"])))
    if include_usage:
        yield _sse(meta.chunk(None, usage=usage(prompt_tokens, answer.completion_tokens)))
    yield _sse("[DONE]")


def _generation_error(exc: BaseException) -> APIError:
    """The API error for a failed generation (queue full or timed out, worker gone, model
    error)."""
    if isinstance(exc, QueueFull):
        return _busy(429, f"the server is busy: {exc}; retry later", code="queue_full")
    if isinstance(exc, QueueTimeout):
        return _busy(503, f"the server is busy: {exc}; retry later", code="queue_timeout")
    if isinstance(exc, WorkerDied):
        return _busy(503, "the generation worker has stopped", code="worker_died")
    log.error("generation failed", exc_info=exc)
    return APIError(500, f"generation failed: {type(exc).__name__}: {exc}")


def _check_queue_room(batcher: Batcher) -> None:
    """A stream answers 200 at once; a full queue must be refused before that."""
    if batcher.stats.queued >= batcher.max_queue:
        batcher.stats.rejected += 1
        raise _generation_error(QueueFull(f"{batcher.stats.queued} requests are waiting"))


async def _generate_or_hang_up(
    request: Request, batcher: Batcher, job: GenerationRequest, queue_timeout: float
) -> Answer | None:
    """The answer, or None when the client disconnects first (its job is then cancelled,
    queued or running)."""
    generation = asyncio.ensure_future(batcher.generate(job, queue_timeout))
    hang_up = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({generation, hang_up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hang_up.cancel()
    if not generation.done():
        generation.cancel()  # Batcher.generate cancels the job as it unwinds
        with contextlib.suppress(asyncio.CancelledError):
            await generation
        return None
    try:
        return generation.result()
    except Exception as exc:
        raise _generation_error(exc) from exc


def allowed_hosts_for(host: str, allowed_hosts: Sequence[str]) -> tuple[str, ...]:
    """The Host names a server bound to `host` accepts: the operator's list, else the loopback
    names when it listens on loopback only; listening elsewhere without a list is an error."""
    if allowed_hosts:
        return tuple(allowed_hosts)
    if host.strip("[]") in LOOPBACK_HOSTS:
        return LOOPBACK_HOSTS
    raise ValueError(
        f"--host {host} listens beyond this machine: name the host names clients use with "
        "--allowed-host NAME (repeatable), or --allowed-host '*' to accept any"
    )


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
    max_stop_chars: int = DEFAULT_MAX_STOP_CHARS,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_points: int = DEFAULT_MAX_POINTS,
    max_decode_mb: float = DEFAULT_MAX_DECODE_MB,
    max_queue: int = DEFAULT_MAX_QUEUE,
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
    allowed_hosts: Sequence[str] = (),
    served_model_name: str | None = None,
) -> int:
    """Load the checkpoint and serve it until interrupted (settings are checked first). Returns
    the exit status: 0, or WORKER_DIED_EXIT_CODE when the generation worker died."""
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
        max_stop_chars=max_stop_chars,
        max_text_chars=max_text_chars,
        max_points=max_points,
        max_decode_bytes=int(max_decode_mb * 2**20),
        max_queue=max_queue,
        queue_timeout_s=queue_timeout_s,
        allowed_hosts=allowed_hosts_for(host, allowed_hosts),
        served_model_name=served_model_name,
    )
    if api_key is None and host not in LOOPBACK_HOSTS:
        print(
            f"pointllm serve: warning: listening on {host} without --api-key; anyone who can "
            "reach this port can use the model",
            file=sys.stderr,
        )
    llm = load(model_path, device=device, dtype=dtype, quantize=quantize)
    died: list[BaseException] = []

    def on_worker_death(exc: BaseException) -> None:
        # /health answers 503 from now on; stop serving so that a supervisor restarts us.
        died.append(exc)
        server.should_exit = True

    app = create_app(llm, settings, on_worker_death)
    shown = f"[{host}]" if ":" in host else host
    extra = f", web demo at http://{shown}:{port}/ui" if ui else ""
    name = settings.served_model_name or llm.model_name
    print(f"pointllm serve: {name} at http://{shown}:{port}/v1{extra}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=5))
    server.run()
    if died:
        print(
            f"pointllm serve: error: the generation worker died ({died[0]!r}); exiting with "
            f"status {WORKER_DIED_EXIT_CODE}",
            file=sys.stderr,
        )
        return WORKER_DIED_EXIT_CODE
    return 0
