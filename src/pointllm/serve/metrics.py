"""`GET /metrics`: the server's counters in Prometheus' text exposition format (version 0.0.4).

Written by hand (a few gauges, counters and two histograms need no client library). Times are
measured by the batcher from the moment a request is queued, after its point cloud is read.
"""

from __future__ import annotations

from pointllm.serve.batching import Batcher, Histogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "pointllm"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(lines: list[str], name: str, kind: str, help_: str) -> str:
    full = f"{_PREFIX}_{name}"
    lines += [f"# HELP {full} {help_}", f"# TYPE {full} {kind}"]
    return full


def _histogram(lines: list[str], name: str, help_: str, histogram: Histogram, labels: str) -> None:
    full = _family(lines, name, "histogram", help_)
    for bound, count in histogram.cumulative():
        lines.append(f'{full}_bucket{{{labels},le="{bound}"}} {count}')
    lines.append(f"{full}_sum{{{labels}}} {histogram.sum:.6f}")
    lines.append(f"{full}_count{{{labels}}} {histogram.count}")


def render(batcher: Batcher, model_name: str) -> str:
    """The metrics page for a server whose batcher is `batcher`, labelled with `model_name`."""
    stats = batcher.stats
    model = f'model="{_label(model_name)}"'
    lines: list[str] = []
    gauges = (
        ("queue_length", "Requests waiting to join the running batch.", stats.queued),
        ("running_requests", "Requests in the running batch (decoding together).", stats.running),
        ("max_batch_size", "The most requests that have decoded together.", stats.max_batch_size),
        (
            "batch_capacity",
            "The most requests allowed to decode together (--max-batch).",
            batcher.max_batch,
        ),
        ("worker_up", "1 while the generation worker runs, else 0.", int(batcher.alive)),
    )
    for name, help_, value in gauges:
        full = _family(lines, name, "gauge", help_)
        lines.append(f"{full}{{{model}}} {value}")
    full = _family(
        lines,
        "generation_tokens_per_second",
        "gauge",
        "Generated tokens per second over the last 10 seconds.",
    )
    lines.append(f"{full}{{{model}}} {batcher.tokens_per_second():.3f}")
    counters = (
        (
            "generated_tokens_total",
            "Tokens generated (end-of-turn tokens not counted).",
            stats.generated_tokens,
        ),
        ("prefills_total", "Prefill passes (newcomers admitted together).", stats.batches),
        ("decode_steps_total", "Decode steps of the running batch.", stats.steps),
    )
    for name, help_, value in counters:
        full = _family(lines, name, "counter", help_)
        lines.append(f"{full}{{{model}}} {value}")
    full = _family(lines, "requests_total", "counter", "Requests by how they ended.")
    outcomes = (
        ("completed", stats.completed),
        ("cancelled", stats.cancelled),
        ("failed", stats.failed),
        ("rejected", stats.rejected),
        ("timed_out", stats.timed_out),
    )
    for outcome, value in outcomes:
        lines.append(f'{full}{{{model},outcome="{outcome}"}} {value}')
    _histogram(
        lines,
        "time_to_first_token_seconds",
        "Seconds from queueing a request to its first generated token.",
        batcher.ttft,
        model,
    )
    _histogram(
        lines,
        "request_latency_seconds",
        "Seconds from queueing a request to its last token (completed requests).",
        batcher.latency,
        model,
    )
    return "\n".join(lines) + "\n"
