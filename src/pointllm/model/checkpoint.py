"""What a checkpoint directory holds, and how to load and save one: the one place that decides.

`detect(path)` names the kind of a local directory (a hub id is turned into one first by
`pointllm.model.backbones.resolve_model_path`):

- `pointllm`: ours (config.json with `model_type: pointllm` and a nested `text_config`);
- `original`: an original PointLLM release (flat Llama config.json, original weight names);
- `original_init`: an original stage-1 starting point (`*_v1.1_init`: LLM weights only);
- `lora_adapter`: a LoRA run's output (`pointllm_adapter.json`; see `pointllm.model.adapters`);
- `llm`: any other Hugging Face model directory (a backbone to build a PointLLM on);
- `missing` / `unknown`: no such path, or nothing recognisable in it.

Every checkpoint file name lives here too. Model classes are imported inside `load`/`save`, so
the modeling modules can ask this one without an import cycle.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CONFIG_FILE = "config.json"
# Marks a LoRA run's output directory (adapter weights + the base they apply to).
ADAPTER_INFO_FILE = "pointllm_adapter.json"
# The rest of an adapter checkpoint: encoder/projector/point-token weights and the model config.
POINT_MODULES_FILE = "point_modules.safetensors"
POINTLLM_CONFIG_FILE = "pointllm_config.json"
# The arguments a training run was started with, saved beside its final model.
TRAINING_CONFIG_FILE = "training_config.json"
# Written last into a finished `checkpoint-N/` of a training run (pointllm.train.checkpoints).
COMPLETE_MARKER = "checkpoint_complete.json"
# Files whose presence makes a directory loadable; publishing removes them first, writes them last.
LOADABLE_MARKERS = (CONFIG_FILE, ADAPTER_INFO_FILE)
# (index file, single file, format), in the order transformers prefers them.
WEIGHT_LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors", "safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin", "bin"),
)
# Weight-name prefixes of the point encoder and projector in the original layout.
ORIGINAL_POINT_PREFIXES = ("model.point_backbone.", "model.point_proj.")


class Kind(enum.StrEnum):
    POINTLLM = "pointllm"
    ORIGINAL = "original"
    ORIGINAL_INIT = "original_init"
    LORA_ADAPTER = "lora_adapter"
    LLM = "llm"
    MISSING = "missing"
    UNKNOWN = "unknown"


# Kinds whose config.json says `model_type: pointllm`.
POINTLLM_KINDS = (Kind.POINTLLM, Kind.ORIGINAL, Kind.ORIGINAL_INIT)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or is not what the caller needs."""


# ---- what a directory holds ------------------------------------------------------------------


