"""`pointllm serve`: the OpenAI-compatible API over a tiny random PointLLM.

The happy paths run against the real server process with the official `openai` client and check
that answers equal the Python API's answers for the same inputs; the many bad-request cases run
in-process (fast) through the ASGI app. The batcher itself is tested in test_batching.py.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from conftest import make_tiny_model
from fastapi.testclient import TestClient

import pointllm
from pointllm.model.pointllm import save_pointllm
from pointllm.serve.app import ServeSettings, create_app
from pointllm.serve.protocol import StopMatcher

NUM_POINTS = 256
MODEL = "tiny-pointllm"
KEY = "sekrit"
LOCAL = "http://127.0.0.1"  # a Host the server accepts by default


# ---- fixtures and helpers ---------------------------------------------------------------------


def write_tiny_checkpoint(base_tokenizer, out: Path) -> Path:
    """A random tiny PointLLM saved as a checkpoint. qwen2: its untied random output head gives
    varied tokens (a tied tiny llama repeats a newline, which decodes to an empty answer)."""
    model, tokenizer = make_tiny_model(base_tokenizer, arch="qwen2", num_points=NUM_POINTS)
    save_pointllm(model, tokenizer, out)
    return out


def cloud(n: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(size=(n, 3)), rng.random((n, 3))], axis=1).astype(np.float32)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=array.dtype == object)
    return buffer.getvalue()


def ply_bytes(points: np.ndarray) -> bytes:
    """An ascii PLY of (N, 6) xyz + rgb in [0, 1] (written as uint8 colors)."""
    header = (
        f"ply\nformat ascii 1.0\nelement vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    rows = [
        f"{x:.6f} {y:.6f} {z:.6f} {round(r * 255)} {round(g * 255)} {round(b * 255)}"
        for x, y, z, r, g, b in points
    ]
    return (header + "\n".join(rows) + "\n").encode()


def point_part(data: bytes | None = None, path: str | None = None) -> dict:
    source = {"data": base64.b64encode(data).decode()} if data is not None else {"path": path}
    return {"type": "point_cloud", "point_cloud": source}


def user(text: str, *parts: dict) -> dict:
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_server(args: list[str], log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start `python -m pointllm serve ARGS --port FREE` in the background: (process, url)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log_path, "wb") as log:  # the child keeps its own handle
        process = subprocess.Popen(
            [sys.executable, "-m", "pointllm", "serve", *args, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return process, f"http://127.0.0.1:{port}"


def wait_healthy(process: subprocess.Popen, url: str, log_path: Path, timeout: float = 180.0):
    """Wait until /health answers; fail the test with the server's log if it dies or hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    pytest.fail(f"server did not start; log:\n{log_path.read_text(errors='replace')[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def files(tmp_path_factory, base_tokenizer):
    """A checkpoint, an allowed directory with clouds (and a symlink escaping it), an outside
    directory, and the Python API loaded from the same checkpoint for reference answers."""
    root = tmp_path_factory.mktemp("serve")
    checkpoint = write_tiny_checkpoint(base_tokenizer, root / MODEL)
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    np.save(allowed / "cloud.npy", cloud(seed=1))
    (allowed / "cloud.ply").write_bytes(ply_bytes(cloud(seed=2)))
    np.save(outside / "secret.npy", cloud(seed=3))
    (allowed / "escape.npy").symlink_to(outside / "secret.npy")
    llm = pointllm.load(checkpoint, device="cpu")
    return {"checkpoint": checkpoint, "allowed": allowed, "outside": outside, "llm": llm}


@pytest.fixture(scope="module")
def launched(files, tmp_path_factory):
    """The real server process, started as the module begins so that it boots (importing torch,
    loading the checkpoint) while the in-process tests run."""
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    args = ["--model", str(files["checkpoint"]), "--allowed-dir", str(files["allowed"])]
    process, url = launch_server([*args, "--max-batch", "8"], log)
    yield process, url, log
    stop_server(process)


@pytest.fixture(scope="module", autouse=True)
def _boot_early(launched):
    """Requests `launched` before the first test."""


