"""`train()`: the one entry point for stage 1 and stage 2; `pointllm train` and the tests call it."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed

from pointllm.atomic import write_json
from pointllm.model.checkpoint import TRAINING_CONFIG_FILE
from pointllm.train.args import (
    ArgumentError,
    DataArguments,
    ModelArguments,
    PointLLMTrainingArguments,
)
from pointllm.train.checkpoints import (
    NoIntactCheckpointError,
    publish_directory,
    resume_point,
    verify_checkpoint,
)
from pointllm.train.lora import apply_lora, merge_lora, quantization_kwargs
from pointllm.train.projector_fit import fit_projector_to_captions
from pointllm.train.stages import apply_plan, build_model, keeps_trained_projector, stage_plan
from pointllm.train.trainer import GracefulStop, PointLLMTrainer, peak_memory_gb

logger = logging.getLogger(__name__)

SUMMARY_FILE = "train_summary.json"
_FINAL_STAGING = ".staging-final"


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    interrupted: bool
    resumed_from: str | None
    summary: dict


def train(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: PointLLMTrainingArguments,
    *,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Train a PointLLM stage as the arguments describe; save the final model into
    `training_args.output_dir` and write `train_summary.json` there.

    On SIGTERM / SIGUSR1 the run saves a checkpoint at the end of the current step and returns
    with `interrupted=True` (no final model); `--resume` continues it exactly.
    """
    from torch.utils.data import Subset

    from pointllm.data.collate import PointLLMCollator
    from pointllm.data.dataset import PointLLMDataset

    started = time.time()
    stop = GracefulStop()
    with stop.installed():
        set_seed(training_args.seed)
        model, tokenizer = build_model(model_args, data_args, quantization_kwargs(model_args))
        apply_plan(model, stage_plan(model_args))
        if model_args.lora_r:
            apply_lora(model, model_args)
        dataset = PointLLMDataset.for_model(
            data_args.anno_path,
            data_args.data_path,
            tokenizer,
            model.config,
            conversation_types=data_args.conversation_types_for(model_args.stage),
            model_max_length=data_args.model_max_length,
        )
        if data_args.max_train_samples is not None:
            dataset = Subset(dataset, range(min(data_args.max_train_samples, len(dataset))))
        if len(dataset) == 0:
            raise ArgumentError(
                f"{data_args.anno_path}: no samples of types "
                f"{data_args.conversation_types_for(model_args.stage)}"
            )
        configure_fsdp_wrapping(training_args, model)
        resume = resume_checkpoint(training_args)
        if model_args.projector_init == "caption_fit" and resume is None:
            if keeps_trained_projector(model_args):
                logger.warning(
                    "--projector_init caption_fit: %s brings a trained projector; it is kept",
                    model_args.model_name_or_path,
                )
            else:
                fit_projector_to_captions(model, dataset)
        trainer = PointLLMTrainer(
            model=model,
            args=training_args,
            train_dataset=dataset,
            data_collator=PointLLMCollator(tokenizer),
            processing_class=tokenizer,
            callbacks=[stop, *callbacks],
            base_model=_base_model_reference(model_args.model_name_or_path),
        )
        output = trainer.train(resume_from_checkpoint=resume)
        interrupted = stop.stopped_at_step is not None
        # Counted before a LoRA merge turns the adapters into plain (frozen) weights.
        parameters = _parameter_counts(trainer.accelerator.unwrap_model(trainer.model))
        parameters.update(rank_consistency(trainer))
        if not interrupted:
            save_final_model(trainer, model_args, data_args, training_args)

    summary = {
        **_summary(trainer, output, model_args, started, interrupted, resume),
        **parameters,
    }
    if training_args.should_save:
        write_json(Path(training_args.output_dir) / SUMMARY_FILE, summary)
    return TrainResult(
        Path(training_args.output_dir), trainer.state.global_step, interrupted, resume, summary
    )


def _base_model_reference(name_or_path: str) -> str:
    """What LoRA adapters record as their base: an absolute path for local dirs, else the name."""
    path = Path(name_or_path)
    return str(path.resolve()) if path.exists() else name_or_path


def resume_checkpoint(training_args: PointLLMTrainingArguments) -> str | None:
    """An explicit `--resume_from_checkpoint`, or with `--resume` the latest complete checkpoint
    of the output directory (None: start fresh)."""
    explicit = training_args.resume_from_checkpoint
    if explicit:
        if not Path(explicit).is_dir():
            raise ArgumentError(f"--resume_from_checkpoint {explicit}: no such directory")
        problem = verify_checkpoint(Path(explicit))
        if problem is not None:
            raise NoIntactCheckpointError(f"--resume_from_checkpoint {explicit}: {problem}")
        return explicit
    if not training_args.resume:
        return None
    latest = resume_point(training_args.output_dir)
    if latest is None:
        logger.info(
            "--resume: no complete checkpoint in %s, starting fresh", training_args.output_dir
        )
        return None
    logger.info("resuming from %s", latest)
    return str(latest)


