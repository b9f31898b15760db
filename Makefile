# Two commands on a fresh machine: `make demo` and `make test` (`make docs` builds the site).
# Set-up installs the CPU build of torch 2.13.0 first, then the package with its extras,
# so pip never resolves torch's open range to a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

CHROMIUM ?= /usr/bin/chromium

.PHONY: setup demo test lint docs bench clean chromium notebook

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $@

demo: setup
	$(BIN)/dogvae demo --out demo-out

# Runs examples/original_questions.ipynb top to bottom (a tiny run on the synthetic breeds, or
# DOGVAE_RUN=RUN; see its first cell) into examples/runs/original_questions.ipynb, pictures included.
notebook: setup
	mkdir -p examples/runs
	$(BIN)/jupyter execute --output=runs/original_questions examples/original_questions.ipynb

lint: setup
	$(BIN)/ruff check src tests bench docs/scripts examples
	$(BIN)/ruff format --check src tests bench docs/scripts examples

# tests/test_app_browser.py drives Debian's Chromium. As root with apt-get (CI), install it when
# it is missing; elsewhere say so, and the test skips with that reason.
chromium:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
	  echo "no Chromium at $(CHROMIUM): tests/test_app_browser.py will be skipped"

test: lint chromium
	$(BIN)/python -m pytest -q

# The docs site into site/: warnings are errors, and the notebook in examples/ is executed.
docs: setup
	DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: setup
	$(BIN)/python bench/data_throughput.py
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) demo-out site .cache/mkdocs-jupyter .pytest_cache .ruff_cache
