"""Continuous batching: one worker thread runs every generation, one decode step at a time.

Requests from the HTTP handlers (and the web demo) become jobs on a queue. Between two decode
steps the worker admits waiting jobs while the running batch has room (at most `max_batch` rows):
their prompts are prefilled together in one left-padded forward pass (a point cloud is encoded
once, there), and their key/value caches are joined to the running batch's `DynamicCache` along
the batch dimension. Every decode step then feeds each running row its last token; a row leaves
the batch as soon as it ends (end of turn, its `max_tokens`, a stop string, or its caller going
away), and its cache rows are dropped. So streaming and non-streaming, single- and multi-turn,
greedy and sampled requests share batches, each with its own settings: logits are processed per
row, and a sampled row draws from its own `torch.Generator`, so the same seed gives the same
answer whatever else runs beside it. `max_batch=1` runs one request at a time.

Results travel back as `concurrent.futures.Future`s (awaitable with `asyncio.wrap_future`) or
through a sink callback, so the event loop never waits on the model.

Faults stay with their request: a prefill that fails is retried job by job, so only the job that
causes an error gets it; a decode step that fails fails the rows in it, and the worker goes on.
If the worker loop itself breaks, every waiting job fails with `WorkerDied`, new submissions are
refused, and `on_death` is called (the server then answers 503 on /health and exits non-zero so
that a supervisor restarts it).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from pointllm.infer.api import PointLLM
from pointllm.serve import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE

log = logging.getLogger(__name__)

# How long an idle worker, woken by a request, waits for others to arrive so that their prefills
# run together. Under load the queue refills while the batch decodes, so only an idle server
# pays this.
DEFAULT_WINDOW_S = 0.01
# Time-to-first-token and latency histogram buckets, in seconds (Prometheus `le` bounds).
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Generated tokens/s is reported over this trailing window.
RATE_WINDOW_S = 10.0

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
    prepared points (num_points, C) of its first user turn or None, generation settings, and a
    seed for sampling (None: unseeded; ignored when decoding greedily), and optionally the
    prompt's token ids (`PointLLM.prompt_ids`) if the caller has them already.

    `gen` keys: max_new_tokens, temperature (> 0 samples), top_p, top_k, repetition_penalty,
    stop_strings (a list; the row ends once its text contains one). Others are ignored.
    """

    history: Sequence[dict[str, str]]
    points: torch.Tensor | None = None
    gen: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    prompt_ids: Sequence[int] | None = None

    @property
    def sampling(self) -> bool:
        return (self.gen.get("temperature") or 0) > 0


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
    submitted: float = field(default_factory=time.monotonic)

    @property
    def abandoned(self) -> bool:
        """The caller went away (a cancelled stream, or an awaiting task that was cancelled)."""
        return self.cancelled.is_set() or (self.future is not None and self.future.cancelled())


class _Row:
    """A running job's decoding state: its ids so far, how to pick the next one, its text."""

    def __init__(self, job: _Job, prompt: list[int], defaults: dict[str, Any]):
        gen = job.request.gen
        self.job = job
        self.prompt = prompt
        self.ids: list[int] = []  # generated, the end-of-turn id excluded
        self.max_new = int(gen.get("max_new_tokens") or defaults["max_new_tokens"])
        self.stops = [s for s in gen.get("stop_strings") or [] if s]
        self.processors = LogitsProcessorList()
        penalty = gen.get("repetition_penalty")
        self.penalized = penalty is not None and penalty != 1.0
        if self.penalized:
            self.processors.append(RepetitionPenaltyLogitsProcessor(float(penalty)))
        self.generator: torch.Generator | None = None
        if job.request.sampling:
            top_k = gen.get("top_k", defaults.get("top_k"))
            top_p = gen.get("top_p", defaults.get("top_p"))
            self.processors.append(TemperatureLogitsWarper(float(gen["temperature"])))
            if top_k:
                self.processors.append(TopKLogitsWarper(int(top_k)))
            if top_p is not None and top_p < 1.0:
                self.processors.append(TopPLogitsWarper(float(top_p)))
            seed = job.request.seed
            self.generator = torch.Generator(device=defaults["device"])
            self.generator.manual_seed(seed if seed is not None else secrets.randbits(63))
        self.last: int | None = None  # the newest id, fed to the next decode step
        self.emitted = ""  # streamed text so far
        self.ended_by_eos = False
        self.done = False

    @property
    def plain_greedy(self) -> bool:
        return self.generator is None and not self.processors


