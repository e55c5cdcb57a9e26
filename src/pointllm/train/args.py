"""Run arguments of `pointllm train`: model, data and Hugging Face training arguments.

One parser serves the YAML recipes shipped in the package (`pointllm/recipes/`, `configs/` of a
source checkout; `--config stage1` names one), command-line overrides and the original PointLLM
script's flags (`--version v1`, `--stage_2 True`, `--fix_llm`, `--pointnum`, ...), which are
translated to their current names before parsing.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser, TrainingArguments

from pointllm.config import POINT_BERT_PRESETS, POINT_BERT_SIZE_FIELDS, TEMPLATES
from pointllm.train.projector_fit import PROJECTOR_INITS

STAGE_CONVERSATION_TYPES = {
    1: ["simple_description"],
    2: ["detailed_description", "single_round", "multi_round"],
}
DTYPES = ("float32", "bfloat16", "float16", "auto")
ENCODER_SIZE_FIELDS = POINT_BERT_SIZE_FIELDS


class ArgumentError(ValueError):
    """A training argument, config file or flag that cannot be used."""


@dataclass
class ModelArguments:
    """Where the weights start and which parts train."""

    model_name_or_path: str = field(
        default="smollm2-135m",
        metadata={
            "help": "an LLM (Hugging Face dir or hub id; `smollm2-135m` = the embedded default) for "
            "a new PointLLM, or a PointLLM checkpoint dir (e.g. a stage-1 output) to continue from"
        },
    )
    stage: int = field(
        default=1,
        metadata={
            "help": "1: projector (+ point-token embeddings) trains; 2: LLM + projector train"
        },
    )
    point_backbone: str | None = field(
        default=None,
        metadata={"help": f"Point-BERT preset of a new model: {sorted(POINT_BERT_PRESETS)} (v1.2)"},
    )
    point_backbone_ckpt: str | None = field(
        default=None, metadata={"help": "point_bert_v1.x.pt encoder weights to load"}
    )
    num_group: int | None = field(default=None, metadata={"help": "encoder size override"})
    group_size: int | None = field(default=None, metadata={"help": "encoder size override"})
    trans_dim: int | None = field(default=None, metadata={"help": "encoder size override"})
    depth: int | None = field(default=None, metadata={"help": "encoder size override"})
    num_heads: int | None = field(default=None, metadata={"help": "encoder size override"})
    encoder_dims: int | None = field(default=None, metadata={"help": "encoder size override"})
    projector_hidden_dims: list[int] | None = field(
        default=None, metadata={"help": "projector MLP hidden sizes (default: the preset's)"}
    )
    projector_init: str = field(
        default="random",
        metadata={
            "help": "stage-1 projector start: random, or caption_fit (its last layer solved so "
            "point tokens land on the embeddings of their captions' words; see "
            "pointllm.train.projector_fit)"
        },
    )
    mm_use_point_start_end: bool = field(
        default=True, metadata={"help": "wrap the point tokens in <point_start>/<point_end>"}
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": f"prompt format {TEMPLATES} (default: the checkpoint's, or chat_template)"
        },
    )
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "system message of every conversation that has none, kept in the checkpoint "
            "for inference; '' for an empty one (default: the checkpoint's, or the template's)"
        },
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": f"storage dtype of the loaded weights {DTYPES}; trainable parameters are "
            "always kept in float32 (bf16/fp16 compute comes from --bf16/--fp16 autocast)"
        },
    )
    fix_llm: bool | None = field(
        default=None, metadata={"help": "freeze the LLM (default: frozen in stage 1 only)"}
    )
    fix_pointnet: bool | None = field(
        default=None,
        metadata={"help": "freeze the point encoder (default: frozen; --unfreeze_encoder = False)"},
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the LLM (0 = no LoRA)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "LLM modules that get LoRA adapters (peft names; all-linear)"},
    )
    quantization: str | None = field(
        default=None, metadata={"help": "`4bit`: QLoRA (bitsandbytes NF4 LLM, needs CUDA)"}
    )
    save_merged: bool = field(
        default=False,
        metadata={"help": "with LoRA: save the merged model instead of the adapter"},
    )

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ArgumentError(f"--stage must be 1 or 2, got {self.stage}")
        if self.point_backbone is not None and self.point_backbone not in POINT_BERT_PRESETS:
            raise ArgumentError(
                f"--point_backbone {self.point_backbone!r}: known presets are "
                f"{sorted(POINT_BERT_PRESETS)}"
            )
        if self.template is not None and self.template not in TEMPLATES:
            raise ArgumentError(f"--template must be one of {TEMPLATES}, got {self.template!r}")
        if self.projector_init not in PROJECTOR_INITS:
            raise ArgumentError(
                f"--projector_init must be one of {PROJECTOR_INITS}, got {self.projector_init!r}"
            )
        if self.projector_init != "random" and self.stage != 1:
            raise ArgumentError(
                f"--projector_init {self.projector_init} starts a new projector: stage 1 only"
            )
        if self.dtype not in DTYPES:
            raise ArgumentError(f"--dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.lora_r < 0:
            raise ArgumentError(f"--lora_r must be >= 0, got {self.lora_r}")
        if self.quantization not in (None, "4bit"):
            raise ArgumentError(f"--quantization must be 4bit or unset, got {self.quantization!r}")
        if self.quantization and not self.lora_r:
            raise ArgumentError("--quantization 4bit trains through LoRA: set --lora_r (e.g. 64)")
        if self.save_merged and not self.lora_r:
            raise ArgumentError("--save_merged only applies to LoRA runs (--lora_r > 0)")
        if self.save_merged and self.quantization:
            raise ArgumentError(
                "--save_merged cannot merge into 4-bit weights; save the adapter and merge it into "
                "the full-precision LLM afterwards"
            )
        if self.lora_r and not self.llm_trainable:
            raise ArgumentError(
                "--lora_r trains the LLM through adapters, but this run freezes the LLM (stage 1 or "
                "--fix_llm True): use --stage 2"
            )

    @property
    def llm_trainable(self) -> bool:
        """Whether the LLM learns in this run (fully, or through LoRA adapters)."""
        return self.stage == 2 if self.fix_llm is None else not self.fix_llm

    def encoder_overrides(self) -> dict[str, int]:
        """Encoder sizes given explicitly on the command line or in the config."""
        return {k: getattr(self, k) for k in ENCODER_SIZE_FIELDS if getattr(self, k) is not None}


@dataclass
class DataArguments:
    """Point clouds and annotations, in the original PointLLM layout."""

    data_path: str | None = field(
        default=None, metadata={"help": "folder of {object_id}_8192.npy point clouds"}
    )
    anno_path: str | None = field(default=None, metadata={"help": "annotation JSON file"})
    conversation_types: list[str] | None = field(
        default=None,
        metadata={
            "help": "annotation types to train on (default: simple_description in stage 1; "
            "detailed_description single_round multi_round in stage 2)"
        },
    )
    use_color: bool | None = field(
        default=None, metadata={"help": "xyz + rgb input (default: the model's, new models: True)"}
    )
    num_points: int | None = field(
        default=None, metadata={"help": "points per cloud (default: the model's, 8192)"}
    )
    model_max_length: int = field(default=2048, metadata={"help": "maximum tokens per sample"})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "use only the first N samples (debugging, demos)"}
    )

    def __post_init__(self) -> None:
        if self.model_max_length <= 0:
            raise ArgumentError(f"--model_max_length must be > 0, got {self.model_max_length}")
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise ArgumentError(f"--max_train_samples must be > 0, got {self.max_train_samples}")

    def conversation_types_for(self, stage: int) -> list[str]:
        return list(self.conversation_types or STAGE_CONVERSATION_TYPES[stage])


@dataclass
class PointLLMTrainingArguments(TrainingArguments):
    """Hugging Face `TrainingArguments` with defaults suited to PointLLM, plus `--resume`."""

    # The collator's `point_clouds` is not a column the Trainer can infer from forward().
    remove_unused_columns: bool = field(default=False)
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "none, tensorboard, wandb, ... (comma separated)"}
    )
    # The progress bar stays on even when transformers' logger is quiet.
    disable_tqdm: bool | None = field(default=False)
    logging_steps: float = field(default=10)
    include_num_input_tokens_seen: str = field(
        default="non_padding", metadata={"help": "count tokens for tokens/s: non_padding, all, no"}
    )
    # Every trainable parameter is used in every step; searching for unused ones costs time.
    ddp_find_unused_parameters: bool | None = field(default=False)
    resume: bool = field(
        default=False,
        metadata={"help": "continue from the latest complete checkpoint in --output_dir, if any"},
    )
    fsdp_transformer_layer_cls_to_wrap: list[str] | None = field(
        default=None,
        metadata={"help": "FSDP wrap units (default: the LLM's decoder layer class)"},
    )

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ArgumentError("--output_dir is required")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
            # accelerate forms a CPU process group (DDP over gloo) only when told the run is on
            # CPU; otherwise every process would silently train alone.
            self.use_cpu = True
        super().__post_init__()


def _bool_value(flag: str, value: str | None) -> bool:
    if value is None:
        return True
    lowered = value.lower()
    if lowered in ("true", "t", "yes", "y", "1"):
        return True
    if lowered in ("false", "f", "no", "n", "0"):
        return False
    raise ArgumentError(f"{flag} expects true or false, got {value!r}")


def _split_flags(argv: Sequence[str]) -> list[list[str]]:
    """Group argv into [flag, values...] runs (`--flag=value` becomes two items)."""
    groups: list[list[str]] = []
    for item in argv:
        if item.startswith("--"):
            groups.append(item.split("=", 1))
        elif groups:
            groups[-1].append(item)
        else:
            raise ArgumentError(f"unexpected argument {item!r} (options start with --)")
    return groups


_HAS_ACTIVATION_CHECKPOINTING = "activation_checkpointing" in TrainingArguments.__dataclass_fields__


def translate_legacy_flags(argv: Sequence[str]) -> list[str]:
    """Rewrite the original PointLLM script's flags (and names transformers renamed) into ours."""
    out: list[str] = []
    for flag, *values in _split_flags(argv):
        value = values[0] if values else None
        if flag == "--version":
            # The original's `--version v1` selects the vicuna_v1_1 conversation template.
            if value != "v1":
                raise ArgumentError(f"--version {value}: only v1 (vicuna_v1_1) is supported")
            out += ["--template", "vicuna_v1_1"]
        elif flag == "--stage_2":
            out += ["--stage", "2" if _bool_value(flag, value) else "1"]
        elif flag == "--unfreeze_encoder":
            out += ["--fix_pointnet", "false" if _bool_value(flag, value) else "true"]
        elif flag == "--evaluation_strategy":
            out += ["--eval_strategy", *values]
        elif flag == "--warmup_ratio":
            # transformers 5 folded the ratio into warmup_steps (a float below 1 is a ratio).
            out += ["--warmup_steps", *values]
        elif flag == "--gradient_checkpointing" and _HAS_ACTIVATION_CHECKPOINTING:
            # transformers 5 renamed it (the old name still works, with a FutureWarning).
            out += ["--activation_checkpointing", *values]
        elif flag == "--pointnum":
            out += ["--num_points", *values]
        elif flag == "--data_debug_num":
            # The original's 0 means "all samples".
            if value is not None and int(value) > 0:
                out += ["--max_train_samples", value]
        else:
            out += [flag, *values]
    return out


