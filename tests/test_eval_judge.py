"""The LLM judge against a scripted OpenAI-compatible HTTP server on 127.0.0.1 (and, when it
exists, the real `pointllm serve` with a tiny model)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pointllm.eval.judge import (
    JudgeSettings,
    load_judged,
    parse_reply,
    render_prompt,
    run_judge,
)
from pointllm.eval.results import evaluated_path

SYNTH_CLASSES = ["mug", "table", "chair", "lamp", "bottle"]


class FakeJudge(ThreadingHTTPServer):
    """POST /{mode}/v1/chat/completions. The reply is the `REPLY=...` token of the prompt
    ('_' for spaces), or prose without a verdict. Modes: echo; garbage; flaky429 / flaky500
    (each prompt fails once first); down500 (always 500); auth (always 401); slow (echo after
    50 ms, to observe concurrency)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # by mode
        self.prompts: list[str] = []
        self.seen: Counter = Counter()  # by (mode, prompt)
        self.in_flight = 0
        self.max_in_flight = 0

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{mode}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: FakeJudge

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        mode = self.path.strip("/").split("/")[0]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        server = self.server
        with server.lock:
            server.requests[mode] += 1
            server.seen[mode, prompt] += 1
            server.prompts.append(prompt)
            attempt = server.seen[mode, prompt]
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            if mode == "slow":
                time.sleep(0.05)
            if mode == "auth":
                return self._send(401, {"error": {"message": "bad key", "type": "auth"}})
            if mode == "down500" or (mode == "flaky500" and attempt == 1):
                return self._send(500, {"error": {"message": "boom", "type": "server"}})
            if mode == "flaky429" and attempt == 1:
                return self._send(429, {"error": {"message": "slow down", "type": "rate"}})
            found = re.search(r"REPLY=(\S+)", prompt)
            reply = (
                "It is hard to say."
                if mode == "garbage" or not found
                else found[1].replace("_", " ")
            )
            self._send(
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105},
                },
            )
        finally:
            with server.lock:
                server.in_flight -= 1


@pytest.fixture(scope="module")
def fake_judge():
    server = FakeJudge()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def write_results(path: Path, prompt: str, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"prompt": prompt, "results": entries}))
    return path


def open_results(tmp_path: Path) -> Path:
    replies = ["1#both_mugs", "1#same", "0#different", "nonsense", "1#ok", "0#no"]
    entries = [
        {"object_id": f"obj{i}", "ground_truth": f"caption {i}", "model_output": f"REPLY={r}"}
        for i, r in enumerate(replies)
    ]
    return write_results(tmp_path / "cls.json", "What is this?", entries)


def settings(server: FakeJudge, mode: str, **kw) -> JudgeSettings:
    return JudgeSettings(server.url(mode), kw.pop("model", "fake-judge"), backoff_s=0.01, **kw)


def test_parse_reply_reads_the_leading_number_and_rejects_the_rest():
    assert parse_reply("objaverse-cls", "1#both are chairs") == (1, "both are chairs")
    assert parse_reply("objaverse-cls", "Output: 0#no") == (0, "no")
    assert parse_reply("objaverse-cls", "```\n1#yes\n```") == (1, "yes")
    assert parse_reply("objaverse-cls", "T#same")[0] is None
    assert parse_reply("objaverse-cls", "2#two")[0] is None
    assert parse_reply("objaverse-cls", None) == (None, "")
    assert parse_reply("modelnet-cls", "3#lamp#a lamp", num_classes=5) == (3, "lamp#a lamp")
    assert parse_reply("modelnet-cls", "-1#none#nothing", num_classes=5)[0] == -1
    assert parse_reply("modelnet-cls", "5#?#out of range", num_classes=5)[0] is None
    assert parse_reply("objaverse-caption", "85#mentions the color") == (85, "mentions the color")
    assert parse_reply("objaverse-caption", "101#too much")[0] is None
    assert parse_reply("objaverse-caption", "Score: 85")[0] is None


def test_render_prompt_fills_fields_and_lists_classes():
    entry = {"object_id": 1, "ground_truth": 2, "model_output": "a {braced} lamp"}
    prompt = render_prompt("modelnet-cls", entry, SYNTH_CLASSES)
    assert "0: mug\n1: table\n2: chair\n3: lamp\n4: bottle" in prompt
    assert "5 categories" in prompt and "a {braced} lamp" in prompt
    caption = render_prompt(
        "objaverse-caption", {"ground_truth": "a red mug", "model_output": "cup"}
    )
    assert "Reference caption: a red mug" in caption and "Model caption: cup" in caption


