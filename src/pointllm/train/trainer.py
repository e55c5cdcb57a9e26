"""The Hugging Face Trainer, adapted: throughput in the logs, marked checkpoints, LoRA adapter
saves, and a clean stop on the signals batch schedulers send before the wall time."""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from pointllm.model.adapters import is_lora_model, load_lora_weights, save_lora_adapter
from pointllm.train.checkpoints import mark_complete, prune_checkpoints

logger = logging.getLogger(__name__)

# SIGTERM: PBS, Slurm and Kubernetes before a kill; SIGUSR1: Slurm's `--signal=USR1@<seconds>`.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
LOG_FILE = "train_log.jsonl"


def peak_memory_gb() -> float:
    """Peak memory of this process: CUDA allocations on a GPU, resident set size on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


class GracefulStop(TrainerCallback):
    """On SIGTERM / SIGUSR1, finish the current optimizer step, save a checkpoint and stop.

    All ranks agree on stopping (the flag is max-reduced each step), so a signal that reached only
    some processes still stops every rank at the same step.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.stopped_at_step: int | None = None

    def _handle(self, signum: int, frame) -> None:
        self.received = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[GracefulStop]:
        """Catch the stop signals inside the block; the previous handlers come back afterwards.
        Outside the main thread (where Python cannot install handlers) this does nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _requested_anywhere(self, device: torch.device) -> bool:
        flag = self.received is not None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_backend() == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
            value = torch.tensor([int(flag)], device=device)
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
            flag = bool(value.item())
        return flag

    def on_step_end(self, args, state, control, **kwargs):
        if self._requested_anywhere(args.device):
            if self.received is None:
                self.received = signal.SIGTERM  # another rank got it
            self.stopped_at_step = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control


class CheckpointMarker(TrainerCallback):
    """After every checkpoint save: mark it complete (once every rank wrote its part), then prune
    old ones, so a crash never leaves no usable checkpoint. `keep` is the run's
    `save_total_limit`; `PointLLMTrainer.train` keeps the Trainer's own rotation off, since it
    would delete old checkpoints before the new one is marked."""

    def __init__(self, keep: int | None) -> None:
        self.keep = keep

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        PartialState().wait_for_everyone()
        if args.should_save:
            run_dir = Path(args.output_dir)
            mark_complete(run_dir / f"checkpoint-{state.global_step}", state.global_step)
            best = state.best_model_checkpoint
            prune_checkpoints(run_dir, self.keep, Path(best) if best else None)
        return control


class PointLLMTrainer(Trainer):
    """`Trainer` with throughput logging, completion-marked checkpoints and LoRA adapter saves.

    `base_model` is what LoRA adapters apply to (recorded in adapter checkpoints).
    """

    def __init__(self, *args, base_model: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.base_model = base_model
        self._last_log: tuple[float, int, int] | None = None
        self.add_callback(CheckpointMarker(self.args.save_total_limit))

    def train(self, *args, **kwargs):
        """`Trainer.train`, with the Trainer's checkpoint rotation off: `CheckpointMarker` prunes
        after marking instead (the limit is restored afterwards, so the arguments record it)."""
        keep, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            return super().train(*args, **kwargs)
        finally:
            self.args.save_total_limit = keep

    # ---- logging ------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add samples/s, tokens/s (since the previous log) and peak memory to training logs, and
        append every log line to `train_log.jsonl` in the output directory."""
        if "loss" in logs:
            now, step, tokens = (
                time.time(),
                self.state.global_step,
                self.state.num_input_tokens_seen,
            )
            if self._last_log is None:
                self._last_log = (
                    start_time or now,
                    self._initial_global_step,
                    self._initial_num_input_tokens_seen,
                )
            last_time, last_step, last_tokens = self._last_log
            elapsed = max(now - last_time, 1e-9)
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            logs["samples_per_second"] = round(
                (step - last_step) * batch * self.args.world_size / elapsed, 3
            )
            logs["tokens_per_second"] = round((tokens - last_tokens) / elapsed, 1)
            logs["peak_memory_gb"] = round(peak_memory_gb(), 3)
            self._last_log = (now, step, tokens)
        super().log(logs, start_time)
        if self.args.should_save:
            line = json.dumps({**logs, "step": self.state.global_step})
            with open(Path(self.args.output_dir) / LOG_FILE, "a") as handle:
                handle.write(line + "\n")

    # ---- checkpoints --------------------------------------------------------------------------

    # The two methods below stay private overrides on purpose. The Trainer handles a PeftModel only
    # when it is the model itself; ours sits inside the composite (the point modules train in full
    # beside it), so its own save would write the whole frozen LLM and its resume would look for
    # full weights. `_save` is where the Trainer hands over the state dict it gathered (FSDP full
    # state dict, DeepSpeed ZeRO-3 16-bit); overriding the public `save_model` instead would mean
    # re-implementing those gathers. Resuming has no public hook for loading model weights.

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """LoRA runs save the adapter format (small, and never mistaken for a full model)."""
        model = self.accelerator.unwrap_model(self.model)
        if not is_lora_model(model):
            super()._save(output_dir, state_dict)
            return
        if self.args.should_save:
            save_lora_adapter(
                model,
                self.processing_class,
                output_dir or self.args.output_dir,
                self.base_model,
                state_dict,
            )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if is_lora_model(target):
            load_lora_weights(target, resume_from_checkpoint)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
