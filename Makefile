# Two entry points: `make demo` (install + the main job) and `make test` (install + the suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install demo test lint bench

$(VENV)/.installed: pyproject.toml scripts/system-deps.sh
	bash scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) examples/quickstart.py

lint: install
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(PY) bench/bench_sparse_ffn.py
