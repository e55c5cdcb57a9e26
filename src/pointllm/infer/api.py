"""The Python inference API: load a checkpoint once, then ask questions about point clouds.

    import pointllm
    llm = pointllm.load("checkpoints/pointllm-demo")
    llm.generate("chair.ply", "What is this?")
    for chunk in llm.stream("chair.ply", "Describe it in detail."):
        print(chunk, end="", flush=True)

Prompts are built exactly as training builds them: the point block and a newline precede the
first user message, and the conversation is rendered with the checkpoint's own template by
`pointllm.data.conversation.tokenize_conversation`. The point cloud is encoded once per call; the
language model decodes with its KV cache. One lock serializes model calls, so a `PointLLM` can be
shared by worker threads (the HTTP server does).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from pointllm.data.conversation import (
    normalize_messages,
    point_block,
    tokenize_conversation,
    user_content_with_points,
)
from pointllm.model.precision import QUANTIZE_MODES  # noqa: F401 (re-exported)
from pointllm.ops import normalize_point_cloud

PointsInput = str | os.PathLike | np.ndarray | torch.Tensor
DEFAULT_MAX_NEW_TOKENS = 256
# Name used in PointCloudError messages for clouds passed as arrays rather than files.
_ARRAY_NAME = "points array"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` -> cuda when available, else cpu; an explicit CUDA device must exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available here")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`auto` -> bf16 on a CUDA device that supports it, else fp32. fp16 on CPU works but warns.
    (`pointllm.model.precision.resolve_dtype`, for a device.)"""
    from pointllm.model.precision import resolve_dtype as resolve

    return resolve(dtype, device)


def load(
    model_path: str | os.PathLike,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    quantize: str | None = None,
) -> PointLLM:
    """Load a PointLLM checkpoint (ours or an original PointLLM release) for inference: a
    directory or a Hugging Face Hub id `org/name[@revision]` (see `resolve_model_path`).

    device: auto | cpu | cuda | cuda:N. dtype: auto | fp32 | bf16 | fp16 (see `resolve_dtype`).
    quantize: None, "8bit" or "4bit": the language model's linear layers in bitsandbytes
    (CUDA only; `pointllm.model.precision.quantization_config`); the point encoder, projector and
    output head keep `dtype`. An original-layout checkpoint needs `pointllm convert` first.
    """
    from pointllm.model import checkpoint
    from pointllm.model.backbones import parse_hub_id, progress, resolve_model_path
    from pointllm.model.precision import check_quantization_supported, quantization_config

    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    llm_kwargs = {}
    if quantize is not None:
        check_quantization_supported(quantize)  # a known mode, bitsandbytes and CUDA are here
        if resolved_device.type != "cuda":
            raise ValueError(
                f"{quantize[0]}-bit needs bitsandbytes and a CUDA GPU; device is {resolved_device}"
            )
        # The same path as QLoRA training: transformers loads the LLM quantized.
        llm_kwargs = {
            "quantization_config": quantization_config(quantize, resolved_dtype),
            "device_map": {"": resolved_device.index or 0},
        }
    path = resolve_model_path(model_path)  # a directory, or `org/name[@revision]` on the Hub
    checkpoint.require_model(path)  # fail early, naming the path
    is_local = Path(model_path).expanduser().exists() or parse_hub_id(str(model_path)) is None
    progress.info("loading %s on %s (%s)", path, resolved_device, str(resolved_dtype)[6:])
    model, tokenizer = checkpoint.load(
        path, dtype=resolved_dtype, device=resolved_device, **llm_kwargs
    )
    return PointLLM(
        model, tokenizer, model_name=path.resolve().name if is_local else str(model_path)
    )


