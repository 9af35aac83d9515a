# The two commands of the README. Both create ./.venv on first use (CPU torch first, so that pip
# never pulls a CUDA build on a CPU-only machine), then run.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: demo test install lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/bbu demo --out $(DEMO_OUT)

test: $(VENV)/.installed
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check bbucli tests benchmarks examples

clean:
	rm -rf $(VENV) runs build *.egg-info
