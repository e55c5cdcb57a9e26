"""What each training stage starts from and which parameters it trains.

Stage 1 aligns points to a frozen LLM: the projector and the `<point_start>`/`<point_end>` input
embeddings learn. Stage 2 instruction-tunes: the LLM learns too. The point encoder stays frozen
(BatchNorm in eval mode) unless asked otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pointllm.config import PROJECTOR_PRESETS, PointBertConfig
from pointllm.model import checkpoint
from pointllm.model.checkpoint import Kind
from pointllm.model.encoder import read_checkpoint_config
from pointllm.model.pointllm import PointLLMForCausalLM
from pointllm.model.precision import resolve_dtype
from pointllm.train.args import ArgumentError, DataArguments, ModelArguments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagePlan:
    """Which parts receive full-parameter updates (LoRA adapters are added separately)."""

    encoder: bool
    projector: bool
    llm: bool
    point_tokens: bool


def stage_plan(model_args: ModelArguments) -> StagePlan:
    """The trainable parts for the stage and the fix_llm / fix_pointnet overrides. With LoRA the
    LLM's own weights stay frozen: only its adapters learn."""
    return StagePlan(
        encoder=model_args.fix_pointnet is False,
        projector=True,
        llm=model_args.llm_trainable and not model_args.lora_r,
        point_tokens=True,
    )


def apply_plan(model: PointLLMForCausalLM, plan: StagePlan) -> None:
    """Set requires_grad per part; trainable parameters stored in half precision move to float32
    so the optimizer updates full-precision master weights (autocast does the low-precision math)."""
    model.set_trainable(
        encoder=plan.encoder, projector=plan.projector, llm=plan.llm, point_tokens=plan.point_tokens
    )
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()


def trainable_parameter_names(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def is_pointllm_checkpoint(path: str | Path) -> bool:
    """A directory whose config.json says `model_type: pointllm` (ours or the original's)."""
    return checkpoint.config_kind(path) in (Kind.POINTLLM, Kind.ORIGINAL)


def keeps_trained_projector(model_args: ModelArguments) -> bool:
    """Whether the run starts from a PointLLM checkpoint whose projector has been trained (ours or
    an original one), not from an LLM or an original init folder, whose projector is new."""
    from pointllm.model.backbones import resolve_backbone

    kind = checkpoint.detect(resolve_backbone(model_args.model_name_or_path))
    return kind in (Kind.POINTLLM, Kind.ORIGINAL)


def build_model(
    model_args: ModelArguments, data_args: DataArguments, llm_kwargs: dict | None = None
) -> tuple[PointLLMForCausalLM, object]:
    """The model and tokenizer a run starts from: a new PointLLM on an LLM (stage 1), or a
    PointLLM checkpoint such as a stage-1 output (stage 2). `llm_kwargs` go to `from_pretrained`
    (quantization). An optional Point-BERT checkpoint replaces the encoder weights."""
    from pointllm.model import legacy
    from pointllm.model.backbones import resolve_backbone

    source = resolve_backbone(model_args.model_name_or_path)
    kind = checkpoint.detect(source)
    dtype = "auto" if model_args.dtype == "auto" else resolve_dtype(model_args.dtype)
    if kind is Kind.ORIGINAL_INIT:
        # An original `*_v1.x_init` folder: its LLM plus the Point-BERT checkpoint it names (or
        # --point_backbone_ckpt), ready for stage 1 as the original recipe starts it.
        model, tokenizer = legacy.load_init_folder(
            source, point_bert_ckpt=model_args.point_backbone_ckpt, dtype=dtype
        )
    elif kind in checkpoint.POINTLLM_KINDS:
        model, tokenizer = _continue_from_checkpoint(
            source, model_args, data_args, dtype, llm_kwargs
        )
    else:
        model, tokenizer = _new_model(source, model_args, data_args, dtype, llm_kwargs)
    if model_args.point_backbone_ckpt and kind is not Kind.ORIGINAL_INIT:
        model.point_backbone.load_original_checkpoint(model_args.point_backbone_ckpt)
    elif kind not in checkpoint.POINTLLM_KINDS:
        logger.warning(
            "no --point_backbone_ckpt: the point encoder keeps its random initialisation"
        )
    if data_args.num_points is not None:
        model.config.num_points = data_args.num_points
    if model_args.system_prompt is not None:
        model.config.system_prompt = model_args.system_prompt
    # No KV cache while training (it is useless there and conflicts with checkpointing).
    model.language_model.config.use_cache = False
    return model.train(), tokenizer


def new_point_config(model_args: ModelArguments, data_args: DataArguments) -> PointBertConfig:
    """The encoder of a new model: the config its --point_backbone_ckpt carries (a stage-0
    checkpoint does), else the preset with the size overrides and `use_color`. Sizes or a color
    setting given next to a checkpoint that carries its config must match it."""
    asked: dict[str, int] = model_args.encoder_overrides()
    if data_args.use_color is not None:
        asked["point_dims"] = 6 if data_args.use_color else 3
    ckpt = model_args.point_backbone_ckpt
    stored = read_checkpoint_config(ckpt) if ckpt else None
    if stored is None:
        asked.setdefault("point_dims", 6)
        return PointBertConfig.from_preset(model_args.point_backbone or "v1.2", **asked)
    differ = {k: v for k, v in asked.items() if getattr(stored, k) != v}
    if differ:
        theirs = ", ".join(f"{k}={getattr(stored, k)}" for k in differ)
        ours = ", ".join(f"{k}={v}" for k, v in differ.items())
        raise ArgumentError(
            f"{ckpt} holds an encoder with {theirs}, but this run asks for {ours}: drop those "
            "settings (the encoder is built from the checkpoint's config) or use another checkpoint"
        )
    return stored


def _new_model(source, model_args, data_args, dtype, llm_kwargs):
    preset = model_args.point_backbone or "v1.2"
    point_config = new_point_config(model_args, data_args)
    hidden = model_args.projector_hidden_dims
    return PointLLMForCausalLM.from_backbone(
        source,
        point_config,
        projector_hidden_dims=PROJECTOR_PRESETS[preset] if hidden is None else hidden,
        mm_use_point_start_end=model_args.mm_use_point_start_end,
        template=model_args.template or "chat_template",
        dtype=dtype,
        **(llm_kwargs or {}),
    )


def _continue_from_checkpoint(source, model_args, data_args, dtype, llm_kwargs):
    fixed = sorted(model_args.encoder_overrides())
    if model_args.point_backbone or fixed or model_args.projector_hidden_dims is not None:
        raise ArgumentError(
            f"{source} is a PointLLM checkpoint: its encoder and projector sizes are fixed; drop "
            f"--point_backbone/--projector_hidden_dims/{'/'.join('--' + k for k in fixed) or '...'}"
        )
    model, tokenizer = checkpoint.load(source, dtype=dtype, **(llm_kwargs or {}))
    if data_args.use_color is not None and data_args.use_color != model.config.use_color:
        raise ArgumentError(
            f"--use_color {data_args.use_color} but the checkpoint {source} was built with "
            f"use_color={model.config.use_color}"
        )
    if model_args.template is not None:
        model.config.template = model_args.template
    return model, tokenizer
