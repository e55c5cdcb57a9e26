"""pointllm.data: reading point clouds and meshes, datasets, and previews.

from pointllm.data import load_point_cloud
points = load_point_cloud("chair.ply", num_points=8192)  # (8192, 6) float32, xyz + rgb
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Loaded on first use: io pulls in torch, and `pointllm --help` imports this package.
_LAZY = {
    "load_point_cloud": "pointllm.data.io",
    "read_points": "pointllm.data.io",
    "PointCloudError": "pointllm.data.io",
    "save_preview": "pointllm.data.preview",
    "check_annotations": "pointllm.data.check",
    "read_annotations": "pointllm.data.dataset",
    "PointLLMDataset": "pointllm.data.dataset",
    "generate_dataset": "pointllm.data.synthetic",
    "convert_modelnet40": "pointllm.data.modelnet",
    "load_modelnet40": "pointllm.data.modelnet",
}

if TYPE_CHECKING:
    from pointllm.data.check import check_annotations
    from pointllm.data.dataset import PointLLMDataset, read_annotations
    from pointllm.data.io import PointCloudError, load_point_cloud, read_points
    from pointllm.data.modelnet import convert_modelnet40, load_modelnet40
    from pointllm.data.preview import save_preview
    from pointllm.data.synthetic import generate_dataset


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pointllm.data' has no attribute {name!r}")


__all__ = [
    "PointCloudError",
    "PointLLMDataset",
    "check_annotations",
    "convert_modelnet40",
    "generate_dataset",
    "load_modelnet40",
    "load_point_cloud",
    "read_annotations",
    "read_points",
    "save_preview",
]