@dataclass
class BatchStats:
    """Counters shown by /health: how the queue has been used since start."""

    requests: int = 0  # admitted to the running batch
    batches: int = 0  # prefills (newcomers admitted together)
    steps: int = 0  # decode steps
    max_batch_size: int = 0  # the most rows that ever decoded together
    running: int = 0  # rows in the running batch now
    queued: int = 0
    completed: int = 0
    cancelled: int = 0  # dropped or stopped early because the caller went away
    failed: int = 0  # jobs that ended with an error
    rejected: int = 0  # refused because the queue was full
    timed_out: int = 0  # dropped after waiting longer than their queue timeout
    generated_tokens: int = 0


class Histogram:
    """A Prometheus histogram: cumulative counts per upper bound, a sum and a count."""

    def __init__(self, buckets: Sequence[float]):
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        self.counts[index] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        total, rows = 0, []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            rows.append(("+Inf" if bound == math.inf else f"{bound:g}", total))
        return rows


class Batcher:
    """Owns the model's worker thread. `start()` before submitting; `close()` to stop.

    `max_batch` bounds the rows decoding together (1: one request at a time); `max_queue`
    bounds the jobs waiting to start (more raise QueueFull); `on_death` is called with the
    exception if the worker loop itself breaks.
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
        self.ttft = Histogram(TTFT_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.failure: BaseException | None = None  # why the worker died, if it did
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending: deque[_Job] = deque()  # taken off the queue, not yet admitted
        self._open: set[_Job] = set()  # submitted and not finished, wherever they are
        self._lock = threading.Lock()  # stats.queued, _open, a job's started/cancelled handover
        self._thread: threading.Thread | None = None
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent steps
        # The running batch: rows, their KV cache (B, heads, L, d) per layer, left-padded, the
        # attention mask (B, L), and each row's count of real tokens (its next position).
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._lengths: torch.Tensor | None = None
        self._defaults: dict[str, Any] | None = None
        self._end_ids: set[int] | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.failure is None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="pointllm-batcher", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the decode step in progress; unfinished jobs fail with RuntimeError."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None
        self._fail_waiting(RuntimeError("the server is shutting down"))

    def _fail_waiting(self, exc: BaseException) -> None:
        """Fail every unfinished job: queued, pending, running, or held by a broken worker."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._pending.clear()
        self._rows, self._cache = [], None
        with self._lock:
            jobs, self._open = list(self._open), set()
            self.stats.queued = 0
            self.stats.running = 0
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

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last RATE_WINDOW_S seconds."""
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= RATE_WINDOW_S]
        return sum(n for _, n in recent) / RATE_WINDOW_S

    # ---- the worker loop ----------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                newcomers = self._next_batch()
                if newcomers is None:
                    return
                with self._lock:
                    self.stats.queued -= len(newcomers)
                    live = [job for job in newcomers if not job.abandoned]
                    for job in live:
                        job.started = True
                    self._open.difference_update(j for j in newcomers if j.abandoned)
                self.stats.cancelled += len(newcomers) - len(live)
                if live:
                    self._prefill(live)
                self._drop_abandoned_rows()
                if self._rows:
                    self._decode_step()
        except BaseException as exc:  # the loop itself broke: refuse work, tell the server
            self.failure = exc
            log.critical("the generation worker died", exc_info=exc)
            self._fail_waiting(WorkerDied(f"the generation worker stopped ({exc!r})"))
            if self.on_death is not None:
                self.on_death(exc)

    def _next_batch(self) -> list[_Job] | None:
        """The waiting jobs to admit now, oldest first, as many as the running batch has room
        for (possibly none); None: shut down. An idle worker blocks until a job arrives."""
        if not self._rows and not self._pending:
            job = self._queue.get()
            if job is None:
                return None
            self._pending.append(job)
            deadline = time.monotonic() + self.window_s
            while len(self._pending) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # seen again below
                    break
                self._pending.append(job)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return None
            self._pending.append(job)
        self._purge_pending()
        room = self.max_batch - len(self._rows)
        return [self._pending.popleft() for _ in range(min(room, len(self._pending)))]

    def _purge_pending(self) -> None:
        """Forget waiting jobs whose callers left (or timed out), so they stop counting."""
        gone = [job for job in self._pending if job.abandoned]
        if not gone:
            return
        self._pending = deque(job for job in self._pending if not job.abandoned)
        with self._lock:
            self.stats.queued -= len(gone)
            self._open.difference_update(gone)
        self.stats.cancelled += len(gone)

    # ---- model steps --------------------------------------------------------------------------

    def _setup(self) -> None:
        """Settings read once from the model: end-of-turn ids, sampling defaults, the device."""
        llm = self.llm
        ids = set(llm.generation_kwargs().get("eos_token_id") or [])
        self._end_ids = ids
        config = llm.model.language_model.generation_config
        # transformers >= 5.2x names the cache argument `cache` (`past_key_values` is deprecated);
        # earlier 5.x releases take only `past_key_values`.
        base = getattr(llm.model.language_model, "get_base_model", lambda: None)()
        params = inspect.signature(type(base or llm.model.language_model).forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._defaults = {
            "max_new_tokens": llm.generation_kwargs()["max_new_tokens"],
            "top_k": getattr(config, "top_k", None),
            "top_p": getattr(config, "top_p", None),
            "device": llm.device,
        }

    def _prefill(self, jobs: list[_Job]) -> None:
        """Prefill the newcomers together and join them to the running batch; a failure is
        retried job by job so that only the job that causes it fails."""
        try:
            rows, cache, mask, tokens = self._prefill_group(jobs)
        except Exception as exc:
            if len(jobs) == 1:
                log.exception("generation failed")
                self._finish_failed(jobs[0], exc)
                return
            log.warning("a prefill of %d failed (%r); running its jobs one by one", len(jobs), exc)
            for job in jobs:
                if not job.abandoned:
                    self._prefill([job])
                else:
                    self._finish_cancelled_unstarted(job)
            return
        # Everything that can fail has run: the newcomers join the batch.
        now = time.monotonic()
        self.stats.batches += 1
        self.stats.requests += len(rows)
        for row in rows:
            self.ttft.observe(now - row.job.submitted)
        self._join(rows, cache, mask, mask.sum(-1))
        self._advance(tokens)

    @torch.inference_mode()
    def _prefill_group(
        self, jobs: list[_Job]
    ) -> tuple[list[_Row], DynamicCache, torch.Tensor, torch.Tensor]:
        """One forward pass over the newcomers' left-padded prompts: their rows, cache,
        attention mask (b, T) and first ids (b,)."""
        if self._defaults is None:
            self._setup()
        llm, model = self.llm, self.llm.model
        prompts = [self._prompt(job.request) for job in jobs]
        width = max(len(ids) for ids in prompts)
        pad = llm.tokenizer.pad_token_id
        input_ids = torch.full((len(jobs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, ids in enumerate(prompts):  # left padding: every prompt ends in the last column
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        clouds = [j.request.points for j in jobs if j.request.points is not None]
        point_clouds = torch.stack(clouds).to(llm.device) if clouds else None
        input_ids, mask = input_ids.to(llm.device), mask.to(llm.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (b, T): each row counts from 0
        embeds = model.embed_inputs(input_ids, point_clouds)  # points encoded once, here
        cache = DynamicCache()
        out = model.language_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            **{self._cache_arg: cache},
            use_cache=True,
            logits_to_keep=1,
        )
        rows = [_Row(job, ids, self._defaults) for job, ids in zip(jobs, prompts, strict=True)]
        return rows, cache, mask, self._choose(rows, out.logits[:, -1, :].float())

    def _prompt(self, request: GenerationRequest) -> list[int]:
        if request.prompt_ids is not None:
            return list(request.prompt_ids)
        return self.llm.prompt_ids(request.history, with_points=request.points is not None)

    @torch.inference_mode()
    def _decode_step(self) -> None:
        try:
            llm = self.llm
            last = torch.tensor([[row.last] for row in self._rows], device=llm.device)  # (B, 1)
            mask = F.pad(self._mask, (0, 1), value=1)  # (B, L + 1)
            out = llm.model.language_model(
                inputs_embeds=llm.model.embed_inputs(last),
                attention_mask=mask,
                position_ids=self._lengths.unsqueeze(1),
                **{self._cache_arg: self._cache},
                use_cache=True,
                logits_to_keep=1,
            )
            self._mask, self._lengths = mask, self._lengths + 1
            tokens = self._choose(self._rows, out.logits[:, -1, :].float())
        except Exception as exc:  # cannot be pinned on one row: the rows in the step fail
            log.exception("a decode step of %d rows failed", len(self._rows))
            rows, self._rows, self._cache = self._rows, [], None
            self.stats.running = 0
            for row in rows:
                self._finish_failed(row.job, exc)
            return
        self.stats.steps += 1
        self._advance(tokens)

    def _choose(self, rows: Sequence[_Row], logits: torch.Tensor) -> torch.Tensor:
        """The next id of each row from its logits (B, V): greedy rows by argmax, others after
        their own logits processors, sampled with their own generator."""
        tokens = logits.argmax(-1)  # (B,)
        for i, row in enumerate(rows):
            if row.plain_greedy:
                continue
            # (1, n) ids so far: only a repetition penalty reads them.
            context = torch.tensor(
                [row.prompt + row.ids if row.penalized else []], device=logits.device
            )
            scores = row.processors(context, logits[i : i + 1])  # (1, V)
            if row.generator is None:
                tokens[i] = scores.argmax(-1)[0]
            else:
                probs = scores.softmax(-1)
                tokens[i] = torch.multinomial(probs, 1, generator=row.generator)[0, 0]
        return tokens

    def _join(
        self, rows: list[_Row], cache: DynamicCache, mask: torch.Tensor, lengths: torch.Tensor
    ) -> None:
        """Append rows with their cache (b, h, T, d), mask (b, T) and lengths (b,) to the
        running batch, left-padding whichever is shorter."""
        if not self._rows:
            self._rows, self._cache, self._mask, self._lengths = rows, cache, mask, lengths
        else:
            old, new = self._mask.shape[1], mask.shape[1]
            width = max(old, new)
            for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat(
                    [
                        F.pad(mine.keys, (0, 0, width - old, 0)),
                        F.pad(theirs.keys, (0, 0, width - new, 0)),
                    ]
                )
                mine.values = torch.cat(
                    [
                        F.pad(mine.values, (0, 0, width - old, 0)),
                        F.pad(theirs.values, (0, 0, width - new, 0)),
                    ]
                )
            self._mask = torch.cat(
                [F.pad(self._mask, (width - old, 0)), F.pad(mask, (width - new, 0))]
            )
            self._lengths = torch.cat([self._lengths, lengths])
            self._rows = self._rows + rows
        self.stats.running = len(self._rows)
        self.stats.max_batch_size = max(self.stats.max_batch_size, len(self._rows))

    def _advance(self, tokens: torch.Tensor) -> None:
        """Give each row its new id (the newest rows are the last ones when called after a
        join); rows that end leave the batch."""
        values = tokens.tolist()
        rows = self._rows[len(self._rows) - len(values) :]
        counted = 0
        for row, token in zip(rows, values, strict=True):
            row.last = token
            if token in self._end_ids:
                row.ended_by_eos = row.done = True
                continue
            row.ids.append(token)
            counted += 1
            if len(row.ids) >= row.max_new:
                row.done = True
            if row.stops or row.job.sink is not None:
                self._emit(row)
        self.stats.generated_tokens += counted
        now = time.monotonic()
        self._recent.append((now, counted))
        while self._recent and now - self._recent[0][0] > RATE_WINDOW_S:
            self._recent.popleft()
        for row in rows:
            if row.done:
                self._finish(row)
        self._compact()

    def _emit(self, row: _Row) -> None:
        """Stream the grown part of the row's text (whitespace at the ends and an incomplete
        UTF-8 character held back, as `PointLLM.stream` does) and check its stop strings."""
        text = self.llm.tokenizer.decode(row.ids, skip_special_tokens=True)
        if row.stops and any(stop in text for stop in row.stops):
            row.done = True
        if row.job.sink is None or text.endswith("\ufffd"):
            return
        ready = text.strip()
        if len(ready) > len(row.emitted) and ready.startswith(row.emitted):
            _send(row.job, ready[len(row.emitted) :])
            row.emitted = ready

    def _drop_abandoned_rows(self) -> None:
        for row in self._rows:
            if row.job.abandoned and not row.done:
                row.done = True
                self.stats.cancelled += 1
                self._finish(row)
        self._compact()

    def _compact(self) -> None:
        """Drop finished rows from the batch and the cache columns no remaining row uses."""
        keep = [i for i, row in enumerate(self._rows) if not row.done]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache, self._mask, self._lengths = [], None, None, None
            self.stats.running = 0
            return
        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        start = int(mask.any(0).int().argmax())  # the first column some row still uses
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self._mask = mask[:, start:]
        self._lengths = self._lengths.index_select(0, index)
        self._rows = [self._rows[i] for i in keep]
        self.stats.running = len(self._rows)

    # ---- endings ------------------------------------------------------------------------------

    def _finish(self, row: _Row) -> None:
        job = row.job
        text = self.llm.tokenizer.decode(row.ids, skip_special_tokens=True).strip()
        answer = Answer(text, len(row.ids), row.ended_by_eos)
        if not job.abandoned:
            self.stats.completed += 1
            self.latency.observe(time.monotonic() - job.submitted)
        if job.future is not None:
            with contextlib.suppress(InvalidStateError):  # cancelled by its caller meanwhile
                job.future.set_result(answer)
        else:
            if not job.abandoned and len(text) > len(row.emitted) and text.startswith(row.emitted):
                _send(job, text[len(row.emitted) :])
            job.answer.completion_tokens, job.answer.ended_by_eos = len(row.ids), row.ended_by_eos
            _send(job, None)
        with self._lock:
            self._open.discard(job)

    def _finish_failed(self, job: _Job, exc: BaseException) -> None:
        self.stats.failed += 1
        self._fail(job, exc)
        with self._lock:
            self._open.discard(job)

    def _finish_cancelled_unstarted(self, job: _Job) -> None:
        self.stats.cancelled += 1
        with self._lock:
            self._open.discard(job)

    @staticmethod
    def _fail(job: _Job, exc: BaseException) -> None:
        if job.future is not None:
            with contextlib.suppress(InvalidStateError):
                job.future.set_exception(exc)
        else:
            _send(job, exc)


def _send(job: _Job, item: str | BaseException | None) -> None:
    # RuntimeError: the consumer's event loop is gone, so nobody is listening.
    with contextlib.suppress(RuntimeError):
        job.sink(item)
