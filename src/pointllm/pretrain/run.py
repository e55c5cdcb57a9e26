"""`pretrain_encoder`: stage 0's training loop, zero-shot evaluation and output files."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pointllm.atomic import write_json
from pointllm.config import PointBertConfig
from pointllm.pretrain.data import (
    class_text_embeddings,
    embed_texts,
    embedded_text_model_dir,
    load_groups,
    read_captions,
    read_labels,
    rotate_groups,
)
from pointllm.pretrain.model import (
    PointTextAligner,
    contrastive_loss,
    point_config_fields,
    save_checkpoint,
)


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


def _autocast(device: torch.device, enabled: bool):
    return (
        torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()
    )


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 autocast pays off here: a CUDA GPU with bf16, or a CPU with AMX tiles
    (3-4x faster than float32 there; without AMX, CPU bf16 is slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.cpu._is_amx_tile_supported())


def zero_shot_accuracy(
    model: PointTextAligner,
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


def _cosine_with_warmup(steps: int):
    """Linear warmup over the first 5 % of steps, then cosine to zero: step -> lr factor."""
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return schedule


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
    format, with the encoder config) and, beside it, `X_config.json` and `X_summary.json`;
    returns the same facts.
    """
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
    model = PointTextAligner(config, text_embeddings.shape[1]).to(torch_device)
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]  # biases, norms, tokens, temperature
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0}],
        lr=lr,
        betas=(0.9, 0.98),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_with_warmup(steps))
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

    save_checkpoint(model, config, checkpoint)
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