def _yaml_value(key: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        # Optional booleans (use_color, fix_llm: default None) accept no bare flag, so True is
        # spelt out; `fsdp` is a string field whose bare flag means full sharding.
        if key == "fsdp":
            return [] if value else ["false"]
        return ["true" if value else "false"]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, dict):
        return [json.dumps(value)]
    return [str(value)]


RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
# Recipe values that name another shipped file (`fsdp_config: configs/fsdp_full_shard.json`).
_RECIPE_FILE_KEYS = ("fsdp_config", "deepspeed")


def recipe_names() -> list[str]:
    """The recipes shipped with pointllm (file names in `pointllm/recipes/`)."""
    return sorted(p.name for p in RECIPES_DIR.iterdir() if p.suffix in (".yaml", ".json"))


def recipe_path(name: str | os.PathLike) -> Path:
    """A recipe file: `name` itself when it exists, else the shipped recipe it names
    (`stage1`, `stage1.yaml` or `configs/stage1.yaml`, which also works outside a checkout)."""
    path = Path(name)
    if path.is_file():
        return path
    base = path.name if path.parent in (Path("."), Path("configs")) else None
    for candidate in (base, f"{base}.yaml") if base else ():
        if (RECIPES_DIR / candidate).is_file():
            return RECIPES_DIR / candidate
    shipped = ", ".join(p.removesuffix(".yaml") for p in recipe_names() if p.endswith(".yaml"))
    raise ArgumentError(f"{name}: config file not found (shipped recipes: {shipped})")


