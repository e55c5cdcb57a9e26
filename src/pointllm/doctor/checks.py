"""The checks of `pointllm doctor`: can this machine train PointLLM, and if not, what to do.

Each check returns a `Check` (ok / warn / fail, one line of detail, one line of advice). The
verdict is "blocked" (exit status 1) when any check fails, i.e. when training cannot start or
would not be allowed to run here (a login node); warnings name things that merely cost time or
log noise. The checks cover what went wrong on the cluster in the seed: a broken `apex`, packages
installed twice on `sys.path`, and jobs started on a login node.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "fail"

# Packages pointllm needs to train, with the versions pyproject.toml accepts.
REQUIRED_PACKAGES = {"transformers": ">=5.0,<6", "accelerate": ">=1.0"}
# Packages that only some recipes need.
OPTIONAL_PACKAGES = {
    "peft": "LoRA / QLoRA (configs/stage2_*lora*.yaml)",
    "deepspeed": "DeepSpeed ZeRO (configs/stage2_zero3.yaml)",
    "bitsandbytes": "QLoRA 4-bit weights (CUDA only)",
    "flash-attn": "--attn_implementation flash_attention_2",
}
# A duplicated copy of one of these with another version decides which code actually runs.
CORE_PACKAGES = ("torch", "transformers", "accelerate", "safetensors", "pointllm")
APEX_TIMEOUT_S = 60.0
NVIDIA_SMI_TIMEOUT_S = 20.0
# Free space in the cache directories: below FAIL nothing fits (the embedded model's float32
# copy alone is 0.5 GiB); below WARN a 7B LLM (~14 GiB in bf16) plus its download will not.
DISK_FAIL_GIB = 2.0
DISK_WARN_GIB = 30.0
PBS_INTERACTIVE = "qsub -I -P <group> -q <queue> -l select=1 -l walltime=2:00:00"
SLURM_INTERACTIVE = "srun --gpus=1 --time=02:00:00 --pty bash"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: str  # ok | warn | fail
    detail: str
    advice: str = ""


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    capability: tuple[int, int]

    @property
    def bf16(self) -> bool:
        """bf16 tensor cores arrived with Ampere (compute capability 8.0)."""
        return self.capability >= (8, 0)


@dataclass(frozen=True)
class TorchInfo:
    """What the installed torch reports; `error` is set when it cannot be imported."""

    version: str | None = None
    cuda: str | None = None
    cudnn: str | None = None
    nccl: str | None = None
    gpus: tuple[Gpu, ...] = ()
    error: str | None = None


# ---- probes (read the machine) ----------------------------------------------------------------


def _cudnn_version(number: int | None) -> str | None:
    """cuDNN encodes 9.x as major*10000 + minor*100 + patch and 8.x as major*1000 + ..."""
    if not number:
        return None
    major, rest = divmod(number, 10000 if number >= 10000 else 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def probe_torch() -> TorchInfo:
    """Import torch and read its build and the GPUs it can use."""
    try:
        import torch
    except Exception as exc:  # a broken install raises anything from ImportError to OSError
        return TorchInfo(error=f"{type(exc).__name__}: {exc}")
    nccl = None
    if torch.cuda.is_available() and torch.distributed.is_nccl_available():
        nccl = ".".join(str(part) for part in torch.cuda.nccl.version())
    gpus = tuple(
        Gpu(
            torch.cuda.get_device_name(i),
            torch.cuda.get_device_properties(i).total_memory / 2**30,
            torch.cuda.get_device_capability(i),
        )
        for i in range(torch.cuda.device_count())
    )
    return TorchInfo(
        version=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=_cudnn_version(torch.backends.cudnn.version()),
        nccl=nccl,
        gpus=gpus,
    )


def driver_gpu_count(which: Callable[[str], str | None]) -> int | None:
    """GPUs the NVIDIA driver lists (`nvidia-smi -L`); None without a working nvidia-smi."""
    import subprocess

    exe = which("nvidia-smi")
    if exe is None:
        return None
    try:
        listing = subprocess.run(
            [exe, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listing.returncode != 0:
        return None
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def _normalize(name: str) -> str:
    """PEP 503 name normalization: `Flash_Attn` and `flash-attn` are one distribution."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _editable_project(dist) -> Path | None:
    """The project directory of an editable install (pip's direct_url.json), else None."""
    import json
    from urllib.parse import unquote, urlparse

    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return None
    if not info.get("dir_info", {}).get("editable"):
        return None
    url = urlparse(info.get("url", ""))
    return Path(unquote(url.path)).resolve() if url.scheme == "file" else None


