"""Training: arguments, stage freezing, checkpoints and exact resume, LoRA, signals, DDP, launcher.

Everything runs on a tiny random Llama (hidden 32, 2 layers) with the real SmolLM2 tokenizer and a
six-object synthetic dataset of 64-point clouds, so a training run takes seconds on a CPU.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model, tiny_text_config
from transformers import TrainerCallback, set_seed

from pointllm.train import RESUBMIT_EXIT_CODE
from pointllm.train.args import ArgumentError, ModelArguments, parse_args
from pointllm.train.checkpoints import (
    COMPLETE_MARKER,
    latest_complete_checkpoint,
    mark_complete,
    prune_checkpoints,
    publish_directory,
)
from pointllm.train.run import train
from pointllm.train.stages import apply_plan, build_model, stage_plan, trainable_parameter_names

REPO = Path(__file__).resolve().parents[1]
TINY_ENCODER = [
    "--trans_dim",
    "32",
    "--depth",
    "1",
    "--num_heads",
    "4",
    "--num_group",
    "4",
    "--group_size",
    "8",
    "--encoder_dims",
    "32",
    "--projector_hidden_dims",
    "48",
    "--num_points",
    "64",
]


@dataclass
class Assets:
    llm: Path
    points: Path
    stage1: Path
    stage2: Path


@pytest.fixture(scope="module")
def assets(tmp_path_factory, embedded_dir) -> Assets:
    """A tiny Llama saved with the SmolLM2 tokenizer, and a synthetic dataset."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from pointllm.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("train_assets")
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_text_config("llama", len(tokenizer))).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    data = generate_dataset(root / "data", 6, seed=0, num_points=64)
    return Assets(
        root / "llm", Path(data["points_dir"]), Path(data["stage1"]), Path(data["stage2"])
    )


def train_argv(assets: Assets, out: Path, *extra: str, steps: int = 6) -> list[str]:
    return [
        "--model_name_or_path", str(assets.llm),
        "--data_path", str(assets.points),
        "--anno_path", str(assets.stage1),
        "--output_dir", str(out),
        *TINY_ENCODER,
        "--max_steps", str(steps),
        "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-2",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--disable_tqdm", "true",
        "--seed", "0",
        "--gradient_checkpointing", "true",
        *extra,
    ]  # fmt: skip


