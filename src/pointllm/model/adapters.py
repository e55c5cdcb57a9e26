"""LoRA adapters on the language model, and the adapter checkpoint format.

Only `model.language_model` is wrapped by peft; the projector (and the point-token embeddings)
train in full. An adapter checkpoint is a directory holding

- `adapter_config.json`, `adapter_model.safetensors`: the peft adapter of the LLM;
- `point_modules.safetensors`: encoder, projector and point-token embeddings;
- `pointllm_config.json`: the PointLLM config; tokenizer files;
- `pointllm_adapter.json`: the base the adapter applies to (an LLM or a PointLLM checkpoint).

It deliberately has no `config.json`, so nothing mistakes it for a full checkpoint and loads a
randomly initialised LLM; `load_lora_adapter` rebuilds the model from the base.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pointllm.model import checkpoint
from pointllm.model.checkpoint import ADAPTER_INFO_FILE as ADAPTER_INFO
from pointllm.model.checkpoint import POINT_MODULES_FILE, POINTLLM_CONFIG_FILE
from pointllm.model.pointllm import PointLLMForCausalLM

LLM_PREFIX = "language_model."


def is_lora_model(model: PointLLMForCausalLM) -> bool:
    from peft import PeftModel

    return isinstance(model.language_model, PeftModel)


def add_lora(
    model: PointLLMForCausalLM,
    *,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: Sequence[str],
    quantized: bool = False,
) -> None:
    """Wrap the LLM with LoRA adapters of rank `r` on `target_modules` (["all-linear"]: every
    linear layer but the head); `quantized`: the LLM was loaded in 4 bit (QLoRA)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    llm = model.language_model
    if quantized:
        llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)
    targets = list(target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets[0] if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )
    model.language_model = get_peft_model(llm, config)


def merge_lora(model: PointLLMForCausalLM) -> None:
    """Fold the adapters into the LLM weights; the model becomes a plain PointLLM again."""
    model.language_model = model.language_model.merge_and_unload()


def _point_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().cpu().contiguous() for k, v in state.items() if not k.startswith(LLM_PREFIX)
    }


def _llm_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(LLM_PREFIX) :]: v for k, v in state.items() if k.startswith(LLM_PREFIX)}


def save_lora_adapter(
    model: PointLLMForCausalLM,
    tokenizer,
    out_dir: str | os.PathLike,
    base_model: str,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the adapter format into `out_dir` (files are overwritten in place; callers make the
    directory complete atomically). `state_dict`, when given, is the gathered full state (FSDP /
    DeepSpeed); otherwise the model's own parameters are used."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if state_dict is None else state_dict
    # The grown vocabulary (point tokens) is rebuilt from the base on load, and LoRA does not
    # train embeddings, so the embedding matrices stay out of the adapter.
    model.language_model.save_pretrained(
        out, state_dict=_llm_state(state), save_embedding_layers=False
    )
    save_file(_point_state(state), out / POINT_MODULES_FILE, metadata={"format": "pt"})
    (out / POINTLLM_CONFIG_FILE).write_text(model.config.to_json_string())
    tokenizer.save_pretrained(out)
    (out / ADAPTER_INFO).write_text(json.dumps({"format_version": 1, "base_model": base_model}))


def load_lora_weights(model: PointLLMForCausalLM, path: str | os.PathLike) -> None:
    """Load an adapter checkpoint's trained weights into a model that already has LoRA applied
    (used to resume training)."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    directory = Path(path)
    set_peft_model_state_dict(model.language_model, load_peft_weights(str(directory)))
    _load_point_modules(model, directory)


def _load_point_modules(model: PointLLMForCausalLM, directory: Path) -> None:
    state = load_file(directory / POINT_MODULES_FILE)
    own = {k for k in model.state_dict() if not k.startswith(LLM_PREFIX)}
    if set(state) != own:
        raise ValueError(
            f"{directory / POINT_MODULES_FILE}: point-module keys do not match the model "
            f"(missing {sorted(own - set(state))[:5]}, unexpected {sorted(set(state) - own)[:5]})"
        )
    model.load_state_dict(state, strict=False)


def load_lora_adapter(
    path: str | os.PathLike, *, dtype: torch.dtype | str | None = None, **llm_kwargs: Any
) -> tuple[PointLLMForCausalLM, object]:
    """Rebuild a LoRA-trained PointLLM from its adapter checkpoint and its base (which must still
    exist at the recorded location; a hub id or `smollm2-135m` is resolved as training resolves
    it). `llm_kwargs` (quantization) go to the base's `from_pretrained`. Returns the model in
    eval mode and its tokenizer."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from pointllm.config import PointLLMConfig
    from pointllm.model.backbones import resolve_backbone

    directory = Path(path)
    info_file = directory / ADAPTER_INFO
    if not info_file.is_file():
        raise FileNotFoundError(f"{directory}: not a PointLLM LoRA adapter (no {ADAPTER_INFO})")
    base = resolve_backbone(json.loads(info_file.read_text())["base_model"])
    config = PointLLMConfig.from_json_file(directory / POINTLLM_CONFIG_FILE)
    if checkpoint.detect(base) in checkpoint.POINTLLM_KINDS:
        model, _ = checkpoint.load(base, dtype=dtype, **llm_kwargs)
    else:
        model, _ = PointLLMForCausalLM.from_backbone(
            base,
            config.point_config,
            projector_hidden_dims=config.projector_hidden_dims,
            mm_use_point_start_end=config.mm_use_point_start_end,
            template=config.template,
            dtype=dtype,
            **llm_kwargs,
        )
    model.config.template = config.template
    model.config.num_points = config.num_points
    model.language_model = PeftModel.from_pretrained(model.language_model, str(directory))
    _load_point_modules(model, directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
