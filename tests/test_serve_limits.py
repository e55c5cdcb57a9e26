"""`pointllm serve` under hostile input and faults, against real server processes on loopback:
each probe asserts the status, a time bound and, where memory was the problem, the server's RSS.

Two servers boot in parallel when the module starts: `limited` (small limits on points and
text) and `narrow` (one job at a time, a queue of 2, a 0.2 s queue timeout), started through a
wrapper whose worker loop breaks when it takes a job asking "break the worker" (the last test),
to see the server report it and exit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from test_serve import (
    MODEL,
    chat,
    cloud,
    free_port,
    launch_server,
    npy_bytes,
    point_part,
    stop_server,
    user,
    wait_healthy,
    write_tiny_checkpoint,
)

MAX_POINTS = 4096
MAX_TEXT_CHARS = 20_000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, base_tokenizer) -> Path:
    return write_tiny_checkpoint(base_tokenizer, tmp_path_factory.mktemp("limits") / MODEL)


@pytest.fixture(scope="module")
def allowed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("allowed")
    np.save(root / "cloud.npy", cloud(seed=1))
    return root


BREAK = "break the worker"
FAULTY = f"""
import sys
from pointllm.serve import batching

original = batching.Batcher._next_batch

def next_batch(self):
    batch = original(self)
    if batch and batch[0].request.history[-1]["content"] == {BREAK!r}:  # holding its job
        raise RuntimeError("injected fault in the worker loop")
    return batch

