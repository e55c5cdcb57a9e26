"""Benchmark: generation through `pointllm.infer.api.PointLLM` vs a cache-less baseline.

Ours encodes each point cloud once and decodes with the LLM's KV cache. The baseline is what an
implementation without a cache does: a loop of full forward passes over prompt + tokens so far,
re-encoding the point clouds at every step. Both run in the same process on the same weights (the
embedded SmolLM2-135M with a randomly initialised Point-BERT; weights do not change the cost), on
the same prompt, greedy, with end-of-sequence suppressed so every run makes exactly the asked
number of tokens; the benchmark checks that both produce the same tokens.

Encoders: `demo` (dim 128, depth 4, 32 groups of 16, 1024 points: 33 point tokens) and `v1.2`
(the published size: 513 point tokens, 8192 points).

Metrics, medians over repeats (ours and baseline interleaved so load from other processes hits
both alike), from per-token timestamps:
- TTFT: seconds from the call to the first new token (of every row of the batch);
- decode tokens/s per sequence: tokens after the first / time after the first;
- objects/s: answers of `--new-tokens` tokens per second for batch 1 and 8 (fixed prompt, a
  different cloud per row), and how much batch 8 gains over batch 1.
The baseline's steps are independent full forwards whose cost only grows with length, so only its
first `--baseline-steps` steps are timed and the rest are counted at the cost of its last timed
step; this flatters the baseline.

    python benchmarks/generate.py --threads 1              # both encoders, batch 1 and 8

(`--threads 1` on a shared machine: 2 torch threads on 2 busy cores spin and time erratically.)
    python benchmarks/generate.py --encoders demo --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.generation.streamers import BaseStreamer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encoder import synthetic_clouds  # noqa: E402  (benchmarks/encoder.py)

from pointllm.config import POINT_BERT_PRESETS, PointBertConfig  # noqa: E402
from pointllm.infer.api import PointLLM  # noqa: E402
from pointllm.model.pointllm import PointLLMForCausalLM  # noqa: E402

# name: (Point-BERT fields, points per cloud, default timed runs). One v1.2 run takes ~3 minutes
# on a 2-core CPU, most of it in the baseline's batch of 8 (8 x 555-token forwards per step).
ENCODERS = {
    "demo": (
        dict(trans_dim=128, depth=4, num_heads=4, num_group=32, group_size=16, encoder_dims=128),
        1024,
        3,
    ),
    "v1.2": (POINT_BERT_PRESETS["v1.2"], 8192, 1),
}
PROMPT = "What is this?"


class TokenClock(BaseStreamer):
    """Records when each new token arrives (generate hands a streamer the prompt first)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.times: list[float] = []
        self.tokens: list[torch.Tensor] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter() - self.start)
        self.tokens.append(value.reshape(-1).clone())

    def end(self) -> None:
        pass


@dataclass
class Run:
    """Seconds from the start to each new token, and the tokens (B, steps)."""

    times: list[float]
    tokens: torch.Tensor

    def answer_seconds(self, new_tokens: int) -> float:
        """Time to make `new_tokens` tokens; beyond the timed steps, at the last step's cost."""
        last_step = self.times[-1] - self.times[-2] if len(self.times) > 1 else self.times[-1]
        return self.times[-1] + (new_tokens - len(self.times)) * last_step

    def decode_rate(self) -> float:
        """Tokens per second per sequence after the first token."""
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


@dataclass
class Samples:
    ttft: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)
    objects: list[float] = field(default_factory=list)

    def add(self, run: Run, batch: int, new_tokens: int) -> None:
        self.ttft.append(run.times[0])
        self.decode.append(run.decode_rate())
        self.objects.append(batch / run.answer_seconds(new_tokens))

    def medians(self) -> tuple[float, float, float]:
        return tuple(statistics.median(v) for v in (self.ttft, self.decode, self.objects))


def run_ours(llm: PointLLM, clouds: torch.Tensor, new_tokens: int) -> Run:
    """The public API: prompts built, clouds prepared, one batched generate call."""
    clock = TokenClock()
    llm.generate_batch(
        [(cloud, PROMPT) for cloud in clouds],
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        streamer=clock,
    )
    return Run(clock.times, torch.stack(clock.tokens, dim=1))


