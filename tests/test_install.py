"""Installing pointllm: torch selection (scripts/check_torch.py), the claimed Python range
(scripts/check_lock.py), recipes as package data, and, marked slow, an installed wheel run outside
the checkout and containers/install.sh in a clean venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from pointllm.train.args import (
    RECIPES_DIR,
    ArgumentError,
    config_to_argv,
    parse_args,
    recipe_names,
    recipe_path,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import check_lock  # noqa: E402
import check_torch  # noqa: E402
import freeze_lock  # noqa: E402

# What an installed pointllm must do from an empty directory: recipes resolve by name (the step
# count it reads must be the source tree's), and the JSON a recipe names resolves next to it.
DEMO_STAGE1_STEPS = yaml.safe_load((REPO / "src/pointllm/recipes/demo_stage1.yaml").read_text())[
    "max_steps"
]
RECIPE_PROBE = f"""
import pathlib, sys, pointllm
from pointllm.train.args import config_to_argv, parse_args, recipe_path
here = pathlib.Path(pointllm.__file__).resolve().parent
assert str(here).startswith(sys.argv[1]), f"pointllm imported from {{here}}"
model, data, training = parse_args(["--config", "demo_stage1", "--use_cpu", "true"])
expected = ("smollm2-135m", {DEMO_STAGE1_STEPS})
assert (model.model_name_or_path, training.max_steps) == expected, (model, training)
argv = config_to_argv("configs/stage2.yaml")
fsdp = pathlib.Path(argv[argv.index("--fsdp_config") + 1])
assert fsdp == here / "recipes" / "fsdp_full_shard.json" and fsdp.is_file(), fsdp
assert recipe_path("demo_stage2.yaml").parent == here / "recipes"
print("recipes ok")
"""


# ---- torch selection ----------------------------------------------------------------------


def test_an_unreachable_torch_index_fails_over_within_seconds(tmp_path):
    start = time.monotonic()
    assert not check_torch.index_reachable("http://127.0.0.1:9/whl/cpu")  # port 9: refused
    assert not check_torch.index_reachable("https://download.invalid/whl/cpu")  # no such host
    assert time.monotonic() - start < 2 * check_torch.PROBE_TIMEOUT_S
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text("<a>torch-2.13.0+cpu.whl</a>")
    assert check_torch.index_reachable(tmp_path.as_uri())


def test_the_install_command_prefers_a_reachable_index_and_notes_the_fallback(tmp_path):
    (tmp_path / "torch").mkdir()
    cmd, note = check_torch.pip_install_command("2.13.0", tmp_path.as_uri())
    assert cmd[-2:] == ["--extra-index-url", tmp_path.as_uri()] and "torch==2.13.0" in cmd
    cmd, note = check_torch.pip_install_command("2.13.0", "http://127.0.0.1:9/whl/cpu")
    assert "--extra-index-url" not in cmd and "torch==2.13.0" in cmd
    assert "not reachable" in note and "default package index" in note and "\n" not in note
    cmd, note = check_torch.pip_install_command("2.13.0", None)
    assert "--extra-index-url" not in cmd and note == "torch from the default package index"


@pytest.mark.parametrize(
    ("installed", "build", "status", "message"),
    [
        (("2.13.0+cu130", "13.0"), "cpu", 0, "warning: torch 2.13.0+cu130 is a CUDA 13.0 build"),
        (("2.13.0+cpu", None), "cuda", 0, "warning: torch 2.13.0+cpu is a CPU build"),
        (("2.13.0+cpu", None), "cpu", 0, "(CPU build): ok"),
        (("2.12.1+cpu", None), "cpu", 1, "error: torch 2.12.1+cpu is installed but"),
        (None, "cpu", 1, "error: torch does not import"),
    ],
)
def test_a_build_mismatch_warns_and_a_wrong_release_fails(
    monkeypatch, capsys, installed, build, status, message
):
    monkeypatch.setattr(check_torch, "installed_torch", lambda: installed)
    assert check_torch.check("2.13.0", build) == status
    out = capsys.readouterr()
    lines = (out.out + out.err).strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_setup_writes_its_stamp_only_after_the_torch_check():
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("$(VENV)/.setup-stamp: pyproject.toml requirements.lock\n")[1]
    lines = [line.strip() for line in recipe.split("\n\n")[0].splitlines()]
    assert lines[-1] == "@touch $@"
    assert "check_torch.py check" in lines[-2]
    assert sum("check_torch.py install" in line for line in lines) == 1


# ---- the claimed Python range ---------------------------------------------------------------


def test_the_lock_check_covers_exactly_the_claimed_pythons():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">=3.11,<3.15"
    assert check_lock.claimed_pythons(REPO / "pyproject.toml") == ["3.11", "3.12", "3.13", "3.14"]
    env = check_lock.plain_pypi_env()
    assert env["PIP_CONFIG_FILE"] == os.devnull and "PIP_FIND_LINKS" not in env
    lock = (REPO / "requirements.lock").read_text().splitlines()
    assert not [line for line in lock if line.startswith(("fpsample", "pykdtree"))]
    assert any(line.startswith("numba==") for line in lock)
    assert "numba>=0.60" in pyproject["project"]["dependencies"]


class _Dist:
    def __init__(self, name: str, version: str, requires: list[str]):
        self.metadata, self.version, self.requires = {"Name": name}, version, requires


def test_the_lock_is_the_dependency_closure_without_build_specific_torch_deps(monkeypatch):
    dists = {
        "pointllm": _Dist("pointllm", "0.1.0", ["torch>=2.12", 'pointllm[io]; extra == "all"',
                                                'trimesh>=4; extra == "io"',
                                                'ruff; extra == "dev"']),
        "torch": _Dist("torch", "2.13.0+cu130", ["filelock", "nvidia-cudnn-cu13==9.20",
                                                 "cuda-bindings<14", "triton==3.7.1"]),
        "filelock": _Dist("filelock", "4.3.1", []),
        "trimesh": _Dist("trimesh", "5.2.0", ["numpy"]),
        "numpy": _Dist("numpy", "2.4.6", []),
    }  # fmt: skip
    monkeypatch.setattr(freeze_lock, "distribution", lambda name: dists[name.lower()])
    pins = freeze_lock.closure()
    assert pins == {
        "pointllm": "0.1.0",
        "torch": "2.13.0+cu130",
        "filelock": "4.3.1",
        "trimesh": "5.2.0",
        "numpy": "2.4.6",
    }  # ruff (dev extra, not asked for via io) and torch's CUDA-only packages stay out


# ---- recipes ------------------------------------------------------------------------------


def test_recipes_resolve_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("stage1", "stage1.yaml", "configs/stage1.yaml"):
        assert recipe_path(name) == RECIPES_DIR / "stage1.yaml"
    argv = config_to_argv("stage2_zero3")
    assert Path(argv[argv.index("--deepspeed") + 1]) == RECIPES_DIR / "ds_zero3.json"
    own = tmp_path / "stage1.yaml"  # a user's file of the same name wins
    own.write_text("learning_rate: 1.0e-4\n")
    assert recipe_path("stage1.yaml") == Path("stage1.yaml")
    with pytest.raises(ArgumentError, match=r"stage3: config file not found \(shipped recipes: "):
        parse_args(["--config", "stage3"])


def test_every_recipe_is_package_data():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["pointllm"]
    for name in recipe_names():
        assert any(Path("recipes", name).match(p) for p in patterns), name
    assert {"demo_stage1.yaml", "stage1.yaml", "fsdp_full_shard.json"} <= set(recipe_names())
    assert (REPO / "configs").resolve() == RECIPES_DIR


# ---- slow: an installed wheel, and the container's install script ------------------------


def _copy_sources(target: Path) -> Path:
    """Exactly what containers/Dockerfile copies into its work directory (`COPY a b ./`,
    `COPY src ./src`), so a file the image lacks is missing here too."""
    target.mkdir(parents=True)
    for line in (REPO / "containers" / "Dockerfile").read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        for source in line.split()[1:-1]:
            path = REPO / source
            if path.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
                shutil.copytree(path, target / path.name, ignore=ignore)
            else:
                shutil.copy2(path, target / path.name)
    return target


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.mark.slow
def test_the_wheel_runs_outside_the_checkout(tmp_path):
    """Build the wheel, install it into a fresh venv that borrows this environment's locked
    dependencies (a .pth line, so nothing is downloaded), and run it from an empty directory
    (~40 s)."""
    sources = _copy_sources(tmp_path / "src-copy")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
         + ["-w", str(tmp_path / "dist"), "."], cwd=sources)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("pointllm-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv)}))
    (site / "locked_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    python, empty = venv / "bin" / "python", tmp_path / "empty"
    empty.mkdir()
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)],
         cwd=empty)  # fmt: skip
    assert (site / "pointllm" / "recipes" / "demo_stage1.yaml").is_file()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert "recipes ok" in _run([str(python), "-c", RECIPE_PROBE, str(site)], cwd=empty, env=env)
    assert "demo" in _run([str(venv / "bin" / "pointllm"), "demo", "--help"], cwd=empty, env=env)
    result = subprocess.run(
        [str(venv / "bin" / "pointllm"), "train", "--config", "no_such_recipe"],
        cwd=empty, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "demo_stage1" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_the_container_install_script_in_a_clean_venv(tmp_path):
    """Both steps of containers/install.sh as the images run them, into a clean venv, with this
    machine's pip configuration (torch from its local wheel); then doctor and --help work and the
    installed wheel finds its recipes, and the lock is exactly what pointllm[all] needs (~4 min on
    2 cores, mostly unpacking the lock)."""
    opt = _copy_sources(tmp_path / "opt")
    venv = tmp_path / "venv"
    env = {
        **os.environ,
        "VENV": str(venv),
        "PYTHON": sys._base_executable,
        "TORCH_INDEX": "",  # pip's own index here; the images use the CUDA wheel index
        "PIP_NO_CACHE_DIR": "false",  # reuse pip's cache on a test machine
        "OMP_NUM_THREADS": "1",
    }
    _run(["sh", "install.sh", "deps"], cwd=opt, env=env, timeout=1200)
    _run(["sh", "install.sh", "project"], cwd=opt, env=env)
    assert not (opt / "build").exists() and not list((opt / "src").glob("*.egg-info"))
    empty = tmp_path / "empty"
    empty.mkdir()
    help_text = _run([str(venv / "bin" / "pointllm"), "--help"], cwd=empty, env=env)
    assert "doctor" in help_text and "train" in help_text
    doctor = _run([str(venv / "bin" / "pointllm"), "doctor"], cwd=empty, env=env)
    assert "verdict: ready" in doctor, doctor
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv)}))
    probe = [str(venv / "bin" / "python"), "-c", RECIPE_PROBE, str(site)]
    assert "recipes ok" in _run(probe, cwd=empty, env=env)
    # The lock holds exactly pointllm[all]'s dependency closure: nothing stale, nothing missing.
    freeze = [str(venv / "bin" / "python"), str(REPO / "scripts" / "freeze_lock.py")]
    assert _run(freeze, cwd=empty, env=env) == (REPO / "requirements.lock").read_text()
