"""Original PointLLM checkpoints: loading as they are, conversion both ways, stage-1 init folders.

The tiny checkpoints here are built the way the original code saves them, independently of
`pointllm.model.legacy`: a plain `LlamaForCausalLM` (whose parameter names are the original's
`model.*` / `lm_head.*`), a Point-BERT encoder under `model.point_backbone.`, and a projector under
`model.point_proj.` (v1.2: Linear/GELU Sequential, v1.1: one Linear), written by hand as `.bin` or
safetensors, single or sharded, next to a flat config.json and a small Llama-style tokenizer with
the three point tokens. The same plain modules give the reference forward pass: the original
splices the projected point features between <point_start> and <point_end> with torch.cat.

The published encoders are large (v1.1: 190M parameters), so the presets behind the original
`point_backbone_config_name` values are shrunk for this module; one test checks the real v1.2
names and shapes on the meta device.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pointllm.cli import main as cli_main
from pointllm.config import POINT_BERT_PRESETS, PROJECTOR_PRESETS, PointBertConfig
from pointllm.data.conversation import point_block as make_point_block
from pointllm.data.conversation import (
    render_segments,
    tokenize_conversation,
    user_content_with_points,
)
from pointllm.model import legacy
from pointllm.model.encoder import PointBertEncoder
from pointllm.model.pointllm import PointLLMForCausalLM, load_pointllm

REAL_POINT_BERT_PRESETS = copy.deepcopy(POINT_BERT_PRESETS)
REAL_PROJECTOR_PRESETS = copy.deepcopy(PROJECTOR_PRESETS)
TINY_POINT_BERT = {
    "v1.2": dict(trans_dim=32, depth=2, num_heads=4, num_group=4, group_size=8, encoder_dims=32),
    "v1.1": dict(trans_dim=48, depth=2, num_heads=4, num_group=4, group_size=8, encoder_dims=40),
}
TINY_PROJECTOR = {"v1.2": [48, 40], "v1.1": []}
CONFIG_NAMES = {
    "v1.2": "PointTransformer_8192point_2layer",
    "v1.1": "PointTransformer_base_8192point",
}
HIDDEN = 32
QUESTION = "What is this?"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions."
)
POINT_TOKENS = ["<point_patch>", "<point_start>", "<point_end>"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is ~25x faster than two when other jobs share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def tiny_presets():
    with pytest.MonkeyPatch.context() as patch:
        for version in ("v1.1", "v1.2"):
            patch.setitem(POINT_BERT_PRESETS, version, TINY_POINT_BERT[version])
            patch.setitem(PROJECTOR_PRESETS, version, TINY_PROJECTOR[version])
        yield


# ---- building original-layout checkpoints by hand --------------------------------------------


def build_tokenizer(with_point_tokens: bool = True):
    """A small LLaMA-style BPE tokenizer (<unk>=0, <s>=1, </s>=2, bos added) trained on the
    template's words; the point tokens are added as the original adds them: patch, then start/end."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        VICUNA_SYSTEM,
        "USER: What is this?\nASSISTANT: A red chair with four legs.",
        "Caption this 3D model in detail. This is an object of a blue table.",
    ]
    backend = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    backend.decoder = decoders.Metaspace(prepend_scheme="first", split=False)
    trainer = trainers.BpeTrainer(
        vocab_size=110, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    backend.train_from_iterator(corpus, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if with_point_tokens:
        tokenizer.add_tokens(POINT_TOKENS[:1], special_tokens=True)
        tokenizer.add_tokens(POINT_TOKENS[1:], special_tokens=True)
    return tokenizer


def save_tokenizer_like_original(tokenizer, directory: Path) -> None:
    tokenizer.save_pretrained(directory)
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.update(tokenizer_class="LlamaTokenizer", add_bos_token=True, pad_token=None)
    config_file.write_text(json.dumps(config))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))


