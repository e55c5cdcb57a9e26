"""`pointllm.model.checkpoint`: what a directory holds, and the one-line errors for what `load`
cannot read; `pointllm.model.precision`: dtype names."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from pointllm.model import checkpoint, precision
from pointllm.model.checkpoint import Kind


def _original(directory, point_weights: bool):
    """An original-layout directory: flat config.json and a weight file with only the keys that
    tell a release from an init folder."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "pointllm", "hidden_size": 8}))
    tensors = {"model.embed_tokens.weight": torch.zeros(2, 2)}
    if point_weights:
        tensors["model.point_proj.0.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def test_detect_names_each_kind(tmp_path):
    assert checkpoint.detect(tmp_path / "nowhere") is Kind.MISSING
    assert checkpoint.detect(tmp_path) is Kind.UNKNOWN
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "config.json").write_text(json.dumps({"model_type": "pointllm", "text_config": {}}))
    assert checkpoint.detect(ours) is Kind.POINTLLM
    llm = tmp_path / "llm"
    llm.mkdir()
    (llm / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert checkpoint.detect(llm) is Kind.LLM
    assert checkpoint.detect(_original(tmp_path / "orig", True)) is Kind.ORIGINAL
    assert checkpoint.detect(_original(tmp_path / "init", False)) is Kind.ORIGINAL_INIT
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / checkpoint.ADAPTER_INFO_FILE).write_text("{}")
    assert checkpoint.detect(adapter) is Kind.LORA_ADAPTER


def test_legacy_and_training_ask_the_same_question(tmp_path):
    from pointllm.model import legacy

    orig, init = _original(tmp_path / "orig", True), _original(tmp_path / "init", False)
    assert legacy.is_original_checkpoint(orig) and not legacy.is_init_folder(orig)
    assert legacy.is_original_checkpoint(init) and legacy.is_init_folder(init)
    assert legacy.WeightFiles is checkpoint.WeightFiles


def test_require_model_says_what_is_wrong_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such checkpoint directory"):
        checkpoint.require_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"not a PointLLM checkpoint directory \(no config"):
        checkpoint.require_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(checkpoint.CheckpointError, match="config.json has model_type 'qwen2'"):
        checkpoint.require_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="config.json: unreadable config.json"):
        checkpoint.detect(tmp_path)
    init = _original(tmp_path / "init", False)
    with pytest.raises(checkpoint.CheckpointError, match="an original init folder"):
        checkpoint.require_model(init)


def test_load_names_loader_options_the_original_layout_cannot_take(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match=r"\['gguf_file'\].*convert it first"):
        checkpoint.load(_original(tmp_path / "orig", True), gguf_file="model.gguf")


def test_one_dtype_resolver():
    cpu = torch.device("cpu")
    assert precision.resolve_dtype("auto", cpu) == torch.float32
    assert precision.resolve_dtype(None, auto="bfloat16") == torch.bfloat16
    assert precision.resolve_dtype("auto", auto=torch.float16) == torch.float16
    assert precision.resolve_dtype("torch.bfloat16") == torch.bfloat16
    assert precision.resolve_dtype("bf16") == precision.resolve_dtype("bfloat16")
    for bad in ("int3", torch.int8, "float64x"):
        with pytest.raises(ValueError, match="unknown dtype"):
            precision.resolve_dtype(bad)
