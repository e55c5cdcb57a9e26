"""Benchmark: `pointllm serve` under concurrent clients, continuous batching vs one at a time.

Two real server processes on loopback serve the same checkpoint: one as configured by default
(continuous batching, `--max-batch 32`) and one with `--max-batch 1` (each request runs alone,
start to finish). For each client count (1, 8, 32 by default) the same requests go to both
servers, the baseline first, then the batched one (interleaved per client count, so that load
from other processes hits both alike). Each client sends its requests one after another; half of
all requests stream; every request carries a point cloud (a path inside `--allowed-dir`);
max_tokens is drawn from 32-128; a quarter sample with a fixed seed (the same answer on both
servers), the rest decode greedily. A scenario stops sending new requests after
`--max-seconds`.

Measured from the client side: throughput (generated tokens, from each answer's `usage`, per
second of the scenario's wall time), time to first token (streamed requests: until the first
content chunk), and latency (request sent to last byte), p50 and p95.

Model: `--model DIR` (e.g. the demo's runs/demo/stage2), else the embedded SmolLM2-135M with a
randomly initialised demo-size Point-BERT (dim 128, depth 4, 32 groups of 16, 1024 points: 33
point tokens), written to a temporary checkpoint; random weights cost the same time as trained
ones, but the answer lengths (end of turn) differ.

    python benchmarks/serve.py                                # 1, 8, 32 clients
    python benchmarks/serve.py --dtype bf16 --threads 1       # a busy 2-core CPU with AMX
    python benchmarks/serve.py --clients 32 --requests 32 --max-seconds 120
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODEL_NAME = "bench"
QUESTIONS = (
    "What is this?",
    "Caption this 3D model in detail.",
    "What color is the object?",
    "Describe its shape.",
)


@dataclass
class Result:
    tokens: int = 0
    ttft: float | None = None  # streamed requests only
    latency: float = 0.0
    error: str | None = None


def build_checkpoint(out: Path) -> Path:
    """The embedded SmolLM2-135M + a random demo-size Point-BERT, saved as a checkpoint."""
    import torch
    from generate import ENCODERS  # benchmarks/generate.py

    from pointllm.config import PointBertConfig
    from pointllm.model.pointllm import PointLLMForCausalLM, save_pointllm

    point_fields, num_points, _ = ENCODERS["demo"]
    torch.manual_seed(0)
    model, tokenizer = PointLLMForCausalLM.from_backbone(
        "smollm2-135m", PointBertConfig(**point_fields)
    )
    model.config.num_points = num_points
    save_pointllm(model, tokenizer, out)
    return out


def write_clouds(folder: Path, count: int) -> list[str]:
    from encoder import synthetic_clouds  # benchmarks/encoder.py

    clouds = synthetic_clouds(count, 1024, seed=1).numpy().astype(np.float32)
    names = []
    for i, cloud in enumerate(clouds):
        np.save(folder / f"cloud{i}.npy", cloud)
        names.append(f"cloud{i}.npy")
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, allowed: Path, extra: list[str], log: Path, threads: int | None):
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "pointllm",
        "serve",
        "--model",
        str(model),
        "--served-model-name",
        MODEL_NAME,
        "--allowed-dir",
        str(allowed),
        "--port",
        str(port),
        "--max-queue",
        "256",
        *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited; its log:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the server did not start in 300 s; its log:\n{log.read_text()[-3000:]}")


def make_requests(count: int, clouds: list[str], seed: int) -> list[dict]:
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        question = QUESTIONS[rng.randrange(len(QUESTIONS))]
        content = [
            {"type": "point_cloud", "point_cloud": {"path": clouds[rng.randrange(len(clouds))]}},
            {"type": "text", "text": question},
        ]
        body = {
            "model": MODEL_NAME,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": rng.randint(32, 128),
            "stream": i % 2 == 1,
        }
        if rng.random() < 0.25:
            body.update(temperature=0.8, seed=rng.randrange(2**31))
        if body["stream"]:
            body["stream_options"] = {"include_usage": True}
        bodies.append(body)
    return bodies


def send(client: httpx.Client, url: str, body: dict) -> Result:
    result = Result()
    started = time.monotonic()
    try:
        if not body["stream"]:
            reply = client.post(f"{url}/v1/chat/completions", json=body)
            if reply.status_code != 200:
                result.error = f"{reply.status_code}: {reply.text[:200]}"
            else:
                result.tokens = reply.json()["usage"]["completion_tokens"]
        else:
            with client.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
                for line in reply.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        result.error = event["error"]["message"]
                        break
                    if event.get("usage"):
                        result.tokens = event["usage"]["completion_tokens"]
                    choices = event.get("choices") or []
                    if result.ttft is None and choices and choices[0]["delta"].get("content"):
                        result.ttft = time.monotonic() - started
                if reply.status_code != 200:
                    result.error = f"{reply.status_code}"
    except httpx.HTTPError as exc:
        result.error = repr(exc)
    result.latency = time.monotonic() - started
    return result


def run_scenario(url: str, bodies: list[dict], clients: int, max_seconds: float) -> dict:
    """`clients` threads take the requests in order, one at a time each, until none are left
    or `max_seconds` have passed."""
    pending = list(reversed(bodies))
    results: list[Result] = []
    deadline = time.monotonic() + max_seconds

    def client_loop() -> None:
        with httpx.Client(timeout=600) as client:
            while time.monotonic() < deadline:
                try:
                    body = pending.pop()
                except IndexError:
                    return
                results.append(send(client, url, body))

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client_loop) for _ in range(clients)]:
            future.result()
    wall = time.monotonic() - started
    errors = [r.error for r in results if r.error]
    if errors:
        print(f"# {len(errors)} errors, e.g. {errors[0]}", file=sys.stderr)
    ok = [r for r in results if not r.error]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    latencies = [r.latency for r in ok]
    tokens = sum(r.tokens for r in ok)
    return {
        "done": len(ok),
        "errors": len(errors),
        "tokens": tokens,
        "wall": wall,
        "rate": tokens / wall,
        "ttft": (percentile(ttfts, 50), percentile(ttfts, 95)),
        "latency": (percentile(latencies, 50), percentile(latencies, 95)),
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="checkpoint (default: a random demo-size one)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--requests",
        type=int,
        nargs="+",
        help="requests per scenario, one per --clients entry (default: 6, 16, 32 for 1, 8, 32; "
        "else max(6, clients))",
    )
    parser.add_argument("--max-seconds", type=float, default=240.0, help="per scenario and server")
    parser.add_argument(
        "--max-batch", type=int, default=32, help="the batched server's --max-batch"
    )
    parser.add_argument("--dtype", default="auto", help="the servers' --dtype (auto: fp32 on CPU)")
    parser.add_argument(
        "--threads",
        type=int,
        help="OMP_NUM_THREADS of the servers (on a busy machine 1 is steadier than 2)",
    )
    args = parser.parse_args()
    counts = args.requests or [{1: 6, 8: 16, 32: 32}.get(c, max(6, c)) for c in args.clients]
    if len(counts) != len(args.clients):
        raise SystemExit("--requests needs one count per --clients entry")

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"load average before: {load_average()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="pointllm-bench-serve-") as tmp:
        root = Path(tmp)
        model = args.model or build_checkpoint(root / "model")
        allowed = root / "clouds"
        allowed.mkdir()
        clouds = write_clouds(allowed, 8)
        servers = {}
        try:
            common = ["--dtype", args.dtype]
            servers["one at a time"] = start_server(
                model, allowed, [*common, "--max-batch", "1"], root / "single.log", args.threads
            )
            servers["continuous"] = start_server(
                model,
                allowed,
                [*common, "--max-batch", str(args.max_batch)],
                root / "batched.log",
                args.threads,
            )
            # Warm-up: the first requests pay for lazy initialisation.
            for _, url in servers.values():
                run_scenario(url, make_requests(2, clouds, seed=99), 2, 120)
            rows = []
            for clients, count in zip(args.clients, counts, strict=True):
                bodies = make_requests(count, clouds, seed=clients)
                measured = {}
                for name, (_, url) in servers.items():
                    measured[name] = run_scenario(url, bodies, clients, args.max_seconds)
                    print(f"# {clients} clients, {name}: {measured[name]}", file=sys.stderr)
                base = measured["one at a time"]["rate"]
                for name, m in measured.items():
                    rows.append(
                        f"| {clients} | {name} | {m['done']}/{count} | {m['tokens']} | "
                        f"{m['wall']:.1f} | {m['rate']:.1f} | {m['rate'] / base:.2f}x | "
                        f"{m['ttft'][0]:.2f} / {m['ttft'][1]:.2f} | "
                        f"{m['latency'][0]:.2f} / {m['latency'][1]:.2f} |"
                    )
        finally:
            for process, _ in servers.values():
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
    name = args.model or "embedded SmolLM2-135M + random demo-size Point-BERT"
    print(f"model: {name}; --dtype {args.dtype}; OMP_NUM_THREADS {args.threads or 'unset'}")
    print()
    print(
        "| clients | server | requests | tokens | wall s | tokens/s | vs one at a time | "
        "TTFT p50 / p95 s | latency p50 / p95 s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n# load average after: {load_average()}")


if __name__ == "__main__":
    main()