def stage2_argv(assets: Assets, base: Path, out: Path, *extra: str, steps: int = 2) -> list[str]:
    return [
        "--model_name_or_path", str(base),
        "--stage", "2",
        "--data_path", str(assets.points),
        "--anno_path", str(assets.stage2),
        "--output_dir", str(out),
        "--max_steps", str(steps),
        "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-2",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip


def run_train(argv: list[str], callbacks=()):
    model_args, data_args, training_args = parse_args(argv)
    return train(model_args, data_args, training_args, callbacks=callbacks)


def state_of(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


class CheckpointingProbe(TrainerCallback):
    """Records whether the LLM recomputes activations (gradient checkpointing) during training."""

    def __init__(self) -> None:
        self.active: bool | None = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.active = model.language_model.is_activation_checkpointing


@pytest.fixture(scope="module")
def stage1_run(assets, tmp_path_factory):
    """Six uninterrupted stage-1 steps with gradient checkpointing (the reference for the
    freezing and resume tests)."""
    probe = CheckpointingProbe()
    result = run_train(
        train_argv(assets, tmp_path_factory.mktemp("stage1") / "run"), callbacks=[probe]
    )
    assert probe.active is True
    return result


# ---- arguments ------------------------------------------------------------------------------


def test_yaml_recipe_command_line_overrides_and_original_flags(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model_name_or_path: some/llm\n"
        "data_path: data/objaverse_data\n"
        "anno_path: anno.json\n"
        f"output_dir: {tmp_path / 'out'}\n"
        "learning_rate: 2.0e-3\n"
        "conversation_types: [detailed_description, single_round]\n"
        "gradient_checkpointing: true\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no renamed transformers field is used
        model_args, data_args, training_args = parse_args(
            ["--config", str(recipe), "--learning_rate", "1e-4", "--version", "v1"]
            + ["--stage_2", "True", "--fix_pointnet", "False", "--pointnum", "1024"]
            + ["--evaluation_strategy", "no", "--data_debug_num", "0", "--fix_llm", "False"]
        )
    assert training_args.learning_rate == 1e-4  # the command line wins over the file
    assert training_args.activation_checkpointing is True
    assert training_args.remove_unused_columns is False  # point_clouds must reach the model
    assert model_args.template == "vicuna_v1_1"
    assert model_args.stage == 2 and model_args.fix_pointnet is False
    assert model_args.fix_llm is False
    assert data_args.num_points == 1024 and data_args.max_train_samples is None
    assert data_args.conversation_types == ["detailed_description", "single_round"]
    assert stage_plan(model_args).encoder is True

    recipe.write_text(recipe.read_text() + "learning_rat: 1.0\n")
    with pytest.raises(ArgumentError, match="learning_rat"):
        parse_args(["--config", str(recipe)])
    with pytest.raises(ArgumentError, match="only v1"):
        parse_args(["--version", "v0"])
    with pytest.raises(ArgumentError, match="config file not found"):
        parse_args(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ArgumentError, match="--output_dir is required"):
        parse_args(["--data_path", "d", "--anno_path", "a"])
    with pytest.raises(ArgumentError, match="stage 1 or --fix_llm True"):
        parse_args(["--lora_r", "8", "--data_path", "d", "--anno_path", "a", "--output_dir", "o"])


def test_shipped_recipes_use_known_fields_and_demo_recipes_parse(tmp_path):
    from pointllm.train.args import build_parser, config_to_argv, translate_legacy_flags

    known = {a.dest for a in build_parser()._actions} | {"config"}
    recipes = sorted((REPO / "configs").glob("*.yaml"))
    assert {"stage1.yaml", "stage2.yaml", "demo_stage1.yaml", "demo_stage2.yaml"} <= {
        p.name for p in recipes
    }
    for recipe in recipes:
        flags = translate_legacy_flags(config_to_argv(recipe))
        unknown = {f[2:] for f in flags if f.startswith("--")} - known
        assert not unknown, f"{recipe.name}: unknown fields {unknown}"
    for name in ("demo_stage1.yaml", "demo_stage2.yaml"):
        model_args, data_args, training_args = parse_args(
            ["--config", str(REPO / "configs" / name), "--output_dir", str(tmp_path)]
        )
        assert training_args.bf16 is False  # the demo runs on a CPU
        assert model_args.stage == (1 if "1" in name else 2)


# ---- freezing -------------------------------------------------------------------------------


def test_stage_plans_list_exact_trainable_parameters():
    model, _ = make_tiny_model()
    names = [n for n, _ in model.named_parameters()]
    plans = {
        "stage 1": ModelArguments(stage=1),
        "stage 2": ModelArguments(stage=2),
        "stage 2, encoder unfrozen": ModelArguments(stage=2, fix_pointnet=False),
        "stage 2, LLM fixed": ModelArguments(stage=2, fix_llm=True),
    }
    projector = {n for n in names if n.startswith("point_proj.")} | {"point_boundary_embeds"}
    llm = {n for n in names if n.startswith("language_model.")}
    encoder = {n for n in names if n.startswith("point_backbone.")}
    expected = {
        "stage 1": projector,
        "stage 2": projector | llm,
        "stage 2, encoder unfrozen": projector | llm | encoder,
        "stage 2, LLM fixed": projector,
    }
    for label, model_args in plans.items():
        apply_plan(model, stage_plan(model_args))
        assert set(trainable_parameter_names(model)) == expected[label], label
        model.train()  # what the Trainer calls before every step
        assert model.point_backbone.training is (label == "stage 2, encoder unfrozen"), label

    # Half-precision storage: frozen weights stay bf16, trainable ones become float32 masters.
    model.to(torch.bfloat16)
    apply_plan(model, stage_plan(ModelArguments(stage=1)))
    assert model.point_proj[0].weight.dtype == torch.float32
    assert model.language_model.lm_head.weight.dtype == torch.bfloat16


def test_stage1_trains_projector_only_and_frozen_weights_stay_bit_identical(stage1_run, assets):
    model_args, data_args, _ = parse_args(train_argv(assets, stage1_run.output_dir))
    set_seed(0)
    initial, _ = build_model(model_args, data_args)  # what train() started from
    before = {k: v for k, v in initial.state_dict().items()}
    after = state_of(stage1_run.output_dir)
    trainable = {"point_boundary_embeds"} | {k for k in before if k.startswith("point_proj.")}
    for name, value in before.items():
        if name not in after:  # lm_head, tied to the input embeddings
            assert name == "language_model.lm_head.weight"
            continue
        if name in trainable:
            assert not torch.equal(value, after[name]), f"{name} did not train"
        else:  # LLM and encoder weights, and the encoder's BatchNorm statistics (eval mode)
            assert torch.equal(value, after[name]), f"frozen {name} changed"

    summary = stage1_run.summary
    assert summary["global_step"] == 6 and not summary["interrupted"]
    assert math.isfinite(summary["final_loss"])
    assert summary["trainable_parameters"] == sum(before[k].numel() for k in trainable)
    assert summary["samples_per_second"] > 0 and summary["tokens_per_second"] > 0
    assert summary["peak_memory_gb"] > 0
    assert summary["ranks_consistent"] is True
    written = json.loads((stage1_run.output_dir / "train_summary.json").read_text())
    assert written["global_step"] == 6
    logs = [json.loads(line) for line in (stage1_run.output_dir / "train_log.jsonl").open()]
    steps = [entry for entry in logs if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3, 4, 5, 6]
    assert all(entry["tokens_per_second"] > 0 and "learning_rate" in entry for entry in steps)
    # The output directory is a self-describing checkpoint.
    config = json.loads((stage1_run.output_dir / "config.json").read_text())
    assert config["model_type"] == "pointllm" and config["num_points"] == 64
    record = json.loads((stage1_run.output_dir / "training_config.json").read_text())
    assert record["model_args"]["stage"] == 1 and record["training_args"]["max_steps"] == 6


def test_stage2_continues_from_stage1_and_keeps_the_encoder(stage1_run, assets, tmp_path):
    probe = CheckpointingProbe()
    result = run_train(stage2_argv(assets, stage1_run.output_dir, tmp_path / "s2"), [probe])
    assert probe.active is False  # no recomputation unless asked for
    before, after = state_of(stage1_run.output_dir), state_of(result.output_dir)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("language_model.model.layers.") for k in changed)
    assert any(k.startswith("point_proj.") for k in changed)
    assert not any(k.startswith("point_backbone.") for k in changed)
    assert result.summary["stage"] == 2


def test_caption_fit_starts_a_new_projector_and_keeps_a_trained_one(
    stage1_run, assets, tmp_path, monkeypatch
):
    import pointllm.train.run as run_module

    fitted = []  # the projector's last layer right after each fit

    def fit_and_record(model, dataset):
        fit = real_fit(model, dataset)
        fitted.append({k: v.clone() for k, v in model.point_proj[-1].state_dict().items()})
        return fit

    real_fit = run_module.fit_projector_to_captions
    monkeypatch.setattr(run_module, "fit_projector_to_captions", fit_and_record)
    out = tmp_path / "fit"
    # Learning rate 0: the saved projector is exactly where the fit put it.
    run_train(train_argv(assets, out, "--projector_init", "caption_fit", "--learning_rate", "0"))
    assert len(fitted) == 1
    saved = state_of(out)
    last = max(int(k.split(".")[1]) for k in saved if k.startswith("point_proj."))
    for name, value in fitted[0].items():
        assert torch.equal(saved[f"point_proj.{last}.{name}"], value), name

    # Continuing stage 1 from a PointLLM checkpoint keeps its trained projector: no second fit.
    again = stage2_argv(assets, stage1_run.output_dir, tmp_path / "again", steps=1)
    again += ["--stage", "1", "--anno_path", str(assets.stage1), "--projector_init", "caption_fit"]
    run_train(again)
    assert len(fitted) == 1


# ---- checkpoints and resume -----------------------------------------------------------------


class SignalAt(TrainerCallback):
    """Sends `sig` to this process at the end of step `step` (a scheduler's warning, in-process)."""

    def __init__(self, step: int, sig: int = signal.SIGUSR1) -> None:
        self.step, self.sig = step, sig

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.sig)


def test_stop_and_resume_gives_the_same_weights_as_one_straight_run(stage1_run, assets, tmp_path):
    out = tmp_path / "run"
    argv = train_argv(assets, out)
    stopped = run_train(argv, callbacks=[SignalAt(2)])
    # The signal lands after step 2 was handled; the run stops cleanly at the next step's end.
    assert stopped.interrupted and stopped.global_step == 3
    assert latest_complete_checkpoint(out) == out / "checkpoint-3"
    assert not (out / "config.json").exists()  # no final model from an interrupted run
    from pointllm.model.pointllm import load_pointllm

    checkpoint_model, _ = load_pointllm(out / "checkpoint-3")  # checkpoints describe themselves
    assert checkpoint_model.config.num_points == 64
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored

    # A half-written later checkpoint (a crash mid-save) must not be resumed from.
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "model.safetensors").write_bytes(b"truncated")
    resumed = run_train(argv + ["--resume"])
    assert resumed.resumed_from == str(out / "checkpoint-3")
    assert resumed.global_step == 6 and not resumed.interrupted

    straight, split = state_of(stage1_run.output_dir), state_of(out)
    assert straight.keys() == split.keys()
    for name in straight:
        assert torch.equal(straight[name], split[name]), name


