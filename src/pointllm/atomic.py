"""Writes that never leave a half-written file or directory at their target.

Everything is written to a temporary sibling (same folder, so same filesystem) that `os.replace`
moves over the target at the end; on any failure the sibling is deleted and the target keeps its
old content. Siblings are created with the permissions a plain `open()` / `mkdir()` would give
(the umask applies), not the private 0600 / 0700 of `tempfile.mkstemp` / `mkdtemp`, so a
checkpoint written on a shared cluster stays readable by the group.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _sibling(target: Path) -> Path:
    """A fresh hidden name next to target, unique across processes and threads."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_file(
    path: str | os.PathLike[str], mode: str = "wb", *, executable: bool = False
) -> Iterator[IO[Any]]:
    """Yield a file opened for writing ("wb" or "w", UTF-8) that replaces `path` on success.

    The folder is created if missing. executable: rwx for everyone the umask allows (a script).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file mode must be 'wb' or 'w', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o777 if executable else 0o666)
    try:
        with open(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write data to path atomically; returns the path."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, *, executable: bool = False) -> Path:
    """Write UTF-8 text to path atomically; returns the path."""
    with atomic_file(path, "w", executable=executable) as handle:
        handle.write(text)
    return Path(path)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write data as indented JSON with a final newline, atomically; returns the path."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def _new_sibling_directory(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(target, a new empty hidden directory beside it), creating the parent folder if missing."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target)
    tmp.mkdir()  # 0o777 minus the umask, unlike mkdtemp's 0o700
    return target, tmp


@contextmanager
def replace_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new empty sibling directory of `path` to fill; on success it takes the place of
    `path` (an existing directory there is removed only then), on failure it is deleted."""
    target, tmp = _new_sibling_directory(path)
    try:
        yield tmp
        if target.exists():
            # POSIX cannot rename over a non-empty directory: move the old one aside first.
            old = _sibling(target)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def build_directory_once(path: str | os.PathLike[str], *, complete: str) -> Iterator[Path]:
    """Yield a new empty sibling directory of `path` to fill; on success it becomes `path`, unless
    another process got there first with a copy that has the file `complete` (a cache built by
    several processes at once: the first finished copy wins, the others are deleted)."""
    target, tmp = _new_sibling_directory(path)
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError:  # a non-empty directory is already there
            if not (target / complete).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
