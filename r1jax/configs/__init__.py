"""Stage configs (ml_collections ConfigDicts), one module per stage with variants by argument.

  python -m r1jax.main --config=configs/grpo.py:tiny      # a checkout's configs/ or this package
  from r1jax import configs
  c = configs.load("grpo:tiny")                           # the same ConfigDict in Python

Modules: common (the shared blocks), grpo (R1-Zero, the default job), grpo_reasoning (the
R1-Zero signature: accuracy and length rising together), grpo_tools (GRPO with a Python
tool), reasoning_rl,
all_scenario_rl, sft, cold_start_sft, distill, reward_model, rejection_sampling, eval,
generate, pipeline, r1_small (the recipe on CHAMP cold-start data), r1_stage3 (R1-Zero,
rejection sampling and the SFT of the base model on its samples), preference_pairs
(on-policy pairs for the helpfulness reward model), r1_all_scenario (r1_stage3, then R1's
stage 4 and stage 2 from the SFT'd base).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ("grpo", "grpo_reasoning", "grpo_tools", "reasoning_rl", "all_scenario_rl", "sft", "cold_start_sft", "distill",
         "reward_model", "rejection_sampling", "eval", "generate", "pipeline", "r1_small",
         "r1_stage3", "preference_pairs", "r1_all_scenario")


def split_spec(spec: str) -> tuple[str, str]:
  """"configs/grpo.py:tiny" -> ("configs/grpo.py", "tiny")."""
  path, _, variant = os.fspath(spec).partition(":")
  return path, variant


def packaged_path(path: str) -> Optional[str]:
  """The file of this package that a config path names when the path itself does not exist
  ("configs/grpo.py", "grpo.py", "grpo" -> .../r1jax/configs/grpo.py), else None."""
  if os.path.isfile(path):
    return None
  name = os.path.basename(path)
  name = name[:-3] if name.endswith(".py") else name
  return os.path.join(HERE, f"{name}.py") if name in NAMES else None


def resolve(spec: str) -> str:
  """A config spec as an existing file path with its variant ("path.py[:variant]").

  Raises:
    FileNotFoundError: neither a file nor a config of this package (the message lists them).
  """
  path, variant = split_spec(spec)
  if not os.path.isfile(path):
    packaged = packaged_path(path)
    if packaged is None:
      raise FileNotFoundError(f"config file {path} does not exist (packaged configs: "
                              f"{', '.join(NAMES)})")
    path = packaged
  return path + (f":{variant}" if variant else "")


def load(spec: str):
  """The ConfigDict of a config spec: "grpo", "grpo:tiny", "configs/sft.py:tiny", or the path
  of any file with a get_config([variant]) function.

  Raises:
    FileNotFoundError: no such config.
    ValueError: an unknown variant, or a variant for a config that takes none.
  """
  path, variant = split_spec(resolve(spec))
  if os.path.dirname(os.path.realpath(path)) == os.path.realpath(HERE):
    mod = importlib.import_module(f"r1jax.configs.{os.path.basename(path)[:-3]}")
  else:
    name = "r1jax_config_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:10]
    spec_ = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
  if not variant:
    return mod.get_config()
  if not inspect.signature(mod.get_config).parameters:
    raise ValueError(f"config {os.path.basename(path)} takes no variant (got {variant!r})")
  return mod.get_config(variant)