def test_prune_and_publish_never_leave_a_partial_checkpoint(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2, 3, 4, 6):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "model.safetensors").write_text(str(step))
        if step != 2 and step != 6:
            mark_complete(run / f"checkpoint-{step}", step)
    prune_checkpoints(run, keep=2)
    # Complete 3 and 4 kept, complete 1 pruned, the crashed 2 removed, the in-flight 6 untouched.
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-3", "checkpoint-4", "checkpoint-6"]
    assert json.loads((run / "checkpoint-4" / COMPLETE_MARKER).read_text())["files"] == [
        "model.safetensors"
    ]
    assert latest_complete_checkpoint(run) == run / "checkpoint-4"

    (run / "config.json").write_text("old")
    (run / "model-00001-of-00002.safetensors").write_text("stale shard")
    staging = run / ".staging"
    staging.mkdir()
    (staging / "model.safetensors").write_text("new")
    (staging / "config.json").write_text("new")
    publish_directory(staging, run)
    assert (run / "config.json").read_text() == "new"
    assert not (run / "model-00001-of-00002.safetensors").exists() and not staging.exists()


# ---- LoRA -----------------------------------------------------------------------------------


class Capture(TrainerCallback):
    """Records the trainable parameter names at the start and fixed-batch logits at the end."""

    def __init__(self, batch: dict) -> None:
        self.batch, self.names, self.logits = batch, None, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.names = set(trainable_parameter_names(model))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():
            self.logits = model(**self.batch).logits


