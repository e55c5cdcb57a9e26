"""A request queue in front of one model: a single worker thread runs every generation.

Requests from the HTTP handlers (and the web demo) become jobs on a queue. The worker takes the
oldest job; a non-streaming one waits a few milliseconds for company, then runs together with up
to `max_batch - 1` other waiting jobs that share its generation settings, as one left-padded
`PointLLM.generate_batch` call. Streaming jobs run alone, chunk by chunk. Results travel back as
`concurrent.futures.Future`s (awaitable with `asyncio.wrap_future`) or through a sink callback, so
the event loop never waits on the model.

Faults stay with their request: a batch that fails is retried one job at a time, so only the job
that causes an error gets it. If the worker itself breaks, every waiting job fails with
`WorkerDied`, new submissions are refused, and `on_death` is called (the server then answers 503
on /health and exits non-zero so that a supervisor restarts it).
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
from transformers import StoppingCriteria, StoppingCriteriaList

from pointllm.infer.api import PointLLM
from pointllm.serve import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE

log = logging.getLogger(__name__)

# How long the first waiting request holds the worker for others to join its batch. Under load the
# queue refills while a batch runs, so only an idle server pays this, once.
DEFAULT_WINDOW_S = 0.01

# A streaming job's sink receives text chunks, then None at the end, or the exception that
# ended it. It is called on the worker thread.
Sink = Callable[[str | BaseException | None], None]


class QueueFull(Exception):
    """The queue holds `max_queue` jobs already; the caller should come back later."""


class QueueTimeout(Exception):
    """A job waited in the queue longer than its caller allowed, and was dropped unstarted."""


class WorkerDied(RuntimeError):
    """The generation worker stopped for good; nothing queued will run."""


@dataclass(frozen=True, eq=False)  # eq=False: compared by identity (fields hold tensors)
class GenerationRequest:
    """One conversation to answer: history [{"role", "content"}] ending with a user turn, the
    prepared points (num_points, C) of its first user turn or None, generation kwargs, and a seed
    for sampling (None: unseeded; ignored when decoding greedily)."""

    history: Sequence[dict[str, str]]
    points: torch.Tensor | None = None
    gen: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None

    @property
    def sampling(self) -> bool:
        return (self.gen.get("temperature") or 0) > 0

    def batch_key(self) -> tuple | None:
        """Requests with equal keys may share a batch; None: this one must run alone.

        `generate_batch` takes one user question per item, so only such requests batch; a seeded
        sampling request runs alone so that its seed alone decides its output.
        """
        single_question = len(self.history) == 1 and self.history[0]["role"] == "user"
        seeded_sampling = self.seed is not None and self.sampling
        if not single_question or seeded_sampling:
            return None
        return tuple(
            sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in self.gen.items())
        )


@dataclass
class Answer:
    """A finished generation: its text, how many ids were generated (the end-of-turn id not
    counted), and whether it ended on an end-of-turn id (else: a length cut or a stop string)."""

    text: str = ""
    completion_tokens: int = 0
    ended_by_eos: bool = False


@dataclass(eq=False)  # identity, never field-by-field: a request holds tensors
class _Job:
    request: GenerationRequest
    future: Future | None = None  # non-streaming: resolves to an Answer
    sink: Sink | None = None  # streaming
    answer: Answer = field(default_factory=Answer)  # streaming: filled in before the final None
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: bool = False

    @property
    def abandoned(self) -> bool:
        """The caller went away (a cancelled stream, or an awaiting task that was cancelled)."""
        return self.cancelled.is_set() or (self.future is not None and self.future.cancelled())


class _Progress(StoppingCriteria):
    """Ends each row whose job was cancelled, and keeps the generated ids for counting."""

    def __init__(self, jobs: Sequence[_Job]):
        self.events = [job.cancelled for job in jobs]
        self.ids: torch.Tensor | None = None  # (B, generated so far)
        self.offset: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.offset is None:  # the first call comes after the first new token
            self.offset = input_ids.shape[1] - 1
        self.ids = input_ids[:, self.offset :]
        flags = [event.is_set() for event in self.events]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

    def counts(self, end_ids: Callable[[], set[int]]) -> list[tuple[int, bool]]:
        """(generated ids before the first end-of-turn id, whether one came) for each row."""
        if self.ids is None:
            return [(0, False)] * len(self.events)
        end_ids = end_ids()
        result = []
        for row in self.ids.tolist():
            end = next((i for i, token in enumerate(row) if token in end_ids), None)
            result.append((len(row), False) if end is None else (end, True))
        return result


@dataclass
class BatchStats:
    """Counters shown by /health: how the queue has been used since start."""

    requests: int = 0
    batches: int = 0
    max_batch_size: int = 0
    queued: int = 0
    cancelled: int = 0  # dropped or stopped early because the caller went away
    failed: int = 0  # jobs that ended with an error
    rejected: int = 0  # refused because the queue was full
    timed_out: int = 0  # dropped after waiting longer than their queue timeout


class Batcher:
    """Owns the model's worker thread. `start()` before submitting; `close()` to stop.

    `max_queue` bounds the jobs waiting to start (more raise QueueFull); `on_death` is called
    with the exception if the worker loop itself breaks.
    """

    def __init__(
        self,
        llm: PointLLM,
        max_batch: int = DEFAULT_MAX_BATCH,
        window_s: float = DEFAULT_WINDOW_S,
        max_queue: int = DEFAULT_MAX_QUEUE,
        on_death: Callable[[BaseException], None] | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.llm = llm
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.window_s = window_s
        self.on_death = on_death
        self.stats = BatchStats()
        self.failure: BaseException | None = None  # why the worker died, if it did
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending: deque[_Job] = deque()  # taken off the queue, not yet run
        self._open: set[_Job] = set()  # submitted and not finished, wherever they are
        self._lock = threading.Lock()  # stats.queued, _open, a job's started/cancelled handover
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.failure is None

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
        self._fail_waiting(RuntimeError("the server is shutting down"))

    def _fail_waiting(self, exc: BaseException) -> None:
        """Fail every unfinished job: queued, pending, or held by a worker that broke."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._pending.clear()
        with self._lock:
            jobs, self._open = list(self._open), set()
            self.stats.queued = 0
        for job in jobs:
            self._fail(job, exc)

    # ---- submitting ---------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> Future:
        """Queue a request; the Future resolves to an `Answer`."""
        return self._submit(request).future

    def _submit(self, request: GenerationRequest) -> _Job:
        job = _Job(request, future=Future())
        self._put(job)
        return job

    def submit_stream(self, request: GenerationRequest, sink: Sink) -> threading.Event:
        """Queue a streaming request; returns an event that cancels it when set."""
        job = _Job(request, sink=sink)
        self._put(job)
        return job.cancelled

    async def generate(
        self, request: GenerationRequest, queue_timeout: float | None = None
    ) -> Answer:
        """The answer, awaited without blocking the event loop. A job that has not started
        after `queue_timeout` seconds is dropped (QueueTimeout); cancelling the awaiting task
        cancels the job, queued or running."""
        job = self._submit(request)
        waiter = asyncio.wrap_future(job.future)
        try:
            if queue_timeout is not None:
                done, _ = await asyncio.wait({waiter}, timeout=queue_timeout)
                if not done and self._drop_unstarted(job):
                    raise QueueTimeout(f"the request waited {queue_timeout:g} s in the queue")
            return await waiter
        finally:
            job.cancelled.set()  # no-op once finished; stops a running or queued job otherwise

    async def stream(
        self, request: GenerationRequest, answer: Answer | None = None
    ) -> AsyncIterator[str]:
        """The answer as text chunks. Leaving the loop early cancels the generation. `answer`,
        if given, gets the generated-id count and end reason once the stream is complete."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[str | BaseException | None] = asyncio.Queue()

        def sink(item: str | BaseException | None) -> None:
            loop.call_soon_threadsafe(chunks.put_nowait, item)

        job = _Job(request, sink=sink)
        self._put(job)
        try:
            while (item := await chunks.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
            if answer is not None:
                answer.completion_tokens = job.answer.completion_tokens
                answer.ended_by_eos = job.answer.ended_by_eos
        finally:
            job.cancelled.set()

    def _put(self, job: _Job) -> None:
        if self.failure is not None:
            raise WorkerDied(f"the generation worker stopped ({self.failure!r})")
        if self._thread is None:
            raise RuntimeError("the batcher is not running (call start() first)")
        with self._lock:
            if self.stats.queued >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFull(f"{self.stats.queued} requests are waiting (the limit)")
            self.stats.queued += 1
            self._open.add(job)
        self._queue.put(job)

    def _drop_unstarted(self, job: _Job) -> bool:
        """Cancel `job` if the worker has not started it; True if it was dropped so."""
        with self._lock:
            if job.started:
                return False
            job.cancelled.set()
            self.stats.timed_out += 1
            return True

    # ---- the worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                with self._lock:
                    self.stats.queued -= len(batch)
                    live = [job for job in batch if not job.abandoned]
                    for job in live:
                        job.started = True
                self.stats.cancelled += len(batch) - len(live)
                if live:
                    self._run(live)
                with self._lock:
                    self._open.difference_update(batch)
        except BaseException as exc:  # the loop itself broke: refuse work, tell the server
            self.failure = exc
            log.critical("the generation worker died", exc_info=exc)
            self._fail_waiting(WorkerDied(f"the generation worker stopped ({exc!r})"))
            if self.on_death is not None:
                self.on_death(exc)

    def _run(self, jobs: list[_Job]) -> None:
        """Run jobs; an error fails only the job it comes from (a failed batch is retried one
        job at a time to find it)."""
        try:
            if jobs[0].sink is not None:
                self._run_stream(jobs[0])
            else:
                self._run_batch(jobs)
            return
        except Exception as exc:
            if len(jobs) == 1:
                log.exception("generation failed")
                self.stats.failed += 1
                self._fail(jobs[0], exc)
                return
            log.warning("a batch of %d failed (%r); running its jobs one by one", len(jobs), exc)
        for job in jobs:
            if not job.abandoned:
                self._run([job])

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
        taken = {id(job) for job in batch}
        self._pending = deque(job for job in self._pending if id(job) not in taken)
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

    def _end_ids(self) -> set[int]:
        ids = set(self.llm.generation_kwargs().get("eos_token_id") or [])
        pad = getattr(self.llm.tokenizer, "pad_token_id", None)
        return ids | ({pad} if pad is not None else set())

    @staticmethod
    def _seed(request: GenerationRequest) -> None:
        # Greedy decoding draws no random numbers: its seed is ignored, never applied.
        if request.seed is not None and request.sampling:
            torch.manual_seed(request.seed)

    def _run_batch(self, jobs: list[_Job]) -> None:
        first = jobs[0].request
        self._record(len(jobs))
        progress = _Progress(jobs)
        gen = {**first.gen, "stopping_criteria": StoppingCriteriaList([progress])}
        if len(jobs) == 1:
            self._seed(first)
            texts = [self.llm.chat(first.history, first.points, **gen)]
        else:  # never seeded: seeded sampling requests run alone (batch_key)
            items = [(job.request.points, job.request.history[0]["content"]) for job in jobs]
            texts = self.llm.generate_batch(items, **gen)
        counts = progress.counts(self._end_ids)
        self.stats.cancelled += sum(job.cancelled.is_set() for job in jobs)  # stopped mid-way
        for job, text, (count, eos) in zip(jobs, texts, counts, strict=True):
            with contextlib.suppress(InvalidStateError):  # cancelled by its caller meanwhile
                job.future.set_result(Answer(text, count, eos))

    def _run_stream(self, job: _Job) -> None:
        request = job.request
        self._record(1)
        self._seed(request)
        progress = _Progress([job])
        gen = {**request.gen, "stopping_criteria": StoppingCriteriaList([progress])}
        chunks = self.llm.stream_chat(request.history, request.points, **gen)
        try:
            for chunk in chunks:
                if job.cancelled.is_set():
                    self.stats.cancelled += 1
                    break
                job.sink(chunk)
        finally:
            chunks.close()  # stops the generation thread at its next token
        job.answer.completion_tokens, job.answer.ended_by_eos = progress.counts(self._end_ids)[0]
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