def test_open_vocabulary_summary_and_files(tmp_path, fake_judge):
    results = open_results(tmp_path)
    summary = run_judge(results, "objaverse-cls", settings(fake_judge, "echo"), progress=False)
    assert summary["total_predictions"] == 6
    assert summary["correct_predictions"] == 3
    assert summary["invalid_responses"] == 1
    assert summary["accuracy"] == pytest.approx(50.0)
    assert summary["clean_accuracy"] == pytest.approx(60.0)
    assert (summary["prompt_tokens"], summary["completion_tokens"]) == (600, 30)
    assert summary["GPT_cost"] == 0.0  # unknown judge model
    assert summary["failed"] == 0
    saved = json.loads(evaluated_path(results, "fake-judge").read_text())
    assert [r["object_id"] for r in saved["results"]] == [f"obj{i}" for i in range(6)]
    assert [r["judge_verdict"] for r in saved["results"]] == [1, 1, 0, None, 1, 0]
    assert saved["results"][3]["judge_reply"] == "nonsense"
    assert saved["inference_prompt"] == "What is this?"
    lines = evaluated_path(results, "fake-judge", ".jsonl").read_text().splitlines()
    assert len(lines) == 6


def test_close_set_and_caption_scores(tmp_path, fake_judge):
    close = write_results(
        tmp_path / "mn.json",
        "What is this?",
        [
            {
                "object_id": 0,
                "ground_truth": 3,
                "model_output": "REPLY=3#lamp#x",
                "label_name": "lamp",
            },
            {
                "object_id": 1,
                "ground_truth": 0,
                "model_output": "REPLY=2#chair#x",
                "label_name": "mug",
            },
            {
                "object_id": 2,
                "ground_truth": 4,
                "model_output": "REPLY=-1#none#x",
                "label_name": "bottle",
            },
            {
                "object_id": 3,
                "ground_truth": 4,
                "model_output": "REPLY=9#bad#x",
                "label_name": "bottle",
            },
        ],
    )
    summary = run_judge(
        close, "modelnet-cls", settings(fake_judge, "echo"), classes=SYNTH_CLASSES, progress=False
    )
    assert (summary["correct_predictions"], summary["invalid_responses"]) == (1, 1)
    assert summary["accuracy"] == pytest.approx(25.0)
    assert summary["clean_accuracy"] == pytest.approx(100 / 3)

    caption = write_results(
        tmp_path / "cap.json",
        "Caption this 3D model in detail.",
        [
            {"object_id": "a", "ground_truth": "x", "model_output": "REPLY=80#good"},
            {"object_id": "b", "ground_truth": "y", "model_output": "REPLY=40#half"},
            {"object_id": "c", "ground_truth": "z", "model_output": "REPLY=101#over"},
        ],
    )
    summary = run_judge(
        caption,
        "objaverse-caption",
        settings(fake_judge, "echo", model="gpt-4o-mini"),
        progress=False,
    )
    assert summary["average_score"] == pytest.approx(40.0)
    assert summary["clean_average_score"] == pytest.approx(60.0)
    assert summary["invalid_responses"] == 1
    assert summary["GPT_cost"] == pytest.approx((300 * 0.00015 + 15 * 0.0006) / 1000)


def test_cli_infers_close_set_task_and_class_list(tmp_path, fake_judge, capsys):
    from pointllm.cli import main

    results = write_results(
        tmp_path / "synth_cls.json",
        "This is an object of ",
        [
            {
                "object_id": "s1",
                "ground_truth": 2,
                "model_output": "REPLY=2#chair#x",
                "label_name": "chair",
            }
        ],
    )
    args = ["eval", "judge", "--results", str(results), "--base-url", fake_judge.url("echo")]
    assert main([*args, "--judge-model", "fake-judge"]) == 0
    assert "modelnet-cls: accuracy 100.00% (clean 100.00%); 1 judged" in capsys.readouterr().out
    assert (
        "16 categories" in fake_judge.prompts[-1]
        and "\n5: traffic cone\n" in fake_judge.prompts[-1]
    )


def test_garbage_judge_counts_invalid_and_never_crashes(tmp_path, fake_judge):
    summary = run_judge(
        open_results(tmp_path), "objaverse-cls", settings(fake_judge, "garbage"), progress=False
    )
    assert summary["invalid_responses"] == summary["total_predictions"] == 6
    assert summary["accuracy"] == summary["clean_accuracy"] == 0.0


@pytest.mark.parametrize("mode", ["flaky429", "flaky500"])
def test_retries_transient_errors_then_succeeds(tmp_path, fake_judge, mode):
    before = fake_judge.requests[mode]
    summary = run_judge(
        open_results(tmp_path), "objaverse-cls", settings(fake_judge, mode), progress=False
    )
    assert summary["failed"] == 0 and summary["total_predictions"] == 6
    assert summary["correct_predictions"] == 3
    assert fake_judge.requests[mode] - before == 12  # each item: one failure, one success