def flat_config(version: str | None, vocab: int, **overrides) -> dict:
    """An original config.json, field for field as the published ones (tiny sizes)."""
    config = {
        "DEFAULT_POINT_END_TOKEN": "<point_end>",
        "DEFAULT_POINT_PATCH_TOKEN": "<point_patch>",
        "DEFAULT_POINT_START_TOKEN": "<point_start>",
        "_name_or_path": "checkpoints/PointLLM_7B_v1.1_init",
        "architectures": ["PointLLMLlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 2048,
        "mm_use_point_start_end": True,
        "model_type": "pointllm",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "pad_token_id": 0,
        "point_backbone": "PointBERT",
        "point_backbone_ckpt": "/mnt/petrelfs/somebody/point_bert_v1.2.pt",
        "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.28.0.dev0",
        "use_cache": False,
        "use_color": True,
        "vocab_size": vocab,
    }
    if version is not None:
        config["point_backbone_config_name"] = CONFIG_NAMES[version]
    config.update(overrides)
    return config


@dataclass
class OriginalParts:
    """The original model's three parts as plain modules (the reference implementation)."""

    llm: nn.Module
    encoder: PointBertEncoder
    proj: nn.Module
    version: str

    def state_dict(self, rotary_buffers: bool = True) -> dict[str, torch.Tensor]:
        """The original checkpoint's tensors, named as the original code names them."""
        state = dict(self.llm.state_dict())  # HF Llama names are the original names
        state.update({f"model.point_backbone.{k}": v for k, v in self.encoder.state_dict().items()})
        state.update({f"model.point_proj.{k}": v for k, v in self.proj.state_dict().items()})
        if rotary_buffers:  # transformers 4.28 saved these with every layer
            inv_freq = self.llm.model.rotary_emb.inv_freq
            for i in range(len(self.llm.model.layers)):
                state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
        return {k: v.clone().contiguous() for k, v in state.items()}

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, clouds: torch.Tensor, patch_id: int) -> torch.Tensor:
        """The original forward: point features spliced in with torch.cat where the patch tokens
        start (right after <point_start> when the model uses it)."""
        embeds = self.llm.model.embed_tokens(input_ids)  # (1, T, H)
        features = self.proj(self.encoder(clouds))  # (1, G+1, H)
        first = int((input_ids[0] == patch_id).nonzero()[0, 0])
        n = features.shape[1]
        spliced = torch.cat([embeds[:, :first], features, embeds[:, first + n :]], dim=1)
        return self.llm(inputs_embeds=spliced).logits