@pytest.fixture(scope="module")
def server(launched):
    wait_healthy(*launched)
    return launched[1]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def app_client(files):
    """The ASGI app in-process, with an API key and a 64 KiB body limit."""
    settings = ServeSettings(
        allowed_dirs=[files["allowed"]], api_key=KEY, max_request_bytes=64 * 1024
    )
    with TestClient(
        create_app(files["llm"], settings),
        base_url=LOCAL,
        headers={"Authorization": f"Bearer {KEY}"},
        raise_server_exceptions=False,
    ) as test_client:
        yield test_client


def post(app_client: TestClient, payload: dict | list | None = None, **kwargs) -> httpx.Response:
    return app_client.post("/v1/chat/completions", json=payload, **kwargs)


def chat(messages: list[dict], **fields) -> dict:
    return {"model": MODEL, "messages": messages, "max_tokens": 6, **fields}


def assert_error(response: httpx.Response, status: int, type_: str, *, param=None, says=""):
    """An error in OpenAI's shape with this status, type and param, whose message says `says`."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == type_
    assert error["param"] == param
    assert says in error["message"]
    return error


GEN = {"max_new_tokens": 8}

# ---- the ASGI app in-process: errors, auth, limits --------------------------------------------


def test_api_key_is_required_on_the_api_but_not_on_health(app_client):
    assert app_client.get("/v1/models").status_code == 200
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        response = app_client.get("/v1/models", headers=headers)
        assert_error(response, 401, "authentication_error", says="API key")
        assert response.json()["error"]["code"] == "invalid_api_key"
    response = post(app_client, chat([user("hi")]), headers={"Authorization": "Bearer nope"})
    assert_error(response, 401, "authentication_error")
    assert app_client.get("/health", headers={"Authorization": ""}).json()["status"] == "ok"


def test_request_size_limit(app_client):
    big = chat([user("hi", point_part(npy_bytes(cloud(n=4000))))])
    response = post(app_client, big)
    error = assert_error(response, 413, "invalid_request_error", says="65536 bytes")
    assert error["code"] == "request_too_large"
    # Without Content-Length (chunked), the limit still holds while the body streams in.
    body = json.dumps(big).encode()
    chunks = (body[i : i + 8192] for i in range(0, len(body), 8192))
    response = app_client.post(
        "/v1/chat/completions", content=chunks, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, "invalid_request_error")


@pytest.mark.parametrize(
    ("payload", "param", "says"),
    [
        ({"model": MODEL}, "messages", "Field required"),
        ({"model": MODEL, "messages": []}, "messages", "at least 1"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model", "Field required"),
        (chat([{"role": "user", "content": 3}]), "messages.0.content", "string or a list"),
        (chat([{"role": "robot", "content": "hi"}]), "messages.0.role", "Input should be"),
        (
            chat([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
            "messages.0.content.0",
            "'image_url'",
        ),
        (
            chat([user("hi", {"type": "point_cloud", "point_cloud": {"url": "http://x/a.npy"}})]),
            "messages.0.content.0.point_cloud.url",
            "Extra inputs",
        ),
        (
            chat([user("hi", {"type": "point_cloud", "point_cloud": {"data": "", "path": "a"}})]),
            "messages.0.content.0.point_cloud",
            "exactly one",
        ),
        (chat([user("hi")], n=2), "n", "n must be 1"),
        (chat([user("hi")], max_tokens=0), "max_tokens", "greater than or equal to 1"),
        (chat([user("hi")], temperature="hot"), "temperature", "valid number"),
        (chat([user("hi")], stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
        (chat([user("hi")], stop=["x" * 65]), "stop", "at most 64"),
        (chat([user("hi")], seed=-1), "seed", "greater than or equal to 0"),
        (chat([user("hi")], top_k=0), "top_k", "greater than or equal to 1"),
        (chat([user("hi")], repetition_penalty=0), "repetition_penalty", "greater than 0"),
        (chat([{"role": "user", "content": ""}] * 2049), "messages", "at most 2048 messages"),
        (
            chat([user("a", point_part(path="cloud.npy")), user("b", point_part(path="c.npy"))]),
            "messages.1.content",
            "at most one point cloud",
        ),
        (
            chat([user("a"), {"role": "assistant", "content": [point_part(path="cloud.npy")]}]),
            "messages.1.content",
            "only be sent in a user message",
        ),
        (chat([user("look: <point_patch>")]), "messages.0.content", "reserved token"),
        (chat([user("a"), user("b")]), "messages", "roles do not alternate"),
        (chat([user("hi")], max_tokens=100_000), "max_tokens", "context of 512 tokens"),
    ],
)
def test_malformed_requests_get_400_naming_the_field(app_client, payload, param, says):
    assert_error(post(app_client, payload), 400, "invalid_request_error", param=param, says=says)


@pytest.mark.parametrize(
    ("data", "status", "type_", "says"),
    [
        (b"\x00\x01garbage", 400, "invalid_request_error", "bytes of a .npy or .ply file"),
        (npy_bytes(np.array([{"a": 1}], dtype=object)), 400, "invalid_request_error", "pickle"),
        (npy_bytes(np.zeros((10, 2), np.float32)), 400, "invalid_request_error", "(.npy file)"),
        (b"ply\nformat ascii 1.0\nend_header\n", 400, "invalid_request_error", "(.ply file)"),
    ],
)
def test_bad_point_cloud_bytes_get_400(app_client, data, status, type_, says):
    response = post(app_client, chat([user("hi", point_part(data))]))
    error = assert_error(response, status, type_, param="point_cloud.data", says=says)
    assert "pointllm-upload" not in error["message"]  # no server temp paths leak out


def test_bad_base64_gets_400(app_client):
    response = post(
        app_client, chat([user("hi", {"type": "point_cloud", "point_cloud": {"data": "%%%"}})])
    )
    assert_error(response, 400, "invalid_request_error", param="point_cloud.data", says="base64")


def test_paths_must_stay_inside_the_allowed_directories(app_client, files):
    allowed, outside = files["allowed"], files["outside"]
    forbidden = [
        str(outside / "secret.npy"),
        "../outside/secret.npy",
        str(allowed / "escape.npy"),  # a symlink inside that points outside
        "escape.npy",
    ]
    for path in forbidden:
        response = post(app_client, chat([user("hi", point_part(path=path))]))
        assert_error(response, 403, "permission_error", param="point_cloud.path", says="outside")
    response = post(app_client, chat([user("hi", point_part(path="missing.npy"))]))
    assert_error(response, 400, "invalid_request_error", param="point_cloud.path", says="no such")
    response = post(app_client, chat([user("hi", point_part(path=str(allowed / "cloud.npy")))]))
    assert response.status_code == 200, response.text


def test_paths_are_refused_without_an_allowed_directory(files):
    with TestClient(create_app(files["llm"], ServeSettings()), base_url=LOCAL) as test_client:
        response = post(test_client, chat([user("hi", point_part(path="cloud.npy"))]))
        assert_error(
            response, 403, "permission_error", param="point_cloud.path", says="--allowed-dir"
        )


def test_unknown_model_route_and_method(app_client):
    response = post(app_client, {**chat([user("hi")]), "model": "gpt-4o"})
    error = assert_error(response, 404, "not_found_error", param="model", says="'gpt-4o'")
    assert error["code"] == "model_not_found"
    assert_error(app_client.get("/v1/nothing"), 404, "not_found_error")
    assert_error(app_client.get("/v1/chat/completions"), 405, "invalid_request_error")
    json_type = {"Content-Type": "application/json"}
    response = post(app_client, content=b"{not json", headers=json_type)
    assert_error(response, 400, "invalid_request_error", says="JSON")
    assert_error(post(app_client, [1, 2]), 400, "invalid_request_error", says="JSON object")
    assert app_client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL


def test_multi_turn_with_system_and_points_matches_chat(app_client, files):
    llm = files["llm"]
    path = files["allowed"] / "cloud.npy"
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is it?"},
        {"role": "assistant", "content": "A thing."},
        {"role": "user", "content": "What color?"},
    ]
    messages = [dict(m) for m in history]
    messages[1] = user("What is it?", point_part(path="cloud.npy"))
    response = post(app_client, chat(messages))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == llm.chat(
        history, path, max_new_tokens=6
    )


def test_stop_sequences_cut_the_answer(app_client, files):
    full = files["llm"].generate(None, "hi", max_new_tokens=6)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.index(stop)]
    reply = post(app_client, chat([user("hi")], stop=stop)).json()
    assert reply["choices"][0]["message"]["content"] == expected
    assert reply["choices"][0]["finish_reason"] == "stop"
    with app_client.stream(
        "POST", "/v1/chat/completions", json=chat([user("hi")], stop=[stop], stream=True)
    ) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_generation_failure_is_a_500_in_the_error_shape(app_client, monkeypatch):
    batcher = app_client.app.state.batcher

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(batcher.llm.model, "embed_inputs", broken)
    response = post(app_client, chat([user("hi")]))
    assert_error(response, 500, "server_error", says="CUDA out of memory")
    monkeypatch.undo()
    assert post(app_client, chat([user("hi")])).status_code == 200


def test_cli_checks_settings_before_loading_the_model(files, tmp_path, capsys):
    from pointllm.cli import main

    missing = tmp_path / "nowhere"
    args = ["serve", "--model", str(files["checkpoint"]), "--allowed-dir", str(missing)]
    assert main(args) == 1
    assert f"--allowed-dir {missing}: not a directory" in capsys.readouterr().err
    assert main(["serve", "--model", str(missing)]) == 1
    assert "no such checkpoint directory" in capsys.readouterr().err
    assert main(["serve", "--model", str(files["checkpoint"]), "--max-batch", "0"]) == 1
    assert "--max-batch must be >= 1" in capsys.readouterr().err
    assert main(["serve", "--model", str(files["checkpoint"]), "--max-queue", "0"]) == 1
    assert "--max-queue must be > 0" in capsys.readouterr().err
    # Listening beyond loopback needs the Host names clients use (DNS rebinding).
    assert main(["serve", "--model", str(files["checkpoint"]), "--host", "0.0.0.0"]) == 1
    assert "--allowed-host NAME" in capsys.readouterr().err


# ---- pieces -----------------------------------------------------------------------------------


def test_stop_matcher_holds_back_a_possible_stop_across_chunks():
    matcher = StopMatcher(["END", "##"])
    sent = [matcher.feed(c) for c in ["abc E", "N", "x #", "#tail"]]
    assert sent == ["abc ", "", "ENx ", ""]
    assert matcher.stopped and matcher.flush() == ""
    matcher = StopMatcher(["END"])
    assert matcher.feed("text E") == "text " and matcher.flush() == "E" and not matcher.stopped


# ---- the real server with the openai client (last: it boots meanwhile) ---------------------


def test_models_and_text_only_answer_match_the_python_api(client, files):
    llm = files["llm"]
    assert [m.id for m in client.models.list().data] == [MODEL]
    question = "What is this?"
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=8
    )
    expected = llm.generate(None, question, **GEN)
    assert expected  # the tiny model says something, so equality below means something
    assert reply.object == "chat.completion"
    assert reply.model == MODEL
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected
    prompt = llm.prompt_ids([{"role": "user", "content": question}], with_points=False)
    assert reply.usage.prompt_tokens == len(prompt)
    # The generated ids, counted, not the answer re-tokenized; a cut at max_tokens is "length".
    assert 0 < reply.usage.completion_tokens <= 8
    assert (reply.usage.completion_tokens == 8) == (reply.choices[0].finish_reason == "length")
    assert reply.usage.total_tokens == len(prompt) + reply.usage.completion_tokens


def test_streaming_joins_to_the_same_answer(client, files):
    question = "Describe it."
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == files["llm"].generate(None, question, **GEN)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


@pytest.mark.parametrize("kind", ["npy", "ply", "path"])
def test_point_cloud_answers_match_the_python_api(client, files, kind):
    llm = files["llm"]
    if kind == "npy":
        points, part = cloud(seed=5), point_part(npy_bytes(cloud(seed=5)))
    elif kind == "ply":
        path = files["allowed"] / "cloud.ply"
        points, part = path, point_part(path.read_bytes())
    else:  # relative to the allowed directory
        points, part = files["allowed"] / "cloud.npy", point_part(path="cloud.npy")
    question = "What is this object?"
    reply = client.chat.completions.create(
        model=MODEL, messages=[user(question, part)], max_tokens=8
    )
    expected = llm.generate(points, question, **GEN)
    assert reply.choices[0].message.content == expected
    assert expected != llm.generate(None, question, **GEN)  # the points reached the model
    prompt = llm.prompt_ids([{"role": "user", "content": question}], with_points=True)
    assert reply.usage.prompt_tokens == len(prompt)


def test_streaming_with_a_point_cloud(client, files):
    path = files["allowed"] / "cloud.npy"
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[user("And its color?", point_part(path=str(path)))],
        max_tokens=8,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == files["llm"].generate(path, "And its color?", **GEN)


def test_bad_requests_get_4xx_and_the_server_stays_healthy(client, files, server):
    escape = point_part(path=str(files["allowed"] / "escape.npy"))
    outside = point_part(path=str(files["outside"] / "secret.npy"))
    dotdot = point_part(path="../outside/secret.npy")
    bad_b64 = {"type": "point_cloud", "point_cloud": {"data": "not base64!"}}
    cases = [
        ([user("hi", bad_b64)], {}, openai.BadRequestError, "not valid base64"),
        ([user("hi", outside)], {}, openai.PermissionDeniedError, "outside the allowed"),
        ([user("hi", escape)], {}, openai.PermissionDeniedError, "outside the allowed"),
        ([user("hi", dotdot)], {}, openai.PermissionDeniedError, "outside the allowed"),
        ([{"role": "user", "content": "hi"}], {"n": 2}, openai.BadRequestError, "n must be 1"),
        ([{"role": "user", "content": 7}], {}, openai.BadRequestError, "string or a list"),
    ]
    for messages, extra, error, says in cases:
        with pytest.raises(error) as caught:
            client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, **extra)
        assert says in caught.value.body["message"]
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok"


def test_32_concurrent_clients_are_batched(client, files, server):
    llm = files["llm"]
    before = httpx.get(f"{server}/health").json()["batching"]
    # Four distinct requests, eight clients each: half text-only, half with a point cloud;
    # half of each streamed.
    questions = ["What is it?", "Name the object.", "Which color?", "How big is it?"]

    def ask(i: int) -> str:
        question = questions[i % 4]
        message = user(question, point_part(path="cloud.npy")) if i % 2 else user(question)
        if (i // 4) % 2:
            stream = client.chat.completions.create(
                model=MODEL, messages=[message], max_tokens=4, stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        reply = client.chat.completions.create(model=MODEL, messages=[message], max_tokens=4)
        return reply.choices[0].message.content

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, range(32)))
    cloud_path = files["allowed"] / "cloud.npy"
    expected = [
        llm.generate(cloud_path if i % 2 else None, q, max_new_tokens=4)
        for i, q in enumerate(questions)
    ]
    assert answers == [expected[i % 4] for i in range(32)]  # batched = one by one
    after = httpx.get(f"{server}/health").json()["batching"]
    assert after["requests"] - before["requests"] == 32
    assert after["batches"] - before["batches"] < 32  # prefills shared by newcomers
    assert 1 < after["max_batch_size"] <= 8
    assert after["queued"] == 0


def test_a_client_that_leaves_a_stream_stops_its_generation(files, server):
    body = chat([user("Tell me everything.")], max_tokens=400, stream=True)
    before = httpx.get(f"{server}/health").json()["batching"]["cancelled"]
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # the role chunk; then hang up mid-answer
    deadline = time.monotonic() + 30
    while httpx.get(f"{server}/health").json()["batching"]["cancelled"] == before:
        assert time.monotonic() < deadline, "the abandoned generation was not stopped"
        time.sleep(0.1)
    reply = httpx.post(f"{server}/v1/chat/completions", json=chat([user("hi")]), timeout=30)
    assert reply.status_code == 200
