"""Our LLM-judge prompts (written for this project; see docs/evaluation.md).

Every prompt asks for one line that starts with a number and a `#`: a 0/1 verdict (open-vocabulary
classification), a class index or -1 (close-set classification), or a 0-100 score (captioning),
followed by a short reason. `judge.parse_reply` reads that number; anything else is an invalid
response, counted and never fatal. Fields are filled with `str.format`.
"""

from __future__ import annotations

OPEN_CLS_PROMPT = """\
You are grading the answer of a 3D object recognition model.

Reference description of the object: {ground_truth}
Model answer: {model_output}

Do the reference and the model answer name the same kind of object? Judge the object category \
only; ignore color, size, material, style and level of detail. A broader or narrower name for the \
same thing counts as the same kind (for example "sedan" and "car"); a different object does not, \
even if it looks alike.

Reply with one line: `1#reason` if they name the same kind of object, `0#reason` if not. Keep the \
reason under 20 words."""

CLOSE_SET_PROMPT = """\
You are mapping the answer of a 3D object recognition model onto a fixed list of {num_classes} \
categories.

Categories:
{class_list}

Model answer: {model_output}

Which category does the answer name or describe? If the answer is vague but points to one \
category more than the others, choose that category. If it names none of them and none can be \
inferred, use -1.

Reply with one line: `index#category#reason`, or `-1#none#reason`. Keep the reason under 10 \
words."""

CAPTION_PROMPT = """\
You are scoring a caption written by a 3D captioning model against a caption written by a person \
for the same 3D object.

Reference caption: {ground_truth}
Model caption: {model_output}

Note the facts the reference states (object type, parts, colors, materials, shape, purpose). \
Score the model caption from 0 to 100 by the share of those facts it gets right; a fact given \
partly or with a close synonym earns part of its share. Details the reference does not mention \
neither add to nor subtract from the score.

Reply with one line: `score#reason`, with an integer score from 0 to 100 and a reason under 15 \
words."""
