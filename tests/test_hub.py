"""Models named by Hugging Face Hub id (`org/name[@revision]`): resolved offline from a hub cache
laid out here the way `huggingface_hub` writes it (models--org--name/snapshots/<commit>/ and
refs/<branch or tag>), for `pointllm.load`, chat, convert and training's backbone lookup; and the
CLI's progress output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from conftest import make_tiny_model
from test_legacy import clouds, one_thread, tiny_presets, write_original_checkpoint  # noqa: F401

import pointllm
from pointllm.cli import main as cli_main
from pointllm.cli import show_progress
from pointllm.model.backbones import parse_hub_id, resolve_backbone, resolve_model_path
from pointllm.model.pointllm import save_pointllm

COMMIT = "0123456789abcdef0123456789abcdef01234567"
QUESTION = "What is this?"
REPO = Path(__file__).resolve().parent.parent


def lay_out_hub_cache(cache: Path, repo_id: str, source: Path, refs=("main",)) -> Path:
    """Copy `source` into `cache` as the snapshot `COMMIT` of `repo_id`, named by `refs`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(COMMIT)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty offline hub cache that huggingface_hub reads (set after its import, so the
    constants are patched as well as the environment)."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def ours(tmp_path_factory, base_tokenizer) -> Path:
    model, tokenizer = make_tiny_model(base_tokenizer, arch="qwen2", num_points=64)
    path = tmp_path_factory.mktemp("ours") / "tiny-pointllm"
    save_pointllm(model, tokenizer, path)
    return path


@pytest.fixture(scope="module")
def original(tmp_path_factory, tiny_presets) -> Path:  # noqa: F811
    path = tmp_path_factory.mktemp("orig") / "PointLLM_tiny_v1.2"
    write_original_checkpoint(path, "v1.2")
    return path


def test_hub_ids_are_told_from_paths():
    assert parse_hub_id("RunsenXu/PointLLM_7B_v1.2") == ("RunsenXu/PointLLM_7B_v1.2", None)
    assert parse_hub_id("org/name@v1.2") == ("org/name", "v1.2")
    assert parse_hub_id(f"org/name@{COMMIT}") == ("org/name", COMMIT)
    for path in ("runs/demo/stage1", "./org/name", "/abs/dir", "name", "org/name/", "~/x"):
        assert parse_hub_id(path) is None, path


def test_an_existing_directory_wins_over_a_hub_id(tmp_path, monkeypatch, hub_cache):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("org/name") == Path("org/name")
    assert resolve_model_path("runs/missing/dir") == Path("runs/missing/dir")  # caller reports it


def test_our_checkpoint_loads_by_id_and_equals_the_local_load(ours, hub_cache):
    snapshot = lay_out_hub_cache(hub_cache, "org/tiny-pointllm", ours)
    by_id = pointllm.load("org/tiny-pointllm", device="cpu", dtype="fp32")
    local = pointllm.load(ours, device="cpu", dtype="fp32")
    assert by_id.model_name == "org/tiny-pointllm"
    points = clouds()[0].numpy()
    assert by_id.generate(points, QUESTION, max_new_tokens=5) == local.generate(
        points, QUESTION, max_new_tokens=5
    )
    # training's backbone lookup and an explicit commit resolve to the same snapshot
    assert Path(resolve_backbone("org/tiny-pointllm")) == snapshot
    assert resolve_model_path(f"org/tiny-pointllm@{COMMIT}") == snapshot


def test_original_layout_loads_by_id_at_a_tag_and_converts(original, hub_cache, tmp_path):
    lay_out_hub_cache(hub_cache, "RunsenXu/PointLLM_tiny_v1.2", original, refs=("main", "v1.2"))
    by_id = pointllm.load("RunsenXu/PointLLM_tiny_v1.2@v1.2", device="cpu", dtype="fp32")
    local = pointllm.load(original, device="cpu", dtype="fp32")
    for a, b in zip(by_id.model.state_dict().values(), local.model.state_dict().values()):
        assert torch.equal(a, b)
    target = tmp_path / "converted"
    assert cli_main(["convert", "--from", "RunsenXu/PointLLM_tiny_v1.2", "--to", str(target)]) == 0
    assert (target / "model.safetensors").is_file()


def test_a_missing_id_offline_is_one_line_saying_what_to_do(hub_cache, capsys):
    status = cli_main(["chat", "--model", "org/not-cached", "--prompt", QUESTION])
    err = capsys.readouterr().err.strip()
    assert status == 1
    lines = [line for line in err.splitlines() if not line.startswith("pointllm: fetching")]
    assert len(lines) == 1, err
    assert "org/not-cached" in lines[0] and "HF_HUB_OFFLINE is set" in lines[0]
    assert "hf download org/not-cached" in lines[0] and str(hub_cache) in lines[0]


def test_an_unknown_revision_of_a_cached_id_is_reported(ours, hub_cache):
    lay_out_hub_cache(hub_cache, "org/tiny-pointllm", ours)
    with pytest.raises(
        FileNotFoundError,
        match="org/tiny-pointllm@v9: no such directory, and not in the Hugging Face",
    ):
        resolve_model_path("org/tiny-pointllm@v9")


class _Terminal:
    def isatty(self) -> bool:
        return True


def test_progress_bars_stay_on_a_terminal_and_lines_go_to_logs(monkeypatch):
    import logging

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    logger = logging.getLogger("pointllm.progress")
    monkeypatch.setattr(logger, "handlers", [])
    assert show_progress(_Terminal()) is True
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ and not logger.handlers
    assert show_progress() is False  # pytest's captured stderr is no terminal
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and logger.handlers


def test_the_cli_loads_a_hub_id_from_hf_home_with_one_line_per_phase(ours, tmp_path):
    """The user's route: HF_HOME and HF_HUB_OFFLINE in the environment of a fresh process whose
    stderr is a log file (~10 s)."""
    hf_home = tmp_path / "hf"
    lay_out_hub_cache(hf_home / "hub", "org/tiny-pointllm", ours)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "pointllm", "chat", "--model", "org/tiny-pointllm"]
        + ["--prompt", QUESTION, "--max-new-tokens", "3", "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    phases = [line for line in result.stderr.splitlines() if line.startswith("pointllm: ")]
    assert phases[0].startswith("pointllm: fetching org/tiny-pointllm from the Hugging Face Hub")
    assert str(hf_home / "hub") in phases[0]
    assert phases[1].startswith(f"pointllm: loading {hf_home / 'hub'}") and "on cpu" in phases[1]
    assert "\r" not in result.stderr and "it/s" not in result.stderr  # no progress bars in logs