def distributions_on_path(path: Sequence[str]) -> dict[str, list[tuple[str, Path]]]:
    """Every installed distribution on `path` (like `sys.path`) as {normalized name: [(version,
    directory), ...]}, one entry per metadata directory found.

    `importlib.metadata.distributions()` yields each copy; Python >= 3.10 hides the later ones
    from `entry_points()`, older versions (the seed's 3.9) register a plugin once per copy, hence
    "networkx backend defined more than once". An editable install's own source-tree metadata
    (`src/NAME.egg-info`) is the same install, not a second copy.
    """
    from importlib.metadata import distributions

    found: dict[str, list[tuple[str, Path]]] = {}
    editable: dict[str, tuple[Path, Path]] = {}  # name -> (project dir, its dist-info's root)
    seen: set[Path] = set()
    for entry in path:
        root = Path(entry or ".").resolve()
        if root in seen or not root.is_dir():
            continue
        seen.add(root)
        for dist in distributions(path=[str(root)]):
            name = dist.metadata["Name"]
            if not name:
                continue
            key = _normalize(name)
            project = _editable_project(dist)
            if project is not None:
                editable[key] = (project, root)
            found.setdefault(key, []).append((dist.version, root))
    for key, (project, root) in editable.items():
        found[key] = [c for c in found[key] if c[1] == root or not c[1].is_relative_to(project)]
    return found


