"""Checkpoints that are never half-read: completion markers, pruning, resume, final publishing.

The Trainer writes `checkpoint-N/` in place; a crash can leave one half-written. Each finished
checkpoint therefore gets a marker file written last, and resuming only considers marked ones.
The final model is written to a staging folder inside the run directory and its files are moved
into place with `os.replace`, the file that makes the directory loadable (`config.json`, or
`pointllm_adapter.json` for a LoRA adapter) last.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from pointllm.atomic import write_json

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Files whose presence makes a directory loadable; they are removed first and written last.
LOADABLE_MARKERS = ("config.json", "pointllm_adapter.json")


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """`checkpoint-N` folders of a run, oldest step first."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_MARKER).is_file()


def mark_complete(checkpoint: Path, step: int) -> None:
    files = sorted(p.name for p in checkpoint.iterdir() if p.name != COMPLETE_MARKER)
    write_json(checkpoint / COMPLETE_MARKER, {"step": step, "files": files})


def latest_complete_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The highest-step checkpoint whose save finished; half-written ones are skipped (logged)."""
    for _, path in reversed(checkpoint_dirs(run_dir)):
        if is_complete(path):
            return path
        logger.warning("skipping %s: its save did not finish (no %s)", path, COMPLETE_MARKER)
    return None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int | None, protect: Path | None = None):
    """Delete the oldest complete checkpoints beyond `keep`, and unfinished ones older than the
    newest complete checkpoint (left by crashes). `protect` (the best model) is never deleted."""
    found = checkpoint_dirs(run_dir)
    complete = [path for _, path in found if is_complete(path)]
    if not complete:
        return
    newest_step = max(step for step, path in found if is_complete(path))
    doomed = [path for step, path in found if not is_complete(path) and step < newest_step]
    if keep:
        doomed += complete[: max(len(complete) - keep, 0)]
    for path in doomed:
        if protect is not None and path.resolve() == protect.resolve():
            continue
        shutil.rmtree(path, ignore_errors=True)


def publish_directory(staging: Path, target: Path) -> None:
    """Move the files of `staging` into `target` so that `target` is never loadable while only
    partly written: loadable markers go first out and last in; stale weight shards are dropped."""
    target.mkdir(parents=True, exist_ok=True)
    for name in LOADABLE_MARKERS:
        (target / name).unlink(missing_ok=True)
    new_files = {p.name for p in staging.iterdir()}
    for old in target.glob("*.safetensors*"):
        if old.name not in new_files:
            old.unlink()
    ordered = sorted(new_files, key=lambda name: name in LOADABLE_MARKERS)
    for name in ordered:
        source = staging / name
        if source.is_dir():
            shutil.rmtree(target / name, ignore_errors=True)
        os.replace(source, target / name)
    shutil.rmtree(staging, ignore_errors=True)


def staging_dir(run_dir: str | os.PathLike) -> Path:
    """A fresh hidden folder inside the run directory (same filesystem, so moves are renames)."""
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
