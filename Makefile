# bsynth_hpc developer entry points. `make demo` and `make test` are the README's quick start:
# each creates the virtual environment on first use (pinned by constraints.txt) and then runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bsynth-installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-all bench-data bench-kernels clean-demo

setup: $(STAMP)

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/bsynth demo

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not heavy" $(PYTEST_ARGS) tests

test-all: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS) tests

bench-data: setup
	$(BIN)/bsynth bench data

bench-kernels: setup
	$(BIN)/bsynth bench kernels

clean-demo:
	rm -rf demo_run
