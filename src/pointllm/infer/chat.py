"""`pointllm chat`: one scripted answer, or a multi-turn conversation in the terminal.

The REPL reads lines with `input()`, so it works on a terminal and on a pipe alike. Answers are
streamed as they are generated; Ctrl-C stops an answer, Ctrl-D (EOF) or `/quit` leaves.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

import torch

from pointllm.infer.api import PointLLM

HELP = """\
commands:
  /load FILE   chat about another point cloud (starts a new conversation)
  /reset       forget the conversation so far
  /help        show this help
  /quit        leave (Ctrl-D works too)"""


class ChatSession:
    """A conversation about at most one point cloud: its prepared points and the turns so far."""

    def __init__(self, llm: PointLLM):
        self.llm = llm
        self.points: torch.Tensor | None = None  # (num_points, C)
        self.source: str | None = None
        self.history: list[dict[str, str]] = []

    def load(self, path: str) -> None:
        """Switch to the point cloud in `path` and start over; on error nothing changes."""
        self.points = self.llm.prepare_points(path)
        self.source = path
        self.history = []

    def reset(self) -> None:
        self.history = []

    def ask(self, question: str, write: Callable[[str], Any], **gen: Any) -> str:
        """Stream the answer to `question` through `write`; the turn joins the history once the
        answer is complete and non-empty (an empty turn would make the conversation invalid)."""
        turns = [*self.history, {"role": "user", "content": question}]
        chunks = []
        for chunk in self.llm.stream_chat(turns, self.points, **gen):
            write(chunk)
            chunks.append(chunk)
        answer = "".join(chunks)
        if answer:
            self.history = [*turns, {"role": "assistant", "content": answer}]
        return answer


def _describe(session: ChatSession) -> str:
    return f"point cloud {session.source}" if session.source else "no point cloud (text only)"


def _command(session: ChatSession, line: str, out: TextIO, err: TextIO) -> bool:
    """Run a `/command`; returns False when the REPL should end."""
    name, _, argument = line.partition(" ")
    argument = os.path.expanduser(argument.strip().strip("'\""))
    if name in ("/quit", "/exit"):
        return False
    if name == "/help":
        print(HELP, file=out)
    elif name == "/reset":
        session.reset()
        print("conversation cleared", file=out)
    elif name == "/load":
        if not argument:
            print("usage: /load FILE", file=err)
            return True
        try:
            session.load(argument)
        except ValueError as exc:  # PointCloudError and friends: one line, keep chatting
            print(f"error: {exc}", file=err)
            return True
        print(f"loaded {argument}; new conversation", file=out)
    else:
        print(f"unknown command {name!r}; /help lists the commands", file=err)
    return True


def repl(
    session: ChatSession,
    gen: dict[str, Any],
    *,
    read: Callable[[str], str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Read questions and commands until /quit or end of input; returns the exit status (0).

    `read` defaults to `input`, `out`/`err` to the current sys.stdout/sys.stderr (looked up at
    call time, so redirections made after import apply).
    """
    read = read or input
    out = out or sys.stdout
    err = err or sys.stderr
    print(f"{session.llm.model_name}: {_describe(session)}. /help for commands.", file=out)

    def write(chunk: str) -> None:
        out.write(chunk)
        out.flush()

    while True:
        try:
            line = read(">>> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return 0
        if not line:
            continue
        if line.startswith("/"):
            if not _command(session, line, out, err):
                return 0
            continue
        try:
            session.ask(line, write, **gen)
        except KeyboardInterrupt:
            print("\n(stopped; this turn is forgotten)", file=out)
            continue
        except ValueError as exc:  # e.g. the conversation no longer fits the model
            print(f"\nerror: {exc}", file=err)
            continue
        print(file=out)


def run_chat(
    llm: PointLLM,
    points: str | None,
    prompt: str | None,
    gen: dict[str, Any],
) -> int:
    """With `prompt`: print only the answer (scriptable). Without: the interactive REPL.

    A bad `points` file raises PointCloudError (the CLI prints it on one line, exit status 1).
    """
    session = ChatSession(llm)
    if points is not None:
        session.load(points)
    if prompt is None:
        return repl(session, gen)
    print(llm.generate(session.points, prompt, **gen))
    return 0