def test_gives_up_after_retries_and_cli_says_rerun(tmp_path, fake_judge, capsys):
    from pointllm.cli import main

    results = open_results(tmp_path)
    status = main(
        ["eval", "judge", "--results", str(results), "--task", "objaverse-cls"]
        + ["--base-url", fake_judge.url("down500"), "--judge-model", "fake-judge"]
        + ["--max-retries", "1", "--backoff", "0.01", "--workers", "2"]
    )
    assert status == 1
    assert "6 items failed after 1 retries; rerun" in capsys.readouterr().err
    summary = json.loads(evaluated_path(results, "fake-judge").read_text())
    assert (summary["failed"], summary["judged"]) == (6, 0)


def test_refusal_stops_with_one_line_error(tmp_path, fake_judge, capsys):
    from pointllm.cli import main

    results = open_results(tmp_path)
    status = main(
        ["eval", "judge", "--results", str(results), "--task", "objaverse-cls"]
        + ["--base-url", fake_judge.url("auth"), "--judge-model", "fake-judge", "--workers", "2"]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert re.search(r"error: judge requests to .*/auth/v1 failed: .*401", err)
    assert (
        "Traceback" not in err and len([line for line in err.splitlines() if "error" in line]) == 1
    )
    assert fake_judge.requests["auth"] <= 2  # stopped instead of trying every item


def test_parallel_requests_stay_within_the_bound(tmp_path, fake_judge):
    entries = [
        {"object_id": i, "ground_truth": "g", "model_output": f"REPLY=1#ok{i}"} for i in range(9)
    ]
    results = write_results(tmp_path / "many.json", "What is this?", entries)
    fake_judge.max_in_flight = 0
    summary = run_judge(
        results, "objaverse-cls", settings(fake_judge, "slow", workers=3), progress=False
    )
    assert summary["correct_predictions"] == 9
    assert 1 < fake_judge.max_in_flight <= 3


def test_interrupted_judge_resumes_without_duplicates(tmp_path, fake_judge):
    results = open_results(tmp_path)
    seen = []

    def interrupt_after_two(record: dict) -> None:
        seen.append(record["object_id"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_judge(
            results,
            "objaverse-cls",
            settings(fake_judge, "echo", workers=1),
            progress=False,
            on_record=interrupt_after_two,
        )
    jsonl = evaluated_path(results, "fake-judge", ".jsonl")
    assert len(jsonl.read_text().splitlines()) == 2
    with open(jsonl, "a") as f:  # a torn line, as a kill mid-write leaves
        f.write('{"object_id": "obj')
    before = fake_judge.requests["echo"]
    resumed = run_judge(results, "objaverse-cls", settings(fake_judge, "echo"), progress=False)
    assert fake_judge.requests["echo"] - before == 4
    assert sorted(load_judged(jsonl)) == sorted(json.dumps(f"obj{i}") for i in range(6))

    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    fresh = run_judge(
        open_results(fresh_dir), "objaverse-cls", settings(fake_judge, "echo"), progress=False
    )
    assert {k: v for k, v in resumed.items()} == fresh


def test_changed_answers_are_judged_again(tmp_path, fake_judge):
    results = open_results(tmp_path)
    run_judge(results, "objaverse-cls", settings(fake_judge, "echo"), progress=False)
    data = json.loads(results.read_text())
    data["results"][0]["model_output"] = "REPLY=0#now_different"
    results.write_text(json.dumps(data))
    summary = run_judge(results, "objaverse-cls", settings(fake_judge, "echo"), progress=False)
    assert summary["correct_predictions"] == 2
    assert summary["results"][0]["judge_verdict"] == 0


# --------------------------------------------------------------------------- real server


def _has_serve_command() -> bool:
    from pointllm.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    return "serve" in subparsers.choices


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not _has_serve_command(), reason="`pointllm serve` is not available yet")
def test_against_pointllm_serve_with_a_tiny_model(tmp_path, base_tokenizer):
    """A random tiny PointLLM behind `pointllm serve` answers nonsense: all invalid, no crash."""
    import urllib.request

    from conftest import make_tiny_model

    from pointllm.model.pointllm import save_pointllm

    model, tokenizer = make_tiny_model(base_tokenizer, num_points=64)
    save_pointllm(model, tokenizer, tmp_path / "tiny")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pointllm", "serve", "--model", str(tmp_path / "tiny")]
        + ["--port", str(port), "--host", "127.0.0.1", "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "POINTLLM_API_KEY"},  # an open server
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"pointllm serve did not start: {process.stderr.read().decode()[-2000:]}"
                    )
                time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as response:
            served = json.loads(response.read())["data"][0]["id"]
        summary = run_judge(
            open_results(tmp_path),
            "objaverse-cls",
            JudgeSettings(f"http://127.0.0.1:{port}/v1", served, workers=2, max_tokens=8),
            progress=False,
        )
        assert summary["total_predictions"] == 6 and summary["failed"] == 0
        assert summary["invalid_responses"] == 6  # greedy, seeded: the same nonsense every run
        assert summary["prompt_tokens"] > 0
    finally:
        process.terminate()
        process.wait(timeout=30)
