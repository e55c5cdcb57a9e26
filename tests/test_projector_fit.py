"""The closed-form stage-1 projector start (`--projector_init caption_fit`)."""

from __future__ import annotations

import pytest
import torch

from pointllm.data.conversation import IGNORE_INDEX
from pointllm.train.args import ArgumentError, ModelArguments
from pointllm.train.projector_fit import fit_projector_to_captions

# (answer word ids): two objects kinds whose answers share the function words 5 and 6
KINDS = {0: [5, 40, 6, 90], 1: [5, 41, 6, 91]}


def _samples(per_kind: int = 12, num_points: int = 64) -> list[dict]:
    """Clouds of two clearly different shapes (a flat square, a tall line) with answers that
    differ only in their content words."""
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(per_kind * 2):
        kind = i % 2
        xyz = torch.rand(num_points, 3, generator=g) - 0.5
        xyz[:, 1 if kind == 0 else 0] *= 0.02
        xyz[:, 2 if kind == 0 else 1] *= 1.0 if kind == 0 else 2.0
        rgb = torch.full((num_points, 3), 0.2 + 0.6 * kind)
        labels = torch.tensor([IGNORE_INDEX, IGNORE_INDEX, *KINDS[kind]])
        samples.append({"labels": labels, "point_clouds": torch.cat([xyz, rgb], dim=1)})
    samples.append({"labels": torch.tensor([5, 6]), "point_clouds": None})  # text only: skipped
    return samples


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1))


def test_fit_moves_point_tokens_onto_their_captions_content_words(tiny_model):
    model, _ = tiny_model
    model.set_trainable(encoder=False, projector=True, llm=False)  # as stage 1 runs it
    samples = _samples()
    before = {n: p.clone() for n, p in model.named_parameters()}
    fit = fit_projector_to_captions(model, samples, ridge=1e-4)
    assert fit.samples == 24 and fit.vocabulary == 6
    assert fit.tokens == 24 * model.config.num_point_tokens
    assert fit.relative_residual < 0.5
    last = f"point_proj.{len(model.point_proj) - 1}."
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {last + "weight", last + "bias"}

    embeddings = model.get_input_embeddings().weight.detach()
    with torch.no_grad():
        for sample, kind in ((samples[0], 0), (samples[1], 1)):
            tokens = model.encode_points(sample["point_clouds"][None]).mean(dim=1)[0]
            own, other = KINDS[kind][1], KINDS[1 - kind][1]
            # the content word of its own caption, not the other's nor the shared function word
            assert _cosine(tokens, embeddings[own]) > _cosine(tokens, embeddings[other]) + 0.2
            assert _cosine(tokens, embeddings[own]) > _cosine(tokens, embeddings[5])


def test_fit_needs_samples_with_clouds_and_answers(tiny_model):
    model, _ = tiny_model
    with pytest.raises(ValueError, match="caption_fit: no training sample"):
        fit_projector_to_captions(model, [{"labels": torch.tensor([3]), "point_clouds": None}])


def test_fit_refuses_zero3_partitioned_weights(tiny_model):
    model, _ = tiny_model
    model.point_proj[-1].weight.ds_id = 7  # what DeepSpeed ZeRO-3 marks a partitioned tensor with
    with pytest.raises(ValueError, match="ZeRO-3 partitioned"):
        fit_projector_to_captions(model, _samples())


def test_projector_init_is_checked():
    with pytest.raises(ArgumentError, match="--projector_init must be one of"):
        ModelArguments(projector_init="zeros")
    with pytest.raises(ArgumentError, match="stage 1 only"):
        ModelArguments(stage=2, projector_init="caption_fit")
