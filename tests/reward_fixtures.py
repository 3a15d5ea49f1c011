"""Misbehaving reward functions for tests/test_rewards.py.

They live in an importable module (not the test file's namespace) because the reward
worker processes load reward functions by module + name.
"""

import os
import time

from r1jax.rewards.registry import register


@register("test_hang")
def hang_reward(completion, example, *, sleep_s=60.0):
  """1.0, but sleeps `sleep_s` seconds first when the completion contains "HANG"."""
  del example
  if "HANG" in completion:
    time.sleep(sleep_s)
  return 1.0


@register("test_raise")
def raise_reward(completion, example):
  """0.5, but raises RuntimeError when the completion contains "RAISE"."""
  del example
  if "RAISE" in completion:
    raise RuntimeError("boom")
  return 0.5


@register("test_crash")
def crash_reward(completion, example):
  """0.25, but kills its process (exit code 3) when the completion contains "CRASH"."""
  del example
  if "CRASH" in completion:
    os._exit(3)  # pylint: disable=protected-access
  return 0.25


@register("test_length")
def length_reward(completion, example):
  """Deterministic reward that varies between samples: (len(completion) mod 5) / 4."""
  del example
  return (len(completion) % 5) / 4.0