batching.Batcher._next_batch = next_batch
from pointllm.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def servers(checkpoint, allowed, tmp_path_factory):
    """Start the two servers together (they boot while the first tests run)."""
    logs = tmp_path_factory.mktemp("logs")
    base = ["--model", str(checkpoint), "--allowed-dir", str(allowed)]
    limited = launch_server(
        [*base, "--max-points", str(MAX_POINTS), "--max-text-chars", str(MAX_TEXT_CHARS)],
        logs / "limited.log",
    )
    script = logs / "faulty.py"
    script.write_text(FAULTY)
    port = free_port()
    narrow_args = ["--max-batch", "1", "--max-queue", "2", "--queue-timeout", "0.2"]
    with open(logs / "narrow.log", "wb") as log:
        narrow_process = subprocess.Popen(
            [sys.executable, str(script), "serve", *base, *narrow_args, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    narrow = (narrow_process, f"http://127.0.0.1:{port}")
    started = {"limited": limited, "narrow": narrow}
    yield {name: (process, url, logs / f"{name}.log") for name, (process, url) in started.items()}
    for process, _ in started.values():
        stop_server(process)


@pytest.fixture(scope="module", autouse=True)
def _boot_early(servers):
    """Requests `servers` before the first test."""


def ready(servers, name: str) -> tuple[psutil.Process, str]:
    process, url, log = servers[name]
    wait_healthy(process, url, log)
    return psutil.Process(process.pid), url


def rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


def post(url: str, payload, timeout: float = 60, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=timeout, **kwargs)


def timed_post(url: str, payload, **kwargs) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = post(url, payload, **kwargs)
    return response, time.monotonic() - started


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# ---- load and faults ----------------------------------------------------------------------------


def test_mixed_concurrent_load_with_cancellations(servers):
    """32 clients at once: streaming and not, different max_tokens, with and without a point
    cloud, seeded sampling, and 4 streams dropped early. Every kept request answers 200, and the
    server is idle and healthy afterwards (the worker used to die here and the server hang)."""
    _, url = ready(servers, "limited")
    data = point_part(npy_bytes(cloud(seed=3)))

    def one(i: int) -> str:
        message = user(f"Question {i % 5}?", data) if i % 3 == 0 else user(f"Question {i % 5}?")
        extra = {"temperature": 0.8, "seed": i} if i % 7 == 0 else {}
        body = chat([message], max_tokens=(4, 8, 16)[i % 3], stream=bool(i % 2), **extra)
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            if i % 8 == 1:  # a streaming client that leaves after the first event
                next(r.iter_lines())
                return "left"
            text = r.read().decode()
        if r.status_code != 200 or '"error"' in text:
            return f"{r.status_code}: {text[:200]}"
        return "ok"

    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(one, range(32)))
    assert time.monotonic() - started < 60
    assert outcomes.count("left") == 4
    assert [o for o in outcomes if o not in ("ok", "left")] == []
    health = httpx.get(f"{url}/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/health", timeout=5).json()["batching"]["queued"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_huge_seed_is_refused_and_greedy_batch_mates_are_unaffected(servers):
    _, url = ready(servers, "limited")
    response, seconds = timed_post(url, chat([user("hi")], seed=2**70))
    assert error_of(response, 400)["param"] == "seed" and seconds < 2
    # A greedy request's seed is ignored: batched with unseeded ones, the answers are the same.
    bodies = [chat([user("hello there")], max_tokens=8)] * 6
    bodies.insert(0, chat([user("hello there")], max_tokens=8, seed=2**63 - 1))
    with ThreadPoolExecutor(7) as pool:
        replies = list(pool.map(lambda b: post(url, b), bodies))
    assert [r.status_code for r in replies] == [200] * 7
    assert len({r.json()["choices"][0]["message"]["content"] for r in replies}) == 1


def test_long_stop_strings_are_refused_fast_without_memory(servers):
    process, url = ready(servers, "limited")
    before = rss_mb(process)
    response, seconds = timed_post(url, chat([user("hi")], stop=["ab" * 5000]))
    error = error_of(response, 400)
    assert error["param"] == "stop" and "at most 64" in error["message"]
    assert seconds < 2 and rss_mb(process) - before < 20
    # Stop strings within the limit work, and eight distinct ones keep little memory.
    before = rss_mb(process)
    for i in range(8):
        stop = f"{i}" + "x" * 63
        assert post(url, chat([user("hi")], stop=[stop])).status_code == 200
    assert rss_mb(process) - before < 300


def test_ply_claiming_a_billion_faces_is_refused_fast(servers):
    process, url = ready(servers, "limited")
    header = (
        "ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\n"
        "property float y\nproperty float z\nelement face 1000000000\n"
        "property list uchar int vertex_indices\nend_header\n"
    )
    before = rss_mb(process)
    bomb = point_part(header.encode() + bytes(36))
    response, seconds = timed_post(url, chat([user("hi", bomb)]))
    error = error_of(response, 400)
    assert "declares 1000000000 face rows" in error["message"]
    assert "pointllm-upload" not in error["message"]
    assert seconds < 3 and rss_mb(process) - before < 50  # was 80 s and 8.9 GB


def test_points_per_cloud_limit(servers):
    _, url = ready(servers, "limited")
    big = point_part(npy_bytes(cloud(n=MAX_POINTS + 1)))
    error = error_of(post(url, chat([user("hi", big)])), 400)
    assert f"the limit is {MAX_POINTS} per cloud" in error["message"]
    assert post(url, chat([user("hi", point_part(npy_bytes(cloud(n=MAX_POINTS))))])).is_success


def test_a_30_mb_message_is_refused_by_its_length_before_tokenizing(servers):
    process, url = ready(servers, "limited")
    before = rss_mb(process)
    response, seconds = timed_post(url, chat([user("word " * 6_000_000)]))
    error = error_of(response, 400)
    assert error["code"] == "context_length_exceeded"
    assert f"at most {MAX_TEXT_CHARS}" in error["message"]
    assert seconds < 10 and rss_mb(process) - before < 400  # was 30 s, 5.1 GB peak, 2.9 GB kept


def test_a_full_queue_answers_429_with_retry_after(servers):
    _, url = ready(servers, "narrow")  # one job at a time, 2 may wait
    body = chat([user("Tell me a long story.")], max_tokens=300)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: timed_post(url, body), range(8)))
    statuses = sorted(r.status_code for r, _ in replies)
    assert 429 in statuses, statuses
    full = next(r for r, _ in replies if r.status_code == 429)
    assert error_of(full, 429)["code"] == "queue_full"
    assert int(full.headers["Retry-After"]) > 0
    assert all(seconds < 2 for r, seconds in replies if r.status_code == 429)
    assert set(statuses) <= {200, 429, 503}


def test_a_request_that_waits_past_the_queue_timeout_gets_503(servers):
    _, url = ready(servers, "narrow")
    long = chat([user("Tell me a long story.")], max_tokens=450)
    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(post, url, long)
        time.sleep(0.1)  # the first request is queued first; it generates for ~0.8 s here
        response, seconds = timed_post(url, chat([user("hi")]))
        holder.result()
    assert error_of(response, 503)["code"] == "queue_timeout"
    assert "Retry-After" in response.headers and 0.15 < seconds < 3


def test_a_non_streaming_client_that_hangs_up_cancels_its_job(servers):
    _, url = ready(servers, "narrow")
    cancelled = httpx.get(f"{url}/health").json()["batching"]["cancelled"]
    with pytest.raises(httpx.ReadTimeout):
        post(url, chat([user("Tell me everything.")], max_tokens=450), timeout=0.2)
    deadline = time.monotonic() + 20
    while httpx.get(f"{url}/health").json()["batching"]["cancelled"] == cancelled:
        assert time.monotonic() < deadline, "the abandoned job was not cancelled"
        time.sleep(0.1)
    response, seconds = timed_post(url, chat([user("hi")], max_tokens=4))
    assert response.status_code == 200 and seconds < 5  # the worker is free again