def lora_batch(base: Path, assets: Assets) -> dict:
    from pointllm.data.collate import PointLLMCollator
    from pointllm.data.dataset import PointLLMDataset
    from pointllm.model.pointllm import load_pointllm

    model, tokenizer = load_pointllm(base)
    dataset = PointLLMDataset.for_model(assets.stage2, assets.points, tokenizer, model.config)
    batch = PointLLMCollator(tokenizer)([dataset[0], dataset[1]])
    batch.pop("labels")
    return batch


def test_lora_trains_adapters_and_projector_resumes_and_saves_adapter_or_merged(
    stage1_run, assets, tmp_path
):
    from pointllm.model.pointllm import load_pointllm
    from pointllm.train.lora import load_lora_adapter

    base = stage1_run.output_dir
    batch = lora_batch(base, assets)
    lora = ["--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", "--seed", "1"]
    # Adapter run: stopped after step 2 (its checkpoint is an adapter too), then resumed to 3.
    adapter_argv = stage2_argv(assets, base, tmp_path / "adapter", *lora, steps=3)
    stopped = run_train(adapter_argv, [SignalAt(1)])
    assert stopped.interrupted
    assert (stopped.output_dir / "checkpoint-2" / "adapter_model.safetensors").is_file()
    adapter_run = Capture(batch)
    adapter = run_train(adapter_argv + ["--resume"], [adapter_run])
    assert adapter.global_step == 3
    names = adapter_run.names
    assert names and all(
        "lora_" in n or n.startswith("point_proj.") or n == "point_boundary_embeds" for n in names
    )
    assert {n for n in names if n.startswith("point_proj.")} == {
        n for n, _ in load_pointllm(base)[0].named_parameters() if n.startswith("point_proj.")
    }
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    # The adapter directory is small and cannot be mistaken for a full checkpoint.
    files = {p.name for p in adapter.output_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "pointllm_adapter.json"} <= files
    assert "config.json" not in files and "model.safetensors" not in files
    restored, _ = load_lora_adapter(adapter.output_dir)
    by_path, _ = load_pointllm(adapter.output_dir)  # what chat/eval/serve call with the path
    with torch.no_grad():
        assert torch.equal(restored(**batch).logits, adapter_run.logits)
        assert torch.equal(by_path(**batch).logits, adapter_run.logits)

    # Merged run: the same three steps straight, then folded into the weights and saved in full.
    merged_run = Capture(batch)
    merged = run_train(
        stage2_argv(assets, base, tmp_path / "merged", *lora, "--save_merged", "true", steps=3),
        [merged_run],
    )
    assert torch.equal(merged_run.logits, adapter_run.logits)  # LoRA stop + resume is exact
    model, _ = load_pointllm(merged.output_dir)
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, merged_run.logits, rtol=1e-4, atol=1e-4)
    assert merged.summary["trainable_parameters"] == adapter.summary["trainable_parameters"]