def decoder_layer_classes(model) -> list[str]:
    """Class names of the LLM's repeated blocks (FSDP wrap units), e.g. ["LlamaDecoderLayer"]."""
    llm = model.language_model
    llm = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    names = list(getattr(llm, "_no_split_modules", None) or [])
    if not names:
        raise ArgumentError(
            f"{type(llm).__name__} does not name its decoder layer class; set "
            "--fsdp_transformer_layer_cls_to_wrap"
        )
    return names


def configure_fsdp_wrapping(training_args: PointLLMTrainingArguments, model) -> None:
    """With FSDP, wrap each decoder layer of whichever LLM (unless the arguments name classes)."""
    plugin_args = getattr(training_args, "fsdp_plugin_args", None)
    if plugin_args is None:
        return
    classes = (
        training_args.fsdp_transformer_layer_cls_to_wrap
        or training_args.fsdp_config.get("transformer_layer_cls_to_wrap")
        or decoder_layer_classes(model)
    )
    training_args.fsdp_config["transformer_layer_cls_to_wrap"] = list(classes)
    if plugin_args.get("auto_wrap_policy") == "TRANSFORMER_BASED_WRAP":
        plugin_args["transformer_cls_names_to_wrap"] = ",".join(classes)


def save_final_model(
    trainer: PointLLMTrainer,
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: PointLLMTrainingArguments,
) -> None:
    """Write the trained model into the output directory: a full PointLLM checkpoint, a merged
    one (LoRA + --save_merged) or a LoRA adapter, plus `training_config.json`. All ranks take
    part (FSDP / DeepSpeed gather the weights); the main process publishes the files."""
    run_dir = Path(training_args.output_dir)
    staging = run_dir / _FINAL_STAGING
    if training_args.should_save:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    if model_args.save_merged:
        merge_lora(trainer.accelerator.unwrap_model(trainer.model))
    trainer.save_model(str(staging))
    if not training_args.should_save:
        return
    # The Trainer pickles its arguments; the published model carries them as JSON instead.
    (staging / "training_args.bin").unlink(missing_ok=True)
    write_json(
        staging / TRAINING_CONFIG_FILE,
        {
            "model_args": asdict(model_args),
            "data_args": asdict(data_args),
            "training_args": training_args.to_dict(),
        },
    )
    publish_directory(staging, run_dir)


def rank_consistency(trainer: PointLLMTrainer) -> dict:
    """Per-rank fingerprints of the trainable weights (float64 sum and sum of squares) and whether
    all ranks agree: replicated training (DDP) must end with identical weights everywhere. Sharded
    engines (FSDP, DeepSpeed) hold different shards per rank, so they are not compared."""
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        return {"rank_fingerprints": None, "ranks_consistent": None}
    model = trainer.accelerator.unwrap_model(trainer.model)
    params = [p.detach().double() for p in model.parameters() if p.requires_grad]
    local = torch.stack([sum(p.sum() for p in params), sum(p.square().sum() for p in params)]).to(
        trainer.args.device
    )
    gathered = [local]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [torch.zeros_like(local) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(gathered, local)
    fingerprints = [g.tolist() for g in gathered]
    return {
        "rank_fingerprints": fingerprints,
        "ranks_consistent": all(f == fingerprints[0] for f in fingerprints),
    }


def _parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    return {
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
    }


def _summary(trainer, output, model_args, started, interrupted, resume) -> dict:
    state, args = trainer.state, trainer.args
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    runtime = output.metrics.get("train_runtime", 0.0)
    tokens = state.num_input_tokens_seen - trainer._initial_num_input_tokens_seen
    return {
        "stage": model_args.stage,
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epoch": state.epoch,
        "final_loss": losses[-1] if losses else None,
        "train_loss": output.training_loss,
        "samples_per_second": output.metrics.get("train_samples_per_second"),
        "tokens_per_second": tokens / runtime if runtime else None,
        "peak_memory_gb": peak_memory_gb(),
        "train_runtime_s": runtime,
        "wall_time_s": time.time() - started,
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "device": str(args.device),
        "world_size": args.world_size,
        "lora": bool(model_args.lora_r),
        "resumed_from": resume,
        "interrupted": interrupted,
        "model_dir": None if interrupted else str(Path(args.output_dir).resolve()),
        "torch_version": torch.__version__,
    }
