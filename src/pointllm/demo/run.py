"""The demo pipeline: a PointLLM trained and evaluated end to end on this machine, in minutes.

synthetic data -> stage 0 (encoder pre-training) -> stage 1 -> stage 2 -> evaluation -> chat, each
phase through the same entry point a user calls (`pointllm data synth`, `pretrain-encoder`,
`train --config demo_stage{1,2}`, `eval run`, `eval metrics`, `chat`), on the
embedded SmolLM2-135M-Instruct. Everything goes under one folder (default `runs/demo`):

    synth/  encoder/  stage1/  stage2/ (the final model)  eval/  chat/  phases/  summary.json

A phase writes `phases/<name>.json` last; a re-run reuses a phase whose record exists, whose
settings are unchanged and whose outputs are still there, unless an earlier phase ran again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

PHASES = ("data", "stage0", "stage1", "stage2", "eval", "chat")
SUMMARY_FILE = "summary.json"
CLASSIFICATION_PROMPT = 0  # "What is this?", as in the benchmarks
CAPTION_PROMPT = 2  # "Caption this 3D model in detail."
CHAT_QUESTIONS = ("What is this?", "What color is this object?", "Caption this 3D model in detail.")
PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_ENV = "POINTLLM_DEMO_PRECISION"  # the default of `pointllm demo --precision`


@dataclass(frozen=True)
class DemoPlan:
    """How big each phase is; the stage-1/2 recipes (recipes/demo_stage*.yaml) hold the rest."""

    num_objects: int  # synthetic objects, 20 % of them held out
    stage0_steps: int
    stage0_batch: int
    stage1_steps: int | None  # None: the recipe's max_steps
    stage2_steps: int | None
    stage1_learning_rate: float | None  # None: the recipe's
    eval_objects: int | None  # held-out objects classified (None: all)
    caption_objects: int | None  # held-out objects captioned (None: all)
    seed: int = 0
    stage0_lr: float = 1e-3
    stage1_batch: int | None = None  # None: the recipe's per_device_train_batch_size
    stage2_batch: int | None = None
    stage2_learning_rate: float | None = None
    eval_batch: int = 16


FULL = DemoPlan(
    num_objects=2400,
    stage0_steps=300,
    stage0_batch=64,
    stage1_steps=None,
    stage2_steps=None,
    stage1_learning_rate=None,
    eval_objects=None,  # all 480 held-out objects
    caption_objects=64,
    eval_batch=48,
)
QUICK = DemoPlan(
    num_objects=480,
    stage0_steps=250,  # 150 steps left the encoder at 64 % zero-shot, 250 at 95 %
    stage0_batch=32,
    # Stage 1 is where held-out accuracy comes from: 80 steps of 4 gave 17 % in float32 and 2 %
    # in bf16 (48 objects), 120 steps of 4 gave 33 % in float32 and 15 % in bf16; 50 steps of 8
    # stayed at chance (all from a random projector). From the caption-fit start (the recipe's):
    # 100 of 8 gives 31 % float32 / 23 % bf16; 30-40 of 8 stay at chance; 100-120 of 4 at 6e-3
    # save 50-65 s but give 12.5-15 % in bf16, too close to the 2x-chance bar.
    # 2400 objects with 60 of 8 gave 20.8-41.7 % over 3 seeds (no better, 15-20 s dearer in data
    # and stage 0); 40 of 8 then 15 stage-2 steps gave 4-10 %.
    stage1_steps=100,
    stage1_learning_rate=None,
    stage2_steps=5,
    eval_objects=48,
    caption_objects=8,
    eval_batch=48,
)


def recipe_path(name: str) -> Path:
    """A shipped training recipe (`pointllm/recipes/<name>`), from a checkout or a wheel."""
    from pointllm.train.args import RECIPES_DIR

    path = RECIPES_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: demo recipe not found (a broken pointllm install?)")
    return path


@dataclass(frozen=True)
class Precision:
    """The training precision the demo runs in, and why it was chosen."""

    mode: str  # "fp32" or "bf16" (autocast)
    reason: str


def _onednn_caps_amx() -> str | None:
    """The ONEDNN_MAX_CPU_ISA value when it keeps oneDNN off AMX (e.g. AVX2), else None."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return isa if isa and "AMX" not in isa and isa not in ("ALL", "DEFAULT") else None