def read_recipe_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML recipe as a flat mapping of argument names to values ({} for an empty file).
    `path` is a file or the name of a shipped recipe (see `recipe_path`)."""
    import yaml

    file = recipe_path(path)
    try:
        data = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise ArgumentError(f"{file}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ArgumentError(f"{file}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ArgumentError(f"{file}: expected a mapping of argument names to values")
    return data


def config_to_argv(path: str | os.PathLike) -> list[str]:
    """A YAML recipe (see `read_recipe_file`) as command-line arguments."""
    argv: list[str] = []
    for key, value in read_recipe_file(path).items():
        if value is None:
            continue
        if key in _RECIPE_FILE_KEYS and isinstance(value, str) and value.endswith(".json"):
            value = str(recipe_path(value))
        argv += [f"--{key}", *_yaml_value(key, value)]
    return argv


def build_parser() -> HfArgumentParser:
    # No prefix matching: a misspelt key in a recipe must fail, not set some other field.
    return HfArgumentParser(
        (ModelArguments, DataArguments, PointLLMTrainingArguments),
        prog="pointllm train",
        allow_abbrev=False,
        exit_on_error=False,  # bad values become one-line errors, not a usage dump
    )


def parse_args(
    argv: Sequence[str],
) -> tuple[ModelArguments, DataArguments, PointLLMTrainingArguments]:
    """Parse `[--config recipe.yaml] [--field value ...]`; command-line values win over the file."""
    argv = list(argv)
    config_args: list[str] = []
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ArgumentError("--config needs a YAML file or a recipe name")
        config_args = config_to_argv(argv[i + 1])
        del argv[i : i + 2]
    merged = translate_legacy_flags(config_args) + translate_legacy_flags(argv)
    try:
        model_args, data_args, training_args, unknown = build_parser().parse_args_into_dataclasses(
            args=merged, look_for_args_file=False, return_remaining_strings=True
        )
    except ArgumentError:
        raise
    except (ValueError, argparse.ArgumentError) as exc:
        raise ArgumentError(str(exc).splitlines()[0]) from None
    if unknown:
        raise ArgumentError(
            f"unknown argument(s) {' '.join(unknown)} (see `pointllm train --help`)"
        )
    if data_args.anno_path is None or data_args.data_path is None:
        raise ArgumentError("--data_path (point clouds) and --anno_path (annotations) are required")
    return model_args, data_args, training_args