def make_parts(version: str, vocab: int, seed: int = 0, llm_only: bool = False) -> OriginalParts:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    llm_config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=vocab,
        rms_norm_eps=1e-6,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    llm = LlamaForCausalLM(llm_config).eval()
    encoder = PointBertEncoder(PointBertConfig(**TINY_POINT_BERT[version], point_dims=6)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the buffers matter
        for module in encoder.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(7)
    trans_dim = TINY_POINT_BERT[version]["trans_dim"]
    if version == "v1.2":
        proj = nn.Sequential(
            nn.Linear(trans_dim, 48), nn.GELU(), nn.Linear(48, 40), nn.GELU(), nn.Linear(40, HIDDEN)
        )
    else:
        proj = nn.Linear(trans_dim, HIDDEN)
    return OriginalParts(llm, encoder, proj, version)


def write_weights(state: dict, directory: Path, fmt: str, sharded: bool) -> None:
    """Write tensors as transformers 4.28 names its files (the LLM first, point parts last)."""
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")

    def dump(tensors: dict, name: str) -> None:
        if fmt == "safetensors":
            save_file(tensors, str(directory / name), metadata={"format": "pt"})
        else:
            torch.save(tensors, directory / name)

    if not sharded:
        dump(state, f"{stem}.{ext}")
        return
    keys = list(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        name = f"{stem}-{i:05d}-of-00002.{ext}"
        dump({k: state[k] for k in part}, name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / f"{stem}.{ext}.index.json").write_text(json.dumps(index))


def write_original_checkpoint(
    directory: Path,
    version: str = "v1.2",
    fmt: str = "safetensors",
    sharded: bool = False,
    seed: int = 0,
    state_edit=None,
    **config_overrides,
) -> OriginalParts:
    directory.mkdir(parents=True)
    tokenizer = build_tokenizer()
    parts = make_parts(version, len(tokenizer), seed)
    state = parts.state_dict()
    if state_edit is not None:
        state_edit(state)
    write_weights(state, directory, fmt, sharded)
    config = flat_config(version, len(tokenizer), **config_overrides)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_tokenizer_like_original(tokenizer, directory)
    return parts


def prompt_inputs(tokenizer, config) -> tuple[torch.Tensor, str]:
    block = make_point_block(config.num_point_tokens, config.mm_use_point_start_end)
    messages = [{"role": "user", "content": user_content_with_points(QUESTION, block)}]
    text = "".join(
        t
        for t, _ in render_segments(
            messages, tokenizer, config.template, add_generation_prompt=True
        )
    )
    ids = tokenize_conversation(
        messages, tokenizer, config.template, add_generation_prompt=True
    ).input_ids
    return torch.tensor([ids]), text


def clouds(seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 64, 6, generator=generator)


@torch.no_grad()
def model_logits(model, tokenizer) -> torch.Tensor:
    input_ids, _ = prompt_inputs(tokenizer, model.config)
    return model(input_ids=input_ids, point_clouds=clouds()).logits


@torch.no_grad()
def greedy(model, tokenizer) -> torch.Tensor:
    input_ids, _ = prompt_inputs(tokenizer, model.config)
    return model.generate(input_ids, point_clouds=clouds(), max_new_tokens=6, do_sample=False)


@pytest.fixture(scope="module")
def v12_dir(tmp_path_factory) -> tuple[Path, OriginalParts]:
    directory = tmp_path_factory.mktemp("orig") / "PointLLM_tiny_v1.2"
    return directory, write_original_checkpoint(directory, "v1.2")


@pytest.fixture(scope="module")
def v12_native(v12_dir, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("native") / "converted"
    assert cli_main(["convert", "--from", str(v12_dir[0]), "--to", str(target)]) == 0
    return target


# ---- loading as is ---------------------------------------------------------------------------


def test_the_hand_built_checkpoint_has_the_original_key_names(v12_dir):
    directory, parts = v12_dir
    keys = set(parts.state_dict())
    for key in [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.0.self_attn.rotary_emb.inv_freq",
        "model.norm.weight",
        "lm_head.weight",
        "model.point_backbone.encoder.first_conv.1.running_mean",
        "model.point_backbone.blocks.blocks.1.attn.qkv.weight",
        "model.point_backbone.cls_pos",
        "model.point_proj.0.weight",
        "model.point_proj.2.bias",
        "model.point_proj.4.weight",
    ]:
        assert key in keys, key
    assert legacy.is_original_checkpoint(directory)
    assert not legacy.is_init_folder(directory)


def test_original_v12_loads_with_vicuna_and_point_settings_from_the_config(v12_dir):
    directory, parts = v12_dir
    model, tokenizer = load_pointllm(directory)
    config = model.config
    assert not model.training
    assert config.template == "vicuna_v1_1"
    assert config.num_points == 8192
    assert config.text_config.rms_norm_eps == 1e-6
    assert config.text_config.use_cache is True
    assert config.projector_hidden_dims == [48, 40]
    ids = tokenizer.convert_tokens_to_ids(POINT_TOKENS)
    base = len(tokenizer) - 3
    assert ids == [base, base + 1, base + 2]  # patch first, then start/end
    assert [
        config.point_patch_token_id,
        config.point_start_token_id,
        config.point_end_token_id,
    ] == ids
    # Our <point_start>/<point_end> inputs are the original's embedding rows.
    embed = parts.llm.model.embed_tokens.weight
    assert torch.equal(model.point_boundary_embeds, embed[ids[1:]])


def test_prompt_is_the_vicuna_string_with_the_point_block_before_the_question(v12_dir):
    model, tokenizer = load_pointllm(v12_dir[0])
    input_ids, text = prompt_inputs(tokenizer, model.config)
    n = model.config.num_point_tokens
    expected = (
        f"{VICUNA_SYSTEM} USER: <point_start>{'<point_patch>' * n}<point_end>\n"
        f"{QUESTION} ASSISTANT:"
    )
    assert text == expected
    # The original tokenizes the whole prompt string at once, with <s> first.
    assert input_ids[0].tolist() == tokenizer([expected]).input_ids[0]
    assert input_ids[0, 0] == tokenizer.bos_token_id


def test_logits_equal_the_original_forward_pass(v12_dir):
    directory, parts = v12_dir
    model, tokenizer = load_pointllm(directory)
    input_ids, _ = prompt_inputs(tokenizer, model.config)
    ours = model_logits(model, tokenizer)
    reference = parts.logits(input_ids, clouds(), model.config.point_patch_token_id)
    assert torch.equal(ours, reference)


@pytest.mark.parametrize(
    "version, fmt, sharded, overrides",
    [
        ("v1.2", "bin", False, {}),
        ("v1.2", "bin", True, {}),
        ("v1.2", "safetensors", True, {}),
        ("v1.2", "safetensors", False, {"mm_use_point_start_end": False}),
        # v1.1 checkpoints predate point_backbone_config_name: the weights tell.
        (None, "bin", True, {}),
        ("v1.1", "safetensors", False, {}),
    ],
)
def test_every_weight_layout_loads_and_matches_the_original(
    tmp_path, version, fmt, sharded, overrides
):
    directory = tmp_path / "ckpt"
    written = version or "v1.1"
    parts = write_original_checkpoint(directory, written, fmt, sharded, seed=3, **overrides)
    if version is None:
        config = json.loads((directory / "config.json").read_text())
        del config["point_backbone_config_name"]
        (directory / "config.json").write_text(json.dumps(config))
    model, tokenizer = load_pointllm(directory)
    assert model.config.projector_hidden_dims == TINY_PROJECTOR[written]
    assert model.config.point_config.trans_dim == TINY_POINT_BERT[written]["trans_dim"]
    input_ids, text = prompt_inputs(tokenizer, model.config)
    assert ("<point_start>" in text) == model.config.mm_use_point_start_end
    reference = parts.logits(input_ids, clouds(), model.config.point_patch_token_id)
    assert torch.equal(model_logits(model, tokenizer), reference)
    if written == "v1.1":
        assert torch.equal(model.point_proj[0].weight, parts.proj.weight)


def test_config_defaults_follow_the_original_code(tmp_path):
    directory = tmp_path / "ckpt"
    write_original_checkpoint(directory, "v1.2", "safetensors")
    config = json.loads((directory / "config.json").read_text())
    del config["use_color"], config["point_backbone_config_name"]
    (directory / "config.json").write_text(json.dumps(config))
    ours = legacy.original_config(directory, legacy.WeightFiles.find(directory))
    assert ours.use_color is False and ours.point_config.point_dims == 3  # absent: no color
    assert ours.projector_hidden_dims == TINY_PROJECTOR["v1.2"]  # absent: v1.2
    assert ours.text_config.pad_token_id == 0 and ours.text_config.use_cache is True


def test_from_pretrained_and_auto_model_read_the_original_layout(v12_dir, v12_native):
    from transformers import AutoModelForCausalLM

    direct = PointLLMForCausalLM.from_pretrained(v12_dir[0], dtype=torch.bfloat16)
    auto = AutoModelForCausalLM.from_pretrained(v12_dir[0], torch_dtype=torch.bfloat16)
    native, tokenizer = load_pointllm(v12_native, dtype=torch.bfloat16)
    assert direct.language_model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert direct.point_proj[0].weight.dtype == torch.bfloat16
    expected = model_logits(native, tokenizer)
    assert torch.equal(model_logits(direct, tokenizer), expected)
    assert torch.equal(model_logits(auto, tokenizer), expected)


def test_inference_api_loads_the_original_folder_as_is(v12_dir):
    import pointllm

    llm = pointllm.load(v12_dir[0], device="cpu", dtype="fp32")
    n = llm.config.num_point_tokens
    expected = (
        f"{VICUNA_SYSTEM} USER: <point_start>{'<point_patch>' * n}<point_end>\n"
        f"{QUESTION} ASSISTANT:"
    )
    history = [{"role": "user", "content": QUESTION}]
    assert llm.prompt_ids(history, with_points=True) == llm.tokenizer([expected]).input_ids[0]
    points = llm.prepare_points(clouds()[0].numpy())
    ids = torch.tensor([llm.prompt_ids(history, with_points=True)])
    with torch.no_grad():
        reference = llm.model.generate(
            ids, point_clouds=points[None], max_new_tokens=4, do_sample=False
        )
    answer = llm.generate(clouds()[0].numpy(), QUESTION, max_new_tokens=4)
    decoded = llm.tokenizer.decode(reference[0, ids.shape[1] :], skip_special_tokens=True)
    assert answer == decoded.strip()


def test_from_pretrained_names_options_it_cannot_honour(v12_dir):
    with pytest.raises(ValueError, match="gguf_file.*pointllm convert"):
        PointLLMForCausalLM.from_pretrained(v12_dir[0], gguf_file="model.gguf")
    with pytest.raises(ValueError, match="device_map='auto'"):
        PointLLMForCausalLM.from_pretrained(v12_dir[0], device_map="auto")


@pytest.mark.parametrize(("version", "fmt"), [("v1.2", "safetensors"), ("v1.1", "bin")])
def test_transformers_loader_reads_the_original_layout_identically(tmp_path, version, fmt):
    """Quantized loading (`quantization_config`, `device_map`) reads the original files through
    transformers' loader with the names mapped; on the CPU, without quantization, it must give the
    very model our own reader gives."""
    directory = tmp_path / version
    write_original_checkpoint(directory, version=version, fmt=fmt, sharded=version == "v1.2")
    ours, tokenizer = legacy.load_original(directory)
    theirs, _ = legacy.load_original(directory, device_map={"": "cpu"})
    expected, got = ours.state_dict(), theirs.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[key], expected[key]) for key in expected)
    assert torch.equal(model_logits(theirs, tokenizer), model_logits(ours, tokenizer))


def test_quantized_load_of_the_original_layout_goes_through_transformers(v12_dir, monkeypatch):
    """`pointllm.load(..., quantize=)` on an original folder hands transformers' loader the same
    bitsandbytes config as our layout gets (bitsandbytes and CUDA faked; stopped before loading)."""
    import pointllm
    from pointllm.model import precision

    monkeypatch.setattr(precision, "_has_bitsandbytes", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    seen = {}

    def capture(config, weights, dtype, **kwargs):
        seen.update(kwargs, dtype=dtype)
        raise RuntimeError("stopped before loading")

    monkeypatch.setattr(legacy, "_load_through_transformers", capture)
    with pytest.raises(RuntimeError, match="stopped before loading"):
        pointllm.load(v12_dir[0], device="cuda", quantize="4bit")
    assert seen["quantization_config"].to_dict() == precision.quantization_config("4bit").to_dict()
    assert seen["device_map"] == {"": 0} and seen["dtype"] == torch.bfloat16


# ---- conversion --------------------------------------------------------------------------------


def test_converted_native_model_has_equal_logits_and_greedy_generations(v12_dir, v12_native):
    original, tokenizer = load_pointllm(v12_dir[0])
    native, native_tokenizer = load_pointllm(v12_native)
    assert sorted(p.name for p in v12_native.glob("*.safetensors")) == ["model.safetensors"]
    config = json.loads((v12_native / "config.json").read_text())
    assert config["template"] == "vicuna_v1_1" and "text_config" in config
    for stale in ("point_backbone_ckpt", "point_backbone_config_name", "DEFAULT_POINT_PATCH_TOKEN"):
        assert stale not in config
    assert config["architectures"] == ["PointLLMForCausalLM"]
    assert native_tokenizer.convert_tokens_to_ids(POINT_TOKENS) == tokenizer.convert_tokens_to_ids(
        POINT_TOKENS
    )
    assert torch.equal(model_logits(original, tokenizer), model_logits(native, native_tokenizer))
    generated = greedy(original, tokenizer)
    assert generated.shape[1] > prompt_inputs(tokenizer, original.config)[0].shape[1]
    assert torch.equal(generated, greedy(native, native_tokenizer))


def test_native_to_original_to_native_reproduces_weights_and_logits(v12_dir, v12_native, tmp_path):
    from pointllm.model.pointllm import save_pointllm

    directory, parts = v12_dir
    # As after stage 1: the learned <point_start>/<point_end> inputs differ from the LLM's rows.
    trained, tokenizer = load_pointllm(v12_native)
    with torch.no_grad():
        trained.point_boundary_embeds.normal_(generator=torch.Generator().manual_seed(9))
    source = tmp_path / "trained"
    save_pointllm(trained, tokenizer, source)
    back = tmp_path / "original_again"
    argv = ["convert", "--from", str(source), "--to", str(back), "--to-original"]
    assert cli_main([*argv, "--max-shard-size", "40KB"]) == 0
    # Sharded .bin as transformers 4.28 writes it, readable with weights_only=True.
    index = json.loads((back / "pytorch_model.bin.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert all(re.fullmatch(r"pytorch_model-\d{5}-of-\d{5}\.bin", s) for s in shards)
    written = {}
    for shard in shards:
        written.update(torch.load(back / shard, weights_only=True))
    expected = parts.state_dict(rotary_buffers=False)
    start_end = tokenizer.convert_tokens_to_ids(POINT_TOKENS[1:])
    expected["model.embed_tokens.weight"][start_end] = trained.point_boundary_embeds.detach()
    assert sorted(written) == sorted(expected)
    for key, tensor in expected.items():
        assert torch.equal(written[key], tensor), key
    config = json.loads((back / "config.json").read_text())
    assert config["architectures"] == ["PointLLMLlamaForCausalLM"]
    assert config["point_backbone_config_name"] == "PointTransformer_8192point_2layer"
    assert config["hidden_size"] == HIDDEN and config["vocab_size"] == len(build_tokenizer())
    expected_logits = model_logits(trained, tokenizer)
    assert torch.equal(model_logits(load_pointllm(back)[0], tokenizer), expected_logits)
    again = tmp_path / "native_again"
    assert cli_main(["convert", "--from", str(back), "--to", str(again)]) == 0
    assert torch.equal(model_logits(load_pointllm(again)[0], tokenizer), expected_logits)


def test_to_original_refuses_what_the_original_code_cannot_run(tmp_path):
    from conftest import make_tiny_model

    from pointllm.model.pointllm import save_pointllm

    model, tokenizer = make_tiny_model(build_tokenizer(with_point_tokens=False), arch="qwen2")
    source = tmp_path / "qwen"
    save_pointllm(model, tokenizer, source)
    target = tmp_path / "out"
    with pytest.raises(ValueError, match="'qwen2'.*only Llama.*template 'chat_template'"):
        legacy.convert_to_original(source, target)
    assert not target.exists()


def test_convert_refuses_to_overwrite_and_to_convert_the_wrong_way(v12_dir, v12_native, capsys):
    assert cli_main(["convert", "--from", str(v12_dir[0]), "--to", str(v12_native)]) == 1
    assert "not empty (pass --overwrite" in capsys.readouterr().err
    target = v12_native.parent / "x"
    assert cli_main(["convert", "--from", str(v12_native), "--to", str(target)]) == 1
    assert "not an original PointLLM checkpoint" in capsys.readouterr().err
    argv = ["convert", "--from", str(v12_dir[0]), "--to", str(target), "--to-original"]
    assert cli_main(argv) == 1
    assert "already in the original PointLLM layout" in capsys.readouterr().err


# ---- errors name the keys --------------------------------------------------------------------


def _add_unknown(state):
    state["model.point_proj.9.weight"] = torch.zeros(2, 2)
    state["model.mm_projector.weight"] = torch.zeros(2, 2)


def _drop_keys(state):
    del state["model.layers.1.mlp.down_proj.weight"]
    del state["model.point_backbone.cls_token"]


def _wrong_shape(state):
    state["model.norm.weight"] = torch.ones(HIDDEN + 1)


@pytest.mark.parametrize(
    "edit, message",
    [
        (_add_unknown, r"unknown keys: model\.mm_projector\.weight, model\.point_proj\.9\.weight"),
        (
            _drop_keys,
            r"missing keys: model\.layers\.1\.mlp\.down_proj\.weight, "
            r"model\.point_backbone\.cls_token",
        ),
        (_wrong_shape, r"model\.norm\.weight has shape \(33,\) but config\.json implies \(32,\)"),
    ],
)
def test_unknown_missing_and_misshapen_keys_are_named(tmp_path, edit, message):
    directory = tmp_path / "bad"
    write_original_checkpoint(directory, "v1.2", "bin", sharded=True, state_edit=edit)
    with pytest.raises(ValueError, match=message):
        load_pointllm(directory)


def test_a_missing_shard_and_an_unsafe_bin_are_named(tmp_path):
    directory = tmp_path / "ckpt"
    write_original_checkpoint(directory, "v1.2", "bin", sharded=True)
    (directory / "pytorch_model-00002-of-00002.bin").rename(directory / "elsewhere.bin")
    with pytest.raises(FileNotFoundError, match=r"shard files missing: \['pytorch_model-00002"):
        load_pointllm(directory)
    # A pickled object of an arbitrary class: weights_only=True refuses to build it.
    torch.save({"args": argparse.Namespace(lr=1)}, directory / "pytorch_model-00002-of-00002.bin")
    with pytest.raises(ValueError, match="pytorch_model-00002-of-00002.bin: cannot read weights"):
        load_pointllm(directory)


# ---- stage-1 init folders --------------------------------------------------------------------


def write_init_folder(directory: Path) -> tuple[OriginalParts, dict]:
    """`PointLLM_7B_v1.1_init` in miniature: the LLM (no point tokens yet), a config naming the
    v1.2 encoder, and point_bert_v1.2.pt beside them."""
    directory.mkdir(parents=True)
    tokenizer = build_tokenizer(with_point_tokens=False)
    parts = make_parts("v1.2", len(tokenizer), seed=5)
    llm_state = {k: v for k, v in parts.state_dict().items() if not k.startswith("model.point_")}
    write_weights(llm_state, directory, "bin", sharded=False)
    config = flat_config("v1.2", len(tokenizer), point_backbone_ckpt="", torch_dtype="float16")
    (directory / "config.json").write_text(json.dumps(config))
    save_tokenizer_like_original(tokenizer, directory)
    encoder_state = {f"module.point_encoder.{k}": v for k, v in parts.encoder.state_dict().items()}
    torch.save({"state_dict": encoder_state, "epoch": 300}, directory / "point_bert_v1.2.pt")
    return parts, llm_state


def test_init_folder_starts_stage_one_as_the_original_recipe(tmp_path):
    directory = tmp_path / "PointLLM_7B_v1.1_init"
    parts, llm_state = write_init_folder(directory)
    assert legacy.is_init_folder(directory)
    model, tokenizer = legacy.load_init_folder(directory)
    base = len(build_tokenizer(with_point_tokens=False))
    assert tokenizer.convert_tokens_to_ids(POINT_TOKENS) == [base, base + 1, base + 2]
    assert tokenizer.pad_token == "<unk>"
    assert model.config.template == "vicuna_v1_1"
    assert model.language_model.model.embed_tokens.weight.dtype == torch.float32
    embed = model.language_model.model.embed_tokens.weight
    assert embed.shape[0] == base + 3
    assert torch.equal(embed[:base], llm_state["model.embed_tokens.weight"])
    assert torch.allclose(
        embed[base:], llm_state["model.embed_tokens.weight"].mean(0).expand(3, -1)
    )
    assert torch.equal(model.point_boundary_embeds, embed[base + 1 :])
    own = model.language_model.state_dict()
    assert torch.equal(
        own["model.layers.1.mlp.up_proj.weight"], llm_state["model.layers.1.mlp.up_proj.weight"]
    )
    for key, tensor in parts.encoder.state_dict().items():
        assert torch.equal(model.point_backbone.state_dict()[key], tensor), key
    last = model.point_proj[4]
    assert torch.equal(last.bias, torch.zeros_like(last.bias))
    assert 0.015 < float(last.weight.detach().std()) < 0.025  # N(0, initializer_range = 0.02)


def test_stage_one_training_starts_from_an_init_folder(tmp_path):
    from pointllm.train.args import DataArguments, ModelArguments
    from pointllm.train.stages import build_model

    directory = tmp_path / "PointLLM_7B_v1.1_init"
    parts, llm_state = write_init_folder(directory)
    model, tokenizer = build_model(
        ModelArguments(model_name_or_path=str(directory), stage=1), DataArguments()
    )
    assert model.config.template == "vicuna_v1_1"
    assert len(tokenizer) == len(build_tokenizer(with_point_tokens=False)) + 3
    for key, tensor in parts.encoder.state_dict().items():
        assert torch.equal(model.point_backbone.state_dict()[key], tensor), key
    own = model.language_model.state_dict()
    assert torch.equal(own["model.norm.weight"], llm_state["model.norm.weight"])


def test_an_init_folder_is_not_a_model_to_chat_with(tmp_path):
    directory = tmp_path / "init"
    write_init_folder(directory)
    with pytest.raises(ValueError, match="init folder.*stage 1"):
        load_pointllm(directory)
    with pytest.raises(ValueError, match="init folder"):
        legacy.convert_to_native(directory, tmp_path / "out")
    (directory / "point_bert_v1.2.pt").unlink()
    with pytest.raises(FileNotFoundError, match="point_bert_v1.2.pt"):
        legacy.load_init_folder(directory)


# ---- the published sizes ---------------------------------------------------------------------


def published_config(size: str):
    """The PointLLM_{7B,13B}_v1.2 config.json fields (LLaMA-7B/13B with 32003 tokens)."""
    from pointllm.config import PointLLMConfig

    dims = {"7B": (4096, 11008, 32, 32), "13B": (5120, 13824, 40, 40)}[size]
    hidden, inter, layers, heads = dims
    return PointLLMConfig.from_dict(
        flat_config(
            "v1.2",
            32003,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
        )
    )


def parameter_count(config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in PointLLMForCausalLM(config).parameters())


def test_published_v12_names_shapes_and_documented_parameter_counts(monkeypatch):
    for version in ("v1.1", "v1.2"):
        monkeypatch.setitem(POINT_BERT_PRESETS, version, REAL_POINT_BERT_PRESETS[version])
        monkeypatch.setitem(PROJECTOR_PRESETS, version, REAL_PROJECTOR_PRESETS[version])
    config = published_config("7B")
    with torch.device("meta"):
        model = PointLLMForCausalLM(config)
    shapes = {
        legacy.native_to_original_key(k, single_linear_projector=False): tuple(v.shape)
        for k, v in model.state_dict().items()
    }
    assert shapes["model.embed_tokens.weight"] == (32003, 4096)
    assert shapes["lm_head.weight"] == (32003, 4096)
    assert shapes["model.point_proj.0.weight"] == (1024, 384)
    assert shapes["model.point_proj.2.weight"] == (2048, 1024)
    assert shapes["model.point_proj.4.weight"] == (4096, 2048)
    assert shapes["model.point_backbone.blocks.blocks.11.attn.qkv.weight"] == (1152, 384)
    assert shapes["model.point_backbone.encoder.first_conv.0.weight"] == (128, 6, 1)
    assert shapes["model.layers.31.self_attn.o_proj.weight"] == (4096, 4096)
    # The memory table of docs/checkpoints.md must state these computed counts.
    text = (Path(__file__).parents[1] / "docs" / "checkpoints.md").read_text()
    for size in ("7B", "13B"):
        count = parameter_count(published_config(size))
        assert f"| PointLLM_{size}_v1.2 | {count:,} |" in text, (size, count)


def test_sharded_original_weights_show_a_bar_only_when_bars_are_on(tmp_path, capsys):
    from transformers.utils import logging as hf_logging

    directory = tmp_path / "ckpt"
    write_original_checkpoint(directory, "v1.2", "safetensors", sharded=True)
    was_enabled = hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.enable_progress_bar()
        load_pointllm(directory)
        assert "Loading original weights" in capsys.readouterr().err
        hf_logging.disable_progress_bar()
        load_pointllm(directory)
        assert "Loading original weights" not in capsys.readouterr().err
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()
