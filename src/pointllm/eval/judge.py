"""LLM judge over any OpenAI-compatible endpoint: open-vocabulary classification, close-set
classification and caption scoring of a results file.

Items are judged in parallel by a bounded thread pool; requests that fail with 408/409/429/5xx or
a connection error are retried with exponential backoff. Each judged item is appended to
`X_evaluated_{judge}.jsonl` the moment it comes back, so an interrupted run resumes where it
stopped; the summary `X_evaluated_{judge}.json` (the original's names: accuracy, clean_accuracy,
average_score, total_predictions, correct_predictions, invalid_responses, prompt_tokens,
completion_tokens, GPT_cost) is rebuilt from all judged items at the end of every run.

Definitions (percentages): accuracy = correct / total with invalid replies counted wrong;
clean_accuracy = correct / (total - invalid); average_score = sum of valid scores / total;
clean_average_score = sum / (total - invalid). The original's open-vocabulary `accuracy` and
caption `average_score` are our clean_* numbers; its close-set `accuracy` gave invalid replies a
random class instead.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pointllm.atomic import write_json
from pointllm.eval import prompts
from pointllm.eval.results import evaluated_path, load_results, object_key

# USD per 1K tokens (prompt, completion), as OpenAI listed them; unknown models cost 0.
PRICES_PER_1K: dict[str, tuple[float, float]] = {
    "gpt-3.5-turbo-0613": (0.0015, 0.002),
    "gpt-3.5-turbo-1106": (0.001, 0.002),
    "gpt-3.5-turbo-0125": (0.0005, 0.0015),
    "gpt-4-0613": (0.03, 0.06),
    "gpt-4-1106-preview": (0.01, 0.03),
    "gpt-4-turbo": (0.01, 0.03),
    "gpt-4o": (0.0025, 0.01),
    "gpt-4o-mini": (0.00015, 0.0006),
}
JUDGE_PROMPTS = {
    "objaverse-cls": prompts.OPEN_CLS_PROMPT,
    "modelnet-cls": prompts.CLOSE_SET_PROMPT,
    "objaverse-caption": prompts.CAPTION_PROMPT,
}
# Statuses worth retrying: timeouts, conflicts, rate limits, server errors (as the openai client).
_RETRY_STATUS = {408, 409, 429}
# The verdict: a number at the start of a line, then '#' or the end of the line.
_VERDICT = re.compile(r"^[\s`*\"'>]*(?:output\s*:\s*)?(-?\d+)[ \t]*(#.*)?$", re.I | re.M)


class JudgeError(ValueError):
    """Judge requests failed in a way no retry fixes (bad key, unknown model, ...): one line."""


@dataclass(frozen=True)
class JudgeSettings:
    """Where and how to ask the judge."""

    base_url: str
    model: str
    api_key: str = "EMPTY"
    workers: int = 8
    max_retries: int = 6
    backoff_s: float = 1.0
    timeout_s: float = 120.0
    temperature: float = 0.0
    max_tokens: int = 512

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


def render_prompt(task: str, result: Mapping, classes: Sequence[str] | None = None) -> str:
    """The judge prompt for one result entry."""
    if task == "modelnet-cls":
        class_list = "\n".join(f"{i}: {name}" for i, name in enumerate(classes or ()))
        return prompts.CLOSE_SET_PROMPT.format(
            num_classes=len(classes or ()),
            class_list=class_list,
            model_output=result["model_output"],
        )
    return JUDGE_PROMPTS[task].format(
        ground_truth=result["ground_truth"], model_output=result["model_output"]
    )


def parse_reply(task: str, reply: str | None, num_classes: int = 0) -> tuple[int | None, str]:
    """(verdict, reason) from a judge reply; verdict None when the reply is invalid.

    Verdicts: 0/1 (objaverse-cls), a class index or -1 for none (modelnet-cls), 0-100
    (objaverse-caption). The first line that starts with a number decides.
    """
    match = _VERDICT.search(reply or "")
    if match is None:
        return None, (reply or "").strip()
    value = int(match.group(1))
    reason = (match.group(2) or "#")[1:].strip()
    valid = {
        "objaverse-cls": value in (0, 1),
        "modelnet-cls": -1 <= value < num_classes,
        "objaverse-caption": 0 <= value <= 100,
    }[task]
    return (value, reason) if valid else (None, (reply or "").strip())


def _is_correct(task: str, verdict: int | None, ground_truth: Any) -> bool:
    if verdict is None or task == "objaverse-caption":
        return False
    return verdict == 1 if task == "objaverse-cls" else verdict == ground_truth


def _retry_delay(exc: Exception, attempt: int, backoff_s: float) -> float | None:
    """Seconds to wait before retrying after exc, or None when exc is not worth a retry."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status not in _RETRY_STATUS and status < 500:
            return None
        retry_after = exc.response.headers.get("retry-after", "")
        if retry_after.replace(".", "", 1).isdigit() and float(retry_after) <= 60:
            return max(float(retry_after), backoff_s * 2**attempt)
    elif not isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return None
    return backoff_s * 2**attempt * (1 + 0.25 * random.random())  # jitter spreads the workers


def _complete(client: Any, settings: JudgeSettings, prompt: str) -> Any:
    """One chat completion with retries; raises the last error when retries run out."""
    for attempt in range(settings.max_retries + 1):
        try:
            return client.chat.completions.create(
                model=settings.model,
                messages=[{"role": "user", "content": prompt}],
                temperature=settings.temperature,
                max_tokens=settings.max_tokens,
            )
        except Exception as exc:
            delay = _retry_delay(exc, attempt, settings.backoff_s)
            if delay is None or attempt == settings.max_retries:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


