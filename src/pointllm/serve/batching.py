"""A request queue in front of one model: a single worker thread runs every generation.

Requests from the HTTP handlers (and the web demo) become jobs on a queue. The worker takes the
oldest job; a non-streaming one waits a few milliseconds for company, then runs together with up
to `max_batch - 1` other waiting jobs that share its generation settings, as one left-padded
`PointLLM.generate_batch` call. Streaming jobs run alone, chunk by chunk. Results travel back as
`concurrent.futures.Future`s (awaitable with `asyncio.wrap_future`) or through a sink callback, so
the event loop never waits on the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import torch

from pointllm.infer.api import PointLLM
from pointllm.serve import DEFAULT_MAX_BATCH

log = logging.getLogger(__name__)

# How long the first waiting request holds the worker for others to join its batch. Under load the
# queue refills while a batch runs, so only an idle server pays this, once.
DEFAULT_WINDOW_S = 0.01

# A streaming job's sink receives text chunks, then None at the end, or the exception that
# ended it. It is called on the worker thread.
Sink = Callable[[str | BaseException | None], None]


@dataclass(frozen=True)
class GenerationRequest:
    """One conversation to answer: history [{"role", "content"}] ending with a user turn, the
    prepared points (num_points, C) of its first user turn or None, generation kwargs, and a seed
    for sampling (None: unseeded)."""

    history: Sequence[dict[str, str]]
    points: torch.Tensor | None = None
    gen: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None

    def batch_key(self) -> tuple | None:
        """Requests with equal keys may share a batch; None: this one must run alone.

        `generate_batch` takes one user question per item, so only such requests batch; a seeded
        sampling request runs alone so that its seed alone decides its output.
        """
        single_question = len(self.history) == 1 and self.history[0]["role"] == "user"
        seeded_sampling = self.seed is not None and (self.gen.get("temperature") or 0) > 0
        if not single_question or seeded_sampling:
            return None
        return tuple(
            sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in self.gen.items())
        )


@dataclass
class _Job:
    request: GenerationRequest
    future: Future | None = None  # non-streaming: resolves to the answer
    sink: Sink | None = None  # streaming
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def abandoned(self) -> bool:
        """The caller went away (a cancelled stream, or an awaiting task that was cancelled)."""
        return self.cancelled.is_set() or (self.future is not None and self.future.cancelled())


@dataclass
class BatchStats:
    """Counters shown by /health: how the queue has been used since start."""

    requests: int = 0
    batches: int = 0
    max_batch_size: int = 0
    queued: int = 0
    cancelled: int = 0  # dropped or stopped early because the caller went away


class Batcher:
    """Owns the model's worker thread. `start()` before submitting; `close()` to stop."""

    def __init__(
        self,
        llm: PointLLM,
        max_batch: int = DEFAULT_MAX_BATCH,
        window_s: float = DEFAULT_WINDOW_S,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.llm = llm
        self.max_batch = max_batch
        self.window_s = window_s
        self.stats = BatchStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending: deque[_Job] = deque()  # taken off the queue, not yet run
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="pointllm-batcher", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the job in progress; jobs still waiting fail with RuntimeError."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._pending.append(job)
        for job in self._pending:
            self._fail(job, RuntimeError("the server is shutting down"))
        self._pending.clear()

    # ---- submitting ---------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> Future:
        """Queue a request; the Future resolves to the answer text."""
        job = _Job(request, future=Future())
        self._put(job)
        return job.future

    def submit_stream(self, request: GenerationRequest, sink: Sink) -> threading.Event:
        """Queue a streaming request; returns an event that cancels it when set."""
        job = _Job(request, sink=sink)
        self._put(job)
        return job.cancelled

    async def generate(self, request: GenerationRequest) -> str:
        """The answer, awaited without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(request))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """The answer as text chunks. Leaving the loop early cancels the generation."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[str | BaseException | None] = asyncio.Queue()

        def sink(item: str | BaseException | None) -> None:
            loop.call_soon_threadsafe(chunks.put_nowait, item)

        cancel = self.submit_stream(request, sink)
        try:
            while (item := await chunks.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()

    def _put(self, job: _Job) -> None:
        if self._thread is None:
            raise RuntimeError("the batcher is not running (call start() first)")
        self.stats.queued += 1
        self._queue.put(job)

    # ---- the worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self.stats.queued -= len(batch)
            live = [job for job in batch if not job.abandoned]
            self.stats.cancelled += len(batch) - len(live)
            if not live:
                continue
            try:
                if live[0].sink is not None:
                    self._run_stream(live[0])
                else:
                    self._run_batch(live)
            except BaseException as exc:  # reported to the callers; the worker lives on
                log.exception("generation failed")
                for job in live:
                    self._fail(job, exc)

    def _next_batch(self) -> list[_Job] | None:
        """The oldest job, with the waiting jobs that can share its batch; None: shut down."""
        if not self._pending:
            job = self._queue.get()
            if job is None:
                return None
            self._pending.append(job)
        first = self._pending[0]
        key = first.request.batch_key() if first.sink is None else None
        if key is not None:
            deadline = time.monotonic() + self.window_s
            while self._count_matching(key) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # seen again once the pending jobs have run
                    break
                self._pending.append(job)
        self._drain_queue()
        if key is None:
            return [self._pending.popleft()]
        batch = [job for job in self._pending if self._matches(job, key)][: self.max_batch]
        for job in batch:
            self._pending.remove(job)
        return batch

    def _drain_queue(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is None:
                self._queue.put(None)
                return
            self._pending.append(job)

    @staticmethod
    def _matches(job: _Job, key: tuple) -> bool:
        return job.sink is None and job.request.batch_key() == key

    def _count_matching(self, key: tuple) -> int:
        return sum(self._matches(job, key) for job in self._pending)

    def _record(self, size: int) -> None:
        self.stats.requests += size
        self.stats.batches += 1
        self.stats.max_batch_size = max(self.stats.max_batch_size, size)

    def _run_batch(self, jobs: list[_Job]) -> None:
        first = jobs[0].request
        self._record(len(jobs))
        if first.seed is not None:
            torch.manual_seed(first.seed)
        if len(jobs) == 1:
            answers = [self.llm.chat(first.history, first.points, **first.gen)]
        else:
            items = [(job.request.points, job.request.history[0]["content"]) for job in jobs]
            answers = self.llm.generate_batch(items, **first.gen)
        for job, answer in zip(jobs, answers, strict=True):
            with contextlib.suppress(InvalidStateError):  # cancelled by its caller meanwhile
                job.future.set_result(answer)

    def _run_stream(self, job: _Job) -> None:
        request = job.request
        self._record(1)
        if request.seed is not None:
            torch.manual_seed(request.seed)
        chunks = self.llm.stream_chat(request.history, request.points, **request.gen)
        try:
            for chunk in chunks:
                if job.cancelled.is_set():
                    self.stats.cancelled += 1
                    break
                job.sink(chunk)
        finally:
            chunks.close()  # stops the generation thread at its next token
        job.sink(None)

    @staticmethod
    def _fail(job: _Job, exc: BaseException) -> None:
        if job.future is not None:
            with contextlib.suppress(InvalidStateError):
                job.future.set_exception(exc)
        else:
            # RuntimeError: the consumer's event loop is gone, so nobody is listening.
            with contextlib.suppress(RuntimeError):
                job.sink(exc)
