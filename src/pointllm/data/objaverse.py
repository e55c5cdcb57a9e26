"""Objaverse benchmark of PointLLM: ground-truth captions and the benchmark prompts.

`PointLLM_brief_description_val_200_GT.json` has the annotation format of training: a list of
`{"object_id", "conversation_type", "conversations": [{"from": "human", "value": "<point>\\n..."},
{"from": "gpt", "value": caption}]}`. The original takes the first reply as the ground truth.
"""

from __future__ import annotations

import os

# Prompts by index, as in the original evaluation: 0 and 1 for classification (ModelNet40 and
# Objaverse), 2 for captioning.
BENCHMARK_PROMPTS: tuple[str, ...] = (
    "What is this?",
    "This is an object of ",
    "Caption this 3D model in detail.",
)


def benchmark_prompt(index: int) -> str:
    """The benchmark prompt with this index (0, 1 or 2)."""
    if not 0 <= index < len(BENCHMARK_PROMPTS):
        raise ValueError(
            f"prompt index must be in 0..{len(BENCHMARK_PROMPTS) - 1}, got {index}: "
            + "; ".join(f"{i}: {p!r}" for i, p in enumerate(BENCHMARK_PROMPTS))
        )
    return BENCHMARK_PROMPTS[index]


def load_objaverse_gt(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(object_id, caption) pairs in file order; the caption is the first gpt reply.

    Raises ValueError naming the file and sample for a malformed file or a repeated object_id.
    """
    from pointllm.data.dataset import read_annotations

    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for index, record in enumerate(read_annotations(path)):
        where = f"{path}: sample {index}"
        if not isinstance(record, dict):
            raise ValueError(f"{where} is a {type(record).__name__}, not an object")
        object_id = record.get("object_id")
        if not isinstance(object_id, str) or not object_id.strip():
            raise ValueError(f"{where} has no object_id")
        if object_id in seen:
            raise ValueError(f"{where} repeats object_id {object_id!r}")
        caption = _first_reply(record.get("conversations"))
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{where} ({object_id}) has no gpt reply to use as the caption")
        seen.add(object_id)
        pairs.append((object_id, caption))
    return pairs


def _first_reply(turns) -> str | None:
    """The value of the first gpt (or assistant) turn, if any."""
    if not isinstance(turns, list):
        return None
    for turn in turns:
        if isinstance(turn, dict) and turn.get("from", turn.get("role")) in ("gpt", "assistant"):
            return turn.get("value", turn.get("content"))
    return None