def read_config_dict(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed `config.json` of a checkpoint directory."""
    file = Path(path) / CONFIG_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: not a checkpoint directory (no config.json)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: unreadable config.json ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: config.json is not a JSON object")
    return data


def config_kind(path: str | os.PathLike) -> Kind:
    """The kind as config.json alone tells it (an init folder reads as `original`); `unknown`
    without a config.json. Raises CheckpointError for an unreadable one."""
    if not (Path(path) / CONFIG_FILE).is_file():
        return Kind.UNKNOWN
    data = read_config_dict(path)
    if data.get("model_type") != "pointllm":
        return Kind.LLM
    # Ours nests the LLM's fields under `text_config`; the original keeps them flat.
    return Kind.POINTLLM if "text_config" in data else Kind.ORIGINAL


def detect(path: str | os.PathLike) -> Kind:
    """What the local directory `path` holds (see the module docstring). An original layout is
    told from an init folder by its weight names (the index, or the keys of a single file)."""
    directory = Path(path)
    if not directory.exists():
        return Kind.MISSING
    if (directory / ADAPTER_INFO_FILE).is_file():
        return Kind.LORA_ADAPTER
    kind = config_kind(directory)
    if kind is Kind.ORIGINAL and not has_original_point_weights(directory):
        return Kind.ORIGINAL_INIT
    return kind


def has_original_point_weights(path: str | os.PathLike) -> bool:
    """Whether the original-layout weights of `path` include the point encoder or projector."""
    keys = WeightFiles.find(path).key_to_file
    return any(key.startswith(ORIGINAL_POINT_PREFIXES) for key in keys)


def require_model(path: str | os.PathLike) -> Kind:
    """The kind of `path` when it is a PointLLM model that `load` can read; otherwise raise one
    line naming the path and what is wrong."""
    kind = detect(path)
    if kind is Kind.MISSING:
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    if kind is Kind.UNKNOWN:
        raise FileNotFoundError(f"{path}: not a PointLLM checkpoint directory (no config.json)")
    if kind is Kind.LLM:
        model_type = read_config_dict(path).get("model_type")
        raise CheckpointError(
            f"{path}: not a PointLLM checkpoint (config.json has model_type {model_type!r})"
        )
    if kind is Kind.ORIGINAL_INIT:
        raise CheckpointError(
            f"{path}: an original init folder (no point encoder or projector weights); start "
            "stage 1 from it (pointllm train) rather than loading it as a model"
        )
    return kind


# ---- weight files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightFiles:
    """The tensors of a checkpoint directory: each key and the file that holds it."""

    directory: Path
    format: str  # "safetensors" | "bin"
    key_to_file: dict[str, Path]

    @classmethod
    def find(cls, path: str | os.PathLike) -> WeightFiles:
        """Locate the weights: a sharded index or a single file, safetensors before `.bin`."""
        directory = Path(path)
        for index_name, single_name, fmt in WEIGHT_LAYOUTS:
            index = directory / index_name
            if index.is_file():
                return cls(directory, fmt, _read_index(index))
            single = directory / single_name
            if single.is_file():
                keys = _read_keys(single, fmt)
                return cls(directory, fmt, dict.fromkeys(keys, single))
        names = ", ".join(name for layout in WEIGHT_LAYOUTS for name in layout[:2])
        raise FileNotFoundError(f"{directory}: no weights found (looked for {names})")

    def files(self) -> list[Path]:
        """The weight files in order, each once."""
        return list(dict.fromkeys(self.key_to_file.values()))

    def read(self, file: Path) -> dict[str, torch.Tensor]:
        """All tensors of one file, on the CPU."""
        if self.format == "safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(file), framework="pt", device="cpu") as handle:
                    return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            except Exception as exc:  # safetensors raises its own error types for bad files
                raise CheckpointError(f"{file}: unreadable safetensors file ({exc})") from exc
        return _load_bin(file)


def _read_index(index: Path) -> dict[str, Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a weight index ({exc!r})") from exc
    files = {name: index.parent / name for name in set(weight_map.values())}
    absent = sorted(name for name, file in files.items() if not file.is_file())
    if absent:
        raise FileNotFoundError(f"{index}: shard files missing: {absent}")
    return {key: files[name] for key, name in weight_map.items()}


def _read_keys(file: Path, fmt: str) -> list[str]:
    if fmt == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                return list(handle.keys())
        except Exception as exc:  # safetensors raises its own error types for bad files
            raise CheckpointError(f"{file}: unreadable safetensors file ({exc})") from exc
    # Memory-mapped (see _load_bin), so listing a multi-GB file reads almost nothing.
    return list(_load_bin(file))


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    """A `.bin` state dict read with weights_only=True (tensors only, no code runs); memory-mapped
    when the file is in the zip format torch has written since 1.6."""
    errors = []
    for mmap in (True, False):
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception as exc:  # torch raises several types for unreadable or unsafe files
            errors.append(exc)
    else:
        first_line = str(errors[-1]).splitlines()[0] if str(errors[-1]) else ""
        raise CheckpointError(
            f"{file}: cannot read weights ({errors[-1].__class__.__name__}: {first_line})"
        )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: not a state dict of named tensors")
    return state


# ---- loading and saving ----------------------------------------------------------------------


def load(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    **llm_kwargs: Any,
):
    """A PointLLM in eval mode and its tokenizer, from any kind `require_model` accepts: ours,
    an original release, or a LoRA adapter rebuilt on its recorded base. dtype None/"auto" keeps
    the checkpoint's. `llm_kwargs` (e.g. a bitsandbytes `quantization_config` with a
    `device_map`) go to transformers' loader, for the original layout too."""
    kind = require_model(path)
    if kind is Kind.LORA_ADAPTER:
        from pointllm.model.adapters import load_lora_adapter

        model, tokenizer = load_lora_adapter(path, dtype=dtype, **llm_kwargs)
    elif kind is Kind.ORIGINAL:
        from pointllm.model import legacy

        placed = {} if "device_map" in llm_kwargs else {"device": device}
        model, tokenizer = legacy.load_original(path, dtype=dtype, **placed, **llm_kwargs)
    else:
        from transformers import AutoTokenizer

        from pointllm.model.pointllm import PointLLMForCausalLM

        model = PointLLMForCausalLM.from_pretrained(path, dtype=dtype or "auto", **llm_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    if device is not None and "device_map" in llm_kwargs:
        # transformers placed (and quantized) the LLM; parts built beside it may be on the CPU.
        model.point_backbone.to(device)
        model.point_proj.to(device)
        if model.point_boundary_embeds is not None:
            model.point_boundary_embeds.data = model.point_boundary_embeds.data.to(device)
    elif device is not None:
        model.to(device)
    return model.eval(), tokenizer


def save(model, tokenizer, out_dir: str | os.PathLike, *, max_shard_size: str = "5GB") -> None:
    """Write a self-describing checkpoint (config, safetensors weights, tokenizer) atomically:
    everything goes to a temporary sibling directory that replaces `out_dir` at the end."""
    from pointllm.atomic import replace_directory

    with replace_directory(out_dir) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