# ---- same-origin defaults and errors ------------------------------------------------------------


def test_only_json_bodies_and_loopback_hosts(servers):
    _, url = ready(servers, "limited")
    body = json.dumps(chat([user("hi")]))
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        response = httpx.post(
            f"{url}/v1/chat/completions", content=body, headers=headers, timeout=10
        )
        assert error_of(response, 415)["code"] == "unsupported_media_type"
    port = url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io"):
        response = post(url, chat([user("hi")]), headers={"Host": host})
        assert error_of(response, 400)["code"] == "invalid_host"
        assert httpx.get(f"{url}/health", headers={"Host": host}).status_code == 400
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert httpx.get(f"{url}/health", headers={"Host": host}).status_code == 200
    # No CORS: a browser gets no permission to read answers from another origin.
    origin = {"Origin": "http://evil.example"}
    response = httpx.options(
        f"{url}/v1/chat/completions",
        headers={**origin, "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in response.headers
    assert (
        "access-control-allow-origin" not in httpx.get(f"{url}/v1/models", headers=origin).headers
    )


def test_malformed_inputs_are_400_without_server_paths(servers, allowed):
    _, url = ready(servers, "limited")
    nested = b"[" * 100_000 + b"]" * 100_000
    response = httpx.post(
        f"{url}/v1/chat/completions",
        content=nested,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert "nested too deeply" in error_of(response, 400)["message"]
    long_path = point_part(path="a/" * 3000 + "cloud.npy")
    error = error_of(post(url, chat([user("hi", long_path)])), 400)
    assert "ENAMETOOLONG" in error["message"] and str(allowed) not in error["message"]
    assert len(error["message"]) < 400
    long_name = point_part(path="x" * 6000 + ".npy")
    error = error_of(post(url, chat([user("hi", long_name)])), 400)
    assert str(allowed) not in error["message"]
    tool_turn = {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}
    error = error_of(post(url, chat([user("hi"), tool_turn, user("and?")])), 400)
    assert error["param"] == "messages.1" and "tool calls are not supported" in error["message"]


def test_usage_counts_the_generated_ids(servers):
    _, url = ready(servers, "limited")
    body = chat([user("Describe a chair in detail.")], max_tokens=20)
    reply = post(url, body).json()
    tokens = reply["usage"]["completion_tokens"]
    assert 0 < tokens <= 20
    assert (tokens == 20) == (reply["choices"][0]["finish_reason"] == "length")
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=streamed, timeout=60) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-2])["usage"]["completion_tokens"] == tokens


def test_concurrent_uploads_share_a_decode_budget():
    """The budget admits requests while their bytes fit and makes the rest wait, in order."""
    import asyncio

    from pointllm.serve.app import _ByteBudget
    from pointllm.serve.protocol import APIError

    async def scenario() -> list[str]:
        budget, log = _ByteBudget(100), []

        async def upload(name: str, size: int, hold: float, timeout: float = 5):
            try:
                async with budget.hold(size, timeout):
                    log.append(f"+{name}")
                    await asyncio.sleep(hold)
                    log.append(f"-{name}")
            except APIError as exc:
                log.append(f"{name}:{exc.status}")

        await asyncio.gather(
            upload("a", 60, 0.2),
            upload("b", 60, 0.0),
            upload("c", 500, 0.0),  # bigger than the budget: runs alone
            upload("d", 60, 0.0, timeout=0.05),  # gives up waiting
        )
        return log

    # b and c wait for a; d gives up (429); then b, and c (as big as the whole budget) alone.
    assert asyncio.run(scenario()) == ["+a", "d:429", "-a", "+b", "-b", "+c", "-c"]


# ---- last: a worker that dies ----------------------------------------------------------------


def test_worker_death_gives_503_and_a_nonzero_exit(servers):
    """Last: it ends the `narrow` server."""
    process, url, log = servers["narrow"]
    wait_healthy(process, url, log)
    assert post(url, chat([user("first")])).status_code == 200
    response = post(url, chat([user(BREAK)]))  # the worker loop breaks holding its job
    assert error_of(response, 503)["code"] == "worker_died"
    try:
        health = httpx.get(f"{url}/health", timeout=2)
        assert health.status_code == 503 and health.json()["status"] == "error"
    except httpx.TransportError:
        pass  # already exited
    assert process.wait(timeout=20) == 70
    assert "the generation worker died" in log.read_text()
