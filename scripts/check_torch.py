"""Install the torch release that requirements.lock pins, preferring the build for this machine,
and check what got installed. `make setup` runs both steps.

    check_torch.py install --version 2.13.0 --build cpu   install (skipped when already there)
    check_torch.py check --version 2.13.0 --build cpu     verify the installed torch

Where the build comes from:
- `TORCH_INDEX` (environment) names a PyTorch wheel index, e.g. https://download.pytorch.org/whl/cpu
  or .../whl/cu128. It defaults to the CPU index for `--build cpu` and to nothing (the default
  index: PyPI's Linux wheels are CUDA builds) for `--build cuda`.
- The index is tried with a short timeout first; when it cannot be reached, torch comes from the
  default index with a one-line note. Pip's own configuration (index, find-links) always applies.

The check fails only when torch does not import or is not the pinned release. A build that does
not match the machine (a CUDA build on a CPU-only machine, or the reverse) is a one-line warning:
a CUDA build runs on a CPU, only larger.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_TIMEOUT_S = 5.0


def index_reachable(index: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether `index`/torch/ answers within `timeout` seconds (urlopen raises on HTTP >= 400)."""
    url = index.rstrip("/") + "/torch/"
    if url.startswith("file:"):  # a local index (a folder per project), as pip reads it
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)).is_dir()
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except (OSError, ValueError):  # URLError/HTTPError, timeouts, refused connections, bad URLs
        return False


def installed_torch() -> tuple[str, str | None] | None:
    """(version, CUDA version or None) of the torch this Python imports, or None."""
    code = "import torch; print(torch.__version__); print(torch.version.cuda or '')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        return None
    version, cuda = (result.stdout.strip().splitlines() + [""])[:2]
    return version, (cuda or None)


def pip_install_command(version: str, index: str | None) -> tuple[list[str], str]:
    """The pip command for torch==`version`, and a one-line note on where it comes from."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", f"torch=={version}"]
    if index is None:
        return cmd, "torch from the default package index"
    if index_reachable(index):
        # An extra index, so pip's own index still serves torch's dependencies; the local build
        # tag (+cpu, +cu128) ranks above the untagged release, so the index's build wins.
        return cmd + ["--extra-index-url", index], f"torch from {index}"
    return cmd, f"{index} is not reachable; torch from the default package index instead"


def install(version: str, build: str) -> int:
    current = installed_torch()
    if current is not None and current[0].split("+")[0] == version:
        print(f"check-torch: torch {current[0]} is already installed")
        return 0
    index = os.environ.get("TORCH_INDEX") or (CPU_INDEX if build == "cpu" else None)
    cmd, note = pip_install_command(version, index)
    print(f"check-torch: {note}", flush=True)
    return subprocess.run(cmd).returncode


def check(version: str, build: str) -> int:
    current = installed_torch()
    if current is None:
        print("check-torch: error: torch does not import in this environment", file=sys.stderr)
        return 1
    installed, cuda = current
    if installed.split("+")[0] != version:
        print(
            f"check-torch: error: torch {installed} is installed but requirements.lock pins "
            f"{version}; run `make clean setup`",
            file=sys.stderr,
        )
        return 1
    kind = f"CUDA {cuda}" if cuda else "CPU"
    if build == "cpu" and cuda:
        print(
            f"check-torch: warning: torch {installed} is a CUDA {cuda} build on a machine without "
            "an NVIDIA driver; it runs on the CPU (set TORCH_INDEX to a CPU wheel index for a "
            "smaller install)",
            file=sys.stderr,
        )
    elif build == "cuda" and not cuda:
        print(
            f"check-torch: warning: torch {installed} is a CPU build but this machine has an "
            "NVIDIA driver; GPUs stay unused (set TORCH_INDEX to a CUDA wheel index, e.g. "
            "https://download.pytorch.org/whl/cu128, and run `make clean setup`)",
            file=sys.stderr,
        )
    else:
        print(f"check-torch: torch {installed} ({kind} build): ok")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("install", "check"))
    parser.add_argument("--version", required=True, help="the pinned release, e.g. 2.13.0")
    parser.add_argument(
        "--build", choices=("cpu", "cuda"), required=True, help="the build this machine wants"
    )
    args = parser.parse_args()
    return (install if args.action == "install" else check)(args.version, args.build)


if __name__ == "__main__":
    sys.exit(main())
