"""Shared fixtures: tiny random PointLLMs on several LLM families, and the embedded tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a HF directory (converted once, then cached)."""
    from pointllm.model.backbones import embedded_backbone_dir

    return embedded_backbone_dir()


@pytest.fixture(scope="session")
def base_tokenizer(embedded_dir):
    """The SmolLM2 tokenizer (real BPE vocabulary and chat template), without point tokens."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir)


def tiny_point_config(point_dims: int = 6, **overrides):
    from pointllm.config import PointBertConfig

    values = dict(
        trans_dim=32,
        depth=2,
        num_heads=4,
        num_group=4,
        group_size=8,
        encoder_dims=32,
        point_dims=point_dims,
    )
    values.update(overrides)
    return PointBertConfig(**values)


def tiny_text_config(arch: str = "llama", vocab_size: int = 128):
    from transformers import LlamaConfig, Phi3Config, Qwen2Config

    common = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=512,
    )
    if arch == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "phi3":
        return Phi3Config(**common, pad_token_id=0)
    raise ValueError(arch)


def make_tiny_model(tokenizer=None, arch: str = "llama", seed: int = 0, **config_overrides):
    """A random tiny PointLLM; with a tokenizer, point tokens are added to a copy of it."""
    import copy

    from pointllm.config import PointLLMConfig
    from pointllm.model.pointllm import PointLLMForCausalLM

    torch.manual_seed(seed)
    vocab = len(tokenizer) if tokenizer is not None else 128
    point_config = config_overrides.pop("point_config", None) or tiny_point_config()
    config = PointLLMConfig(
        point_config=point_config,
        text_config=tiny_text_config(arch, vocab),
        projector_hidden_dims=config_overrides.pop("projector_hidden_dims", [48]),
        use_color=point_config.point_dims == 6,
        **config_overrides,
    )
    model = PointLLMForCausalLM(config)
    if tokenizer is not None:
        tokenizer = copy.deepcopy(tokenizer)
        model.setup_point_tokens(tokenizer)
    return model, tokenizer


@pytest.fixture
def tiny_model(base_tokenizer):
    return make_tiny_model(base_tokenizer)


@pytest.fixture(scope="session")
def llama_dir() -> Path:
    """LLaMA-1's real tokenizer (tokenizer.model + tokenizer.json), rebuilt once from the npm
    package llama-tokenizer-js and cached; skipped, saying why, where it cannot be built."""
    from pointllm.data.tokenizers import LlamaTokenizerUnavailable, llama_tokenizer_dir

    try:
        return llama_tokenizer_dir()
    except LlamaTokenizerUnavailable as exc:
        pytest.skip(f"LLaMA tokenizer unavailable: {exc}")


# How the published checkpoints' tokenizer folders name their special tokens. transformers 4.28
# strips the whitespace around a special token given as a plain string in special_tokens_map.json,
# and not around one given as an AddedToken dict; both forms occur among LLaMA-derived folders.
ADDED_TOKEN = {"lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
ORIGINAL_TOKENIZER_STYLES = {
    "v1.2": {
        k: {"content": v, **ADDED_TOKEN}
        for k, v in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))
    }
    | {"pad_token": "<unk>"},
    "v1.1": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
}


def write_original_tokenizer(llama_dir: Path, directory: Path, style: str = "v1.2") -> Path:
    """The tokenizer files of an original PointLLM checkpoint: LLaMA's tokenizer.model, a
    tokenizer_config.json naming LlamaTokenizer, special_tokens_map.json in `style`, and
    added_tokens.json with the point tokens at 32000-32002."""
    import json
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(llama_dir / "tokenizer.model", directory / "tokenizer.model")
    shutil.copy(llama_dir / "tokenizer_config.json", directory / "tokenizer_config.json")
    specials = ORIGINAL_TOKENIZER_STYLES[style]
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    added = {"<point_patch>": 32000, "<point_start>": 32001, "<point_end>": 32002}
    (directory / "added_tokens.json").write_text(json.dumps(added, indent=2))
    return directory
