"""Conversations -> ids and labels: exact supervision, inference prefixes, truncation, errors."""

from __future__ import annotations

import copy
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pointllm.config import POINT_END_TOKEN, POINT_PATCH_TOKEN, POINT_START_TOKEN
from pointllm.data.conversation import (
    IGNORE_INDEX,
    VICUNA_V1_1_SYSTEM,
    ConversationError,
    ConversationTooLong,
    insert_point_block,
    normalize_messages,
    point_block,
    render_segments,
    tokenize_conversation,
)

NUM_POINT_TOKENS = 4
BLOCK = point_block(NUM_POINT_TOKENS)
TEMPLATES = ("chat_template", "vicuna_v1_1")
# No "<" or ">": a reply must not spell a special token. Some non-ASCII to cross byte merges.
ALPHABET = string.ascii_letters + string.digits + " .,;:!?'\"()-\n" + "éüß漢字"
turn_text = st.text(ALPHABET, min_size=1, max_size=40).filter(lambda s: s.strip())


@pytest.fixture(scope="module")
def tokenizer(base_tokenizer):
    tok = copy.deepcopy(base_tokenizer)
    tok.add_tokens([POINT_PATCH_TOKEN, POINT_START_TOKEN, POINT_END_TOKEN], special_tokens=True)
    return tok


def make_conversation(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Original-format turns; the point placeholder opens the first question."""
    turns = []
    for i, (question, answer) in enumerate(pairs):
        turns.append({"from": "human", "value": f"<point>\n{question}" if i == 0 else question})
        turns.append({"from": "gpt", "value": answer})
    return turns


def supervised_spans(ids: list[int], labels: list[int]) -> list[list[int]]:
    """Maximal runs of supervised positions, as lists of ids."""
    spans, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(token)
    return spans + ([current] if current else [])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pairs=st.lists(st.tuples(turn_text, turn_text), min_size=1, max_size=3),
    template=st.sampled_from(TEMPLATES),
    cut=st.floats(0.0, 1.2),
)
def test_labels_supervise_exactly_the_replies(tokenizer, pairs, template, cut):
    messages = insert_point_block(normalize_messages(make_conversation(pairs)), BLOCK)
    result = tokenize_conversation(messages, tokenizer, template, protected_prefix_text=BLOCK)
    ids, labels = result.input_ids, result.labels

    assert len(ids) == len(labels)
    assert all(label in (token, IGNORE_INDEX) for token, label in zip(ids, labels, strict=True))
    spans = supervised_spans(ids, labels)
    # vicuna_v1_1 supervises the space after "ASSISTANT:" with the reply (byte-level BPE puts it
    # in the reply's first token), as the original's labels do.
    lead = " " if template == "vicuna_v1_1" else ""
    expected = [lead + answer + tokenizer.eos_token for _, answer in pairs]
    assert [tokenizer.decode(span) for span in spans] == expected
    assert ids.count(tokenizer.convert_tokens_to_ids(POINT_PATCH_TOKEN)) == NUM_POINT_TOKENS

    if template == "chat_template":
        # Parity with a naive reference: each segment tokenized on its own, then concatenated.
        naive = []
        for text, _ in result.segments:
            naive += tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == naive
    else:
        # The original format is tokenized as one string, as at inference.
        text = "".join(t for t, _ in result.segments)
        assert ids == tokenizer(text, add_special_tokens=True)["input_ids"]

    # Up to each assistant cue the ids are the inference prompt for that history, token for token.
    for k in range(len(pairs)):
        prompt = tokenize_conversation(
            messages[: 2 * k + 1], tokenizer, template, add_generation_prompt=True
        ).input_ids
        assert ids[: len(prompt)] == prompt
        assert labels[len(prompt) - 1] == IGNORE_INDEX != labels[len(prompt)]

    # Truncation keeps the point block whole and some reply, or refuses the sample.
    max_length = max(1, int(len(ids) * cut))
    first_reply = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert ids.index(tokenizer.convert_tokens_to_ids(POINT_END_TOKEN)) < first_reply
    kwargs = dict(max_length=max_length, protected_prefix_text=BLOCK)
    if max_length <= first_reply:
        with pytest.raises(ConversationTooLong):
            tokenize_conversation(messages, tokenizer, template, **kwargs)
    else:
        short = tokenize_conversation(messages, tokenizer, template, **kwargs)
        assert short.input_ids == ids[:max_length] and short.labels == labels[:max_length]
        assert short.truncated == (max_length < len(ids))


def test_vicuna_prompt_is_the_original_string(tokenizer):
    messages = insert_point_block(
        normalize_messages([{"from": "human", "value": "<point>\nWhat is this?"}]), BLOCK
    )
    segments = render_segments(messages, tokenizer, "vicuna_v1_1", add_generation_prompt=True)
    text = "".join(t for t, _ in segments)
    expected = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. "
        f"USER: {BLOCK}\nWhat is this? ASSISTANT:"
    )
    assert VICUNA_V1_1_SYSTEM + " " + f"USER: {BLOCK}\nWhat is this? ASSISTANT:" == expected
    assert text == expected
    ids = tokenize_conversation(
        messages, tokenizer, "vicuna_v1_1", add_generation_prompt=True
    ).input_ids
    assert ids == tokenizer(expected)["input_ids"]


def test_vicuna_training_text_uses_the_original_separators(tokenizer):
    turns = make_conversation([("Q1?", "A1."), ("Q2?", "A2.")])
    messages = insert_point_block(normalize_messages(turns), "<pts>")
    text = "".join(t for t, _ in render_segments(messages, tokenizer, "vicuna_v1_1"))
    eos = tokenizer.eos_token
    assert text == (
        f"{VICUNA_V1_1_SYSTEM} USER: <pts>\nQ1? ASSISTANT: A1.{eos}USER: Q2? ASSISTANT: A2.{eos}"
    )


def test_point_block_is_never_cut(tokenizer):
    turns = make_conversation([("Describe it. " * 5, "A long answer. " * 20)])
    messages = insert_point_block(normalize_messages(turns), BLOCK)
    full = tokenize_conversation(messages, tokenizer, "chat_template", protected_prefix_text=BLOCK)
    prompt_len = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    block_end = full.input_ids.index(tokenizer.convert_tokens_to_ids(POINT_END_TOKEN)) + 1

    kept = tokenize_conversation(
        messages,
        tokenizer,
        "chat_template",
        max_length=prompt_len + 3,
        protected_prefix_text=BLOCK,
    )
    assert kept.truncated and kept.num_supervised == 3
    assert kept.input_ids == full.input_ids[: prompt_len + 3]
    with pytest.raises(ConversationTooLong, match="point block"):
        tokenize_conversation(
            messages,
            tokenizer,
            "chat_template",
            max_length=block_end - 1,
            protected_prefix_text=BLOCK,
        )
    with pytest.raises(ConversationTooLong, match="no reply token"):
        tokenize_conversation(
            messages, tokenizer, "chat_template", max_length=prompt_len, protected_prefix_text=BLOCK
        )


def test_reply_found_when_the_template_rewrites_it(tokenizer):
    """A template that strips content still supervises reply + end-of-turn only."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    messages = normalize_messages(
        [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "  Hello there.  "}]
    )
    result = tokenize_conversation(messages, tok, "chat_template")
    spans = supervised_spans(result.input_ids, result.labels)
    assert [tok.decode(span) for span in spans] == ["Hello there.<|im_end|>"]


