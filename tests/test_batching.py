"""Continuous batching (`pointllm.serve.batching`) on a tiny random PointLLM in fp32: requests that
join and leave a running batch get the answers they get alone, per-row sampling settings and
seeds hold within a shared batch, cancellation stops one row, faults stay with their job, and the
metrics page and --served-model-name reach clients."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from conftest import make_tiny_model
from fastapi.testclient import TestClient

from pointllm.infer.api import PointLLM
from pointllm.serve.app import ServeSettings, create_app
from pointllm.serve.batching import Batcher, GenerationRequest
from pointllm.serve.metrics import render

LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def llm(base_tokenizer) -> PointLLM:
    # qwen2: an untied random output head gives varied tokens (see test_serve.py).
    model, tokenizer = make_tiny_model(base_tokenizer, arch="qwen2", num_points=256)
    return PointLLM(model.float(), tokenizer, model_name="tiny")


@pytest.fixture(scope="module")
def clouds(llm) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    return [llm.prepare_points(rng.random((300, 6)).astype(np.float32)) for _ in range(2)]


def ask(text: str, points=None, seed=None, **gen) -> GenerationRequest:
    return GenerationRequest([{"role": "user", "content": text}], points, gen, seed)


MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is it?"},
    {"role": "assistant", "content": "A thing."},
    {"role": "user", "content": "What color?"},
]


class Collector:
    """A stream sink that keeps chunks and calls `on_first` at the first one (worker thread)."""

    def __init__(self, on_first=None):
        self.chunks: list[str] = []
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.on_first = on_first

    def __call__(self, item) -> None:
        if item is None:
            self.done.set()
        elif isinstance(item, BaseException):
            self.error = item
            self.done.set()
        else:
            if not self.chunks and self.on_first is not None:
                self.on_first()
            self.chunks.append(item)

    @property
    def text(self) -> str:
        assert self.done.wait(60), "the stream did not end"
        assert self.error is None, self.error
        return "".join(self.chunks)


def solo(llm: PointLLM, request: GenerationRequest) -> str:
    """The answer with nothing else running: a batcher that takes one request at a time."""
    batcher = Batcher(llm, max_batch=1)
    batcher.start()
    try:
        return batcher.submit(request).result(60).text
    finally:
        batcher.close()


def test_requests_join_and_leave_mid_generation_with_one_by_one_answers(llm, clouds):
    """A long streamed answer runs; at its first chunk, four requests of other kinds (points,
    multi-turn with points, short, streamed) join it. Each answer equals the Python API's greedy
    answer alone, and the short ones finish while the long one still runs."""
    long = ask("Tell me everything about it.", clouds[0], max_new_tokens=48)
    joiners = [
        ask("What is this?", clouds[1], max_new_tokens=12),
        GenerationRequest(MULTI_TURN, clouds[0], {"max_new_tokens": 10}),
        ask("hi", max_new_tokens=3),
        ask("Describe it.", max_new_tokens=20),  # streamed below
    ]
    batcher = Batcher(llm, max_batch=8)
    finished: list[str] = []
    futures = []
    streamed = Collector()

    def join_now() -> None:
        for name, request in zip("abc", joiners[:3], strict=True):
            future = batcher.submit(request)
            future.add_done_callback(lambda _, name=name: finished.append(name))
            futures.append(future)
        batcher.submit_stream(joiners[3], streamed)

    first = Collector(on_first=join_now)
    batcher.start()
    try:
        batcher.submit_stream(long, first)
        long_text = first.text
        finished.append("long")
        answers = [f.result(60) for f in futures]
        streamed_text = streamed.text
    finally:
        batcher.close()
    assert long_text == llm.chat(long.history, long.points, **long.gen)
    for request, answer in zip(joiners[:3], answers, strict=True):
        assert answer.text == llm.chat(request.history, request.points, **request.gen)
    assert streamed_text == llm.chat(joiners[3].history, None, **joiners[3].gen)
    assert len({a.text for a in answers} | {long_text}) == 4  # distinct answers: a real check
    assert finished.index("c") < finished.index("long")  # left the batch mid-generation
    assert batcher.stats.batches == 2  # the long one's prefill, then the joiners' together
    assert batcher.stats.max_batch_size == 5
    assert batcher.stats.completed == 5 and batcher.stats.running == 0


def test_cancelling_one_row_leaves_the_others_running(llm):
    keep = ask("Keep talking.", max_new_tokens=30)
    batcher = Batcher(llm, max_batch=4)
    cancel_event: list[threading.Event] = []
    stopper = Collector(on_first=lambda: cancel_event[0].set())
    batcher.start()
    try:
        kept = batcher.submit(keep)
        cancel_event.append(batcher.submit_stream(ask("Stop me.", max_new_tokens=200), stopper))
        text = kept.result(60).text
        assert stopper.done.wait(30)
    finally:
        batcher.close()
    assert text == llm.chat(keep.history, None, **keep.gen)
    assert batcher.stats.cancelled == 1 and batcher.stats.completed == 1
    # The cancelled row stopped soon: far fewer than its 200 tokens were generated.
    assert batcher.stats.generated_tokens < 30 + 10


def test_per_row_sampling_settings_and_seeds_in_one_batch(llm, clouds):
    """Sampled rows with their own temperature, top_p and seed, beside greedy rows, each give
    the answer they give alone; top_k=1 sampling equals greedy; seeds matter."""
    requests = [
        ask("Say something.", seed=1, max_new_tokens=16, temperature=1.5),
        ask("Say something.", seed=2, max_new_tokens=16, temperature=0.7, top_p=0.9),
        ask("Say something.", clouds[0], seed=3, max_new_tokens=16, temperature=1.0),
        ask("Say something.", max_new_tokens=16),  # greedy
        ask("Say something.", seed=4, max_new_tokens=16, temperature=2.0, top_k=1),
    ]
    batcher = Batcher(llm, max_batch=8, window_s=0.2)  # all six start together
    batcher.start()
    try:
        together = [f.result(60).text for f in [batcher.submit(r) for r in requests]]
    finally:
        batcher.close()
    assert batcher.stats.batches == 1 and batcher.stats.max_batch_size == 5
    alone = [solo(llm, r) for r in requests]
    assert together == alone
    greedy = llm.chat(requests[3].history, None, max_new_tokens=16)
    assert together[3] == greedy and together[4] == greedy  # top_k=1 leaves one choice
    assert len(set(together[:3])) == 3 and greedy not in together[:3]
    reseeded = ask("Say something.", seed=9, max_new_tokens=16, temperature=1.5)
    assert solo(llm, reseeded) != together[0]


def test_repetition_penalty_applies_to_its_row_only(llm):
    """Two rows see the same logits, whose best id occurs in the prompts: the row with a
    repetition penalty of 2 picks the runner-up, the plain greedy row the best."""
    from pointllm.serve.batching import _Job, _Row

    batcher = Batcher(llm)
    batcher._setup()
    penalized = _Row(_Job(ask("x", repetition_penalty=2.0)), [5, 7], batcher._defaults)
    plain = _Row(_Job(ask("x")), [5, 7], batcher._defaults)
    logits = torch.zeros(2, 10)
    logits[:, 7], logits[:, 3] = 2.0, 1.5  # id 7 is in the prompt
    assert batcher._choose([penalized, plain], logits).tolist() == [3, 7]
    penalized.ids.append(3)  # generated ids count too: 1.9 -> 0.95 loses to id 4
    logits = torch.zeros(1, 10)
    logits[0, 3], logits[0, 4] = 1.9, 1.0
    assert batcher._choose([penalized], logits).tolist() == [4]


def test_stop_strings_and_max_tokens_end_rows(llm):
    full = llm.chat([{"role": "user", "content": "Go on."}], None, max_new_tokens=24)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    batcher = Batcher(llm, max_batch=4, window_s=0.2)
    batcher.start()
    try:
        cut = batcher.submit(ask("Go on.", max_new_tokens=24, stop_strings=[stop]))
        whole = batcher.submit(ask("Go on.", max_new_tokens=24))
        cut, whole = cut.result(60), whole.result(60)
    finally:
        batcher.close()
    assert whole.text == full and whole.completion_tokens == 24 and not whole.ended_by_eos
    assert stop in cut.text and full.startswith(cut.text)  # ended at the stop (cut by the app)
    assert cut.completion_tokens < 24


def test_a_failing_prefill_fails_only_its_job(llm, clouds):
    """A cloud with the wrong number of columns fails its prefill; the group is retried job by
    job, and its batch mates get their normal answers."""
    good = [ask(f"Question {i}?", clouds[i % 2], max_new_tokens=6) for i in range(3)]
    poison = ask("Poison?", torch.rand(256, 5), max_new_tokens=6)
    batcher = Batcher(llm, max_batch=8, window_s=0.2)
    batcher.start()
    try:
        futures = [batcher.submit(r) for r in [good[0], poison, good[1], good[2]]]
        outcomes = [f.exception(60) or f.result().text for f in futures]
    finally:
        batcher.close()
    assert isinstance(outcomes[1], Exception)
    assert [outcomes[0], *outcomes[2:]] == [llm.chat(r.history, r.points, **r.gen) for r in good]
    assert batcher.stats.failed == 1 and batcher.stats.completed == 3


def test_a_failing_decode_step_fails_its_rows_and_the_worker_goes_on(llm, monkeypatch):
    language_model = llm.model.language_model
    forward = language_model.forward
    calls = {"decode": 0}

    def flaky(*args, **kwargs):
        if kwargs["inputs_embeds"].shape[1] == 1:  # a decode step
            calls["decode"] += 1
            if calls["decode"] == 2:
                raise RuntimeError("out of memory")
        return forward(*args, **kwargs)

    monkeypatch.setattr(language_model, "forward", flaky)
    batcher = Batcher(llm, max_batch=4, window_s=0.2)
    batcher.start()
    try:
        futures = [batcher.submit(ask(f"q{i}", max_new_tokens=8)) for i in range(2)]
        errors = [f.exception(60) for f in futures]
        after = batcher.submit(ask("again", max_new_tokens=4)).result(60)
    finally:
        batcher.close()
        monkeypatch.undo()
    assert [str(e) for e in errors] == ["out of memory"] * 2
    assert batcher.alive is False and batcher.failure is None  # closed, not dead
    assert after.text == llm.chat([{"role": "user", "content": "again"}], None, max_new_tokens=4)
    assert batcher.stats.failed == 2 and batcher.stats.completed == 1


def test_one_at_a_time_when_max_batch_is_1(llm):
    batcher = Batcher(llm, max_batch=1)
    batcher.start()
    try:
        futures = [batcher.submit(ask(f"q{i}", max_new_tokens=4)) for i in range(3)]
        [f.result(60) for f in futures]
    finally:
        batcher.close()
    assert batcher.stats.max_batch_size == 1 and batcher.stats.batches == 3


def test_metrics_page_counts_requests_tokens_and_first_token_times(llm):
    batcher = Batcher(llm, max_batch=4)
    batcher.start()
    try:
        answers = [batcher.submit(ask(f"q{i}", max_new_tokens=5)).result(60) for i in range(3)]
        deadline = time.monotonic() + 10
        while batcher.stats.running:  # an answer is sent before its row leaves the batch
            assert time.monotonic() < deadline
            time.sleep(0.01)
        page = render(batcher, "my-model")
    finally:
        batcher.close()
    lines = page.splitlines()
    tokens = sum(a.completion_tokens for a in answers)
    expected = [
        "# TYPE pointllm_queue_length gauge",
        'pointllm_queue_length{model="my-model"} 0',
        'pointllm_running_requests{model="my-model"} 0',
        'pointllm_batch_capacity{model="my-model"} 4',
        'pointllm_worker_up{model="my-model"} 1',
        f'pointllm_generated_tokens_total{{model="my-model"}} {tokens}',
        'pointllm_requests_total{model="my-model",outcome="completed"} 3',
        'pointllm_requests_total{model="my-model",outcome="failed"} 0',
        "# TYPE pointllm_time_to_first_token_seconds histogram",
        'pointllm_time_to_first_token_seconds_bucket{model="my-model",le="+Inf"} 3',
        'pointllm_time_to_first_token_seconds_count{model="my-model"} 3',
        'pointllm_request_latency_seconds_count{model="my-model"} 3',
    ]
    for line in expected:
        assert line in lines, line
    rate = next(ln for ln in lines if ln.startswith("pointllm_generation_tokens_per_second{"))
    assert float(rate.split()[-1]) == pytest.approx(tokens / 10.0)
    # Buckets are cumulative and end at the count.
    buckets = [ln for ln in lines if ln.startswith("pointllm_time_to_first_token_seconds_bucket")]
    counts = [int(ln.split()[-1]) for ln in buckets]
    assert counts == sorted(counts) and counts[-1] == 3


def test_served_model_name_and_metrics_endpoint(llm):
    settings = ServeSettings(served_model_name="pointllm-7b")
    with TestClient(create_app(llm, settings), base_url=LOCAL) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["pointllm-7b"]
        body = {"model": "pointllm-7b", "messages": [{"role": "user", "content": "hi"}]}
        reply = client.post("/v1/chat/completions", json={**body, "max_tokens": 4})
        assert reply.status_code == 200 and reply.json()["model"] == "pointllm-7b"
        assert reply.json()["choices"][0]["message"]["content"] == llm.chat(
            body["messages"], None, max_new_tokens=4
        )
        # top_k=1 leaves one choice: hot sampling gives the greedy answer.
        hot = {**body, "max_tokens": 8, "temperature": 2.0, "top_k": 1, "seed": 3}
        reply = client.post("/v1/chat/completions", json=hot)
        assert reply.json()["choices"][0]["message"]["content"] == llm.chat(
            body["messages"], None, max_new_tokens=8
        )
        other = client.post("/v1/chat/completions", json={**body, "model": "tiny"})
        assert other.status_code == 404 and "'pointllm-7b'" in other.json()["error"]["message"]
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'pointllm_requests_total{model="pointllm-7b",outcome="completed"} 2' in metrics.text
    with pytest.raises(ValueError, match="--served-model-name must not be empty"):
        ServeSettings(served_model_name=" ")


def test_unseeded_sampling_differs_between_runs(llm):
    request = ask("Say something.", max_new_tokens=16, temperature=1.5)
    assert len({solo(llm, request) for _ in range(3)}) > 1