class _StopEvent(StoppingCriteria):
    """Stops generation once `event` is set (a stream whose reader went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), device=input_ids.device)


class _TextStream(TextIteratorStreamer):
    """Text chunks that always join to exactly `decode(new_tokens, skip_special_tokens).strip()`,
    the text `generate` returns.

    The stock streamer decodes in pieces (it restarts after each newline), so its chunks may not
    join to the full decode; this one re-decodes all new tokens at each step and emits the grown
    part, holding back surrounding whitespace and a trailing incomplete UTF-8 character.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.emitted = ""

    def put(self, value: torch.Tensor) -> None:
        if self.next_tokens_are_prompt:  # the first call carries the prompt (empty here)
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.flatten().tolist())
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if not text.endswith("\ufffd"):
            self._emit(text.strip())

    def end(self) -> None:
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        self._emit(text.strip())
        self.on_finalized_text("", stream_end=True)

    def _emit(self, ready: str) -> None:
        # Only ever extend what was sent; a decode that rewrote earlier text waits for the end.
        if len(ready) > len(self.emitted) and ready.startswith(self.emitted):
            self.on_finalized_text(ready[len(self.emitted) :])
            self.emitted = ready


class PointLLM:
    """A loaded PointLLM with its tokenizer: ask about point clouds, one, many, or streamed."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        model_name: str = "pointllm",
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.device = next(model.parameters()).device
        self.num_points: int = self.config.num_points
        self.model_name = model_name
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._point_block = point_block(
            self.config.num_point_tokens, self.config.mm_use_point_start_end
        )
        self._stop_ids = self._end_of_turn_ids()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PointLLM({self.model_name!r}, device={self.device}, dtype={self.model.dtype})"

    def _end_of_turn_ids(self) -> list[int]:
        """The tokenizer's eos plus any the LLM's generation config names (chat models often
        end a turn with a token other than eos, e.g. Llama 3's <|eot_id|>)."""
        configured = self.model.language_model.generation_config.eos_token_id
        if not isinstance(configured, list):
            configured = [configured]
        ids = [self.tokenizer.eos_token_id, *configured]
        return sorted({i for i in ids if i is not None})

    # ---- inputs -------------------------------------------------------------------------------

    def prepare_points(self, points_or_path: PointsInput) -> torch.Tensor:
        """A file path, or an (N, 6 | 3) array/tensor of xyz (+ rgb), as the model's input:
        validated, resampled to `num_points` (FPS / seeded repeats), xyz normalized into the unit
        sphere; float32 (num_points, 6), or (num_points, 3) for a colorless model.

        Arrays follow the file rules: rgb in [0, 255] is scaled to [0, 1]; a 3-column array gets
        the default gray when the model uses color. Raises PointCloudError (a ValueError).
        """
        from pointllm.data import io

        use_color = bool(self.config.use_color)
        if isinstance(points_or_path, (str, os.PathLike)):
            cloud = io.load_point_cloud(
                points_or_path, num_points=self.num_points, use_color=use_color
            )
            return torch.from_numpy(cloud)
        if isinstance(points_or_path, torch.Tensor):
            points_or_path = points_or_path.detach().cpu().float().numpy()
        if not isinstance(points_or_path, np.ndarray):
            raise ValueError(
                f"points must be a file path, numpy array or torch tensor, got "
                f"{type(points_or_path).__name__}"
            )
        xyz, rgb = io._split_columns(_ARRAY_NAME, points_or_path)
        points = io._validate(_ARRAY_NAME, xyz, rgb if use_color else None)
        if use_color and rgb is None:
            gray = np.full((len(points), 3), 0.5)  # load_point_cloud's default color
            points = np.concatenate([points, gray], axis=1)
        points = io._resample(points, self.num_points, seed=0)
        return torch.from_numpy(normalize_point_cloud(points).astype(np.float32))

    def prompt_ids(self, history: Sequence[dict], with_points: bool) -> list[int]:
        """Token ids of the inference prompt for a conversation that ends with a user turn; with
        points, the point block and a newline precede the first user message."""
        messages = normalize_messages(history)
        if messages[-1]["role"] != "user":
            raise ValueError(
                f"the conversation must end with a user message, not {messages[-1]['role']!r}"
            )
        if with_points:
            first = next(i for i, m in enumerate(messages) if m["role"] == "user")
            content = user_content_with_points(messages[first]["content"], self._point_block)
            messages[first] = {"role": "user", "content": content}
        return tokenize_conversation(
            messages,
            self.tokenizer,
            self.config.template,
            add_generation_prompt=True,
            system_prompt=self.config.system_prompt,
        ).input_ids

    def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` alone (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generation_kwargs(self, **gen: Any) -> dict[str, Any]:
        """transformers generation kwargs with our defaults: greedy, 256 new tokens, stop at the
        end-of-turn token(s). A `temperature` without `do_sample` samples when > 0 and decodes
        greedily at 0 (as chat APIs mean it)."""
        kwargs: dict[str, Any] = {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, **gen}
        if "do_sample" not in gen:
            temperature = gen.get("temperature")
            kwargs["do_sample"] = temperature is not None and temperature > 0
        if not kwargs["do_sample"]:
            kwargs.pop("temperature", None)  # meaningless without sampling; transformers warns
        kwargs.setdefault("eos_token_id", self._stop_ids)
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        return kwargs

    def model_inputs(
        self, items: Sequence[tuple[PointsInput | None, Sequence[dict]]]
    ) -> dict[str, torch.Tensor | None]:
        """Left-padded model inputs for (points, conversation) items: input_ids and
        attention_mask (B, T), point_clouds (P, num_points, C) for the P items with points."""
        rows, clouds = [], []
        for points, history in items:
            rows.append(self.prompt_ids(history, with_points=points is not None))
            if points is not None:
                clouds.append(self.prepare_points(points))
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):
            # Left padding: every row's last prompt token sits in the last column, where
            # generation continues.
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        return {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
            "point_clouds": torch.stack(clouds).to(self.device) if clouds else None,
        }

    # ---- generation ---------------------------------------------------------------------------

    def _generate(
        self, items: Sequence[tuple[PointsInput | None, Sequence[dict]]], gen: dict[str, Any]
    ) -> list[str]:
        inputs = self.model_inputs(items)
        kwargs = self.generation_kwargs(**gen)
        with self._lock:
            output = self.model.generate(**inputs, **kwargs)  # (B, T + new)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]

    def generate(self, points_or_path: PointsInput | None, prompt: str, **gen: Any) -> str:
        """Answer `prompt` about one point cloud (None: a text-only question)."""
        return self.chat([{"role": "user", "content": prompt}], points_or_path, **gen)

    def generate_batch(
        self, items: Sequence[tuple[PointsInput | None, str]], **gen: Any
    ) -> list[str]:
        """Answer several (points | None, prompt) items in one left-padded batch."""
        if not items:
            return []
        conversations = [(points, [{"role": "user", "content": q}]) for points, q in items]
        return self._generate(conversations, gen)

    def chat(
        self, history: Sequence[dict], points_or_path: PointsInput | None = None, **gen: Any
    ) -> str:
        """The assistant's next reply to `history` ([{"role", "content"}...], ending with a user
        turn; an optional leading system turn); the points belong to the first user turn."""
        return self._generate([(points_or_path, history)], gen)[0]

    def stream(self, points_or_path: PointsInput | None, prompt: str, **gen: Any) -> Iterator[str]:
        """`generate`, as text chunks while they are produced (they join to its answer)."""
        return self.stream_chat([{"role": "user", "content": prompt}], points_or_path, **gen)

    def stream_chat(
        self, history: Sequence[dict], points_or_path: PointsInput | None = None, **gen: Any
    ) -> Iterator[str]:
        """`chat`, as text chunks. Generation runs in a background thread; closing the iterator
        early (or an exception in the reader) stops it at the next token."""
        inputs = self.model_inputs([(points_or_path, history)])
        streamer = _TextStream(self.tokenizer)
        stop = threading.Event()
        kwargs = self.generation_kwargs(**gen)
        kwargs["stopping_criteria"] = StoppingCriteriaList(
            [*kwargs.get("stopping_criteria", []), _StopEvent(stop)]
        )
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock:
                    self.model.generate(**inputs, streamer=streamer, **kwargs)
            except BaseException as exc:  # re-raised in the reader's thread below
                failure.append(exc)
                streamer.end()

        return self._stream_chunks(
            threading.Thread(target=run, daemon=True), streamer, stop, failure
        )

    @staticmethod
    def _stream_chunks(
        worker: threading.Thread,
        streamer: _TextStream,
        stop: threading.Event,
        failure: list[BaseException],
    ) -> Iterator[str]:
        # A generator of its own so that the inputs above are checked when stream() is called,
        # not at the first next().
        worker.start()
        try:
            yield from (chunk for chunk in streamer if chunk)
        finally:
            stop.set()
            worker.join()
        if failure:
            raise failure[0]
