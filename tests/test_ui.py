"""The web demo (`pointllm serve --ui`), driven headless with `gradio_client` against the real
server process: pick an example, upload a file, chat, clear; the plot holds the very points the
model sees, and answers are the Python API's answers."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from test_serve import (
    cloud,
    launch_server,
    ply_bytes,
    stop_server,
    wait_healthy,
    write_tiny_checkpoint,
)

import pointllm
from pointllm.serve.app import ServeSettings, create_app
from pointllm.serve.ui import MAX_PLOTTED, example_points, point_figure

ANSWER_TOKENS = 12  # the demo server's --max-new-tokens


@pytest.fixture(scope="module")
def demo(tmp_path_factory, base_tokenizer):
    root = tmp_path_factory.mktemp("ui")
    checkpoint = write_tiny_checkpoint(base_tokenizer, root / "tiny-pointllm")
    args = ["--model", str(checkpoint), "--ui", "--max-new-tokens", str(ANSWER_TOKENS)]
    process, url = launch_server(args, root / "serve.log")
    llm = pointllm.load(checkpoint, device="cpu")  # the reference, loaded while the server boots
    wait_healthy(process, url, root / "serve.log")
    yield {"url": url, "llm": llm, "root": root, "checkpoint": checkpoint}
    stop_server(process)


@pytest.fixture(scope="module")
def ui(demo):
    client = Client(f"{demo['url']}/ui/", verbose=False)
    yield client
    client.close()  # an open event stream would hold up the server's shutdown


def plotted(plot: dict) -> tuple[np.ndarray, list[str]]:
    """(N, 3) xyz and the N marker colors of the plot output."""
    assert plot["type"] == "plotly"
    trace = json.loads(plot["plot"])["data"][0]
    return np.stack([trace["x"], trace["y"], trace["z"]], axis=1), trace["marker"]["color"]


def text_of(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(p["text"] for p in content)


def assert_shows(plot: dict, points: np.ndarray) -> None:
    xyz, colors = plotted(plot)
    np.testing.assert_allclose(xyz, points[:, :3], atol=1e-6)
    r, g, b = np.rint(points[0, 3:6] * 255).astype(int)
    assert colors[0] == f"rgb({r},{g},{b})" and len(colors) == len(points)


def test_example_chat_and_clear(ui, demo):
    llm = demo["llm"]
    plot, caption, chat = ui.predict("mug", api_name="/example")
    points = llm.prepare_points(example_points("mug")).numpy()  # (256, 6), what the model sees
    assert_shows(plot, points)
    assert "mug" in caption and f"{len(points)} points" in caption
    assert chat == []

    question = "What is this?"
    box, chat = ui.predict(question, api_name="/ask")
    assert box == ""
    assert [m["role"] for m in chat] == ["user", "assistant"]
    assert text_of(chat[0]) == question
    first = text_of(chat[1])
    turn = [{"role": "user", "content": question}]
    assert first == llm.chat(turn, points, max_new_tokens=ANSWER_TOKENS)

    _, chat = ui.predict("And its color?", api_name="/ask")  # the conversation goes on
    assert [m["role"] for m in chat] == ["user", "assistant"] * 2
    history = [*turn, {"role": "assistant", "content": first}]
    history.append({"role": "user", "content": "And its color?"})
    assert text_of(chat[3]) == llm.chat(history, points, max_new_tokens=ANSWER_TOKENS)

    assert ui.predict(api_name="/clear") == []
    _, chat = ui.predict(question, api_name="/ask")
    assert len(chat) == 2 and text_of(chat[1]) == first  # a fresh conversation


def test_upload_shows_the_file_and_bad_files_get_a_clear_error(ui, demo):
    path = demo["root"] / "red_thing.ply"
    path.write_bytes(ply_bytes(cloud(n=500, seed=7)))
    plot, caption, chat = ui.predict(handle_file(str(path)), api_name="/upload")
    assert_shows(plot, demo["llm"].prepare_points(path).numpy())
    assert "red_thing.ply" in caption and chat == []

    bad = demo["root"] / "flat.npy"
    np.save(bad, np.zeros((10, 2), np.float32))
    with pytest.raises(AppError, match="flat.npy"):
        ui.predict(handle_file(str(bad)), api_name="/upload")


def test_page_and_api_are_served_together(demo):
    url = demo["url"]
    page = httpx.get(f"{url}/", follow_redirects=True)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert str(page.url).rstrip("/").endswith("/ui")
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "tiny-pointllm"


def test_the_ui_asks_for_the_api_key_when_one_is_set(demo):
    llm = demo["llm"]
    app = create_app(llm, ServeSettings(api_key="sekrit", ui=True))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/ui/config").status_code == 401
        login = client.post("/ui/login", data={"username": "me", "password": "wrong"})
        assert login.status_code == 400
        login = client.post("/ui/login", data={"username": "me", "password": "sekrit"})
        assert login.status_code == 200
        assert client.get("/ui/config").status_code == 200


def test_point_figure_thins_large_clouds():
    points = example_points("chair", num_points=8192)
    xyz, colors = plotted({"type": "plotly", "plot": point_figure(points).to_json()})
    step = -(-8192 // MAX_PLOTTED)  # ceil
    assert len(xyz) == len(colors) == len(points[::step]) <= MAX_PLOTTED
    np.testing.assert_allclose(xyz, points[::step, :3], atol=1e-6)
