"""pointllm: a large language model that understands colored 3D point clouds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Heavy modules (torch, transformers) load on first use so `pointllm --help` stays fast.
_LAZY = {
    "PointBertConfig": "pointllm.config",
    "PointLLMConfig": "pointllm.config",
    "PointBertEncoder": "pointllm.model.encoder",
    "PointLLMForCausalLM": "pointllm.model.pointllm",
    "load": "pointllm.infer.api",
}

if TYPE_CHECKING:
    from pointllm.config import PointBertConfig, PointLLMConfig
    from pointllm.model.encoder import PointBertEncoder
    from pointllm.model.pointllm import PointLLMForCausalLM


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        if name.startswith("PointLLM") or name == "PointBertConfig":
            importlib.import_module("pointllm.model.pointllm")  # registers the Auto classes
        return getattr(module, name)
    raise AttributeError(f"module 'pointllm' has no attribute {name!r}")


__all__ = ["PointBertConfig", "PointBertEncoder", "PointLLMConfig", "PointLLMForCausalLM"]