def test_qlora_without_cuda_is_a_clear_error(monkeypatch):
    from pointllm.train.lora import quantization_kwargs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ModelArguments(stage=2, lora_r=8, quantization="4bit")
    with pytest.raises(ValueError, match=r"QLoRA\): 4-bit needs bitsandbytes and a CUDA GPU"):
        quantization_kwargs(args)


# ---- processes: signals, APEX, DDP ----------------------------------------------------------


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def broken_apex(root: Path) -> Path:
    """A package `apex` whose `from apex import amp` fails, as on the cluster in the seed."""
    package = root / "apex"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "def __getattr__(name):\n"
        "    raise ImportError(f\"cannot import name '{name}' from 'apex'\")\n"
    )
    return root


def wait_for_step(log: Path, step: int, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"training exited early with {process.returncode}")
        if log.is_file() and any(
            json.loads(line).get("step", 0) >= step for line in log.read_text().splitlines()
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} in {log} after {timeout} s")


def test_sigterm_checkpoints_and_exits_for_resubmission_with_broken_apex(assets, tmp_path):
    env = subprocess_env(PYTHONPATH=str(broken_apex(tmp_path / "site")))
    check = subprocess.run(
        [sys.executable, "-c", "from apex import amp"], env=env, capture_output=True, text=True
    )
    assert check.returncode != 0 and "cannot import name 'amp'" in check.stderr

    out = tmp_path / "run"
    # bf16 autocast on the CPU: mixed precision is torch's own, whatever `apex` holds.
    argv = train_argv(assets, out, "--bf16", "true", "--use_cpu", "true", steps=10)
    process = subprocess.Popen(
        [sys.executable, "-m", "pointllm", "train", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_step(out / "train_log.jsonl", 2, process)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == RESUBMIT_EXIT_CODE, output
    checkpoint = latest_complete_checkpoint(out)
    assert checkpoint is not None and "Resubmit with --resume" in output
    stopped_at = int(checkpoint.name.split("-")[1])
    assert 2 <= stopped_at < 10
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["interrupted"] is True and summary["precision"] == "bf16"
    assert math.isfinite(summary["final_loss"])

    resumed = run_train(argv + ["--resume"])
    assert resumed.resumed_from == str(checkpoint) and resumed.global_step == 10
    assert (out / "config.json").is_file()


def test_two_process_ddp_on_cpu_agrees_across_ranks_and_stops_on_sigterm(assets, tmp_path):
    """`pointllm train --nproc 2` (torchrun, gloo): both ranks hold the same weights, and a
    SIGTERM to the launcher reaches the workers, which checkpoint and exit for resubmission."""
    out = tmp_path / "ddp"
    argv = train_argv(assets, out, "--ddp_backend", "gloo", steps=40)
    process = subprocess.Popen(
        [sys.executable, "-m", "pointllm", "train", "--nproc", "2", *argv],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_step(out / "train_log.jsonl", 2, process)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=180)
    finally:
        process.kill()
    assert process.returncode == RESUBMIT_EXIT_CODE, output[-4000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["interrupted"] is True
    assert 2 <= summary["global_step"] < 40 and math.isfinite(summary["final_loss"])
    first, second = summary["rank_fingerprints"]
    assert first == second and summary["ranks_consistent"] is True
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == [f"checkpoint-{summary['global_step']}"]
    assert (checkpoints[0] / COMPLETE_MARKER).is_file()


def test_launcher_builds_torchrun_commands():
    from pointllm.train.launch import split_launch_args, torchrun_argv

    options, rest = split_launch_args(
        ["--nproc", "4", "--nnodes", "2", "--rdzv_endpoint", "node0:29400", "--lr", "1"]
    )
    assert rest == ["--lr", "1"]
    argv = torchrun_argv(options, rest, verbose=False)
    assert argv[:4] == ["--nproc_per_node", "4", "--nnodes", "2"]
    assert "--rdzv_endpoint" in argv and "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in argv
    assert argv[-5:] == ["-m", "pointllm", "train", "--lr", "1"]
    single, _ = split_launch_args(["--nproc", "2"])
    assert "--standalone" in torchrun_argv(single, [], verbose=False)
    multi, _ = split_launch_args(["--nproc", "2", "--nnodes", "2"])
    with pytest.raises(ValueError, match="needs --rdzv_endpoint"):
        torchrun_argv(multi, [], verbose=False)


def test_cli_reports_bad_arguments_in_one_line(tmp_path, capsys):
    from pointllm.cli import main

    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config file not found" in err[0]
    assert main(["train", "--help"]) == 0
    assert "--nproc" in capsys.readouterr().out
