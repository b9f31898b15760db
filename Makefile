# Two commands on a fresh machine: `make demo` and `make test`.
# Set-up installs the CPU build of torch 2.13.0 first, then the package with its extras,
# so pip never resolves torch's open range to a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $@

demo: setup
	$(BIN)/dogvae demo --out demo-out

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

test: lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/data_throughput.py
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
