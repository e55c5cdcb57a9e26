"""Numeric precision: dtype names, and the bitsandbytes quantization that training (QLoRA) and
inference (`--quantize`) both load the language model with."""

from __future__ import annotations

import importlib.util
import warnings

import torch

DTYPE_NAMES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
QUANTIZE_MODES = ("8bit", "4bit")
# The encoder and projector stay in full precision, and so does the output head: only the
# language model's own linear layers are quantized.
NOT_QUANTIZED_MODULES = ("point_backbone", "point_proj", "lm_head")


def default_dtype(device: torch.device | str | None) -> torch.dtype:
    """bf16 on a CUDA device that supports it, else float32."""
    on_cuda = device is not None and torch.device(device).type == "cuda"
    return torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32


def resolve_dtype(
    dtype: torch.dtype | str | None,
    device: torch.device | str | None = None,
    *,
    auto: torch.dtype | str | None = None,
) -> torch.dtype:
    """A floating torch dtype from a dtype or a name (fp32/float32/torch.float32, bf16, fp16).

    None or "auto" mean `auto` when given (e.g. the dtype a config.json names), else
    `default_dtype(device)`. fp16 on a CPU device works but warns (no fast kernels there).
    """
    if dtype is None or dtype == "auto":
        return resolve_dtype(auto, device) if auto not in (None, "auto") else default_dtype(device)
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        resolved = DTYPE_NAMES.get(str(dtype).removeprefix("torch."))
    if resolved is None or not resolved.is_floating_point:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, fp32, bf16 or fp16")
    if resolved == torch.float16 and device is not None and torch.device(device).type == "cpu":
        warnings.warn("fp16 on CPU is slow (no fast kernels); prefer fp32 or bf16", stacklevel=3)
    return resolved


def check_quantization_supported(mode: str) -> None:
    """Raise one line unless `mode` is known and bitsandbytes and a CUDA GPU are both here."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {mode!r}; use one of {QUANTIZE_MODES}")
    missing = [
        what
        for what, present in (
            ("the bitsandbytes package (pip install bitsandbytes)", _has_bitsandbytes()),
            ("a CUDA device", torch.cuda.is_available()),
        )
        if not present
    ]
    if missing:
        raise ValueError(
            f"{mode[0]}-bit needs bitsandbytes and a CUDA GPU; missing: {' and '.join(missing)}"
        )


def _has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def quantization_config(mode: str, compute_dtype: torch.dtype = torch.bfloat16):
    """The `BitsAndBytesConfig` for `from_pretrained`: NF4 with double quantization (4bit) or
    LLM.int8 (8bit), leaving `NOT_QUANTIZED_MODULES` in `compute_dtype`."""
    from transformers import BitsAndBytesConfig

    check_quantization_supported(mode)
    skip = list(NOT_QUANTIZED_MODULES)
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip,
    )