def _apex_import_error(timeout: float) -> str | None:
    """Import `apex.amp` in a child interpreter with this process's `sys.path` (a crashing or
    hanging apex must not take the doctor down); the reason it failed, or None if it worked."""
    import signal
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    try:
        result = subprocess.run(
            [sys.executable, "-c", "from apex import amp"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"importing apex.amp hung for more than {timeout:g} s"
    if result.returncode == 0:
        return None
    if result.returncode < 0:
        return f"importing apex.amp crashed with {signal.Signals(-result.returncode).name}"
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"importing apex.amp exited with {result.returncode}"


def _free_gib(directory: Path) -> tuple[Path, float]:
    """Free space for `directory`, measured at its nearest existing ancestor (a cache directory
    need not exist yet)."""
    import shutil

    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free / 2**30


def cache_dirs() -> dict[str, Path]:
    """The directories that fill up: pointllm's cache, the Hugging Face cache, temporary files."""
    import tempfile

    from pointllm.model.backbones import pointllm_home

    # Where huggingface_hub puts its cache (HF_HOME, else $XDG_CACHE_HOME/huggingface).
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    hf_home = Path(os.environ.get("HF_HOME") or cache_root / "huggingface")
    return {
        "POINTLLM_HOME": pointllm_home(),
        "HF_HOME": hf_home.expanduser(),
        "TMPDIR": Path(tempfile.gettempdir()),
    }


# ---- checks (judge what the probes read) -----------------------------------------------------


def check_python(version: Sequence[int] = tuple(sys.version_info)) -> Check:
    text = ".".join(str(v) for v in version[:3])
    if tuple(version[:2]) < (3, 10):
        return Check(
            "python",
            FAIL,
            f"{text} is too old (pointllm needs 3.10+)",
            "use Python 3.11 (the container ships it): `python3.11 -m venv .venv`, then `make setup`",
        )
    return Check("python", OK, f"{text} ({sys.executable})")


def check_torch(info: TorchInfo) -> Check:
    if info.error:
        return Check(
            "torch",
            FAIL,
            f"cannot be imported: {info.error}",
            "reinstall the pinned build with `make setup` (or use the container in containers/)",
        )
    if info.cuda is None:
        return Check("torch", OK, f"{info.version} (CPU build)")
    parts = [f"CUDA {info.cuda}"]
    parts += [f"cuDNN {info.cudnn}"] if info.cudnn else []
    parts += [f"NCCL {info.nccl}"] if info.nccl else []
    return Check("torch", OK, f"{info.version} ({', '.join(parts)})")


def check_gpus(info: TorchInfo, driver_gpus: int | None) -> Check:
    if info.gpus:
        counts: dict[str, int] = {}
        for gpu in info.gpus:
            label = f"{gpu.name} ({gpu.memory_gib:.0f} GiB{', bf16' if gpu.bf16 else ', no bf16'})"
            counts[label] = counts.get(label, 0) + 1
        detail = ", ".join(f"{n} x {label}" for label, n in counts.items())
        old = sorted({gpu.name for gpu in info.gpus if not gpu.bf16})
        if old:
            return Check(
                "gpus",
                WARN,
                detail,
                f"{', '.join(old)} cannot compute in bf16, which the recipes use: train with "
                "`--bf16 false --fp16 true`",
            )
        return Check("gpus", OK, detail)
    if driver_gpus:
        build = "a CPU build" if info.cuda is None else f"built for CUDA {info.cuda}"
        return Check(
            "gpus",
            FAIL,
            f"nvidia-smi lists {driver_gpus} GPU(s) but torch {info.version} ({build}) sees none",
            "install torch's CUDA build (`make setup TORCH_BUILD=cuda`), check that the driver "
            "supports its CUDA version (`nvidia-smi`), or run in the container",
        )
    return Check(
        "gpus",
        WARN,
        "no GPU visible: training runs on the CPU (fine for `make demo` and tests, far too slow "
        "for stage 1/2)",
        "on a cluster, run training in a GPU job (see `pointllm hpc render`)",
    )


def check_package(name: str, spec: str | None, purpose: str | None) -> Check:
    """A required package (`spec` = accepted versions) or an optional one (`purpose`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version(name)
    except PackageNotFoundError:
        if spec is None:
            return Check(name, OK, f"not installed (optional: {purpose})")
        return Check(name, FAIL, "not installed", f"run `make setup` (needs {name}{spec})")
    if spec is not None:
        from packaging.specifiers import SpecifierSet

        if installed not in SpecifierSet(spec):
            return Check(
                name,
                FAIL,
                f"{installed} is installed but pointllm needs {name}{spec}",
                f"`pip install -c requirements.lock '{name}{spec}'` (or `make setup`)",
            )
    return Check(name, OK, installed)


def check_apex(timeout: float = APEX_TIMEOUT_S) -> Check:
    """apex is never imported by pointllm (mixed precision is torch.autocast); a broken one only
    matters to other tools, so it is a warning, not a failure."""
    import importlib.util

    spec = importlib.util.find_spec("apex")
    if spec is None:
        return Check("apex", OK, "not installed (pointllm never needs it)")
    where = spec.origin or next(iter(spec.submodule_search_locations or []), "?")
    error = _apex_import_error(timeout)
    if error is None:
        return Check(
            "apex", OK, f"importable ({where}); pointllm never uses it (mixed precision is torch's)"
        )
    return Check(
        "apex",
        WARN,
        f"apex is installed but broken ({error}) at {where}",
        "pointllm never imports apex; uninstall it (`pip uninstall apex`) if other tools trip "
        "over it",
    )


def check_duplicates(path: Sequence[str]) -> Check:
    copies = {k: v for k, v in distributions_on_path(path).items() if len(v) > 1}
    if not copies:
        return Check("duplicates", OK, "every package is installed once on sys.path")
    described = "; ".join(
        f"{name} " + " and ".join(f"{ver} in {where}" for ver, where in found)
        for name, found in sorted(copies.items())
    )
    clashing = sorted(
        name for name in CORE_PACKAGES if len({ver for ver, _ in copies.get(name, [])}) > 1
    )
    advice = (
        "remove the stale copy (`pip uninstall NAME` until pip finds none, then install it once; "
        "look at PYTHONPATH and ~/.local, or set PYTHONNOUSERSITE=1). Old Pythons register "
        "plugins once per copy: 'networkx backend defined more than once'"
    )
    if clashing:
        return Check(
            "duplicates",
            FAIL,
            f"{', '.join(clashing)} installed twice with different versions "
            f"(which one runs depends on sys.path order): {described}",
            advice,
        )
    return Check("duplicates", WARN, f"installed twice: {described}", advice)


def check_login_node(
    environ: Mapping[str, str], which: Callable[[str], str | None], gpu_count: int
) -> Check:
    """Login nodes are for editing and submitting; the seed's cluster forbade running there."""
    pbs = sorted(k for k in environ if k.startswith("PBS_")) + [c for c in ("qsub",) if which(c)]
    slurm = sorted(k for k in environ if k.startswith("SLURM_")) + [
        c for c in ("sbatch", "srun") if which(c)
    ]
    if not pbs and not slurm:
        return Check("scheduler", OK, "no batch scheduler found (a workstation)")
    job = environ.get("PBS_JOBID") or environ.get("SLURM_JOB_ID")
    evidence = ", ".join((pbs + slurm)[:4])
    if job and gpu_count:
        return Check("scheduler", OK, f"inside job {job} with {gpu_count} GPU(s)")
    if job:
        return Check(
            "scheduler",
            WARN,
            f"inside job {job} but no GPU is visible",
            "request GPUs: a GPU queue (PBS, e.g. `-l select=1:ngpus=1`) or `--gpus=1` (Slurm)",
        )
    if gpu_count:
        return Check(
            "scheduler",
            WARN,
            f"a scheduler is present ({evidence}) and {gpu_count} GPU(s) are visible outside a job",
            "if this is a shared login node, train inside a job (`pointllm hpc render`)",
        )
    commands = ([f"`{PBS_INTERACTIVE}`"] if pbs else []) + (
        [f"`{SLURM_INTERACTIVE}`"] if slurm else []
    )
    return Check(
        "scheduler",
        FAIL,
        f"this looks like a login node: a scheduler is present ({evidence}) but there is no job "
        "(PBS_JOBID / SLURM_JOB_ID unset) and no GPU",
        f"request a compute node: {' or '.join(commands)}, or submit a batch job "
        "(`pointllm hpc render ...`, see docs/cluster.md)",
    )


def check_disk(label: str, directory: Path) -> Check:
    measured, free = _free_gib(directory)
    detail = f"{free:.1f} GiB free for {directory}" + (
        "" if measured == directory else f" (measured at {measured})"
    )
    advice = (
        f"point {label} at a larger filesystem (group or scratch storage): "
        f"`export {label}=/path/with/space`"
    )
    if free < DISK_FAIL_GIB:
        return Check(f"disk {label}", FAIL, detail, advice)
    if free < DISK_WARN_GIB:
        return Check(f"disk {label}", WARN, detail + " (a 7B LLM needs ~14 GiB)", advice)
    return Check(f"disk {label}", OK, detail)


def check_embedded_model() -> Check:
    from pointllm.model.backbones import EMBEDDED_NAME, embedded_gguf_path, pointllm_home

    try:
        gguf = embedded_gguf_path()
    except FileNotFoundError as exc:
        return Check(
            "embedded model",
            WARN,
            "SmolLM2-135M-Instruct (for `make demo` and the tests) is missing",
            str(exc),
        )
    cached = pointllm_home() / "backbones" / EMBEDDED_NAME
    state = (
        f"converted copy in {cached}"
        if (cached / "model.safetensors").is_file()
        else "converted to safetensors on first use (~40 s)"
    )
    return Check(
        "embedded model",
        OK,
        f"SmolLM2-135M-Instruct, {gguf.stat().st_size / 2**20:.0f} MiB GGUF; {state}",
    )


def run_checks() -> list[Check]:
    """All checks against this process (os.environ, sys.path, PATH), in report order."""
    import shutil

    info = probe_torch()
    checks = [check_python(), check_torch(info), check_gpus(info, driver_gpu_count(shutil.which))]
    checks += [check_package(name, spec, None) for name, spec in REQUIRED_PACKAGES.items()]
    checks += [check_package(name, None, why) for name, why in OPTIONAL_PACKAGES.items()]
    checks += [
        check_apex(),
        check_duplicates(sys.path),
        check_login_node(os.environ, shutil.which, len(info.gpus)),
    ]
    checks += [check_disk(label, d) for label, d in _unique_dirs(cache_dirs().items())]
    checks.append(check_embedded_model())
    return checks


def _unique_dirs(items: Iterable[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """Drop a directory already listed under another name (HF_HOME inside POINTLLM_HOME...)."""
    seen: set[Path] = set()
    unique = []
    for label, directory in items:
        if directory.resolve() not in seen:
            seen.add(directory.resolve())
            unique.append((label, directory))
    return unique


def verdict(checks: Sequence[Check]) -> tuple[str, int]:
    """("blocked", 1) when any check fails, else ("ready", 0)."""
    return ("blocked", 1) if any(c.status == FAIL for c in checks) else ("ready", 0)


def format_table(checks: Sequence[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status:<5} {c.name:<{width}}  {c.detail}")
        if c.advice and c.status != OK:
            lines.append(f"{'':<5} {'':<{width}}  -> {c.advice}")
    name, _ = verdict(checks)
    counts = {s: sum(c.status == s for c in checks) for s in (FAIL, WARN)}
    lines.append(f"verdict: {name} ({counts[FAIL]} failed, {counts[WARN]} warnings)")
    return "\n".join(lines)
