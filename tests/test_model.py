"""The PointLLM model core: configs, encoder, projector, composition, generation, saving, freezing."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model, tiny_point_config, tiny_text_config

from pointllm import PointBertConfig, PointBertEncoder, PointLLMConfig, PointLLMForCausalLM
from pointllm.model.pointllm import load_pointllm, save_pointllm


def point_block(model) -> str:
    return "<point_start>" + "<point_patch>" * model.config.num_point_tokens + "<point_end>"


def encode(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = "right"
    return tokenizer(texts, return_tensors="pt", padding=True)


# ---- configs -------------------------------------------------------------------------------


def test_point_bert_presets_match_the_published_encoders():
    v12 = PointBertConfig.from_preset("v1.2")
    assert (
        v12.trans_dim,
        v12.depth,
        v12.num_heads,
        v12.num_group,
        v12.group_size,
        v12.encoder_dims,
    ) == (
        384,
        12,
        6,
        512,
        32,
        256,
    )
    assert v12.num_tokens == 513
    v11 = PointBertConfig.from_preset("v1.1")
    assert (v11.trans_dim, v11.num_heads, v11.group_size, v11.encoder_dims) == (1152, 12, 48, 512)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(trans_dim=30, num_heads=4), "not divisible"),
        (dict(num_group=0), "num_group"),
        (dict(point_dims=4), "point_dims"),
    ],
)
def test_point_bert_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PointBertConfig(**kwargs)


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="v1.1"):
        PointBertConfig.from_preset("v9")


def test_pointllm_config_round_trips_through_dict():
    config = PointLLMConfig(point_config=tiny_point_config(), text_config=tiny_text_config("qwen2"))
    again = PointLLMConfig(**config.to_dict())
    assert again.text_config.model_type == "qwen2"
    assert again.point_config.num_group == 4
    assert again.projector_hidden_dims == [1024, 2048]


def test_pointllm_config_accepts_the_original_flat_layout():
    flat = dict(
        model_type="pointllm",
        architectures=["PointLLMLlamaForCausalLM"],
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=32003,
        rms_norm_eps=1e-6,
        point_backbone="PointBERT",
        point_backbone_config_name="PointTransformer_base_8192point",
        use_color=True,
        mm_use_point_start_end=True,
        DEFAULT_POINT_PATCH_TOKEN="<point_patch>",
    )
    config = PointLLMConfig(**flat)
    assert config.text_config.model_type == "llama"
    assert config.text_config.hidden_size == 64 and config.text_config.vocab_size == 32003
    assert config.point_config.trans_dim == 1152  # v1.1
    assert config.projector_hidden_dims == []
    assert config.template == "vicuna_v1_1"


def test_use_color_must_agree_with_point_dims():
    with pytest.raises(ValueError, match="point_dims"):
        PointLLMConfig(
            point_config=tiny_point_config(point_dims=6),
            text_config=tiny_text_config(),
            use_color=False,
        )


# ---- encoder and projector -----------------------------------------------------------------


def original_style_state_dict(encoder: PointBertEncoder) -> dict[str, torch.Tensor]:
    return {f"module.point_encoder.{k}": v.clone() for k, v in encoder.state_dict().items()}


def test_encoder_output_shape_and_parameter_names():
    torch.manual_seed(0)
    encoder = PointBertEncoder(tiny_point_config()).eval()
    out = encoder(torch.rand(3, 64, 6))
    assert out.shape == (3, 5, 32)
    names = set(encoder.state_dict())
    for key in [
        "encoder.first_conv.0.weight",
        "encoder.first_conv.1.running_mean",
        "encoder.second_conv.3.weight",
        "reduce_dim.weight",
        "cls_token",
        "cls_pos",
        "pos_embed.0.weight",
        "pos_embed.2.weight",
        "blocks.blocks.1.norm1.weight",
        "blocks.blocks.1.attn.qkv.weight",
        "blocks.blocks.1.attn.proj.bias",
        "blocks.blocks.1.mlp.fc1.weight",
        "blocks.blocks.1.mlp.fc2.weight",
        "norm.weight",
    ]:
        assert key in names, key
    assert "blocks.blocks.0.attn.qkv.bias" not in names  # the original has no qkv bias


def test_encoder_is_permutation_invariant_within_groups_and_batched():
    torch.manual_seed(0)
    encoder = PointBertEncoder(tiny_point_config()).eval()
    clouds = torch.rand(2, 64, 6)
    batched = encoder(clouds)
    single = torch.cat([encoder(clouds[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_encoder_loads_original_checkpoint_strictly(tmp_path):
    torch.manual_seed(0)
    source = PointBertEncoder(tiny_point_config())
    path = tmp_path / "point_bert_v1.2.pt"
    torch.save({"state_dict": original_style_state_dict(source), "epoch": 3}, path)
    target = PointBertEncoder(tiny_point_config())
    target.load_original_checkpoint(path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_encoder_checkpoint_errors_list_missing_and_unexpected_keys(tmp_path):
    source = PointBertEncoder(tiny_point_config())
    state = original_style_state_dict(source)
    state.pop("module.point_encoder.norm.weight")
    state["module.point_encoder.cls_head.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(
        ValueError, match=r"missing keys: \['norm.weight'\].*unexpected keys: \['cls_head.weight'\]"
    ):
        PointBertEncoder(tiny_point_config()).load_original_checkpoint(path)


def test_encoder_checkpoint_refuses_pickled_code(tmp_path):
    import argparse

    path = tmp_path / "evil.pt"
    # Any non-tensor class needs unpickling code, which weights_only=True refuses to run.
    torch.save({"state_dict": argparse.Namespace(x=1)}, path)
    with pytest.raises(ValueError, match="evil.pt: cannot read"):
        PointBertEncoder(tiny_point_config()).load_original_checkpoint(path)


def test_encoder_shape_mismatch_names_the_key():
    encoder = PointBertEncoder(tiny_point_config())
    state = encoder.state_dict()
    state["reduce_dim.weight"] = torch.zeros(7, 7)
    with pytest.raises(ValueError, match="reduce_dim.weight"):
        encoder.load_encoder_state_dict(state)


def test_projector_layout_matches_original_indices():
    from pointllm.model.projector import PointProjector

    mlp = PointProjector(384, 4096, [1024, 2048])
    assert [k for k in mlp.state_dict() if k.endswith("weight")] == [
        "0.weight",
        "2.weight",
        "4.weight",
    ]
    assert mlp(torch.zeros(2, 5, 384)).shape == (2, 5, 4096)
    linear = PointProjector(1152, 64, [])
    assert list(linear.state_dict()) == ["0.weight", "0.bias"]


# ---- the composed model --------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_forward_on_several_llm_families(base_tokenizer, arch):
    model, tokenizer = make_tiny_model(base_tokenizer, arch=arch)
    model.eval()
    batch = encode(tokenizer, [point_block(model) + "\nWhat is this?", "Hello there, text only."])
    out = model(**batch, point_clouds=torch.rand(1, 64, 6), labels=batch["input_ids"])
    assert out.logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
@pytest.mark.parametrize("num_items", [None, 7])
def test_training_loss_on_target_positions_equals_the_llms_own_loss(
    base_tokenizer, arch, num_items
):
    """In training the vocabulary projection runs only where a target follows; the loss and every
    gradient equal the LLM's full-logits `labels` path (the Trainer's num_items_in_batch too)."""
    model, tokenizer = make_tiny_model(base_tokenizer, arch=arch)
    model.set_trainable(encoder=True, projector=True, llm=True)
    model.train()
    batch = encode(
        tokenizer,
        [point_block(model) + "\nWhat is this? A red mug.", "Only text, a longer prompt. Yes."],
    )
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, -4:] = batch["input_ids"][0, -4:]  # the answers, at different positions per row
    labels[1, 5:8] = batch["input_ids"][1, 5:8]
    clouds = torch.rand(1, 64, 6)
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}

    def loss_and_grads(fast: bool):
        model.zero_grad()
        if fast:
            out = model(**batch, point_clouds=clouds, labels=labels, **extra)
            assert out.logits.shape[1] < batch["input_ids"].shape[1]  # fewer positions projected
        else:
            embeds = model.embed_inputs(batch["input_ids"], clouds)
            out = model.language_model(
                inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=labels, **extra
            )
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.loss.detach(), grads

    fast_loss, fast_grads = loss_and_grads(True)
    full_loss, full_grads = loss_and_grads(False)
    torch.testing.assert_close(fast_loss, full_loss)
    assert fast_grads.keys() == full_grads.keys()
    assert any(n.startswith("point_backbone.") for n in fast_grads)
    for name, grad in full_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_point_features_land_exactly_in_patch_positions(tiny_model):
    model, tokenizer = tiny_model
    model.eval()
    ids = encode(tokenizer, ["Before " + point_block(model) + "\nafter"])["input_ids"]
    cloud = torch.rand(1, 64, 6)
    embeds = model.embed_inputs(ids, cloud)
    patch = ids[0] == model.config.point_patch_token_id
    torch.testing.assert_close(embeds[0, patch], model.encode_points(cloud)[0])
    plain = model.get_input_embeddings()(ids)
    torch.testing.assert_close(
        embeds[0, ~patch & (ids[0] < len(tokenizer) - 3)],
        plain[0, ~patch & (ids[0] < len(tokenizer) - 3)],
    )
    start = ids[0] == model.config.point_start_token_id
    torch.testing.assert_close(embeds[0, start][0], model.point_boundary_embeds[0])


def test_mixed_batch_equals_separate_rows(tiny_model):
    model, tokenizer = tiny_model
    model.eval()
    texts = [
        point_block(model) + "\nWhat is this?",
        "Only words here.",
        point_block(model) + "\nColor?",
    ]
    clouds = torch.rand(2, 64, 6)
    batch = encode(tokenizer, texts)
    logits = model(**batch, point_clouds=clouds).logits
    cloud_of_row = {0: clouds[0:1], 1: None, 2: clouds[1:2]}
    for row, text in enumerate(texts):
        single = encode(tokenizer, [text])
        length = single["input_ids"].shape[1]
        expected = model(**single, point_clouds=cloud_of_row[row]).logits[0]
        torch.testing.assert_close(logits[row, :length], expected, atol=1e-4, rtol=1e-4)


def test_patch_count_mismatch_names_both_counts(tiny_model):
    model, tokenizer = tiny_model
    ids = encode(tokenizer, [point_block(model) + " one", point_block(model) + " two"])["input_ids"]
    with pytest.raises(ValueError, match=r"2 point blocks .* but 1 point clouds"):
        model(input_ids=ids, point_clouds=torch.rand(1, 64, 6))
    with pytest.raises(ValueError, match="no point_clouds"):
        model(input_ids=ids)
    short = encode(tokenizer, ["<point_patch><point_patch> hi"])["input_ids"]
    with pytest.raises(ValueError, match=r"\[2\] <point_patch> tokens; each cloud needs exactly 5"):
        model(input_ids=short, point_clouds=torch.rand(1, 64, 6))


def test_point_tokens_are_added_with_mean_embeddings(base_tokenizer):
    model, tokenizer = make_tiny_model(base_tokenizer)
    assert len(tokenizer) == len(base_tokenizer) + 3
    ids = tokenizer.convert_tokens_to_ids(["<point_patch>", "<point_start>", "<point_end>"])
    assert ids == [
        model.config.point_patch_token_id,
        model.config.point_start_token_id,
        model.config.point_end_token_id,
    ]
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == len(tokenizer) == model.config.text_config.vocab_size
    mean = weight[: len(base_tokenizer)].mean(0)
    for i in ids:
        torch.testing.assert_close(weight[i], mean)
    # "<point_patch>" must stay one token, never split by the BPE.
    assert len(tokenizer("<point_patch><point_patch>", add_special_tokens=False)["input_ids"]) == 2


def test_generate_with_cache_equals_greedy_loop_without_cache(tiny_model):
    model, tokenizer = tiny_model
    model.eval()
    batch = encode(tokenizer, [point_block(model) + "\nDescribe it."])
    cloud = torch.rand(1, 64, 6)
    out = model.generate(
        **batch, point_clouds=cloud, max_new_tokens=8, do_sample=False, min_new_tokens=8
    )
    ids = batch["input_ids"]
    for _ in range(8):
        logits = model(input_ids=ids, point_clouds=cloud, use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)


def test_generate_encodes_points_once(tiny_model, monkeypatch):
    model, tokenizer = tiny_model
    model.eval()
    calls = []
    original = model.point_backbone.forward
    monkeypatch.setattr(model.point_backbone, "forward", lambda x: calls.append(1) or original(x))
    batch = encode(tokenizer, [point_block(model) + "\nDescribe it."])
    model.generate(
        **batch,
        point_clouds=torch.rand(1, 64, 6),
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
    )
    assert len(calls) == 1


def test_save_and_load_round_trip_reproduces_logits(tiny_model, tmp_path):
    model, tokenizer = tiny_model
    model.eval()
    out_dir = tmp_path / "ckpt"
    save_pointllm(model, tokenizer, out_dir)
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "config.json").is_file()
    loaded, tokenizer2 = load_pointllm(out_dir)
    assert len(tokenizer2) == len(tokenizer)
    assert loaded.config.point_patch_token_id == model.config.point_patch_token_id
    batch = encode(tokenizer, [point_block(model) + "\nWhat?"])
    cloud = torch.rand(1, 64, 6)
    assert torch.equal(
        model(**batch, point_clouds=cloud).logits, loaded(**batch, point_clouds=cloud).logits
    )
    # Saving again over an existing checkpoint replaces it whole.
    save_pointllm(loaded, tokenizer2, out_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_auto_classes_know_pointllm(tiny_model, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model, tokenizer = tiny_model
    save_pointllm(model, tokenizer, tmp_path / "m")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "m"), PointLLMConfig)
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path / "m"), PointLLMForCausalLM)


# ---- freezing ------------------------------------------------------------------------------


def trainable_prefixes(model) -> set[str]:
    return {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "flags, expected",
    [
        (dict(encoder=False, projector=True, llm=False), {"point_proj", "point_boundary_embeds"}),
        (
            dict(encoder=False, projector=True, llm=True),
            {"point_proj", "language_model", "point_boundary_embeds"},
        ),
        (
            dict(encoder=True, projector=True, llm=True),
            {"point_backbone", "point_proj", "language_model", "point_boundary_embeds"},
        ),
        (dict(encoder=True, projector=False, llm=False, point_tokens=False), {"point_backbone"}),
        (dict(encoder=False, projector=False, llm=False, point_tokens=False), set()),
    ],
)
def test_trainable_parameter_sets(tiny_model, flags, expected):
    model, _ = tiny_model
    model.set_trainable(**flags)
    assert trainable_prefixes(model) == expected


def test_frozen_encoder_keeps_batchnorm_in_eval_mode(tiny_model):
    model, _ = tiny_model
    model.set_trainable(encoder=False, projector=True, llm=False)
    model.train()
    assert model.training and model.point_proj.training
    assert not model.point_backbone.training
    assert all(not m.training for m in model.point_backbone.modules())
    model.set_trainable(encoder=True, projector=True, llm=False)
    model.train()
    assert model.point_backbone.training


def test_embedded_smollm2_backbone_answers_text_questions(caplog):
    """The real SmolLM2 inside a PointLLM still answers a plain question correctly."""
    with caplog.at_level("WARNING", logger="transformers"):
        model, tokenizer = PointLLMForCausalLM.from_backbone("smollm2-135m", tiny_point_config())
    # The LLM keeps its attention implementation, and nothing is said about the encoder's config.
    assert model.language_model.config._attn_implementation == "sdpa"
    assert not [r for r in caplog.records if "attention implementation" in r.getMessage()]
    model.eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(
        inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        max_new_tokens=12,
        do_sample=False,
    )
    reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply
    assert model.config.text_config.model_type == "llama"
    assert len(tokenizer) == 49152 + 3
