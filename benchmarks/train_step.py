"""Benchmark: stage-1 and stage-2 training steps, our PointLLM against the original's forward.

The baseline mirrors the original PointLLM forward in the same run, on the same model, weights,
optimizer and batches: the point features are spliced into each sample's embeddings by a Python
loop over the batch (find the `<point_start>` positions, check the `<point_end>` after the patches,
`torch.cat` the pieces, `torch.stack` the rows). Ours writes all features with one
`masked_scatter`. Steps of the two alternate, so both see the same weights and the same noise from
other processes. A step is forward + backward + AdamW on the stage's trainable parameters
(stage 1: projector and point-token embeddings; stage 2: + the LLM).

    python benchmarks/train_step.py                       # tiny Llama, CPU (+ CUDA when present)
    python benchmarks/train_step.py --llm smollm2-135m    # the embedded SmolLM2-135M

Prints a Markdown table: median ms per step, samples/s, tokens/s (non-padding), peak memory
(CUDA: max allocated; CPU: peak resident set, reset per step through /proc/self/clear_refs) and
the speed ratio ours / baseline (all from the median step), plus the loss difference of the two
on the first batch.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from pointllm.config import PointBertConfig, PointLLMConfig
from pointllm.model.pointllm import PointLLMForCausalLM
from pointllm.train.args import ModelArguments
from pointllm.train.stages import apply_plan, stage_plan

# The CPU demo encoder: 32 groups of 16 points, 33 point tokens per cloud.
DEMO_ENCODER = dict(
    trans_dim=128, depth=4, num_heads=4, num_group=32, group_size=16, encoder_dims=128
)


def build_model(llm: str, device: torch.device) -> PointLLMForCausalLM:
    """A PointLLM with the demo encoder on a tiny random Llama or on a real LLM."""
    torch.manual_seed(0)
    point_config = PointBertConfig(**DEMO_ENCODER)
    if llm == "tiny":
        from transformers import LlamaConfig

        text = LlamaConfig(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=8195,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
        )
        config = PointLLMConfig(point_config=point_config, text_config=text, num_points=1024)
        model = PointLLMForCausalLM(config)
        model.config.point_patch_token_id = 8192
        model.config.point_start_token_id, model.config.point_end_token_id = 8193, 8194
    else:
        model, _ = PointLLMForCausalLM.from_backbone(llm, point_config, dtype=torch.float32)
    return model.to(device)


def make_batches(
    model: PointLLMForCausalLM, batch: int, count: int, num_points: int, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches: a short prefix, the point block, then 40-120 text tokens."""
    cfg = model.config
    gen = torch.Generator().manual_seed(1)
    vocab = cfg.point_patch_token_id  # ordinary tokens lie below the point tokens
    block = [cfg.point_start_token_id] + [cfg.point_patch_token_id] * cfg.num_point_tokens
    block += [cfg.point_end_token_id]
    batches = []
    for _ in range(count):
        rows = []
        for _ in range(batch):
            prefix = torch.randint(0, vocab, (8,), generator=gen).tolist()
            text = torch.randint(0, vocab, (int(torch.randint(40, 121, (1,), generator=gen)),))
            rows.append(prefix + block + text.tolist())
        width = max(map(len, rows))
        ids = torch.zeros(batch, width, dtype=torch.long)
        mask = torch.zeros(batch, width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        labels = torch.where(mask.bool() & (ids < vocab), ids, -100)
        xyz = torch.randn(batch, num_points, 3, generator=gen)
        xyz = xyz / xyz.norm(dim=-1, keepdim=True)
        clouds = torch.cat([xyz, torch.rand(batch, num_points, 3, generator=gen)], dim=-1)
        batches.append(
            {
                "input_ids": ids.to(device),
                "attention_mask": mask.to(device),
                "labels": labels.to(device),
                "point_clouds": clouds.to(device),
            }
        )
    return batches


def baseline_forward(model: PointLLMForCausalLM, input_ids, attention_mask, point_clouds, labels):
    """The original PointLLM forward: a per-sample loop that splices point features in."""
    cfg = model.config
    inputs_embeds = model.language_model.get_input_embeddings()(input_ids)  # (B, T, H)
    point_features = model.encode_points(point_clouds)  # (P, G+1, H), batched as the original
    boundary = model.point_boundary_embeds.to(inputs_embeds.dtype)  # (2, H)
    new_input_embeds = []
    cur_point_idx = 0
    for cur_input_ids, cur_input_embeds in zip(input_ids, inputs_embeds):
        if (cur_input_ids == cfg.point_patch_token_id).sum() == 0:
            new_input_embeds.append(cur_input_embeds)
            continue
        cur_point_features = point_features[cur_point_idx].to(cur_input_embeds.dtype)
        num_patches = cur_point_features.shape[0]
        if (cur_input_ids == cfg.point_start_token_id).sum() != (
            cur_input_ids == cfg.point_end_token_id
        ).sum():
            raise ValueError("the number of point start and end tokens differs")
        for pos in torch.where(cur_input_ids == cfg.point_start_token_id)[0]:
            if cur_input_ids[pos + num_patches + 1] != cfg.point_end_token_id:
                raise ValueError("the point end token is not where it should be")
            cur_input_embeds = torch.cat(
                (
                    cur_input_embeds[:pos],
                    boundary[:1],
                    cur_point_features,
                    boundary[1:],
                    cur_input_embeds[pos + num_patches + 2 :],
                ),
                dim=0,
            )
            cur_point_idx += 1
        new_input_embeds.append(cur_input_embeds)
    inputs_embeds = torch.stack(new_input_embeds, dim=0)
    return model.language_model(
        inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels
    )


class PeakMemory:
    """Peak memory of one step: CUDA max allocated, or the CPU peak resident set size."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.proc = Path("/proc/self/clear_refs")

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.proc.exists():
            self.proc.write_text("5")  # resets VmHWM (Linux >= 4.0)

    def read_gb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_stage(model, stage: int, batches, steps: int, warmup: int, device) -> dict[str, dict]:
    apply_plan(model, stage_plan(ModelArguments(stage=stage)))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    variants = {"ours": lambda b: model(**b), "baseline": lambda b: baseline_forward(model, **b)}
    with torch.no_grad():
        first = {name: float(fn(batches[0]).loss) for name, fn in variants.items()}
    memory = PeakMemory(device)
    results = {name: {"seconds": [], "peak": 0.0, "samples": 0, "tokens": 0} for name in variants}
    for step in range(warmup + steps):
        batch = batches[step % len(batches)]
        for name, forward in variants.items():
            memory.reset()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            forward(batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= warmup:
                record = results[name]
                record["seconds"].append(time.perf_counter() - start)
                record["peak"] = max(record["peak"], memory.read_gb())
                record["samples"] += batch["input_ids"].shape[0]
                record["tokens"] += int(batch["attention_mask"].sum())
    results["loss_diff"] = abs(first["ours"] - first["baseline"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", default="tiny", help="tiny, smollm2-135m, or an LLM directory")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-points", type=int, default=1024)
    parser.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda")
    args = parser.parse_args()
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, LLM {args.llm}, batch {args.batch}, "
        f"{args.num_points} points, demo encoder (33 point tokens)"
    )
    print()
    print(
        "| device | stage | variant | ms/step | samples/s | tokens/s | peak GB | speed ours/base |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    notes = []
    for name in devices:
        device = torch.device(name)
        model = build_model(args.llm, device)
        batches = make_batches(model, args.batch, 4, args.num_points, device)
        for stage in (1, 2):
            results = bench_stage(model, stage, batches, args.steps, args.warmup, device)
            notes.append(
                f"{name} stage {stage}: |loss ours - baseline| on batch 0 = "
                f"{results.pop('loss_diff'):.2e}"
            )
            speed = {}
            for variant, record in results.items():
                # Throughput from the median step, so one slow step (another process) does not
                # skew the comparison; batches repeat, so mean tokens per step is representative.
                median = statistics.median(record["seconds"])
                steps_run = len(record["seconds"])
                speed[variant] = record["samples"] / steps_run / median
                tokens = record["tokens"] / steps_run / median
                ratio = f"{speed['ours'] / speed[variant]:.3f}" if variant == "baseline" else ""
                print(
                    f"| {name} | {stage} | {variant} | {median * 1e3:.0f} | {speed[variant]:.2f} "
                    f"| {tokens:.0f} | {record['peak']:.2f} | {ratio} |",
                    flush=True,
                )
        del model
    print()
    print("\n".join(f"- {note}" for note in notes))


if __name__ == "__main__":
    main()
