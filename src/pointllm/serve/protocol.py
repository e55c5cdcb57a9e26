"""The OpenAI chat-completions wire format as `pointllm serve` accepts and answers it.

A user message's `content` is a string or a list of parts: `{"type": "text", "text": ...}` and at
most one point cloud per request,
`{"type": "point_cloud", "point_cloud": {"data": "<base64 of a .npy or .ply file>"}}` or
`{"type": "point_cloud", "point_cloud": {"path": "<file inside an --allowed-dir>"}}`.
Every rejected request becomes an `APIError`, answered in OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pointllm.config import POINT_END_TOKEN, POINT_PATCH_TOKEN, POINT_START_TOKEN

# Our point tokens in client text would splice fake point blocks into the prompt.
_RESERVED_TOKENS = (POINT_PATCH_TOKEN, POINT_START_TOKEN, POINT_END_TOKEN)
_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer
# Far beyond any context window; checked before validation builds an object per message.
MAX_MESSAGES = 2048


class APIError(Exception):
    """A request that gets an error response: HTTP status, one-line message, and the offending
    request field (`param`, dotted like `messages.0.content`) when there is one."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.headers = headers  # extra response headers, e.g. Retry-After
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _ERROR_TYPES.get(status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


# ---- request models ---------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Model):
    type: Literal["text"]
    text: str


class PointCloudSource(_Model):
    """Exactly one of: `data`, base64 of a .npy/.ply file; `path`, a file in an allowed dir."""

    data: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PointCloudSource:
        if (self.data is None) == (self.path is None):
            raise ValueError("give exactly one of 'data' (base64) or 'path'")
        return self


class PointCloudPart(_Model):
    type: Literal["point_cloud"]
    point_cloud: PointCloudSource


ContentPart = Annotated[TextPart | PointCloudPart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. `name`, which we do not use

    role: Literal["system", "developer", "user", "assistant"]
    content: list[ContentPart]
    # Declared only to refuse them: the model has no tools, and an assistant turn made of tool
    # calls alone has no text to put into the prompt.
    tool_calls: Any = None
    function_call: Any = None

    @model_validator(mode="after")
    def _no_tool_calls(self) -> ChatMessage:
        if self.tool_calls is not None or self.function_call is not None:
            raise ValueError(
                "tool calls are not supported by this server; send the assistant's turns as text"
            )
        return self

    @field_validator("content", mode="before")
    @classmethod
    def _as_parts(cls, content: Any) -> Any:
        """A plain string is one text part; null (an assistant turn with only tool calls) none."""
        if content is None:
            return []
        if isinstance(content, str):
            return [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise ValueError("must be a string or a list of content parts")
        return content


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields we honour; other OpenAI fields (e.g. `user`, `logprobs`) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    # Not in OpenAI's API; accepted as vLLM and others do.
    top_k: int | None = Field(default=None, ge=1)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)

    @property
    def stop_sequences(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


def parse_chat_request(body: bytes, max_stop_chars: int | None = None) -> ChatCompletionRequest:
    """Parse and validate a request body; any problem is a 400 naming the field. Stop strings
    longer than `max_stop_chars` characters are refused."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise APIError(400, "the request body is nested too deeply") from exc
    if not isinstance(payload, dict):
        raise APIError(400, "the request body must be a JSON object")
    messages = payload.get("messages")
    if isinstance(messages, list) and len(messages) > MAX_MESSAGES:
        raise APIError(
            400,
            f"at most {MAX_MESSAGES} messages per request, got {len(messages)}",
            param="messages",
        )
    try:
        request = ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = _dotted(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        raise APIError(400, f"{param or 'body'}: {message}", param=param or None) from exc
    if request.n != 1:
        raise APIError(400, f"n must be 1 (got {request.n}); ask again for more", param="n")
    if len(request.stop_sequences) > MAX_STOP_SEQUENCES:
        raise APIError(400, f"at most {MAX_STOP_SEQUENCES} stop sequences", param="stop")
    if max_stop_chars is not None:
        longest = max(map(len, request.stop_sequences), default=0)
        if longest > max_stop_chars:
            raise APIError(
                400,
                f"a stop sequence has {longest} characters; this server allows at most "
                f"{max_stop_chars}",
                param="stop",
            )
    return request


def _dotted(loc: Sequence[int | str]) -> str:
    """`messages.0.content.1.point_cloud.data` from a pydantic error location, which also holds
    a content part's type tag after its index (`messages.0.content.1.point_cloud.point_cloud`)."""
    items = [str(item) for item in loc]
    for i in range(len(items) - 2):
        if items[i] == "content" and items[i + 1].isdigit():
            del items[i + 2]
            break
    return ".".join(items)


def to_conversation(
    messages: Sequence[ChatMessage],
) -> tuple[list[dict[str, str]], PointCloudSource | None]:
    """Chat messages -> ([{"role", "content"}] with text parts joined by newlines and leading
    system/developer messages merged into one system turn, the request's point cloud or None)."""
    history: list[dict[str, str]] = []
    source: PointCloudSource | None = None
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        texts = []
        for part in message.content:
            if isinstance(part, TextPart):
                texts.append(part.text)
                continue
            if role != "user":
                raise APIError(
                    400,
                    f"a point cloud may only be sent in a user message, not {message.role}",
                    param=f"messages.{i}.content",
                )
            if source is not None:
                raise APIError(
                    400, "at most one point cloud per request", param=f"messages.{i}.content"
                )
            source = part.point_cloud
        text = "\n".join(texts)
        reserved = [token for token in _RESERVED_TOKENS if token in text]
        if reserved:
            raise APIError(
                400,
                f"message text may not contain the reserved token {reserved[0]}",
                param=f"messages.{i}.content",
            )
        if role == "system" and history and history[-1]["role"] == "system":
            history[-1]["content"] += "\n" + text
        else:
            history.append({"role": role, "content": text})
    return history, source


# ---- stop sequences ---------------------------------------------------------------------------


class StopMatcher:
    """Cuts generated text before the first stop sequence, also when the text arrives in chunks:
    `feed` returns the text that is safe to send, holding back a tail that may start a stop."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.stopped = False

    def feed(self, chunk: str) -> str:
        if self.stopped:
            return ""
        # The buffer holds no stop before this chunk, and at most len(stop) - 1 older characters.
        self.buffer += chunk
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            ready, self.buffer, self.stopped = self.buffer[: min(hits)], "", True
            return ready
        hold = max(
            (k for s in self.stops for k in range(1, len(s)) if self.buffer.endswith(s[:k])),
            default=0,
        )
        ready = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(ready) :]
        return ready

    def flush(self) -> str:
        """The held-back tail once the text is complete (it did not become a stop)."""
        ready, self.buffer = self.buffer, ""
        return ready


# ---- responses --------------------------------------------------------------------------------


class CompletionMeta:
    """The id, creation time and model name shared by a completion and all its chunks."""

    def __init__(self, model: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def completion(self, text: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        }

    def chunk(
        self,
        delta: dict[str, str] | None,
        finish_reason: str | None = None,
        usage: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """A chat.completion.chunk; delta None: the usage-only chunk (no choices)."""
        choices = (
            []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        )
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
