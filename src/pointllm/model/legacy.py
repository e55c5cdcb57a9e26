"""Original PointLLM checkpoints (PointLLM_7B_v1.2, PointLLM_13B_v1.2, the `*_v1.1_init` folders).

Their layout: a flat Llama `config.json` with `model_type: "pointllm"` and the point settings
next to the Llama fields; weights under the original names (`model.embed_tokens`,
`model.layers.*`, `model.norm`, `lm_head`, `model.point_backbone.*`, `model.point_proj.*`) in
`.bin` or safetensors files, single or sharded; a LLaMA tokenizer holding `<point_patch>`,
`<point_start>`, `<point_end>`. `pointllm.model.checkpoint` recognises the layout and finds
the weight files; this module maps weight names both ways, reads them into a
`PointLLMForCausalLM` (without building a randomly initialised LLM first) and writes a model
back in it. docs/checkpoint_mapping.md gives the reason for each mapping.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils.logging import tqdm

from pointllm.atomic import replace_directory
from pointllm.config import (
    LEGACY_BACKBONE_NAMES,
    LEGACY_TOKEN_KEYS,
    POINT_BERT_PRESETS,
    POINT_END_TOKEN,
    POINT_PATCH_TOKEN,
    POINT_START_TOKEN,
    PROJECTOR_PRESETS,
    PointLLMConfig,
)
from pointllm.data.tokenizers import follow_original_llama_rules, reapply_original_llama_rules
from pointllm.model import checkpoint
from pointllm.model.checkpoint import (
    CONFIG_FILE,
    WEIGHT_LAYOUTS,
    CheckpointError,
    Kind,
    WeightFiles,
    read_config_dict,
)
from pointllm.model.checkpoint import ORIGINAL_POINT_PREFIXES as _POINT_PREFIXES
from pointllm.model.pointllm import PointLLMForCausalLM
from pointllm.model.precision import resolve_dtype

ORIGINAL_ARCHITECTURE = "PointLLMLlamaForCausalLM"
WEIGHT_FORMATS = ("bin", "safetensors")
# transformers 4.28 saved every layer's rotary inverse frequencies; transformers 5 recomputes them
# from the config (a non-persistent buffer), so they are not weights to load.
_DERIVED_KEY = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
# v1.1's projector is one nn.Linear named `point_proj`; ours is a Sequential whose index 0 it is.
_SINGLE_LINEAR_PROJ_KEY = re.compile(r"^model\.point_proj\.(weight|bias)$")
# The renames of `original_to_native_key` as regular expressions, for transformers' own loader
# (`key_mapping`), which reads the original layout when a loader option needs it (quantization).
ORIGINAL_KEY_MAPPING = {
    r"^model\.point_proj\.(weight|bias)$": r"point_proj.0.\1",
    r"^model\.point_(backbone|proj)\.": r"point_\1.",
    r"^model\.(embed_tokens|layers|norm)\.": r"language_model.model.\1.",
    r"^lm_head\.": "language_model.lm_head.",
}
# Options of transformers' loader that `load_original` hands to it.
_LOADER_KWARGS = ("quantization_config", "device_map")
# Options of `from_pretrained` that mean nothing for a local original checkpoint (hub access,
# loading strategy): accepted and ignored. `config` is what AutoModel passes; the flat config is
# always re-read from the directory because a v1.1 one may need the weights to be interpreted.
_IGNORED_LOAD_KWARGS = (
    "config",
    "_from_auto",
    "_from_pipeline",
    "cache_dir",
    "force_download",
    "local_files_only",
    "proxies",
    "revision",
    "subfolder",
    "token",
    "trust_remote_code",
    "low_cpu_mem_usage",
    "adapter_kwargs",
    "code_revision",
)


class OriginalCheckpointError(CheckpointError):
    """An original PointLLM checkpoint that cannot be read or written as asked."""


# ---- recognising the layout ------------------------------------------------------------------


def is_original_checkpoint(path: str | os.PathLike) -> bool:
    """True for a directory whose config.json is an original PointLLM one (an init folder too):
    model_type `pointllm` with the Llama fields flat at the top level (ours nests them under
    `text_config`). An unreadable config.json is not one."""
    try:
        return checkpoint.config_kind(path) is Kind.ORIGINAL
    except CheckpointError:
        return False


def is_init_folder(path: str | os.PathLike) -> bool:
    """True for an original stage-1 starting point (`PointLLM_7B_v1.1_init`, ...): an original
    config with LLM weights but no point encoder or projector weights."""
    return is_original_checkpoint(path) and not checkpoint.has_original_point_weights(path)


# ---- key mapping -----------------------------------------------------------------------------


def original_to_native_key(key: str) -> str | None:
    """Our parameter name for an original weight name; None for derived buffers that are not
    loaded (rotary inv_freq). Keys outside the original layout come back unchanged."""
    if _DERIVED_KEY.match(key):
        return None
    if key.startswith("model.point_backbone.") or key.startswith("model.point_proj."):
        single = _SINGLE_LINEAR_PROJ_KEY.match(key)
        return f"point_proj.0.{single.group(1)}" if single else key[len("model.") :]
    if key.startswith(("model.", "lm_head.")):
        return f"language_model.{key}"
    return key


def native_to_original_key(key: str, single_linear_projector: bool) -> str | None:
    """The original name of one of our parameters; None for `point_boundary_embeds`, which the
    original keeps as two rows of `model.embed_tokens.weight`."""
    if key == "point_boundary_embeds":
        return None
    if key.startswith("point_proj.") and single_linear_projector:
        return "model.point_proj." + key[len("point_proj.0.") :]
    if key.startswith(("point_backbone.", "point_proj.")):
        return f"model.{key}"
    if key.startswith("language_model."):
        return key[len("language_model.") :]
    raise OriginalCheckpointError(f"parameter {key!r} has no place in the original layout")


def _first(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


def check_keys(
    source: str | os.PathLike,
    present: set[str],
    expected: set[str],
    optional: set[str] = frozenset(),
) -> None:
    """Raise naming the unknown and the missing original keys (the first 10 of each)."""
    unknown = sorted(key for key in present - expected if not _DERIVED_KEY.match(key))
    missing = sorted(expected - present - optional)
    problems = []
    if missing:
        problems.append(f"missing keys: {_first(missing)}")
    if unknown:
        problems.append(f"unknown keys: {_first(unknown)}")
    if problems:
        raise OriginalCheckpointError(
            f"{source}: weights do not match an original PointLLM with this config.json; "
            + "; ".join(problems)
        )


# ---- reading ---------------------------------------------------------------------------------


def original_config(path: str | os.PathLike, weights: WeightFiles) -> PointLLMConfig:
    """Our config for an original checkpoint: its flat config.json, plus what the original code
    assumes when a key is absent."""
    data = read_config_dict(path)
    # The original builds a 3-channel encoder unless use_color is set.
    data.setdefault("use_color", False)
    if (
        "point_backbone_config_name" not in data
        and "model.point_proj.weight" in weights.key_to_file
    ):
        # v1.1 checkpoints were published before the key existed; their single Linear projector
        # marks them (the original code's default for a missing key is the v1.2 encoder).
        data["point_backbone_config_name"] = "PointTransformer_base_8192point"
    return PointLLMConfig.from_dict(data)


def load_original_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The checkpoint's own tokenizer, with pad set to <unk> as the original training does. A LLaMA
    tokenizer follows transformers 4.28's slow-tokenizer rules, as the original code used it
    (pointllm.data.tokenizers; docs/tokenizers.md)."""
    try:
        tokenizer = follow_original_llama_rules(AutoTokenizer.from_pretrained(path), path)
    except Exception as exc:  # tokenizer loading raises many types; name the directory instead
        raise OriginalCheckpointError(
            f"{path}: cannot load the tokenizer ({exc.__class__.__name__}: {exc}); a LLaMA "
            "tokenizer.model without tokenizer.json needs `pip install sentencepiece`"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def record_point_token_ids(
    tokenizer: PreTrainedTokenizerBase, config: PointLLMConfig, source: str | os.PathLike
) -> None:
    """Find the point token ids through the tokenizer and store them in `config`.

    Like the original at load time, the tokens are added first when the tokenizer lacks them
    (patch, then start/end), so a LLaMA tokenizer without them gets ids 32000-32002.
    """
    tokens = [POINT_PATCH_TOKEN]
    if config.mm_use_point_start_end:
        tokens += [POINT_START_TOKEN, POINT_END_TOKEN]
    tokenizer.add_tokens(tokens[:1], special_tokens=True)
    tokenizer.add_tokens(tokens[1:], special_tokens=True)
    reapply_original_llama_rules(tokenizer)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    rows = config.text_config.vocab_size
    beyond = [f"{token}={i}" for token, i in zip(tokens, ids) if i >= rows]
    if beyond:
        raise OriginalCheckpointError(
            f"{source}: the tokenizer puts {', '.join(beyond)} but the model has only {rows} "
            "embedding rows (vocab_size)"
        )
    config.point_patch_token_id = ids[0]
    if config.mm_use_point_start_end:
        config.point_start_token_id, config.point_end_token_id = ids[1], ids[2]


def _empty_model(config: PointLLMConfig) -> PointLLMForCausalLM:
    """The composite with the language model's parameters on the meta device: no memory and no
    random init for weights that are about to be replaced. Buffers stay real, so the rotary
    frequencies (not in the checkpoint) are computed as usual; the point parts are small and real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        llm = AutoModelForCausalLM.from_config(config.text_config)
    attn_implementation = llm.config._attn_implementation
    model = PointLLMForCausalLM(config, language_model=llm)
    # Building the wrapper resets the sub-config's attention choice; restore the LLM's.
    model.set_attn_implementation(attn_implementation)
    return model


def _original_names(model: PointLLMForCausalLM) -> dict[str, str]:
    """Original name -> our name, for every weight the original layout stores."""
    single = not model.config.projector_hidden_dims
    names = {native_to_original_key(key, single): key for key in model.state_dict()}
    names.pop(None, None)  # point_boundary_embeds: rows of the embedding matrix
    return names


def _load_through_transformers(
    config: PointLLMConfig, weights: WeightFiles, dtype: torch.dtype, **loader_kwargs: Any
) -> PointLLMForCausalLM:
    """The original files read by transformers' own loader with the names mapped
    (`ORIGINAL_KEY_MAPPING`), so that its options (a bitsandbytes `quantization_config`, a
    `device_map`) apply exactly as they do to our layout. Keys are checked first, as
    `_load_weights` checks them; transformers refuses a misshapen tensor itself."""
    from transformers.utils import logging as transformers_logging

    expected = set(_original_names(_empty_model(config)))
    check_keys(weights.directory, set(weights.key_to_file), expected)
    verbosity = transformers_logging.get_verbosity()
    # Its load report would call point_boundary_embeds "newly initialized"; load_original fills
    # them from the embedding rows.
    transformers_logging.set_verbosity_error()
    try:
        # PreTrainedModel's loader itself: PointLLMForCausalLM.from_pretrained would send the
        # original layout back here.
        return super(PointLLMForCausalLM, PointLLMForCausalLM).from_pretrained(
            weights.directory,
            config=config,
            key_mapping=ORIGINAL_KEY_MAPPING,
            dtype=dtype,
            **loader_kwargs,
        )
    finally:
        transformers_logging.set_verbosity(verbosity)


@torch.no_grad()
def _load_weights(
    config: PointLLMConfig,
    weights: WeightFiles,
    dtype: torch.dtype,
    device: torch.device | str | None,
    point_weights_required: bool,
) -> PointLLMForCausalLM:
    """Build the model and fill it from the original files, one file at a time, each tensor cast
    to `dtype` and moved to `device` before it is put in place (so loading onto a GPU holds one
    shard at a time in host memory)."""
    model = _empty_model(config)
    targets = model.state_dict()
    to_native = _original_names(model)
    optional = (
        set() if point_weights_required else {k for k in to_native if k.startswith(_POINT_PREFIXES)}
    )
    check_keys(weights.directory, set(weights.key_to_file), set(to_native), optional)
    # transformers' tqdm: a bar per shard on a terminal, silent when the CLI turns bars off.
    files = weights.files()
    for file in tqdm(files, desc="Loading original weights", disable=len(files) < 2):
        part = {}
        for key, tensor in weights.read(file).items():
            native = original_to_native_key(key)
            if native is None:
                continue
            if native not in targets:  # a shard holding a key its index does not list
                raise OriginalCheckpointError(f"{file}: unknown key {key}")
            if tensor.shape != targets[native].shape:
                raise OriginalCheckpointError(
                    f"{file}: {key} has shape {tuple(tensor.shape)} but config.json implies "
                    f"{tuple(targets[native].shape)}"
                )
            cast = dtype if tensor.is_floating_point() else None
            part[native] = tensor.to(device=device, dtype=cast)
        model.load_state_dict(part, strict=False, assign=True)
    # Parts not read from the files (an init folder's encoder/projector, the boundary rows).
    for module in (model.point_backbone, model.point_proj):
        module.to(device=device, dtype=dtype)
    if model.point_boundary_embeds is not None:
        boundary = model.point_boundary_embeds.data
        model.point_boundary_embeds.data = boundary.to(device=device, dtype=dtype)
    if device is not None:
        model.to(device)  # the rotary buffers were computed on the CPU
    model.config.dtype = dtype
    return model


def load_original(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    **loader_kwargs: Any,
) -> tuple[PointLLMForCausalLM, PreTrainedTokenizerBase]:
    """Read an original PointLLM checkpoint (v1.1: linear projector, v1.2: MLP) as our model, in
    eval mode, with its tokenizer. The template is vicuna_v1_1 and the point token ids come from
    the tokenizer. dtype: None/"auto" follows config.json. `quantization_config` and `device_map`
    (instead of `device`) are honoured by reading through transformers' own loader."""
    unknown = sorted(set(loader_kwargs) - set(_LOADER_KWARGS))
    if unknown:
        raise OriginalCheckpointError(
            f"{path}: {unknown} not supported when loading an original PointLLM checkpoint; "
            "convert it first with `pointllm convert`"
        )
    weights = WeightFiles.find(path)
    if not any(key.startswith(_POINT_PREFIXES) for key in weights.key_to_file):
        raise OriginalCheckpointError(
            f"{path}: an original init folder (no point encoder or projector weights); start "
            "stage 1 from it (pointllm train) rather than loading it as a model"
        )
    config = original_config(path, weights)
    tokenizer = load_original_tokenizer(path)
    record_point_token_ids(tokenizer, config, path)
    dtype = resolve_dtype(dtype, auto=config.dtype or torch.float32)
    if loader_kwargs:
        model = _load_through_transformers(config, weights, dtype, **loader_kwargs)
    else:
        model = _load_weights(config, weights, dtype, device, True)
    if model.point_boundary_embeds is not None:
        # Our learned <point_start>/<point_end> inputs are the original's embedding rows.
        embeds = model.language_model.get_input_embeddings().weight
        ids = [config.point_start_token_id, config.point_end_token_id]
        model.point_boundary_embeds.data = embeds.data[ids].clone()
    return model.eval(), tokenizer


def from_pretrained_original(path: str | os.PathLike, **kwargs: Any) -> PointLLMForCausalLM:
    """`PointLLMForCausalLM.from_pretrained` for an original checkpoint. Supports dtype (or
    torch_dtype), a single-device device_map, attn_implementation, use_cache, and a
    quantization_config (with any device_map transformers takes)."""
    dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
    dtype = dtype or torch_dtype
    device = kwargs.pop("device_map", None)
    quantization = kwargs.pop("quantization_config", None)
    if quantization is None and (
        device == "auto" or not isinstance(device, (str, int, torch.device, type(None)))
    ):
        raise OriginalCheckpointError(
            f"{path}: device_map={device!r} is not supported for an original checkpoint; pass "
            "one device, or convert it first with `pointllm convert`"
        )
    attn_implementation = kwargs.pop("attn_implementation", None)
    use_cache = kwargs.pop("use_cache", None)
    for name in _IGNORED_LOAD_KWARGS:
        kwargs.pop(name, None)
    if kwargs:
        raise OriginalCheckpointError(
            f"{path}: {sorted(kwargs)} not supported when loading an original PointLLM "
            "checkpoint; convert it first with `pointllm convert`"
        )
    if quantization is not None:
        model, _ = load_original(
            path, dtype=dtype, quantization_config=quantization, device_map=device
        )
    else:
        model, _ = load_original(path, dtype=dtype, device=device)
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
    if use_cache is not None:
        model.config.text_config.use_cache = bool(use_cache)
    return model


# ---- the stage-1 init folders ----------------------------------------------------------------


def find_point_bert_checkpoint(path: str | os.PathLike, config: PointLLMConfig) -> Path:
    """The encoder file of an init folder that matches its config: `point_bert_v1.2.pt` for the
    v1.2 encoder, `point_bert_v1.1.pt` for v1.1 (the original scripts keep it in the folder)."""
    version = _encoder_version(config)
    if version is None:
        raise OriginalCheckpointError(f"{path}: config.json names no published Point-BERT encoder")
    candidate = Path(path) / f"point_bert_{version}.pt"
    if not candidate.is_file():
        raise FileNotFoundError(
            f"{candidate}: not found; the {version} encoder of this init folder's config.json "
            "(point_backbone_config_name) needs it, or pass point_bert_ckpt"
        )
    return candidate


def load_init_folder(
    path: str | os.PathLike,
    *,
    point_bert_ckpt: str | os.PathLike | None = None,
    dtype: torch.dtype | str | None = None,
) -> tuple[PointLLMForCausalLM, PreTrainedTokenizerBase]:
    """A new PointLLM for stage 1 from an original `*_v1.1_init` folder, as the original recipe
    starts it: the folder's LLM, the Point-BERT weights of `point_bert_v1.x.pt` (read with
    weights_only=True), a projector drawn from N(0, initializer_range) with zero biases, and the
    point tokens added to the tokenizer (patch, start, end) with mean-initialised rows.

    dtype None/"auto" means float32, not the float16 the init config.json names: the original
    loads without torch_dtype (fp32 master weights) and trains under bf16 autocast. Freezing is the caller's (stage 1: `set_trainable(encoder=False,
    projector=True, llm=False, point_tokens=True)`).
    """
    if not is_init_folder(path):
        raise OriginalCheckpointError(
            f"{path}: not an original init folder (needs an original config.json and LLM weights "
            "without point encoder/projector weights)"
        )
    weights = WeightFiles.find(path)
    config = original_config(path, weights)
    encoder_file = Path(point_bert_ckpt) if point_bert_ckpt else None
    encoder_file = encoder_file or find_point_bert_checkpoint(path, config)
    tokenizer = load_original_tokenizer(path)
    dtype = resolve_dtype(dtype, auto=torch.float32)
    model = _load_weights(config, weights, dtype, None, False)
    model.point_backbone.load_original_checkpoint(encoder_file)
    # The original projector is initialised by the Llama init of the composite (its Linear
    # layers get N(0, initializer_range) and zero biases), not by PyTorch's default.
    with torch.no_grad():
        for layer in model.point_proj:
            if isinstance(layer, nn.Linear):
                layer.weight.normal_(0.0, config.text_config.initializer_range)
                layer.bias.zero_()
    model.setup_point_tokens(tokenizer)
    reapply_original_llama_rules(tokenizer)  # the point tokens strip whitespace, as in 4.28
    return model, tokenizer


# ---- writing ---------------------------------------------------------------------------------


def _encoder_version(config: PointLLMConfig) -> str | None:
    """`v1.1`/`v1.2` when the encoder and projector are exactly a published pair, else None."""
    point = config.point_config
    for version, preset in POINT_BERT_PRESETS.items():
        same_encoder = all(getattr(point, field) == value for field, value in preset.items())
        if (
            same_encoder
            and point.mlp_ratio == 4.0
            and list(config.projector_hidden_dims) == PROJECTOR_PRESETS[version]
            and config.projector_act == "gelu"
        ):
            return version
    return None


def check_original_compatible(config: PointLLMConfig) -> None:
    """Raise naming every setting the original code (transformers 4.28, LLaMA-1-style Llama, the
    two published Point-BERT encoders, vicuna_v1_1 prompts) cannot represent."""
    problems = []
    text = config.text_config
    if text.model_type != "llama":
        problems.append(f"the language model is {text.model_type!r}, the original runs only Llama")
    else:
        heads = text.num_attention_heads
        rope = getattr(text, "rope_parameters", None) or {}
        checks = {
            "grouped-query attention (num_key_value_heads != num_attention_heads)": (
                text.num_key_value_heads != heads
            ),
            f"rope {rope} (the original has rope_theta 10000, no scaling)": (
                rope.get("rope_type", "default") != "default"
                or float(rope.get("rope_theta", 10000.0)) != 10000.0
            ),
            "attention or MLP biases": bool(text.attention_bias or text.mlp_bias),
            f"head_dim {text.head_dim} != hidden_size / num_attention_heads": (
                text.head_dim * heads != text.hidden_size
            ),
            f"hidden_act {text.hidden_act!r} (the original uses silu)": text.hidden_act != "silu",
        }
        problems += [name for name, failed in checks.items() if failed]
    if config.tie_word_embeddings:
        problems.append("tied input/output embeddings")
    if _encoder_version(config) is None:
        problems.append("an encoder/projector that is not the published v1.1 or v1.2 one")
    if config.template != "vicuna_v1_1":
        problems.append(
            f"template {config.template!r} (the original code always prompts with vicuna_v1_1)"
        )
    if problems:
        raise OriginalCheckpointError(
            "cannot write the original PointLLM layout: " + "; ".join(problems)
        )


def original_config_dict(config: PointLLMConfig, dtype: torch.dtype) -> dict[str, Any]:
    """The flat config.json the original code reads (transformers 4.28's LlamaConfig fields)."""
    text = config.text_config
    names = {version: name for name, version in LEGACY_BACKBONE_NAMES.items()}
    out: dict[str, Any] = {
        "architectures": [ORIGINAL_ARCHITECTURE],
        "model_type": "pointllm",
        **{
            field: getattr(text, field)
            for field in (
                "bos_token_id",
                "eos_token_id",
                "pad_token_id",
                "hidden_act",
                "hidden_size",
                "initializer_range",
                "intermediate_size",
                "max_position_embeddings",
                "num_attention_heads",
                "num_hidden_layers",
                "rms_norm_eps",
                "vocab_size",
            )
        },
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
        "point_backbone": "PointBERT",
        "point_backbone_config_name": names[_encoder_version(config)],
        # Read only by the original's stage-1 training; the weights are in the checkpoint.
        "point_backbone_ckpt": "",
        "use_color": config.use_color,
        "mm_use_point_start_end": config.mm_use_point_start_end,
        **LEGACY_TOKEN_KEYS,
    }
    return out


def original_state_dict(model: PointLLMForCausalLM) -> dict[str, torch.Tensor]:
    """Our weights under the original names; the learned <point_start>/<point_end> inputs go back
    into their rows of `model.embed_tokens.weight`."""
    config = model.config
    single = not config.projector_hidden_dims
    state = {}
    for key, tensor in model.state_dict().items():
        name = native_to_original_key(key, single)
        if name is not None:
            state[name] = tensor.detach()
    if model.point_boundary_embeds is not None:
        embeds = state["model.embed_tokens.weight"].clone()
        ids = [config.point_start_token_id, config.point_end_token_id]
        embeds[ids] = model.point_boundary_embeds.detach().to(embeds.dtype)
        state["model.embed_tokens.weight"] = embeds
    return state


def save_original(
    model: PointLLMForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike,
    *,
    weight_format: str = "bin",
    max_shard_size: int | str = "10GB",
) -> None:
    """Write `model` in the original PointLLM layout (config.json, weights, tokenizer), atomically.

    weight_format "bin" (the default) is what the original code's transformers 4.28 reads
    without extra packages; "safetensors" needs the safetensors package there. Files larger than
    `max_shard_size` are split with a `*.index.json`, named as transformers names them.
    """
    from huggingface_hub import split_torch_state_dict_into_shards

    if weight_format not in WEIGHT_FORMATS:
        raise OriginalCheckpointError(
            f"unknown weight format {weight_format!r}; use one of {WEIGHT_FORMATS}"
        )
    check_original_compatible(model.config)
    state = {k: v.to("cpu").contiguous() for k, v in original_state_dict(model).items()}
    index_name, single_name, _ = next(lay for lay in WEIGHT_LAYOUTS if lay[2] == weight_format)
    stem, extension = single_name.split(".", 1)
    split = split_torch_state_dict_into_shards(
        state, filename_pattern=f"{stem}{{suffix}}.{extension}", max_shard_size=max_shard_size
    )
    dtype = model.language_model.get_input_embeddings().weight.dtype
    with replace_directory(out_dir) as tmp:
        for filename, keys in split.filename_to_tensors.items():
            shard = {key: state[key] for key in keys}
            if weight_format == "bin":
                torch.save(shard, tmp / filename)
            else:
                from safetensors.torch import save_file

                # transformers 4.28 refuses safetensors files without this metadata.
                save_file(shard, str(tmp / filename), metadata={"format": "pt"})
        if split.is_sharded:
            index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
            (tmp / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        config = original_config_dict(model.config, dtype)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(tmp)


# ---- conversion ------------------------------------------------------------------------------


def convert_to_native(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    max_shard_size: str = "5GB",
) -> PointLLMForCausalLM:
    """Original checkpoint -> our self-describing layout (safetensors). Returns the model."""
    if not is_original_checkpoint(source):
        raise OriginalCheckpointError(f"{source}: not an original PointLLM checkpoint")
    if is_init_folder(source):
        raise OriginalCheckpointError(
            f"{source}: an init folder has no point encoder/projector weights to convert; start "
            "stage 1 from it instead (pointllm train)"
        )
    model, tokenizer = load_original(source, dtype=dtype)
    checkpoint.save(model, tokenizer, target, max_shard_size=max_shard_size)
    return model


def convert_to_original(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    weight_format: str = "bin",
    max_shard_size: str = "10GB",
) -> PointLLMForCausalLM:
    """Our checkpoint -> the original layout, for people still on the original code."""
    if is_original_checkpoint(source):
        raise OriginalCheckpointError(f"{source}: already in the original PointLLM layout")
    model, tokenizer = checkpoint.load(source, dtype=dtype)
    save_original(
        model, tokenizer, target, weight_format=weight_format, max_shard_size=max_shard_size
    )
    return model
