"""Advantage estimators of a rollout batch: one scalar per completion from [B, G] rewards.

- "grpo": group-relative A_i = (r_i - mean_group r) / (std + eps) (Shao et al. 2024,
  DeepSeekMath, arXiv:2402.03300, Sec. 4.1.2 outcome supervision; docs/method.md
  "Advantage estimators"), with the existing std scalings "group" | "batch" | "none"
  (grpo.group_advantages; "none" is Dr. GRPO, Liu et al. 2025, arXiv:2503.20783).
- "rloo": REINFORCE leave-one-out (Ahmadian et al. 2024, "Back to basics", arXiv:2402.14740,
  the RLOO estimator): A_i = r_i - 1/(G-1) sum_{j != i} r_j, i.e. G/(G-1) (r_i - mean r).
- "reinforce_pp": REINFORCE++ with a group baseline (Hu 2025, arXiv:2501.03262,
  "REINFORCE++-baseline"): A_i = r_i - mean_group r, then normalised over the whole batch,
  A <- (A - mean_batch A) / (std_batch A + eps).

Rewards are gathered over all processes before this runs, so every process computes the
same advantages (the stage keeps its own rows).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from r1jax.losses import grpo as grpo_lib
from r1jax.losses import shaping

ESTIMATORS = ("grpo", "rloo", "reinforce_pp")


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
  """Host-side settings from rewards to advantages (config keys in brackets).

  estimator [rl.advantage_estimator]: "grpo" | "rloo" | "reinforce_pp".
  scaling [rl.advantage_scaling]: "group" | "batch" | "none"; the std scaling of the "grpo"
    estimator only (rloo and reinforce_pp define their own scale).
  overlong_buffer [rl.overlong_buffer]: L_cache of DAPO's overlong shaping in tokens (0 = off).
  overlong_penalty [rl.overlong_penalty]: the penalty at the limit (DAPO: 1).
  max_completion_len [rl.max_new_tokens]: L_max, the sampler's completion limit in tokens.
  eps: added to the std of "grpo" and "reinforce_pp".
  """
  estimator: str = "grpo"
  scaling: str = "group"
  overlong_buffer: int = 0
  overlong_penalty: float = 1.0
  max_completion_len: int = 128
  eps: float = 1e-4

  def __post_init__(self):
    if self.estimator not in ESTIMATORS:
      raise ValueError(f"rl.advantage_estimator must be one of {ESTIMATORS}, got "
                       f"{self.estimator!r}")
    if self.scaling not in grpo_lib.ADVANTAGE_SCALINGS:
      raise ValueError(f"rl.advantage_scaling must be one of {grpo_lib.ADVANTAGE_SCALINGS}, "
                       f"got {self.scaling!r}")
    if self.max_completion_len < 1:
      raise ValueError(f"rl.max_new_tokens must be >= 1, got {self.max_completion_len}")
    if not 0 <= self.overlong_buffer <= self.max_completion_len:
      raise ValueError(f"rl.overlong_buffer must be in [0, rl.max_new_tokens="
                       f"{self.max_completion_len}], got {self.overlong_buffer}")
    if self.overlong_penalty < 0:
      raise ValueError(f"rl.overlong_penalty must be >= 0, got {self.overlong_penalty}")
    if not self.eps > 0:
      raise ValueError(f"advantage eps must be > 0, got {self.eps}")


def compute_advantages(rewards: np.ndarray, estimator: str = "grpo", scaling: str = "group",
                       eps: float = 1e-4) -> np.ndarray:
  """Per-completion advantages of a batch of groups.

  Args:
    rewards: [B, G] rewards (any float dtype) of G completions for each of B prompts.
    estimator: "grpo" | "rloo" | "reinforce_pp" (module docstring).
    scaling: std scaling of "grpo" ("group" | "batch" | "none").
    eps: added to the std (ddof=1) of "grpo" and "reinforce_pp".

  Returns:
    [B, G] float32 advantages. Groups whose rewards are all equal get 0 under "grpo" and
    "rloo"; under "reinforce_pp" they get -mean_batch(A) / std (0 when every group is full).

  Raises:
    ValueError: rewards not [B, G] with G >= 2 or not finite, unknown estimator/scaling.
  """
  r = np.asarray(rewards, np.float64)
  if r.ndim != 2 or r.shape[1] < 2:
    raise ValueError(f"rewards must be [B, G] with G >= 2, got shape {r.shape}")
  if not np.isfinite(r).all():
    raise ValueError("rewards must be finite to compute advantages")
  if estimator == "grpo":
    return grpo_lib.group_advantages(r, scaling, eps)
  if scaling not in grpo_lib.ADVANTAGE_SCALINGS:
    raise ValueError(f"rl.advantage_scaling must be one of {grpo_lib.ADVANTAGE_SCALINGS}, got "
                     f"{scaling!r}")
  G = r.shape[1]
  if estimator == "rloo":
    baseline = (r.sum(axis=1, keepdims=True) - r) / (G - 1)
    return (r - baseline).astype(np.float32)
  if estimator == "reinforce_pp":
    a = r - r.mean(axis=1, keepdims=True)
    std = a.std(ddof=1) if a.size > 1 else 0.0
    return ((a - a.mean()) / (std + eps)).astype(np.float32)
  raise ValueError(f"rl.advantage_estimator must be one of {ESTIMATORS}, got {estimator!r}")


def advantages_from_rewards(rewards: np.ndarray, lengths: np.ndarray, cfg: AdvantageConfig):
  """Overlong shaping then the configured estimator, for the whole (gathered) batch.

  Args:
    rewards: [B, G] rewards from the reward functions.
    lengths: [B, G] int completion lengths in tokens, as the sampler reports them.
    cfg: AdvantageConfig.

  Returns:
    (advantages [B, G] float32, shaped rewards [B, G] float32: rewards plus the overlong
    penalty, equal to rewards when cfg.overlong_buffer == 0).

  Raises:
    ValueError: shapes differ, or as compute_advantages / shaping.overlong_penalty.
  """
  r = np.asarray(rewards, np.float32)
  if np.shape(lengths) != r.shape:
    raise ValueError(f"lengths {np.shape(lengths)} and rewards {r.shape} must have one shape")
  if cfg.overlong_buffer > 0:
    r = r + shaping.overlong_penalty(lengths, cfg.max_completion_len, cfg.overlong_buffer,
                                     cfg.overlong_penalty)
  return compute_advantages(r, cfg.estimator, cfg.scaling, cfg.eps), r
