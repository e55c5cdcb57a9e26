"""Conversations -> token ids and labels, for training and for inference alike.

Two prompt formats:
- `vicuna_v1_1`, the original PointLLM template (for original checkpoints):
  `{system} USER: {q} ASSISTANT: {a}</s>USER: ...`
- `chat_template`, the backbone tokenizer's own chat template (SmolLM2, Qwen, Llama 3, ...).

A conversation is rendered into text segments, each marked supervised or not. With a chat
template every segment is tokenized on its own; in the original format the whole conversation is
tokenized as one string, as the original code does, and the labels come from tokenizing its
prefixes up to each assistant cue and through each reply's end token. Either way the supervised
tokens are those of the assistant replies plus their end-of-turn token, and the ids before each
reply are the very ids of the inference prompt for that history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pointllm.config import (
    IGNORE_INDEX,
    POINT_END_TOKEN,
    POINT_PATCH_TOKEN,
    POINT_PLACEHOLDER,
    POINT_START_TOKEN,
    TEMPLATES,
)

VICUNA_V1_1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_ROLE_OF = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class ConversationError(ValueError):
    """A conversation that cannot be used (bad roles, empty turns, wrong <point> count, too long)."""


class ConversationTooLong(ConversationError):
    """A conversation that does not fit `max_length` even after truncation."""


@dataclass
class TokenizedConversation:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    segments: list[tuple[str, bool]] = field(default_factory=list, repr=False)

    @property
    def num_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def point_block(num_tokens: int, use_start_end: bool = True) -> str:
    """The text that stands for one point cloud: start + num_tokens patches + end."""
    patches = POINT_PATCH_TOKEN * num_tokens
    return f"{POINT_START_TOKEN}{patches}{POINT_END_TOKEN}" if use_start_end else patches


def normalize_messages(conversation: Sequence[dict]) -> list[dict[str, str]]:
    """Accept original (`from`/`value`, human/gpt) or chat (`role`/`content`) turns; return chat
    messages `{"role": "user"|"assistant", "content"}` after checking that roles alternate starting
    with the user and that no turn is empty. A leading system message is kept."""
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(conversation):
        if not isinstance(turn, dict):
            raise ConversationError(f"turn {i} is not an object")
        raw_role = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        if raw_role == "system" and i == 0:
            messages.append({"role": "system", "content": str(content or "")})
            continue
        role = _ROLE_OF.get(str(raw_role).lower()) if raw_role is not None else None
        if role is None:
            raise ConversationError(f"turn {i} has unknown role {raw_role!r}")
        if not isinstance(content, str) or not content.strip():
            raise ConversationError(f"turn {i} ({role}) is empty")
        messages.append({"role": role, "content": content})
    dialogue = [m for m in messages if m["role"] != "system"]
    if not dialogue:
        raise ConversationError("conversation has no turns")
    for i, message in enumerate(dialogue):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ConversationError(
                f"roles do not alternate: turn {i} is {message['role']}, expected {expected}"
            )
    return messages


def insert_point_block(messages: list[dict[str, str]], block: str | None) -> list[dict[str, str]]:
    """Replace the single `<point>` placeholder (first user turn) with `block`.

    With `block=None` (a text-only sample) the conversation must contain no placeholder.
    """
    count = sum(m["content"].count(POINT_PLACEHOLDER) for m in messages)
    if block is None:
        if count:
            raise ConversationError(
                f"{POINT_PLACEHOLDER} appears {count} times in a sample without a point cloud"
            )
        return messages
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    if count != 1 or POINT_PLACEHOLDER not in messages[first_user]["content"]:
        raise ConversationError(
            f"{POINT_PLACEHOLDER} must appear exactly once, in the first user turn (found {count})"
        )
    out = [dict(m) for m in messages]
    out[first_user]["content"] = out[first_user]["content"].replace(POINT_PLACEHOLDER, block)
    return out


def user_content_with_points(question: str, block: str | None) -> str:
    """The first user message at inference: the point block, a newline, then the question."""
    return question if block is None else f"{block}\n{question}"


def with_system_prompt(
    messages: list[dict[str, str]], system_prompt: str | None
) -> list[dict[str, str]]:
    """`messages` led by a system message: their own if they have one, else `system_prompt`
    (None: unchanged, so the template applies its default)."""
    if system_prompt is None or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


# ---- rendering -------------------------------------------------------------------------------


def render_segments(
    messages: list[dict[str, str]],
    tokenizer,
    template: str,
    *,
    add_generation_prompt: bool = False,
    system_prompt: str | None = None,
) -> list[tuple[str, bool]]:
    """Text segments of the conversation, each with a flag: True for supervised (assistant) text.

    system_prompt: the system message of a conversation that has none (None: the template's own
    default, e.g. SmolLM2's "You are a helpful AI assistant named SmolLM, ...")."""
    messages = with_system_prompt(messages, system_prompt)
    if template == "vicuna_v1_1":
        return _render_vicuna(messages, tokenizer, add_generation_prompt)
    if template == "chat_template":
        return _render_chat_template(messages, tokenizer, add_generation_prompt)
    raise ValueError(f"unknown template {template!r}; known: {TEMPLATES}")


def _render_vicuna(messages, tokenizer, add_generation_prompt) -> list[tuple[str, bool]]:
    system = VICUNA_V1_1_SYSTEM
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    eos = tokenizer.eos_token or "</s>"
    segments: list[tuple[str, bool]] = [(system + " ", False)]
    for message in messages:
        if message["role"] == "user":
            segments.append((f"USER: {message['content']} ASSISTANT:", False))
        else:
            # The space after "ASSISTANT:" belongs to the prompt; the reply and </s> are learned.
            segments.append((" ", False))
            segments.append((message["content"] + eos, True))
    if not add_generation_prompt and messages and messages[-1]["role"] == "user":
        raise ConversationError("a training conversation must end with an assistant turn")
    return segments


def _chat_text(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _render_chat_template(messages, tokenizer, add_generation_prompt) -> list[tuple[str, bool]]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; use template 'vicuna_v1_1'")
    eos = tokenizer.eos_token
    segments: list[tuple[str, bool]] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        # Everything up to the assistant header is prompt; the reply is what the template adds
        # when the assistant message is appended.
        prompt = _chat_text(tokenizer, messages[:i], add_generation_prompt=True)
        full = _chat_text(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(rendered) or not full.startswith(prompt):
            raise ValueError(
                "the tokenizer's chat template is not prefix-stable; use template 'vicuna_v1_1'"
            )
        segments.append((prompt[len(rendered) :], False))
        reply = full[len(prompt) :]
        # Supervise the reply up to and including its end-of-turn token; trailing template
        # whitespace after it is prompt for the next turn.
        # (A template that rewrites the content, e.g. strips it, is searched from the start.)
        content_at = reply.find(message["content"])
        after_content = content_at + len(message["content"]) if content_at >= 0 else 0
        end = reply.find(eos, after_content) if eos else -1
        if end >= 0:
            cut = end + len(eos)
            segments.append((reply[:cut], True))
            if reply[cut:]:
                segments.append((reply[cut:], False))
        else:
            segments.append((reply, True))
        rendered = full
    if messages[-1]["role"] != "assistant":
        if not add_generation_prompt:
            raise ConversationError("a training conversation must end with an assistant turn")
        prompt = _chat_text(tokenizer, messages, add_generation_prompt=True)
        if not prompt.startswith(rendered):
            raise ValueError(
                "the tokenizer's chat template is not prefix-stable; use template 'vicuna_v1_1'"
            )
        segments.append((prompt[len(rendered) :], False))
    return [(text, supervised) for text, supervised in segments if text]


# ---- tokenizing ------------------------------------------------------------------------------


def tokenize_conversation(
    messages: list[dict[str, str]],
    tokenizer,
    template: str,
    *,
    add_generation_prompt: bool = False,
    max_length: int | None = None,
    protected_prefix_text: str | None = None,
    system_prompt: str | None = None,
) -> TokenizedConversation:
    """Token ids and labels (IGNORE_INDEX on prompt tokens) of an already point-expanded
    conversation.

    Longer than `max_length`: cut at the end, but never inside the segment that contains
    `protected_prefix_text` (the point block) or before it; if that is impossible, or if nothing
    supervised would remain in a training sample, raise ConversationError.
    """
    segments = render_segments(
        messages,
        tokenizer,
        template,
        add_generation_prompt=add_generation_prompt,
        system_prompt=system_prompt,
    )
    if template == "vicuna_v1_1":
        # The original format is tokenized as whole strings, exactly as the original code does,
        # so original checkpoints see the ids they were trained on.
        if add_generation_prompt:
            text = "".join(t for t, _ in segments)
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
            if max_length is not None and len(ids) > max_length:
                raise ConversationTooLong(
                    f"too long: the prompt has {len(ids)} tokens > max length {max_length}"
                )
            return TokenizedConversation(ids, [IGNORE_INDEX] * len(ids), False, segments)
        input_ids, labels, protected_end = _tokenize_whole(
            segments, tokenizer, protected_prefix_text
        )
        return _truncate(input_ids, labels, segments, max_length, protected_end, True)
    input_ids: list[int] = []
    labels: list[int] = []
    protected_end = 0
    # One batched call: a tokenizer call costs far more than the few tokens of each segment.
    encoded = tokenizer([text for text, _ in segments], add_special_tokens=False)["input_ids"]
    for (text, supervised), ids in zip(segments, encoded, strict=True):
        input_ids.extend(ids)
        labels.extend(ids if supervised else [IGNORE_INDEX] * len(ids))
        if protected_prefix_text and protected_prefix_text in text:
            protected_end = len(input_ids)
    return _truncate(
        input_ids, labels, segments, max_length, protected_end, not add_generation_prompt
    )


def _tokenize_whole(
    segments: list[tuple[str, bool]], tokenizer, protected_prefix_text: str | None
) -> tuple[list[int], list[int], int]:
    """(ids, labels, end of the protected prompt) of a training conversation tokenized as one
    string, labels from prefix tokenizations.

    The ids before reply k are the tokenization of the text up to its assistant cue (the
    inference prompt for that history, without the space after the cue), and the supervised ids
    run from there to the tokenization of the text through the reply's end token. Both must be
    prefixes of the whole string's ids; a tokenizer that merges across them raises
    ConversationError. For transformers 4.28's LLaMA tokenizer these labels are those of the
    original preprocess_v1: its `- 2` drops `<s>` and the lone "▁" that ends "ASSISTANT: ".
    """
    text = "".join(t for t, _ in segments)
    bounds: list[tuple[int, int]] = []  # (cue end, reply end) in characters, per reply
    at = 0
    for part, supervised in segments:
        if supervised:
            bounds.append((len(text[:at].rstrip()), at + len(part)))
        at += len(part)
    prefixes = [text[:end] for bound in bounds for end in bound]
    # One batched call: a tokenizer call costs far more than the few tokens of each string.
    encoded = tokenizer([text, *prefixes], add_special_tokens=True)["input_ids"]
    input_ids = list(encoded[0])
    labels = [IGNORE_INDEX] * len(input_ids)
    protected_end = 0
    for k, (cue, through) in enumerate(zip(encoded[1::2], encoded[2::2], strict=True)):
        if input_ids[: len(cue)] != cue or input_ids[: len(through)] != through:
            raise ConversationError(
                f"reply {k}: the tokenizer merges tokens across the assistant cue or the end "
                "token, so its prompt ids differ from those of inference"
            )
        labels[len(cue) : len(through)] = input_ids[len(cue) : len(through)]
        if protected_prefix_text and not protected_end and protected_prefix_text in prefixes[2 * k]:
            protected_end = len(cue)
    return input_ids, labels, protected_end


def _truncate(
    input_ids: list[int],
    labels: list[int],
    segments: list[tuple[str, bool]],
    max_length: int | None,
    protected_end: int,
    require_reply: bool,
) -> TokenizedConversation:
    """Cut a sample to `max_length`, never before `protected_end`; ConversationTooLong when that
    is impossible or, with `require_reply`, when no supervised token would remain."""
    truncated = False
    if max_length is not None and len(input_ids) > max_length:
        if protected_end > max_length:
            raise ConversationTooLong(
                f"too long: the point block alone ends at token {protected_end} > max length {max_length}"
            )
        input_ids, labels, truncated = input_ids[:max_length], labels[:max_length], True
    result = TokenizedConversation(input_ids, labels, truncated, segments)
    if require_reply and result.num_supervised == 0:
        raise ConversationTooLong(
            f"too long: no reply token is left within max length {max_length}"
        )
    return result
