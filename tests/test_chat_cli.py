"""`pointllm chat`: the scripted --prompt mode and the REPL (commands, history, bad files)."""

from __future__ import annotations

import builtins
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

import pointllm
from pointllm.cli import main
from pointllm.infer import api
from pointllm.model.pointllm import save_pointllm

GEN_ARGS = ["--max-new-tokens", "8"]
GEN = {"max_new_tokens": 8}


@pytest.fixture(scope="module")
def files(tmp_path_factory, base_tokenizer):
    """A tiny random checkpoint, two point clouds and one malformed .npy file."""
    root = tmp_path_factory.mktemp("chat")
    model, tokenizer = make_tiny_model(base_tokenizer, arch="qwen2", num_points=128)
    save_pointllm(model, tokenizer, root / "model")
    rng = np.random.default_rng(0)
    # Clouds far apart in shape and color, so that even a random model answers them differently.
    first = np.concatenate([rng.random((200, 3)), np.zeros((200, 3))], axis=1)
    other = np.concatenate([rng.normal(size=(200, 3)) * [1, 0.05, 0.05], np.ones((200, 3))], 1)
    np.save(root / "first.npy", first.astype(np.float32))
    np.save(root / "other.npy", other.astype(np.float32))
    np.save(root / "bad.npy", np.zeros((10, 4)))
    return root


@pytest.fixture(scope="module")
def llm(files):
    return pointllm.load(files / "model", device="cpu")


def feed(monkeypatch, lines):
    """Make input() return `lines` one by one, then raise EOFError (like Ctrl-D)."""
    queue = list(lines)

    def fake_input(prompt=""):
        if not queue:
            raise EOFError
        return queue.pop(0)

    monkeypatch.setattr(builtins, "input", fake_input)


def test_prompt_prints_only_the_answer(files, llm, capsys):
    question = "What is this?"
    argv = ["chat", "--model", str(files / "model"), "--points", str(files / "first.npy")]
    assert main([*argv, "--prompt", question, *GEN_ARGS]) == 0
    out = capsys.readouterr().out
    answer = llm.generate(files / "first.npy", question, **GEN)
    assert answer and out == answer + "\n"


def test_prompt_without_points_is_text_only(files, llm, capsys):
    assert main(["chat", "--model", str(files / "model"), "--prompt", "Hi", *GEN_ARGS]) == 0
    assert capsys.readouterr().out == llm.generate(None, "Hi", **GEN) + "\n"


@pytest.mark.parametrize(
    "name, problem", [("bad.npy", "expected an array of shape"), ("missing.npy", "no such file")]
)
def test_bad_point_file_is_one_line_and_exit_1(files, capsys, name, problem):
    argv = ["chat", "--model", str(files / "model"), "--points", str(files / name)]
    assert main([*argv, "--prompt", "What is this?"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    # Without a terminal, loading prints one "pointllm: ..." line per phase; the rest is the error.
    lines = [line for line in captured.err.splitlines() if not line.startswith("pointllm: ")]
    assert len(lines) == 1 and str(files / name) in lines[0] and problem in lines[0]


def test_bad_model_dir_is_one_line_and_exit_1(tmp_path, capsys):
    assert main(["chat", "--model", str(tmp_path / "nope"), "--prompt", "Hi"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such checkpoint directory" in err[0]


def test_repl_history_commands_and_errors(files, llm, monkeypatch, capsys):
    first, other = str(files / "first.npy"), str(files / "other.npy")
    feed(
        monkeypatch,
        [
            "What?",
            "And its color?",
            "/reset",
            "What?",
            f"/load {other}",
            "What?",
            f"/load {files / 'bad.npy'}",
            "/bogus",
            "",
            "/help",
            "/quit",
            "never read",
        ],
    )
    calls = []
    stream_chat = api.PointLLM.stream_chat

    def spy(self, history, points=None, **gen):
        calls.append((list(history), points))
        return stream_chat(self, history, points, **gen)

    monkeypatch.setattr(api.PointLLM, "stream_chat", spy)
    assert main(["chat", "--model", str(files / "model"), "--points", first, *GEN_ARGS]) == 0
    captured = capsys.readouterr()
    a1 = llm.generate(first, "What?", **GEN)
    history = [
        {"role": "user", "content": "What?"},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": "And its color?"},
    ]
    a2 = llm.chat(history, first, **GEN)
    a3 = llm.generate(other, "What?", **GEN)
    assert a1 != a2
    # What the model was asked: the history grows, /reset and /load start over, /load swaps clouds.
    single = [{"role": "user", "content": "What?"}]
    assert [h for h, _ in calls] == [single, history, single, single]
    clouds = [llm.prepare_points(first)] * 3 + [llm.prepare_points(other)]
    assert all(torch.equal(p, c) for (_, p), c in zip(calls, clouds, strict=True))
    # The REPL's answers, in order: a1, a2 (multi-turn), a1 again after /reset, a3 after /load.
    expected = [a1, a2, "conversation cleared", a1, f"loaded {other}; new conversation", a3]
    position = 0
    for text in expected:
        position = captured.out.index(text, position) + len(text)
    assert "/load FILE" in captured.out  # /help
    err = captured.err.splitlines()
    assert any(line.startswith("error: ") and "bad.npy" in line for line in err)
    assert any("unknown command '/bogus'" in line for line in err)


def test_repl_ends_at_end_of_input(files, monkeypatch, capsys):
    feed(monkeypatch, [])
    assert main(["chat", "--model", str(files / "model")]) == 0
    assert "no point cloud (text only)" in capsys.readouterr().out


def test_repl_reads_a_pipe(files, llm):
    """The real console script path: stdin is a pipe, not a terminal."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    points = str(files / "first.npy")
    result = subprocess.run(
        [sys.executable, "-m", "pointllm", "chat", "--model", str(files / "model")]
        + ["--points", points, *GEN_ARGS],
        input="What?\n/quit\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert llm.generate(points, "What?", **GEN) in result.stdout
