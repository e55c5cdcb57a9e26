"""Stage 0 (encoder pre-training): augmentation parity, loss, a short real run, the command."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pointllm.config import PointBertConfig
from pointllm.model.encoder import CHECKPOINT_PREFIX, PointBertEncoder
from pointllm.ops import group_points
from pointllm.pretrain import (
    contrastive_loss,
    read_captions,
    read_labels,
    resolve_encoder,
    rotate_groups,
    sibling_paths,
)

TINY_SIZES = dict(trans_dim=64, depth=2, num_heads=4, num_group=16, group_size=16, encoder_dims=64)


def _mini_pointnet_as_convolutions(net, groups):
    """The original Point-BERT formulation: 1x1 convolutions over (BG, C, K), with each group's
    pooled feature concatenated before every point's."""
    batch, num_group, size, channels = groups.shape
    x = groups.reshape(batch * num_group, size, channels).transpose(1, 2)
    feature = net.first_conv(x)
    pooled = feature.amax(dim=2, keepdim=True)
    feature = torch.cat([pooled.expand(-1, -1, size), feature], dim=1)
    return net.second_conv(feature).amax(dim=2).reshape(batch, num_group, -1)


@pytest.mark.parametrize("training", [True, False])
def test_mini_pointnet_computes_what_the_original_convolutions_do(training):
    torch.manual_seed(0)
    net = PointBertEncoder(PointBertConfig(**TINY_SIZES, point_dims=6)).encoder.train(training)
    net = net.double()  # float64: rounding differences of the two summation orders vanish
    for module in net.modules():  # BatchNorm statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    groups = torch.randn(3, 16, 16, 6, dtype=torch.float64, requires_grad=True)
    ours = net(groups)
    ours_grad = torch.autograd.grad(ours.square().sum(), [groups, *net.parameters()])
    reference = _mini_pointnet_as_convolutions(net, groups)
    reference_grad = torch.autograd.grad(reference.square().sum(), [groups, *net.parameters()])
    assert ours.shape == (3, 16, 64)
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)
    for a, b in zip(ours_grad, reference_grad):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_rotating_groups_equals_grouping_the_rotated_cloud():
    torch.manual_seed(0)
    cloud = torch.cat([torch.randn(2, 256, 3), torch.rand(2, 256, 3)], dim=-1)  # (B, N, 6)
    angle = torch.tensor([0.7, -2.1])
    cos, sin = angle.cos(), angle.sin()
    x, y, z = cloud[..., 0], cloud[..., 1], cloud[..., 2]
    turned = cloud.clone()
    # x' = cos x + sin z, z' = -sin x + cos z: a turn about the y (up) axis.
    turned[..., 0] = cos[:, None] * x + sin[:, None] * z
    turned[..., 2] = -sin[:, None] * x + cos[:, None] * z
    assert torch.allclose(turned[..., 1], y)

    groups, centers = group_points(cloud, 16, 8)
    expected_groups, expected_centers = group_points(turned, 16, 8)
    got_groups, got_centers = rotate_groups(groups, centers, angle)
    assert torch.allclose(got_centers, expected_centers, atol=1e-5)
    assert torch.allclose(got_groups, expected_groups, atol=1e-5)


def _naive_contrastive(points, texts, caption_ids, scale):
    """Per-row cross-entropy against uniform targets over same-caption columns, both ways."""
    total = 0.0
    for a, b in ((points, texts), (texts, points)):
        logits = scale * a @ b.T
        for i in range(len(a)):
            positives = [j for j in range(len(b)) if caption_ids[j] == caption_ids[i]]
            log_probs = logits[i] - torch.logsumexp(logits[i], dim=0)
            total += -sum(log_probs[j] for j in positives) / len(positives)
    return total / (2 * len(points))


def test_contrastive_loss_matches_naive_reference_with_duplicate_captions():
    torch.manual_seed(1)
    points = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    caption_ids = torch.tensor([0, 1, 0, 2, 3, 1])  # rows 0/2 and 1/5 share a caption
    texts[2], texts[5] = texts[0], texts[1]
    scale = torch.tensor(7.0)
    got = contrastive_loss(points, texts, caption_ids, scale)
    assert torch.allclose(got, _naive_contrastive(points, texts, caption_ids, scale), atol=1e-5)
    # Perfectly aligned distinct pairs at a high temperature cost almost nothing.
    eye = torch.eye(4)
    assert contrastive_loss(eye, eye, torch.arange(4), torch.tensor(100.0)) < 1e-6


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from pointllm.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, 192, seed=3, val_fraction=0.25)
    return out


def test_pretrain_command_beats_chance_and_writes_a_loadable_checkpoint(synthetic, tmp_path):
    from pointllm.cli import main

    out = tmp_path / "encoder"
    sizes = [a for k, v in TINY_SIZES.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    status = main(
        [
            "pretrain-encoder",
            "--anno", str(synthetic / "anno" / "stage1_brief.json"),
            "--points", str(synthetic / "points"),
            "--eval-cls", str(synthetic / "anno" / "val_cls.json"),
            "--out", str(out),
            *sizes,
            "--num-points", "256",
            "--steps", "60",
            "--batch-size", "32",
            "--lr", "2e-3",
        ]
    )  # fmt: skip
    assert status == 0
    checkpoint = out / "point_bert.pt"
    config_path, summary_path = sibling_paths(checkpoint)
    summary = json.loads(summary_path.read_text())
    assert summary["num_train_objects"] == 144 and summary["num_eval_objects"] == 48
    assert summary["num_classes"] == 16
    # Zero-shot retrieval of the category caption on held-out objects: chance is 1/16.
    assert summary["zero_shot_accuracy"] > 2 / 16, summary
    assert math.isfinite(summary["final_loss"])

    fields = json.loads(config_path.read_text())
    assert fields == {**TINY_SIZES, "point_dims": 6}
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert all(k.startswith(CHECKPOINT_PREFIX) for k in saved["state_dict"])
    encoder = PointBertEncoder(PointBertConfig(**fields))
    encoder.load_original_checkpoint(checkpoint)  # strict: raises on any missing/extra key
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, saved["state_dict"][CHECKPOINT_PREFIX + key]), key
    # The encoder does not start from its trained weights by chance.
    fresh = PointBertEncoder(PointBertConfig(**fields)).state_dict()
    assert not torch.equal(fresh["reduce_dim.weight"], encoder.state_dict()["reduce_dim.weight"])


