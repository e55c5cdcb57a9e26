"""Checkpoints that are never half-read: completion markers, pruning, resume, final publishing.

The Trainer writes `checkpoint-N/` in place; a crash can leave one half-written. Each finished
checkpoint therefore gets a marker file written last, recording every file's size and a hash of
its first and last MiB; resuming verifies them and falls back to the newest intact checkpoint,
saying in one line why each newer one was skipped. Pruning deletes a checkpoint's marker before
its files, so a kill mid-prune never leaves a marked, partial checkpoint.
The final model is written to a staging folder inside the run directory and its files are moved
into place with `os.replace`, the file that makes the directory loadable (`config.json`, or
`pointllm_adapter.json` for a LoRA adapter) last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from pointllm.atomic import write_json
from pointllm.model.checkpoint import COMPLETE_MARKER, LOADABLE_MARKERS

logger = logging.getLogger(__name__)

# Exit status of `pointllm train --resume` when checkpoints exist but none is intact (EX_DATAERR):
# resubmitting would fail the same way; a person has to look.
NO_INTACT_CHECKPOINT_EXIT_CODE = 65
_HASHED_BYTES = 2**20  # from each end of a file
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


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


class NoIntactCheckpointError(ValueError):
    """Checkpoints exist, each with a completion marker, but every one fails verification."""


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_MARKER).is_file()


def fingerprint(path: Path) -> str:
    """A fast hash of a file: blake2b of its size, first MiB and last MiB (enough to catch a
    truncated or partly rewritten file without reading gigabytes of weights)."""
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as handle:
        digest.update(handle.read(_HASHED_BYTES))
        if size > 2 * _HASHED_BYTES:
            handle.seek(size - _HASHED_BYTES)
        digest.update(handle.read(_HASHED_BYTES))
    return digest.hexdigest()


def mark_complete(checkpoint: Path, step: int) -> None:
    """Write the marker: the top-level names, and each file's size and fingerprint."""
    names = sorted(p.name for p in checkpoint.iterdir() if p.name != COMPLETE_MARKER)
    checks = {}
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file() and path.name != COMPLETE_MARKER:
            relative = path.relative_to(checkpoint).as_posix()
            checks[relative] = {"size": path.stat().st_size, "blake2b": fingerprint(path)}
    write_json(checkpoint / COMPLETE_MARKER, {"step": step, "files": names, "checks": checks})


def verify_checkpoint(checkpoint: Path) -> str | None:
    """None if `checkpoint` is intact, else why not, in a few words."""
    marker = checkpoint / COMPLETE_MARKER
    if not marker.is_file():
        return f"its save did not finish (no {COMPLETE_MARKER})"
    try:
        record = json.loads(marker.read_text())
        checks = record.get("checks")
        names = record["files"]
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        return f"its {COMPLETE_MARKER} is unreadable ({type(exc).__name__})"
    if checks is None:  # a marker from before sizes and hashes were recorded: names only
        checks = {name: None for name in names}
    for name, expected in checks.items():
        path = checkpoint / name
        if not path.exists():
            return f"{name} is missing"
        if expected is None:
            continue
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name} has {size} bytes, {expected['size']} were saved"
        if fingerprint(path) != expected["blake2b"]:
            return f"{name} differs from what was saved (hash mismatch)"
    return None


def latest_complete_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The highest-step checkpoint that verifies (see `verify_checkpoint`); each newer one that
    does not is skipped with a one-line warning saying why."""
    for _, path in reversed(checkpoint_dirs(run_dir)):
        reason = verify_checkpoint(path)
        if reason is None:
            return path
        logger.warning("skipping %s: %s", path, reason)
    return None


def resume_point(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint `--resume` continues from: the newest intact one; None when no save ever
    finished (start fresh). Raises NoIntactCheckpointError when finished saves exist but all of
    them are damaged, since starting fresh would silently throw their progress away."""
    latest = latest_complete_checkpoint(run_dir)
    if latest is None:
        marked = [path for _, path in checkpoint_dirs(run_dir) if is_complete(path)]
        if marked:
            raise NoIntactCheckpointError(
                f"--resume: none of the {len(marked)} finished checkpoints in {run_dir} is "
                "intact (reasons above); remove or repair them, or drop --resume to start over"
            )
    return latest


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
        # The marker goes first: a kill mid-delete leaves an unmarked (skipped) checkpoint.
        (path / COMPLETE_MARKER).unlink(missing_ok=True)
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