def judge_one(
    client: Any, settings: JudgeSettings, task: str, result: Mapping, classes: Sequence[str] | None
) -> dict:
    """Ask the judge about one result entry; the record saved for it."""
    response = _complete(client, settings, render_prompt(task, result, classes))
    reply = response.choices[0].message.content if response.choices else None
    verdict, reason = parse_reply(task, reply, len(classes or ()))
    usage = response.usage
    record = {
        "object_id": result["object_id"],
        "ground_truth": result["ground_truth"],
        "model_output": result["model_output"],
        "judge_verdict": verdict,
        "judge_reason": reason,
        "judge_reply": reply,
        "valid": verdict is not None,
        "correct": _is_correct(task, verdict, result["ground_truth"]),
        "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
        "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
    }
    if "label_name" in result:
        record["label_name"] = result["label_name"]
    return record


def load_judged(path: Path) -> dict[str, dict]:
    """Records of a judge JSONL file by object key. A torn last line (a killed run) is cut off
    so that appending continues on a fresh line."""
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(raw))
    records = {}
    for number, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a judge record ({exc})") from exc
        records[object_key(record["object_id"])] = record
    return records


def summarize(
    task: str, records: Sequence[dict], judge_model: str, prices: Mapping = PRICES_PER_1K
) -> dict:
    """The original's summary fields (floats, percentages) from judged records."""
    total = len(records)
    invalid = sum(not r["valid"] for r in records)
    valid = total - invalid
    prompt_tokens = sum(r["prompt_tokens"] for r in records)
    completion_tokens = sum(r["completion_tokens"] for r in records)
    price_prompt, price_completion = prices.get(judge_model, (0.0, 0.0))
    summary: dict[str, Any] = {"total_predictions": total}
    if task == "objaverse-caption":
        total_score = float(sum(r["judge_verdict"] for r in records if r["valid"]))
        summary |= {
            "average_score": total_score / total if total else 0.0,
            "clean_average_score": total_score / valid if valid else 0.0,
            "total_score": total_score,
        }
    else:
        correct = sum(r["correct"] for r in records)
        summary |= {
            "accuracy": 100.0 * correct / total if total else 0.0,
            "clean_accuracy": 100.0 * correct / valid if valid else 0.0,
            "correct_predictions": correct,
        }
    return summary | {
        "invalid_responses": invalid,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "GPT_cost": (prompt_tokens * price_prompt + completion_tokens * price_completion) / 1000,
    }


def run_judge(
    results_path: str | Path,
    task: str,
    settings: JudgeSettings,
    *,
    classes: Sequence[str] | None = None,
    client: Any = None,
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
) -> dict:
    """Judge every not-yet-judged entry of a results file; write and return the summary.

    The summary also says `judged` (items with a record) and `failed` (items whose requests
    still failed after the retries in this run; rerun to judge them). A refusal that no retry can
    fix (401, 404, ...) stops the run with a JudgeError after saving what was judged.
    """
    if task not in JUDGE_PROMPTS:
        raise ValueError(f"unknown judge task {task!r}; use one of {', '.join(JUDGE_PROMPTS)}")
    if task == "modelnet-cls" and not classes:
        raise ValueError("close-set judging needs the class list")
    data = load_results(results_path)
    jsonl = evaluated_path(results_path, settings.model, ".jsonl")
    answers = {object_key(e["object_id"]): e["model_output"] for e in data["results"]}
    # A record counts only if it judged the same answer (the results file may have been redone).
    judged = {
        key: record
        for key, record in load_judged(jsonl).items()
        if answers.get(key) == record["model_output"]
    }
    pending = [e for e in data["results"] if object_key(e["object_id"]) not in judged]
    if client is None:
        import openai

        client = openai.OpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key,
            max_retries=0,  # retried here, where it is visible and testable
            timeout=settings.timeout_s,
        )
    failures: list[BaseException] = []
    fatal: list[BaseException] = []
    bar = None
    if progress and pending:
        from tqdm import tqdm

        bar = tqdm(total=len(data["results"]), initial=len(judged), desc="judging", file=sys.stderr)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    try:
        with (
            open(jsonl, "a", encoding="utf-8") as out,
            ThreadPoolExecutor(settings.workers) as pool,
        ):
            queue = list(reversed(pending))
            running: set[Future] = set()
            # At most `workers` requests in flight, so a fatal error stops new ones at once.
            while queue or running:
                while queue and not fatal and len(running) < settings.workers:
                    running.add(
                        pool.submit(judge_one, client, settings, task, queue.pop(), classes)
                    )
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    exc = future.exception()
                    if exc is not None:
                        retryable = _retry_delay(exc, 0, 0.0) is not None
                        (failures if retryable else fatal).append(exc)
                        continue
                    record = future.result()
                    out.write(json.dumps(record) + "\n")  # saved as it comes in
                    out.flush()
                    judged[object_key(record["object_id"])] = record
                    if on_record is not None:
                        on_record(record)
                    if bar is not None:
                        bar.update()
    finally:
        if bar is not None:
            bar.close()
        order = {key: i for i, key in enumerate(answers)}
        records = sorted(judged.values(), key=lambda r: order[object_key(r["object_id"])])
        summary = {
            "inference_prompt": data["prompt"],
            "task": task,
            "judge_model": settings.model,
            "judge_prompt": JUDGE_PROMPTS[task],
            **summarize(task, records, settings.model),
            "judged": len(records),
            "failed": len(failures),
            "results": records,
        }
        write_json(evaluated_path(results_path, settings.model), summary)
    if fatal:
        raise JudgeError(f"judge requests to {settings.base_url} failed: {_one_line(fatal[0])}")
    return summary


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def api_key_from_env(name: str = "OPENAI_API_KEY") -> str:
    """The key from environment variable `name`; a dummy key for local servers without one."""
    return os.environ.get(name) or "EMPTY"
