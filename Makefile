# Two entry points: `make demo` (install + the main job) and `make test` (install + the suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Optimum's exporter pins transformers < 4.58; the suite's GenAI builder needs 5.x: Optimum
# gets a virtual environment of its own, which the LLM tests find (tests/fixtures/llm.py).
OPTIMUM_VENV ?= .venv-optimum
# PyTriton's Python backend stub is built against NumPy 1 (nvidia-pytriton pins numpy<2); the
# suite runs NumPy 2: the PyTriton test serves from an environment of its own, which needs
# only fffc's runtime (onnxruntime) besides PyTriton (tests/test_triton.py).
TRITON_VENV ?= .venv-triton

.PHONY: install optimum triton demo test lint bench test-asan fuzz

$(VENV)/.installed: pyproject.toml scripts/system-deps.sh
	bash scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

$(OPTIMUM_VENV)/.installed:
	$(PYTHON) -m venv $(OPTIMUM_VENV)
	$(OPTIMUM_VENV)/bin/python -m pip install -q --upgrade pip
	$(OPTIMUM_VENV)/bin/python -m pip install -q optimum-onnx onnxruntime torch==2.13.0
	touch $@

optimum: $(OPTIMUM_VENV)/.installed

$(TRITON_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q onnxruntime 'nvidia-pytriton>=0.5'
	$(TRITON_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

triton: $(TRITON_VENV)/.installed

demo: install
	$(PY) examples/quickstart.py

lint: install
	$(PY) -m ruff check .

# the suite, then the shim's own tests again under ASan + UBSan (test-asan's short version)
test: lint optimum triton
	FFFC_OPTIMUM_VENV=$(abspath $(OPTIMUM_VENV)) FFFC_TRITON_VENV=$(abspath $(TRITON_VENV)) \
	$(PY) -m pytest -q -p no:cacheprovider
	$(MAKE) test-asan ASAN_TESTS="$(ASAN_SHORT)"

bench: install
	$(PY) bench/bench_sparse_ffn.py

# The shim built with AddressSanitizer and UBSan (FFFC_SANITIZE), loaded by the runtime and
# codegen tests. The Python interpreter is not built with ASan, so its runtime is preloaded,
# with libstdc++ (ASan intercepts __cxa_throw, which must be loaded when it starts). Leak
# checking is off: the interpreter and ONNX Runtime keep allocations until exit.
ASAN_PRELOAD = $(shell $${CXX:-g++} -print-file-name=libasan.so) $(shell $${CXX:-g++} -print-file-name=libstdc++.so)
ASAN_TESTS ?= tests/runtime tests/codegen
ASAN_SHORT = tests/runtime/test_shim.py tests/runtime/test_fff_shim.py tests/runtime/test_screen.py tests/runtime/test_integrity.py
test-asan: install
	FFFC_SANITIZE=address,undefined LD_PRELOAD="$(ASAN_PRELOAD)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	$(PY) -m pytest -q -p no:cacheprovider $(ASAN_TESTS)

# Mutation fuzzing (scripts/fuzz.py): mutated models through inspect, calibrate and compile,
# mutated artifacts through fffc.runtime and fffc verify, mutated --data feeds, GenAI folders,
# --calibration files and fffc bench flags; findings saved under fuzz-out/.
FUZZ_CASES ?= 100000
FUZZ_SECONDS ?= 36000
FUZZ_TARGETS ?= model,artifact,data,genai,calibration,bench
fuzz: install
	$(PY) scripts/fuzz.py --cases $(FUZZ_CASES) --seconds $(FUZZ_SECONDS) --targets $(FUZZ_TARGETS) --out fuzz-out