def choose_precision(requested: str = "auto") -> Precision:
    """fp32 or bf16 for the training phases: `requested` unless it is auto; auto takes bf16 where
    it is fast (a CUDA GPU with bf16, a CPU with AMX tiles that oneDNN may use) and fp32 elsewhere
    (on a CPU without AMX, bf16 is slower than fp32)."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return Precision(requested, f"{requested} asked for")
    import torch

    if torch.cuda.is_available():
        fast = torch.cuda.is_bf16_supported()
        return Precision(
            "bf16" if fast else "fp32", f"CUDA GPU {'with' if fast else 'without'} bf16"
        )
    if not torch.cpu._is_amx_tile_supported():
        return Precision("fp32", "no AMX on this CPU, where bf16 is slower than fp32")
    capped = _onednn_caps_amx()
    if capped:
        return Precision("fp32", f"AMX present but ONEDNN_MAX_CPU_ISA={capped} keeps oneDNN off it")
    return Precision(
        "bf16", "AMX tiles on this CPU, where bf16 autocast is several times faster than fp32"
    )


# ---- phases -------------------------------------------------------------------------------------


@dataclass
class Context:
    """Paths and settings shared by the phases."""

    out: Path
    plan: DemoPlan
    progress: bool
    precision: Precision = Precision("fp32", "default")

    @property
    def bf16(self) -> bool:
        return self.precision.mode == "bf16"

    @property
    def data(self) -> Path:
        return self.out / "synth"

    @property
    def anno(self) -> Path:
        return self.data / "anno"

    @property
    def points(self) -> Path:
        return self.data / "points"

    @property
    def encoder(self) -> Path:
        return self.out / "encoder" / "point_bert.pt"

    @property
    def final_model(self) -> Path:
        return self.out / "stage2"


def demo_encoder() -> tuple[Any, int]:
    """The encoder config and points per cloud of the stage-0 demo recipe (stage 1 builds its
    encoder from the checkpoint stage 0 writes)."""
    from pointllm.pretrain import read_recipe, resolve_encoder

    return resolve_encoder(read_recipe(recipe_path("demo_stage0.yaml")))


def _phase_data(ctx: Context) -> dict[str, Any]:
    from pointllm.data.synthetic import CATEGORIES, generate_dataset

    written = generate_dataset(ctx.data, ctx.plan.num_objects, ctx.plan.seed)
    counts = written["counts"]
    return {
        "key": f"{counts['objects']} objects of {len(CATEGORIES)} categories "
        f"({counts['train']} train, {counts['val']} held out)",
        **counts,
    }


def _phase_stage0(ctx: Context) -> dict[str, Any]:
    from pointllm.pretrain import pretrain_encoder

    config, num_points = demo_encoder()
    result = pretrain_encoder(
        ctx.anno / "stage1_brief.json",
        ctx.points,
        ctx.encoder,
        point_config=config,
        num_points=num_points,
        steps=ctx.plan.stage0_steps,
        batch_size=ctx.plan.stage0_batch,
        lr=ctx.plan.stage0_lr,
        eval_cls_path=ctx.anno / "val_cls.json",
        seed=ctx.plan.seed,
        bf16=ctx.bf16,
        progress=ctx.progress,
    )
    return {
        "key": f"zero-shot accuracy {100 * result.zero_shot_accuracy:.1f} % "
        f"({result.num_classes} classes, held out)",
        "zero_shot_accuracy": result.zero_shot_accuracy,
    }


def _precision_flags(ctx: Context) -> list[str]:
    """The trainer flags for the chosen precision; transformers wants `use_cpu` to autocast on a
    CPU."""
    import torch

    if not ctx.bf16:
        return []
    return ["--bf16", "true"] + ([] if torch.cuda.is_available() else ["--use_cpu", "true"])


def _train_stage(
    ctx: Context,
    stage: int,
    overrides: list[str],
    steps: int | None,
    lr: float | None = None,
    batch: int | None = None,
) -> dict:
    from pointllm.train.args import parse_args
    from pointllm.train.run import train

    argv = ["--config", str(recipe_path(f"demo_stage{stage}.yaml")), *overrides]
    argv += ["--data_path", str(ctx.points), "--output_dir", str(ctx.out / f"stage{stage}")]
    # Whole phases are the demo's unit of reuse; intermediate checkpoints would only cost time.
    argv += ["--save_strategy", "no", "--seed", str(ctx.plan.seed), *_precision_flags(ctx)]
    if steps is not None:
        argv += ["--max_steps", str(steps)]
    if lr is not None:
        argv += ["--learning_rate", str(lr)]
    if batch is not None:
        argv += ["--per_device_train_batch_size", str(batch)]
    result = train(*parse_args(argv))
    loss = result.summary["final_loss"]  # None when no step was logged
    return {
        "key": f"{result.global_step} steps, final loss "
        + ("not logged" if loss is None else f"{loss:.3f}"),
        "final_loss": loss,
        "steps": result.global_step,
    }


def _phase_stage1(ctx: Context) -> dict[str, Any]:
    overrides = ["--anno_path", str(ctx.anno / "stage1_brief.json")]
    overrides += ["--point_backbone_ckpt", str(ctx.encoder)]
    plan = ctx.plan
    return _train_stage(
        ctx, 1, overrides, plan.stage1_steps, plan.stage1_learning_rate, plan.stage1_batch
    )


def _phase_stage2(ctx: Context) -> dict[str, Any]:
    overrides = ["--anno_path", str(ctx.anno / "stage2_instruct.json")]
    overrides += ["--model_name_or_path", str(ctx.out / "stage1")]
    plan = ctx.plan
    return _train_stage(
        ctx, 2, overrides, plan.stage2_steps, plan.stage2_learning_rate, plan.stage2_batch
    )


def _phase_eval(ctx: Context) -> dict[str, Any]:
    from pointllm.eval.metrics import evaluate_captions
    from pointllm.eval.run import evaluate_model

    common = dict(batch_size=ctx.plan.eval_batch, progress=ctx.progress)
    classification = evaluate_model(
        "modelnet-cls",
        ctx.final_model,
        ctx.points,
        CLASSIFICATION_PROMPT,
        ctx.out / "eval" / "classification.json",
        anno_path=ctx.anno / "val_cls.json",
        limit=ctx.plan.eval_objects,
        max_new_tokens=32,
        **common,
    )
    captions = evaluate_model(
        "objaverse-caption",
        ctx.final_model,
        ctx.points,
        CAPTION_PROMPT,
        ctx.out / "eval" / "captions.json",
        anno_path=ctx.anno / "val_gt.json",
        limit=ctx.plan.caption_objects,
        max_new_tokens=64,
        **common,
    )
    metrics = evaluate_captions(captions["output"])
    matcher = classification["matcher"]
    accuracy = matcher["accuracy"] / 100
    sbert = metrics.get("sbert_similarity")
    return {
        "key": f"accuracy {100 * accuracy:.1f} % on {matcher['total_predictions']} held-out "
        f"objects of {len(matcher['per_class_accuracy'])} categories; caption SBERT "
        + (f"{sbert:.1f}" if sbert is not None else "n/a"),
        "accuracy": accuracy,
        "num_categories": len(matcher["per_class_accuracy"]),
        "num_eval_objects": matcher["total_predictions"],
        "caption_metrics": metrics,
    }


def _with_article(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _chat_examples(ctx: Context) -> list[dict[str, str]]:
    """Held-out objects of different categories, one per chat question."""
    import json

    chosen, seen = [], set()
    for row in json.loads((ctx.anno / "val_cls.json").read_text()):
        if row["label_name"] not in seen:
            seen.add(row["label_name"])
            chosen.append({"object_id": row["object_id"], "category": row["label_name"]})
        if len(chosen) == len(CHAT_QUESTIONS):
            break
    return [{**obj, "question": q} for obj, q in zip(chosen, CHAT_QUESTIONS)]


def _phase_chat(ctx: Context) -> dict[str, Any]:

    from pointllm.atomic import write_json
    from pointllm.data.io import load_point_cloud
    from pointllm.data.preview import save_preview
    from pointllm.eval.run import point_file
    from pointllm.infer.api import load

    model = load(ctx.final_model)
    examples = _chat_examples(ctx)
    for example in examples:
        path = point_file(ctx.points, example["object_id"])
        example["points"] = str(path)
        example["answer"] = model.generate(path, example["question"], max_new_tokens=64)
        preview = ctx.out / "chat" / f"{example['object_id']}.png"
        cloud = load_point_cloud(path, num_points=model.num_points)
        save_preview(
            cloud, preview, title=f"{example['object_id']} ({_with_article(example['category'])})"
        )
        example["preview"] = str(preview)
    write_json(ctx.out / "chat" / "examples.json", examples)
    return {
        "key": f"{len(examples)} examples, previews in {ctx.out / 'chat'}",
        "examples": examples,
    }


_RUNNERS = {
    "data": _phase_data,
    "stage0": _phase_stage0,
    "stage1": _phase_stage1,
    "stage2": _phase_stage2,
    "eval": _phase_eval,
    "chat": _phase_chat,
}


def phase_outputs(ctx: Context, name: str) -> list[Path]:
    """Files a finished phase leaves; all must exist for the phase to be reused."""
    return {
        "data": [ctx.anno / n for n in ("stage1_brief.json", "stage2_instruct.json")]
        + [ctx.anno / "val_cls.json", ctx.anno / "val_gt.json", ctx.data / "meta.json"],
        "stage0": [ctx.encoder, ctx.encoder.with_name("point_bert_config.json")],
        "stage1": [ctx.out / "stage1" / "config.json", ctx.out / "stage1" / "model.safetensors"],
        "stage2": [ctx.final_model / "config.json", ctx.final_model / "model.safetensors"],
        "eval": [ctx.out / "eval" / n for n in ("classification.json", "captions.json")],
        "chat": [ctx.out / "chat" / "examples.json"],
    }[name]


def phase_settings(ctx: Context, name: str) -> dict[str, Any]:
    """What a phase's result depends on besides earlier phases; a change reruns it."""
    import hashlib

    from pointllm.pretrain import point_config_fields

    def digest(stage: int) -> str:
        return hashlib.sha256(recipe_path(f"demo_stage{stage}.yaml").read_bytes()).hexdigest()

    plan = ctx.plan
    if name == "data":
        return {"num_objects": plan.num_objects, "seed": plan.seed}
    if name == "stage0":
        config, num_points = demo_encoder()
        encoder = {**point_config_fields(config), "num_points": num_points}
        return {
            "steps": plan.stage0_steps,
            "batch": plan.stage0_batch,
            "lr": plan.stage0_lr,
            "encoder": encoder,
            "precision": ctx.precision.mode,
        }
    if name in ("stage1", "stage2"):
        stage = int(name[-1])
        return {
            "steps": getattr(plan, f"{name}_steps"),
            "batch": getattr(plan, f"{name}_batch"),
            "learning_rate": getattr(plan, f"{name}_learning_rate"),
            "recipe": digest(stage),
            "precision": ctx.precision.mode,
        }
    if name == "eval":
        return {"objects": plan.eval_objects, "captions": plan.caption_objects}
    return {"questions": list(CHAT_QUESTIONS)}


