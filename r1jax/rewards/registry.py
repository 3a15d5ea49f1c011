"""Registry of reward functions and the "name:weight,..." spec string.

A reward function has the signature `fn(completion: str, example: dict, **kwargs) -> float`.
The total reward is a weighted sum, e.g. "accuracy:1.0,format:0.2" is
r = r_acc + 0.2 * r_fmt_eff (DeepSeek-R1, Guo et al. 2025, Sec. 2.2.2: accuracy plus format
rewards; docs/method.md, "Rewards").

Functions run in worker processes (r1jax.rewards.pool) and are sent there by reference
(module + name), so they must be module-level functions: the worker imports their module,
which re-runs the `@register` decorator there.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

from r1jax.rewards import accuracy as accuracy_lib
from r1jax.rewards import code as code_lib
from r1jax.rewards.format import format_reward

RewardFn = Callable[..., float]

REWARD_FUNCTIONS: dict[str, RewardFn] = {}
# Optional per-function start-up hooks (heavy imports) run once by each worker process.
WARMUPS: dict[str, Callable[[], None]] = {}
# Optional per-function checks run once in the trainer when a reward pool is made:
# check(fn_kwargs) -> {metric: value}; raising stops the run before training starts (a
# reward that cannot work must not silently score 0, e.g. a missing sandbox).
STARTUP_CHECKS: dict[str, Callable[[dict], dict[str, float]]] = {}


def register(name: str, *, warmup: Optional[Callable[[], None]] = None,
             startup_check: Optional[Callable[[dict], dict[str, float]]] = None
             ) -> Callable[[RewardFn], RewardFn]:
  """Decorator registering `fn` in REWARD_FUNCTIONS under `name`.

  Args:
    name: spec name (non-empty; no ',' or ':').
    warmup: optional zero-argument hook each reward worker runs once at start-up.
    startup_check: optional hook run once in the trainer process with the function's
      keyword arguments when a RewardComputer is made (see STARTUP_CHECKS).
  Returns:
    The decorator (it returns the function unchanged).
  Raises:
    ValueError: bad name, or `name` already taken by a different function.
  """
  if not name or "," in name or ":" in name or name != name.strip():
    raise ValueError(f"bad reward function name {name!r}")

  def deco(fn: RewardFn) -> RewardFn:
    old = REWARD_FUNCTIONS.get(name)
    # Re-importing the same module (e.g. in a worker) registers the same function again.
    if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
      raise ValueError(f"reward function {name!r} is already registered ({old.__module__}."
                       f"{old.__qualname__})")
    REWARD_FUNCTIONS[name] = fn
    if warmup is not None:
      WARMUPS[name] = warmup
    if startup_check is not None:
      STARTUP_CHECKS[name] = startup_check
    return fn

  return deco


def parse_reward_spec(spec: str) -> list[tuple[str, float]]:
  """Parse "name:weight,name:weight" into [(name, weight), ...] (order kept).

  Whitespace around items is ignored; a bare "name" means weight 1.0. Weights are finite
  floats (negative allowed, for penalties).

  Args:
    spec: e.g. "accuracy:1.0,format:0.2".
  Returns:
    list of (name, weight).
  Raises:
    ValueError: empty spec, unknown name, duplicate name, or a weight that is not a finite
      float.
  """
  items = [s.strip() for s in spec.split(",")]
  if not spec.strip() or any(not s for s in items):
    raise ValueError(f"bad reward spec {spec!r}: expected 'name:weight,name:weight'")
  out: list[tuple[str, float]] = []
  for item in items:
    name, sep, weight_str = (p.strip() for p in item.partition(":"))
    if name not in REWARD_FUNCTIONS:
      raise ValueError(f"unknown reward function {name!r} in spec {spec!r}; "
                       f"known: {sorted(REWARD_FUNCTIONS)}")
    if any(name == n for n, _ in out):
      raise ValueError(f"reward function {name!r} appears twice in spec {spec!r}")
    try:
      weight = float(weight_str) if sep else 1.0
    except ValueError:
      raise ValueError(f"bad weight {weight_str!r} for {name!r} in spec {spec!r}") from None
    if not math.isfinite(weight):
      raise ValueError(f"weight of {name!r} must be finite, got {weight_str!r}")
    out.append((name, weight))
  return out


register("accuracy", warmup=accuracy_lib.warmup)(accuracy_lib.accuracy)
register("format")(format_reward)
register("code", warmup=code_lib.warmup, startup_check=code_lib.startup_check)(
    code_lib.code_reward)
# The held-out scorer shared by training and evaluation (RewardComputer.heldout_accuracy).
HELDOUT_ACCURACY: RewardFn = accuracy_lib.heldout_accuracy
