"""Atomic writes: a failure leaves the old target, nothing half-written, no temporary behind."""

from __future__ import annotations

import os
import stat

import pytest

from pointllm import atomic


def break_replace(monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)


def test_files_are_written_whole_with_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        data = atomic.write_bytes(tmp_path / "new" / "x.bin", b"\x00\x01")
        text = atomic.write_text(tmp_path / "x.txt", "héllo\n")
        script = atomic.write_text(tmp_path / "run.sh", "#!/bin/sh\n", executable=True)
        record = atomic.write_json(tmp_path / "x.json", {"a": [1, 2]})
    finally:
        os.umask(umask)
    assert data.read_bytes() == b"\x00\x01"
    assert text.read_text(encoding="utf-8") == "héllo\n"
    assert record.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    # Not mkstemp's private 0600: the umask decides, as for open().
    assert stat.S_IMODE(data.stat().st_mode) == 0o644
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "run.sh", "x.json", "x.txt"]


def test_failed_file_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = atomic.write_bytes(tmp_path / "x.json", b"old")
    with pytest.raises(RuntimeError, match="while writing"), atomic.atomic_file(target) as handle:
        handle.write(b"half")
        raise RuntimeError("while writing")
    break_replace(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    with pytest.raises(ValueError, match="mode must be"):
        atomic.atomic_file(target, "ab").__enter__()


def test_replace_directory_swaps_whole_directories(tmp_path):
    target = tmp_path / "model"
    with atomic.replace_directory(target) as tmp:
        (tmp / "a").write_text("1")
        assert not target.exists()  # nothing is visible before the end
    with atomic.replace_directory(target) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]  # the old content is gone
    with pytest.raises(RuntimeError), atomic.replace_directory(target) as tmp:
        (tmp / "c").write_text("3")
        raise RuntimeError
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary left
    umask = os.umask(0o022)
    try:
        with atomic.replace_directory(tmp_path / "shared") as tmp:
            pass
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o755


def test_build_directory_once_keeps_the_first_complete_copy(tmp_path):
    target = tmp_path / "cache"
    with atomic.build_directory_once(target, complete="done") as tmp:
        (tmp / "done").write_text("first")
    with atomic.build_directory_once(target, complete="done") as tmp:
        (tmp / "done").write_text("second")  # lost the race: the first copy stays
    assert (target / "done").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]
    (target / "done").unlink()  # an incomplete, non-empty directory in the way is an error
    (target / "partial").write_text("")
    with pytest.raises(OSError), atomic.build_directory_once(target, complete="done") as tmp:
        (tmp / "done").write_text("third")
