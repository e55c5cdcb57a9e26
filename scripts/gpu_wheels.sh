#!/usr/bin/env bash
# Prepare what `scripts/gpu_check.py` needs on a lent GPU machine that has no network: the Python
# packages its image lacks, as wheels for CPython 3.12 manylinux x86_64, and SmolLM2-135M's config
# and tokenizer (its weights, a 98 MB GGUF file, exceed the 64 MiB that may travel; the check
# builds the same shape with random weights there). Prints every file's size and checks that
# they, plus the working tree, fit the 64 MiB carry limit.
#
#   bash scripts/gpu_wheels.sh [DIR]        # DIR defaults to build/gpu (ignored by git)
#
# The image already holds torch, triton, transformers, accelerate, peft, safetensors, tokenizers,
# numpy, numba, pyyaml, httpx, h11, anyio, click and pytest (the device tool's KINDS.md).
set -euo pipefail

DIR=${1:-build/gpu}
PY=${PYTHON:-.venv/bin/python}
LIMIT_BYTES=$((64 * 1024 * 1024))
cd "$(dirname "$0")/.."

# The serving stack at the versions of requirements.lock, so the check runs what `make setup` installs.
lock_pin() { grep -i -m1 "^$1==" requirements.lock || { echo "$1 is not in requirements.lock" >&2; exit 1; }; }
WHEELS=(
  "$(lock_pin fastapi)" "$(lock_pin starlette)" "$(lock_pin pydantic)" "$(lock_pin pydantic_core)"
  "$(lock_pin annotated-types)" "$(lock_pin typing-inspection)" "$(lock_pin typing_extensions)"
  "$(lock_pin uvicorn)" "$(lock_pin opentelemetry-api)" # fastapi imports opentelemetry
  bitsandbytes==0.50.2 # 8-bit / 4-bit inference and QLoRA; slimmed below to its CUDA 13 library
  hjson==3.1.0         # deepspeed's one dependency the image lacks
)
DEEPSPEED=deepspeed==0.19.8 # PyPI has only its source: built here into a pure-Python wheel

rm -rf "$DIR"
mkdir -p "$DIR/wheels" "$DIR/smollm2"
download=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux1_x86_64 -d "$DIR/wheels")
"${download[@]}" "${WHEELS[@]}"

# bitsandbytes ships one library per CUDA/ROCm/XPU version (43 MB); the device's torch is built
# for CUDA 13.0, so only libbitsandbytes_cuda130.so (and the CPU one) travel.
"$PY" - "$DIR"/wheels/bitsandbytes-*.whl <<'EOF'
import re, sys, zipfile
from pathlib import Path

wheel = Path(sys.argv[1])
keep = re.compile(r"libbitsandbytes_(cpu|cuda130)\.so$")
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
    dropped = {n for n in src.namelist() if re.search(r"libbitsandbytes_\w+\.so$", n) and not keep.search(n)}
    for item in src.infolist():
        if item.filename in dropped:
            continue
        data = src.read(item.filename)
        if item.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines()
            data = ("\n".join(l for l in lines if l.split(",")[0] not in dropped) + "\n").encode()
        dst.writestr(item, data)
slim.replace(wheel)
print(f"bitsandbytes: dropped {len(dropped)} libraries for other CUDA/ROCm/XPU versions")
EOF

# DeepSpeed: its source distribution, built without compiled ops (they compile at first use).
sdist=$(mktemp -d)
python3 -m pip download -q --no-deps --no-binary=:all: -d "$sdist" "$DEEPSPEED"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR/wheels" "$sdist"/deepspeed-*.tar.gz
rm -rf "$sdist"

# Every dependency of every wheel (for CPython 3.12 on Linux) is either a wheel here or in the
# image (its package list in the device tool's KINDS.md, read 2026-11-17).
IMAGE="accelerate anyio annotated-doc certifi click einops filelock fsspec h11 httpcore httpx
huggingface-hub idna jinja2 markupsafe msgpack networkx ninja numba numpy nvidia-ml-py packaging
peft pillow protobuf psutil py-cpuinfo pytest pyyaml regex requests safetensors sentencepiece
setuptools sympy tokenizers torch tqdm transformers triton typing-extensions urllib3 zipp"
"$PY" - "$DIR/wheels" "$IMAGE" <<'PYTHON'
import sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
wheels = sorted(Path(sys.argv[1]).glob("*.whl"))
have = {canonicalize_name(w.name.split("-")[0]) for w in wheels}
have |= {canonicalize_name(n) for n in sys.argv[2].split()}
missing = []
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    for line in meta.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            needed = req.marker is None or req.marker.evaluate(env)
            if needed and canonicalize_name(req.name) not in have:
                missing.append(f"{wheel.name.split('-')[0]} needs {req}")
if missing:
    sys.exit("missing dependencies:\n  " + "\n  ".join(missing))
print(f"dependencies: each of the {len(wheels)} wheels finds its own here or in the image")
PYTHON

# SmolLM2-135M-Instruct's config and tokenizer, from the embedded model's converted directory.
src=$(PYTHONPATH=src "$PY" -c 'from pointllm.model.backbones import embedded_backbone_dir as d; print(d())')
for f in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja; do
  if [ -f "$src/$f" ]; then cp "$src/$f" "$DIR/smollm2/"; fi
done

echo
echo "| file | MiB |"
echo "|---|---:|"
find "$DIR" -type f -printf '%s %P\n' | sort -k2 | awk '{printf "| %s | %.2f |\n", $2, $1 / 1048576}'
carried=$(du -sb "$DIR" | cut -f1)
# What travels besides: tracked and untracked-but-not-ignored files of the working tree.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
total=$((carried + tree))
printf '\n%s: %.2f MiB; working tree: %.2f MiB; together %.2f MiB of 64 MiB\n' \
  "$DIR" "$(echo "$carried / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -gt "$LIMIT_BYTES" ]; then
  echo "too large for the device tool's 64 MiB carry limit" >&2
  exit 1
fi
