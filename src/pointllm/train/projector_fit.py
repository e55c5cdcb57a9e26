"""A closed-form start for the stage-1 projector.

A randomly initialised projector hands the frozen LLM point tokens that mean nothing to it; the
first stage-1 steps only move them into the region of its input space that words occupy. This
fit does that move in one least-squares solve instead: every point token of a training sample is
pulled towards one target in the LLM's input-embedding space, the mean of the embeddings of the
sample's answer tokens, each weighted by its inverse document frequency over the fitted answers
(so "mug" and "red" count and "a", "with" or the end-of-turn token hardly do), rescaled to the
typical embedding norm. Only the projector's last Linear layer is solved (ridge regression on the
features the layers before it produce); the encoder, the earlier layers and the LLM are untouched.
Stage-1 training then starts from point tokens that already read like the words of the captions.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

import torch

from pointllm.data.conversation import IGNORE_INDEX

logger = logging.getLogger(__name__)

PROJECTOR_INITS = ("random", "caption_fit")


@dataclass(frozen=True)
class ProjectorFit:
    samples: int  # training samples the fit used
    tokens: int  # point tokens (rows of the least-squares problem)
    vocabulary: int  # distinct answer tokens seen
    relative_residual: float  # |A W - T| / |T| of the solution


def _answer_ids(labels) -> list[int]:
    return [int(t) for t in labels if int(t) != IGNORE_INDEX]


@torch.no_grad()
def fit_projector_to_captions(
    model,
    dataset,
    *,
    max_samples: int = 1024,
    batch_size: int = 64,
    ridge: float = 1e-3,
) -> ProjectorFit:
    """Solve the projector's last Linear layer so that each sample's point tokens land on the
    IDF-weighted mean embedding of its answer tokens (see the module docstring). `dataset` items
    are `PointLLMDataset` samples (input_ids, labels, point_clouds); samples without a cloud are
    skipped. Uses the first `max_samples` samples with a cloud; `ridge` scales the penalty
    relative to the mean diagonal of the normal matrix."""
    projector = model.point_proj
    last = projector[-1]
    if not isinstance(last, torch.nn.Linear):
        raise TypeError(f"the projector ends in {type(last).__name__}, not a Linear layer")
    if getattr(last.weight, "ds_id", None) is not None:
        raise ValueError(
            "caption_fit cannot write DeepSpeed ZeRO-3 partitioned weights; use ZeRO-2, FSDP or "
            "--projector_init random"
        )
    embeddings = model.get_input_embeddings().weight.detach().float()  # (V, H)

    clouds, answers = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if item.get("point_clouds") is None:
            continue
        ids = _answer_ids(item["labels"])
        if not ids:
            continue
        clouds.append(torch.as_tensor(item["point_clouds"], dtype=torch.float32))
        answers.append(ids)
        if len(clouds) == max_samples:
            break
    if not clouds:
        raise ValueError("caption_fit: no training sample with both a point cloud and an answer")

    # Inverse document frequency of each answer token over the fitted answers.
    document_counts = Counter(t for ids in answers for t in set(ids))
    n = len(answers)
    idf = {t: math.log((1 + n) / (1 + c)) for t, c in document_counts.items()}
    typical_norm = embeddings.norm(dim=1).median()
    targets = []
    for ids in answers:
        weights = torch.tensor([idf[t] for t in ids])
        if float(weights.sum()) <= 0:
            weights = torch.ones(len(ids))
        mean = (weights[:, None] * embeddings[ids]).sum(0) / weights.sum()
        targets.append(mean * typical_norm / mean.norm().clamp(min=1e-8))
    targets = torch.stack(targets).double()  # (n, H)

    was_training = model.training
    model.eval()
    device = last.weight.device
    feature_dim = last.in_features
    gram = torch.zeros(feature_dim + 1, feature_dim + 1, dtype=torch.float64)
    cross = torch.zeros(feature_dim + 1, last.out_features, dtype=torch.float64)
    target_sq, rows = 0.0, 0
    for start in range(0, n, batch_size):
        batch = torch.stack(clouds[start : start + batch_size]).to(device)
        tokens = model.point_backbone(batch).to(last.weight.dtype)  # (b, T, trans_dim)
        features = tokens
        for layer in list(projector)[:-1]:
            features = layer(features)
        features = features.double().cpu()  # (b, T, F)
        b, t, _ = features.shape
        design = torch.cat([features, torch.ones(b, t, 1, dtype=torch.float64)], dim=-1)
        design = design.reshape(b * t, -1)
        goal = targets[start : start + b].repeat_interleave(t, dim=0)  # (b*T, H)
        gram += design.T @ design
        cross += design.T @ goal
        target_sq += float(goal.square().sum())
        rows += b * t
    if was_training:
        model.train()

    penalty = ridge * gram.diagonal()[:-1].mean()
    regularised = gram.clone()
    regularised.diagonal()[:-1] += penalty  # the bias is not penalised
    solution = torch.linalg.solve(regularised, cross)  # (F+1, H)
    # |A W - T|^2 = W'GW - 2 W'C + |T|^2, from the accumulated sums
    residual_sq = float(
        (solution * (gram @ solution)).sum() - 2 * (solution * cross).sum() + target_sq
    )
    last.weight.copy_(solution[:-1].T.to(last.weight.dtype))
    last.bias.copy_(solution[-1].to(last.bias.dtype))
    fit = ProjectorFit(
        samples=n,
        tokens=rows,
        vocabulary=len(document_counts),
        relative_residual=math.sqrt(max(residual_sq, 0.0) / max(target_sq, 1e-12)),
    )
    logger.info(
        "projector caption_fit: %d samples, %d point tokens, %d answer-token types, relative "
        "residual %.3f",
        fit.samples,
        fit.tokens,
        fit.vocabulary,
        fit.relative_residual,
    )
    return fit