def test_recipe_settings_and_flags(tmp_path):
    recipe = tmp_path / "stage1.yaml"
    recipe.write_text(
        "stage: 1\ntrans_dim: 96\nnum_heads: 4\nnum_group: 24\nnum_points: 1024\n"
        "point_backbone_ckpt: enc/point_bert.pt\nlearning_rate: 0.002\n"
    )
    from pointllm.pretrain import read_recipe

    options = read_recipe(recipe)
    assert options == {
        "trans_dim": 96,
        "num_heads": 4,
        "num_group": 24,
        "num_points": 1024,
        "point_backbone_ckpt": "enc/point_bert.pt",
    }
    config, num_points = resolve_encoder(options)
    # Unset sizes come from the v1.2 preset, as `pointllm train` builds the model.
    assert (config.trans_dim, config.num_group, config.depth, config.group_size) == (96, 24, 12, 32)
    assert (config.point_dims, num_points) == (6, 1024)
    config, num_points = resolve_encoder({"use_color": False})
    assert (config.point_dims, config.trans_dim, num_points) == (3, 384, 8192)


def test_missing_inputs_and_bad_files_fail_with_one_line(tmp_path, capsys):
    from pointllm.cli import main

    assert main(["pretrain-encoder", "--points", str(tmp_path), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "missing --anno" in err and len(err.splitlines()) == 1

    bad = tmp_path / "anno.json"
    bad.write_text(json.dumps([{"object_id": "a", "conversations": [{"from": "human"}]}]))
    with pytest.raises(ValueError, match=r"anno\.json: record 0 .*no gpt reply"):
        read_captions(bad)
    split = tmp_path / "cls.json"
    split.write_text(json.dumps([{"object_id": "a", "label": 3}]))
    with pytest.raises(ValueError, match=r"cls\.json: not a classification split"):
        read_labels(split)


def test_read_labels_numbers_classes_densely(tmp_path):
    split = tmp_path / "cls.json"
    rows = [
        {"object_id": "a", "label": 7, "label_name": "mug"},
        {"object_id": "b", "label": 2, "label_name": "box"},
        {"object_id": "c", "label": 7, "label_name": "mug"},
    ]
    split.write_text(json.dumps(rows))
    labels, names = read_labels(split)
    assert names == ["box", "mug"]
    assert labels == {"a": 1, "b": 0, "c": 1}


def test_a_new_model_takes_its_encoder_from_the_stage0_checkpoint(tmp_path):
    """The checkpoint carries its encoder config: training builds that encoder without repeating
    the sizes, refuses settings that contradict it, and keeps presets for checkpoints without."""
    from pointllm.model.encoder import read_checkpoint_config
    from pointllm.pretrain.model import PointTextAligner, save_checkpoint
    from pointllm.train.args import ArgumentError, DataArguments, ModelArguments
    from pointllm.train.stages import new_point_config

    config = PointBertConfig(**TINY_SIZES, point_dims=3)
    checkpoint = tmp_path / "point_bert.pt"
    save_checkpoint(PointTextAligner(config, text_dim=8), config, checkpoint)
    assert read_checkpoint_config(checkpoint).to_dict() == config.to_dict()

    built = new_point_config(ModelArguments(point_backbone_ckpt=str(checkpoint)), DataArguments())
    assert built.to_dict() == config.to_dict()
    PointBertEncoder(built).load_original_checkpoint(checkpoint)  # strict: shapes match
    same = ModelArguments(point_backbone_ckpt=str(checkpoint), num_group=16)
    assert new_point_config(same, DataArguments(use_color=False)).num_group == 16
    other = ModelArguments(point_backbone_ckpt=str(checkpoint), trans_dim=96)
    with pytest.raises(ArgumentError, match=r"encoder with trans_dim=64, .* asks for trans_dim=96"):
        new_point_config(other, DataArguments())
    with pytest.raises(ArgumentError, match=r"point_dims=3, .* asks for point_dims=6"):
        new_point_config(
            ModelArguments(point_backbone_ckpt=str(checkpoint)), DataArguments(use_color=True)
        )

    # A checkpoint without a config (the published layout): the preset and the overrides.
    published = tmp_path / "published.pt"
    torch.save({"state_dict": torch.load(checkpoint, weights_only=True)["state_dict"]}, published)
    assert read_checkpoint_config(published) is None
    built = new_point_config(ModelArguments(point_backbone_ckpt=str(published)), DataArguments())
    assert built.to_dict() == PointBertConfig.from_preset("v1.2").to_dict()
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {}, "point_config": {"trans_dim": 64}}, bad)
    with pytest.raises(ValueError, match=r"bad\.pt: point_config must hold depth, "):
        read_checkpoint_config(bad)
