"""LoRA / QLoRA for a training run: the run arguments turned into adapters and a 4-bit LLM.

The adapters themselves and their checkpoint format live in `pointllm.model.adapters` (names
re-exported here); the quantization settings in `pointllm.model.precision`.
"""

from __future__ import annotations

import os

from pointllm.model.adapters import (  # noqa: F401 (re-exported)
    ADAPTER_INFO,
    LLM_PREFIX,
    is_lora_model,
    load_lora_adapter,
    load_lora_weights,
    merge_lora,
    save_lora_adapter,
)
from pointllm.model.checkpoint import POINT_MODULES_FILE, POINTLLM_CONFIG_FILE  # noqa: F401
from pointllm.model.pointllm import PointLLMForCausalLM
from pointllm.train.args import ArgumentError, ModelArguments


def quantization_kwargs(model_args: ModelArguments) -> dict:
    """`from_pretrained` arguments that load the LLM in 4 bit (QLoRA), or {} without quantization."""
    if model_args.quantization is None:
        return {}
    from pointllm.model.precision import quantization_config

    try:
        config = quantization_config(model_args.quantization)
    except ValueError as exc:
        raise ArgumentError(
            f"--quantization {model_args.quantization} (QLoRA): {exc}; use LoRA without "
            "--quantization on this machine"
        ) from None
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return {"quantization_config": config, "device_map": {"": local_rank}}


def apply_lora(model: PointLLMForCausalLM, model_args: ModelArguments) -> None:
    """Wrap the LLM with LoRA adapters (after the stage plan froze its weights)."""
    from pointllm.model.adapters import add_lora

    add_lora(
        model,
        r=model_args.lora_r,
        alpha=model_args.lora_alpha,
        dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        quantized=bool(model_args.quantization),
    )