@pytest.mark.parametrize(
    ("turns", "block", "message"),
    [
        ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], None, "alternate"),
        ([{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}], None, "alternate"),
        ([{"from": "human", "value": "<point>"}, {"from": "gpt", "value": " \n"}], BLOCK, "empty"),
        ([{"from": "robot", "value": "a"}, {"from": "gpt", "value": "b"}], None, "unknown role"),
        ([{"from": "human", "value": "no point"}, {"from": "gpt", "value": "b"}], BLOCK, "found 0"),
        (
            [{"from": "human", "value": "<point><point>"}, {"from": "gpt", "value": "b"}],
            BLOCK,
            "found 2",
        ),
        (
            make_conversation([("q", "a")]) + [{"from": "human", "value": "<point>"}],
            BLOCK,
            "found 2",
        ),
        ([{"from": "human", "value": "<point> x"}, {"from": "gpt", "value": "b"}], None, "without"),
        ([], None, "no turns"),
        (["not a turn"], None, "not an object"),
    ],
)
def test_bad_conversations_raise(turns, block, message):
    with pytest.raises(ConversationError, match=message):
        insert_point_block(normalize_messages(turns), block)


@pytest.mark.parametrize("template", TEMPLATES)
def test_training_conversation_must_end_with_a_reply(tokenizer, template):
    messages = normalize_messages([{"from": "human", "value": "Hi"}])
    with pytest.raises(ConversationError, match="must end with an assistant turn"):
        tokenize_conversation(messages, tokenizer, template)