def _phase_dirs(ctx: Context, name: str) -> list[Path]:
    """Folders a phase owns: emptied before it runs again."""
    return {
        "data": [ctx.data],
        "stage0": [ctx.encoder.parent],
        "stage1": [ctx.out / "stage1"],
        "stage2": [ctx.out / "stage2"],
        "eval": [ctx.out / "eval"],
        "chat": [ctx.out / "chat"],
    }[name]


# ---- driver -------------------------------------------------------------------------------------


def _read_record(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cpu_seconds() -> float:
    """User + system CPU seconds this process and its finished children have used."""
    import resource

    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    quick: bool = False,
    fresh: bool = False,
    progress: bool = True,
    precision: str | None = None,
    plan: DemoPlan | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Run (or reuse) every phase, print a summary table and write `summary.json`; returns it.

    precision: auto | fp32 | bf16 for the training phases (None: $POINTLLM_DEMO_PRECISION, else
    auto; see `choose_precision`). plan: the phase sizes (default FULL, or QUICK with `quick`).
    seed: the data and training seed (None: the plan's).

    summary.json: accuracy (held-out generative classification, 0-1, greedy answers to "What is
    this?" scored by the matcher), num_categories, num_eval_objects, caption_metrics (the
    `eval metrics --json` object), seed, precision and precision_reason, phases (name -> seconds),
    phase_cpu_seconds (name -> user + system CPU seconds), total_seconds, model_dir.
    """
    import shutil

    from pointllm.atomic import write_json

    plan = plan or (QUICK if quick else FULL)
    if seed is not None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        plan = replace(plan, seed=seed)
    chosen = choose_precision(precision or os.environ.get(PRECISION_ENV) or "auto")
    ctx = Context(Path(out_dir), plan, progress, chosen)
    ctx.out.mkdir(parents=True, exist_ok=True)
    print(f"Precision: {chosen.mode} ({chosen.reason})", flush=True)
    records: dict[str, dict] = {}
    rerun = fresh
    for number, name in enumerate(PHASES, start=1):
        marker = ctx.out / "phases" / f"{name}.json"
        record = _read_record(marker)
        settings = phase_settings(ctx, name)
        reusable = (
            not rerun
            and record is not None
            and record.get("settings") == settings
            and all(p.exists() for p in phase_outputs(ctx, name))
        )
        if reusable:
            print(f"[{number}/{len(PHASES)}] {name}: reused ({record['result']['key']})")
        else:
            rerun = True  # everything after a phase that runs again is stale
            print(f"[{number}/{len(PHASES)}] {name} ...", flush=True)
            marker.unlink(missing_ok=True)
            for folder in _phase_dirs(ctx, name):
                shutil.rmtree(folder, ignore_errors=True)
            started, cpu_started = time.perf_counter(), _cpu_seconds()
            result = _RUNNERS[name](ctx)
            record = {
                "seconds": time.perf_counter() - started,
                "cpu_seconds": _cpu_seconds() - cpu_started,
                "settings": settings,
                "result": result,
            }
            write_json(marker, record)
            print(f"[{number}/{len(PHASES)}] {name}: {result['key']} ({record['seconds']:.0f} s)")
        records[name] = record
    evaluation = records["eval"]["result"]
    summary = {
        "accuracy": evaluation["accuracy"],
        "num_categories": evaluation["num_categories"],
        "num_eval_objects": evaluation["num_eval_objects"],
        "caption_metrics": evaluation["caption_metrics"],
        "seed": plan.seed,
        "precision": chosen.mode,
        "precision_reason": chosen.reason,
        "phases": {name: round(records[name]["seconds"], 2) for name in PHASES},
        "phase_cpu_seconds": {
            name: round(records[name].get("cpu_seconds", 0.0), 2) for name in PHASES
        },
        "total_seconds": round(sum(records[name]["seconds"] for name in PHASES), 2),
        "model_dir": str(ctx.final_model.resolve()),
    }
    write_json(ctx.out / SUMMARY_FILE, summary)
    _print_report(ctx, records, summary)
    return summary


def _print_report(ctx: Context, records: dict[str, dict], summary: dict[str, Any]) -> None:
    """The chat examples, the caption metrics and the phase table."""
    print("\nExamples (held-out objects the model never trained on):")
    for example in records["chat"]["result"]["examples"]:
        name = _with_article(example["category"])
        print(f"  [{example['object_id']}, {name}]  preview: {example['preview']}")
        print(f"    Q: {example['question']}")
        print(f"    A: {example['answer']}")
    metrics = summary["caption_metrics"]
    shown = [f"{k} {v:.1f}" for k, v in metrics.items() if isinstance(v, (int, float))]
    print(f"\nCaption metrics (prompt {CAPTION_PROMPT!r} vs. ground truth): {', '.join(shown)}")
    print(f"\nPrecision: {summary['precision']} ({summary['precision_reason']})")
    print(f"{'phase':<8} {'time':>8} {'CPU time':>9}  key number")
    for name in PHASES:
        record = records[name]
        cpu = summary["phase_cpu_seconds"][name]
        print(f"{name:<8} {record['seconds']:>7.0f}s {cpu:>8.0f}s  {record['result']['key']}")
    cpu_total = sum(summary["phase_cpu_seconds"].values())
    print(f"{'total':<8} {summary['total_seconds']:>7.0f}s {cpu_total:>8.0f}s")
    print(
        f"\nHeld-out classification accuracy: {100 * summary['accuracy']:.1f} % over "
        f"{summary['num_categories']} categories ({summary['num_eval_objects']} objects)."
    )
    print(f"Chat with it: pointllm chat --model {ctx.final_model} --points FILE")
    print(f"Summary: {ctx.out / SUMMARY_FILE}")
