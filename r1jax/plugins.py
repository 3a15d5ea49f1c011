"""User code named in configs: "package.module:function" objects and modules to import.

  fn = import_object("my_pkg.judges:v3_judge", key="judge.fn")
  import_modules("my_pkg.rewards,other.rewards", key="rewards.modules")
"""

from __future__ import annotations

import importlib
from typing import Any


def import_object(spec: str, *, key: str) -> Any:
  """The object named by `spec` ("pkg.mod:name" or "pkg.mod.name"); None for "".

  Raises:
    ValueError: naming `key`, when the spec is malformed, cannot be imported or names nothing
      callable.
  """
  if not spec:
    return None
  mod_name, sep, name = spec.partition(":")
  if not sep:
    mod_name, _, name = spec.rpartition(".")
  if not mod_name or not name:
    raise ValueError(f"{key}={spec!r}: expected 'module:function' or 'module.function'")
  try:
    obj = getattr(importlib.import_module(mod_name), name)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"{key}={spec!r}: cannot import it ({e})") from e
  if not callable(obj):
    raise ValueError(f"{key}={spec!r} is not callable")
  return obj


def import_modules(spec: str, *, key: str) -> list:
  """Import the comma-separated modules of `spec` (e.g. modules whose import registers reward
  functions); returns them.

  Raises:
    ValueError: naming `key` and the module that failed to import.
  """
  out = []
  for name in (x.strip() for x in str(spec or "").split(",")):
    if not name:
      continue
    try:
      out.append(importlib.import_module(name))
    except ImportError as e:
      raise ValueError(f"{key}: cannot import {name!r} ({e})") from e
  return out
