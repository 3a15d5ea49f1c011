"""Tool rollouts in the GRPO stage: the `tools` config block, the sampler it builds, and the
per-step and held-out tool metrics (hooks called by r1jax.stages.grpo).

With `tools.enabled` the stage samples with `r1jax.tool_rollout.ToolSampler` (tool calls
run in the code sandbox, `r1jax.rewards.tool_exec`) instead of `sampling.Sampler`; the
rollout's `tool_mask` removes tool messages from the loss, the KL and the entropy
(`grpo_rollout.build_batch`). Without a `tools` block, or with it disabled, nothing changes.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from ml_collections import ConfigDict

from r1jax.models.config import ModelConfig
from r1jax.rewards import sandbox
from r1jax.rewards import tool_exec
from r1jax.tool_rollout import ToolSampler, settings_from_config, tool_metrics

__all__ = ["tools_config", "enabled", "validate", "make_sampler", "step_metrics",
           "eval_metrics"]


def tools_config(*, enabled: bool = True) -> ConfigDict:
  """The `tools` block of a GRPO config, with defaults (configs/grpo_tools.py)."""
  t = ConfigDict()
  # Tool rollouts on/off (off: the plain sampler, bit-identical to a config without tools).
  t.enabled = enabled
  # Call format: fenced (```python ... ``` -> ```output ... ```) | tool_call (Hermes/Qwen
  # <tool_call>{"name": "python", "arguments": {"code": ...}}</tool_call>).
  t.format = "fenced"
  # Markers replacing the format's own ("" = keep): the configured stop marker closes a call.
  t.call_start = ""
  t.call_end = ""
  # K: tool calls per sample; a sample that opens call K + 1 ends (truncated).
  t.max_calls = 2
  # Tool output tokens kept per call (the tool-message wrapper comes on top).
  t.max_output_tokens = 32
  # Decode steps a paused sample waits for others to pause too (their calls then share one
  # sandbox round trip); 0 = run calls as soon as one sample pauses.
  t.pause_wait_steps = 8
  # Sandbox limits of one call (seconds of wall time, MiB of memory).
  t.wall_s = 2.0
  t.memory_mb = 256
  # Isolation mode ("" = $R1JAX_SANDBOX_MODE, else the strongest; fails closed).
  t.sandbox_mode = ""
  return t


def enabled(config) -> bool:
  """Whether `config` asks for tool rollouts."""
  t = config.get("tools")
  return bool(t is not None and t.enabled)


def validate(config) -> None:
  """Check the `tools` block (no-op when tools are off).

  Raises:
    ValueError: a bad value (naming the tools.* key), or an unsupported combination.
  """
  if not enabled(config):
    return
  t = config.tools
  settings_from_config(t)
  if t.wall_s <= 0 or t.memory_mb <= 0:
    raise ValueError(f"tools.wall_s and tools.memory_mb must be > 0, got {t.wall_s}, "
                     f"{t.memory_mb}")
  if t.sandbox_mode and t.sandbox_mode not in sandbox.MODES:
    raise ValueError(f"tools.sandbox_mode must be one of {sandbox.MODES}, got "
                     f"{t.sandbox_mode!r}")
  if config.rl.dynamic_sampling:
    raise ValueError("tools.enabled with rl.dynamic_sampling is not supported (the refill "
                     "would drop the rollouts' tool masks)")


def make_sampler(config, cfg: ModelConfig, tok, *, pad_id: int,
                 min_prompt_bucket: int) -> ToolSampler:
  """The run's ToolSampler, its executor probed now (sandbox.SandboxUnavailable if the
  configured isolation does not work: fail closed, before any rollout)."""
  t = config.tools
  limits = dataclasses.replace(tool_exec.DEFAULT_LIMITS, wall_s=float(t.wall_s),
                               memory_mb=int(t.memory_mb))
  ex = tool_exec.SandboxToolExecutor(limits, mode=t.sandbox_mode or None)
  return ToolSampler(cfg, tok, settings_from_config(t), ex, pad_id=pad_id,
                     min_prompt_bucket=min_prompt_bucket)


def step_metrics(sampler, out, accuracy: Optional[np.ndarray]) -> dict[str, float]:
  """Tool metrics of a training step (`tool/...`) plus the sampler's model-written tokens/s.

  Args:
    sampler: the ToolSampler that produced `out` (its last_stats).
    out: ToolSampleOutput of the step.
    accuracy: [B * G] per-sample accuracy reward, or None.
  """
  m = tool_metrics(out, accuracy)
  st = sampler.last_stats
  m["tool/model_tokens_per_s"] = float(st.get("tokens_per_second", 0.0))
  m["tool/seconds"] = float(st.get("tool_seconds", 0.0))
  return m


def eval_metrics(calls: list[int], accuracy: list[float], mode: str) -> dict[str, float]:
  """Held-out tool metrics of one eval mode: call rate and accuracy with / without a call."""
  c, a = np.asarray(calls), np.asarray(accuracy, np.float64)
  m = {f"tool_call_rate_{mode}": float((c > 0).mean()) if c.size else 0.0}
  if (c > 0).any():
    m[f"accuracy_with_call_{mode}"] = float(a[c > 0].mean())
  if (c == 0).any():
    m[f"accuracy_without_call_{mode}"] = float(a[c == 0].mean())
  return m