@torch.no_grad()
def run_baseline(llm: PointLLM, clouds: torch.Tensor, steps: int) -> Run:
    """Greedy decoding with full forwards and no cache; the encoder runs at every step."""
    start = time.perf_counter()
    inputs = llm.model_inputs([(cloud, [{"role": "user", "content": PROMPT}]) for cloud in clouds])
    ids, mask, points = inputs["input_ids"], inputs["attention_mask"], inputs["point_clouds"]
    stop_ids = llm.generation_kwargs()["eos_token_id"]
    times, tokens = [], []
    for _ in range(steps):
        embeds = llm.model.embed_inputs(ids, points)  # (B, T, H), clouds encoded again
        logits = llm.model.language_model(
            inputs_embeds=embeds, attention_mask=mask, use_cache=False
        ).logits[:, -1]  # (B, V)
        logits[:, stop_ids] = float("-inf")  # as min_new_tokens does for ours
        token = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        ids = torch.cat([ids, token], dim=1)
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        times.append(time.perf_counter() - start)
        tokens.append(token[:, 0])
    return Run(times, torch.stack(tokens, dim=1))


def bench_encoder(name: str, args: argparse.Namespace) -> list[str]:
    """Table rows for one encoder size."""
    point_fields, num_points, default_repeats = ENCODERS[name]
    repeats = args.repeats or default_repeats
    torch.manual_seed(0)
    model, tokenizer = PointLLMForCausalLM.from_backbone(
        "smollm2-135m", PointBertConfig(**point_fields)
    )
    model.config.num_points = num_points
    llm = PointLLM(model, tokenizer, model_name=f"smollm2-135m+{name}")
    tokens = model.config.num_point_tokens
    clouds = synthetic_clouds(max(args.batch_sizes), num_points)
    run_ours(llm, clouds[:1], 2)  # warm-up
    results = {(b, impl): Samples() for b in args.batch_sizes for impl in ("ours", "base")}
    for _ in range(repeats):
        for batch in args.batch_sizes:
            ours = run_ours(llm, clouds[:batch], args.new_tokens)
            base = run_baseline(llm, clouds[:batch], args.baseline_steps)
            steps = base.tokens.shape[1]
            if not torch.equal(ours.tokens[:, :steps], base.tokens):
                raise SystemExit(
                    f"{name} batch {batch}: ours and the baseline chose different tokens"
                )
            results[batch, "ours"].add(ours, batch, args.new_tokens)
            results[batch, "base"].add(base, batch, args.new_tokens)
            print(f"# {name} batch {batch} done", file=sys.stderr, flush=True)
    rows = []
    for batch in args.batch_sizes:
        o_ttft, o_dec, o_obj = results[batch, "ours"].medians()
        b_ttft, b_dec, b_obj = results[batch, "base"].medians()
        rows.append(
            f"| {name} ({tokens} pt tokens, {num_points} pts) | {batch} | {repeats} | {o_ttft:.2f} | "
            f"{b_ttft:.2f} | {o_dec:.1f} | {b_dec:.2f} | {o_dec / b_dec:.0f}x | {o_obj:.3f} | "
            f"{b_obj:.4f} | {o_obj / b_obj:.1f}x |"
        )
    if len(args.batch_sizes) > 1:
        small, large = min(args.batch_sizes), max(args.batch_sizes)
        gains = [
            results[large, impl].medians()[2] / results[small, impl].medians()[2]
            for impl in ("ours", "base")
        ]
        rows.append(
            f"| {name}: objects/s batch {large} / batch {small} | | | | | | | | "
            f"{gains[0]:.2f}x | {gains[1]:.2f}x | |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens per answer (16)")
    parser.add_argument("--baseline-steps", type=int, default=2, help="timed baseline steps (2)")
    parser.add_argument(
        "--repeats", type=int, help="timed runs per setting (default: 3 demo, 1 v1.2)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if not 2 <= args.baseline_steps <= args.new_tokens:
        parser.error("--baseline-steps must be between 2 and --new-tokens")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = [
        "| encoder | batch | runs | TTFT s ours | TTFT s baseline | decode tok/s ours "
        "| decode tok/s baseline | decode ratio | objects/s ours | objects/s baseline | "
        "objects/s ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.encoders:
        rows += bench_encoder(name, args)
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, fp32, SmolLM2-135M, {args.new_tokens} new tokens, "
        f"medians, baseline timed for {args.baseline_steps} steps"
    )
    print()
    print("\n".join(rows))
    print(f"\n# total {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
