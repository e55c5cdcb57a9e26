"""The web demo (`pointllm serve --ui`): pick an example object or upload a file, turn it around in
an interactive 3D view, and chat about it.

The demo shares the server's model and queue: answers stream from the same `Batcher` the HTTP API
uses. The plot shows the cloud exactly as the model sees it (resampled, normalized), thinned to
`MAX_PLOTTED` points so the browser stays responsive.
"""

from __future__ import annotations

import math

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import torch

from pointllm.data.io import SUPPORTED_EXTENSIONS
from pointllm.data.synthetic import CATEGORIES, make_object
from pointllm.infer.api import PointLLM
from pointllm.serve import DEFAULT_MAX_NEW_TOKENS
from pointllm.serve.batching import Batcher, GenerationRequest

EXAMPLES: tuple[str, ...] = ("chair", "airplane", "mug", "lamp", "traffic cone", "rocket", "donut")
MAX_PLOTTED = 3000
QUESTIONS = ("What is this?", "What color is it?", "Describe this 3D object in detail.")
_BACKGROUND = "#8c8c8c"  # mid gray, so white and black objects both show (as in data previews)


def example_points(category: str, num_points: int = 8192) -> np.ndarray:
    """The demo's example object of `category`: (num_points, 6) xyz + rgb, the same every time."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown example {category!r}; expected one of {', '.join(EXAMPLES)}")
    points, _ = make_object(category, np.random.default_rng(CATEGORIES.index(category)), num_points)
    return points


def point_figure(points: np.ndarray | torch.Tensor) -> go.Figure:
    """A plotly 3D scatter of (N, 6) xyz + rgb points (or (N, 3), drawn light gray), every
    ceil(N / MAX_PLOTTED)-th point, y up like the clouds."""
    points = np.asarray(points, dtype=np.float64)
    shown = points[:: max(1, math.ceil(len(points) / MAX_PLOTTED))]
    if shown.shape[1] >= 6:
        rgb = np.rint(np.clip(shown[:, 3:6], 0.0, 1.0) * 255).astype(int)
        colors = [f"rgb({r},{g},{b})" for r, g, b in rgb]
    else:
        colors = "rgb(220,220,220)"
    # Plain lists: numpy arrays would be sent as plotly's binary arrays, which older plotly.js
    # bundles in browsers do not read.
    scatter = go.Scatter3d(
        x=shown[:, 0].tolist(),
        y=shown[:, 1].tolist(),
        z=shown[:, 2].tolist(),
        mode="markers",
        marker={"size": 2.5, "color": colors},
        hoverinfo="skip",
    )
    hidden_axis = {"visible": False, "range": [-1.05, 1.05]}
    figure = go.Figure(scatter)
    figure.update_layout(
        scene={
            "xaxis": hidden_axis,
            "yaxis": hidden_axis,
            "zaxis": hidden_axis,
            "aspectmode": "cube",
            "bgcolor": _BACKGROUND,
            "camera": {"up": {"x": 0, "y": 1, "z": 0}, "eye": {"x": 0.95, "y": 0.55, "z": 0.95}},
        },
        paper_bgcolor=_BACKGROUND,
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        height=460,
        showlegend=False,
    )
    return figure


def build_ui(
    llm: PointLLM, batcher: Batcher, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
) -> gr.Blocks:
    """The Gradio app; answers are at most `max_new_tokens` long. Its API names (for
    `gradio_client`): /example (category), /upload (file), /ask (question), /clear."""

    def show(points: torch.Tensor, label: str) -> tuple:
        # A new object starts a new conversation.
        caption = f"**{label}**: {len(points)} points as the model sees them; drag to rotate."
        return points, point_figure(points), caption, [], []

    def load_example(category: str) -> tuple:
        try:
            points = llm.prepare_points(example_points(category))
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc
        return show(points, f"example: {category}")

    def load_file(path: str | None) -> tuple:
        if path is None:
            raise gr.Error("no file was uploaded")
        try:
            points = llm.prepare_points(path)
        except ValueError as exc:  # PointCloudError: one line naming the file and the problem
            raise gr.Error(str(exc)) from exc
        return show(points, f"file: {path.rsplit('/', 1)[-1]}")

    async def ask(question: str, conversation: list[dict], points: torch.Tensor | None):
        question = question.strip()
        if not question:
            raise gr.Error("type a question first")
        turns = [*conversation, {"role": "user", "content": question}]
        request = GenerationRequest(turns, points, {"max_new_tokens": max_new_tokens})
        answer = ""
        async for chunk in batcher.stream(request):
            answer += chunk
            yield "", [*turns, {"role": "assistant", "content": answer}], conversation
        if answer:
            conversation = [*turns, {"role": "assistant", "content": answer}]
            yield "", conversation, conversation
        else:  # an empty turn would break the conversation; show it, do not keep it
            yield "", [*turns, {"role": "assistant", "content": "(no answer)"}], conversation

    with gr.Blocks(title="PointLLM demo", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## PointLLM: chat about a 3D object\nModel `{llm.model_name}`. Pick an example or "
            f"upload a point cloud or mesh ({', '.join(SUPPORTED_EXTENSIONS)}), then ask."
        )
        points = gr.State(None)
        conversation = gr.State([])
        with gr.Row():
            with gr.Column(scale=5):
                with gr.Row():
                    example = gr.Dropdown(list(EXAMPLES), value=EXAMPLES[0], label="Example object")
                    upload = gr.File(
                        label="...or upload a file",
                        file_types=list(SUPPORTED_EXTENSIONS),
                        height=120,
                    )
                plot = gr.Plot(label="Point cloud", show_label=False)
                caption = gr.Markdown()
            with gr.Column(scale=4):
                chatbot = gr.Chatbot(label="Chat", height=460)
                question = gr.Textbox(
                    placeholder="Ask about the object, e.g. What is this?", show_label=False
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary")
                    clear = gr.Button("Clear chat")
                gr.Examples(list(QUESTIONS), inputs=question, label="Questions")
        loaded = [points, plot, caption, chatbot, conversation]
        example.change(load_example, example, loaded, api_name="example")
        upload.upload(load_file, upload, loaded, api_name="upload")
        demo.load(load_example, example, loaded, api_visibility="private")
        gr.on(
            [question.submit, send.click],
            ask,
            [question, conversation, points],
            [question, chatbot, conversation],
            api_name="ask",
        )
        clear.click(lambda: ([], []), None, [chatbot, conversation], api_name="clear")
        # The chat box's own trash button clears the display; forget the conversation with it.
        chatbot.clear(lambda: [], None, conversation, api_visibility="private")
    return demo
