"""GRPO (Group Relative Policy Optimization) as pure functions, with its common variants.

Source: Shao et al., "DeepSeekMath" (arXiv:2402.03300), eq. 3 and Algorithm 1; used as-is
by DeepSeek-R1 (arXiv:2501.12948); see docs/method.md "GRPO objective". Variants: DAPO (Yu
et al. 2025, arXiv:2503.14476: clip-higher, token-level aggregation, overlong filtering,
dynamic sampling) and Dr. GRPO (Liu et al. 2025, arXiv:2503.20783: no std scaling, constant
length normaliser); GSPO (Zheng et al. 2025, arXiv:2507.18071: sequence-level ratio and
clip); an entropy bonus (Schulman et al. 2017, PPO, arXiv:1707.06347, eq. 9); off-policy
correction of the sampler-vs-trainer mismatch (losses/offpolicy.py). KL estimators k1/k2/k3
from J. Schulman, "Approximating KL divergence" (2020); docs/method.md "KL estimators".

Shapes: S sequences (= prompts x G), T token positions. All per-token arrays are aligned
with the *targets*: position t holds quantities of token t+1 of the sequence.

Exactness under gradient accumulation: `loss_weights` turns a whole rollout batch's mask
into per-token weights and one global denominator; a micro-batch's loss is
sum(weights * per_token_loss) / denominator, so the micro-batch losses (and gradients) add
up exactly to the full-batch loss, for every aggregation mode and option below (each
sequence lies whole in one micro-batch).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.losses import offpolicy

AGGREGATIONS = ("sequence_mean_token_mean", "token_mean", "dr_grpo")
KL_ESTIMATORS = ("k1", "k2", "k3")
ADVANTAGE_SCALINGS = ("group", "batch", "none")
POLICY_LOSSES = ("grpo", "gspo")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """Loss settings (the stage's config key in brackets).

  epsilon_low / epsilon_high [rl.epsilon_low / rl.epsilon_high]: clip range
    [1 - eps_low, 1 + eps_high] of the ratio (equal = the original GRPO clip; eps_high >
    eps_low = DAPO clip-higher; GSPO uses about 3e-4 / 4e-4 on its sequence ratio).
  beta [rl.beta]: KL coefficient against the reference policy (0 disables the KL term).
  kl_estimator [rl.kl_estimator]: "k1" | "k2" | "k3" (GRPO uses k3).
  aggregation [rl.loss_aggregation]: "sequence_mean_token_mean" (GRPO: mean over sequences
    of the per-sequence token mean) | "token_mean" (DAPO: mean over all tokens of the batch)
    | "dr_grpo" (sum over tokens / (num sequences * max_completion_len)).
  max_completion_len [rl.max_new_tokens]: the constant normaliser of "dr_grpo" (tokens).
  policy_loss [rl.policy_loss]: "grpo" (token-level ratio and clip) | "gspo" (sequence-level
    ratio exp(mean token log-ratio) and clip, Zheng et al. 2025; use it with
    "sequence_mean_token_mean" to get the paper's 1/G sum over sequences).
  entropy_coef [rl.entropy_coef]: coefficient of the entropy bonus subtracted from the loss
    (0 = none; the entropy is aggregated like the policy-gradient term).
  offpolicy_correction [rl.offpolicy_correction]: "none" | "tis" (token-level truncated IS)
    | "mis" (sequence-level masked IS), between the sampler's and the trainer's log-probs.
  offpolicy_cap [rl.offpolicy_cap]: C, the TIS cap / the upper end of the MIS band (> 0).
  offpolicy_mis_low [rl.offpolicy_mis_low]: lower end of the MIS band (0 = none).
  fused [rl.fused_loss]: compute the loss with its gradients formed in the forward pass
    over token chunks (losses/grpo_fused.py; Liger-style, 3 matmul-equivalents instead of
    5, no second pass over the vocabulary). Needs per-token terms: policy_loss "grpo" and
    offpolicy_correction "none" or "tis".
  """
  epsilon_low: float = 0.2
  epsilon_high: float = 0.2
  beta: float = 0.04
  kl_estimator: str = "k3"
  aggregation: str = "sequence_mean_token_mean"
  max_completion_len: int = 128
  policy_loss: str = "grpo"
  entropy_coef: float = 0.0
  offpolicy_correction: str = "none"
  offpolicy_cap: float = 2.0
  offpolicy_mis_low: float = 0.5
  fused: bool = False

  def __post_init__(self):
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"rl.loss_aggregation must be one of {AGGREGATIONS}, got "
                       f"{self.aggregation!r}")
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(f"rl.kl_estimator must be one of {KL_ESTIMATORS}, got "
                       f"{self.kl_estimator!r}")
    if not (0 <= self.epsilon_low < 1 and self.epsilon_high >= 0):
      raise ValueError(f"bad clip range: rl.epsilon_low={self.epsilon_low} must be in [0, 1) "
                       f"and rl.epsilon_high={self.epsilon_high} >= 0")
    if self.beta < 0:
      raise ValueError(f"rl.beta must be >= 0, got {self.beta}")
    if self.max_completion_len < 1:
      raise ValueError(f"rl.max_new_tokens must be >= 1, got {self.max_completion_len}")
    if self.policy_loss not in POLICY_LOSSES:
      raise ValueError(f"rl.policy_loss must be one of {POLICY_LOSSES}, got "
                       f"{self.policy_loss!r}")
    if not self.entropy_coef >= 0:
      raise ValueError(f"rl.entropy_coef must be >= 0, got {self.entropy_coef}")
    if self.offpolicy_correction not in offpolicy.MODES:
      raise ValueError(f"rl.offpolicy_correction must be one of {offpolicy.MODES}, got "
                       f"{self.offpolicy_correction!r}")
    if not self.offpolicy_cap > 0:
      raise ValueError(f"rl.offpolicy_cap must be > 0, got {self.offpolicy_cap}")
    if not 0 <= self.offpolicy_mis_low < self.offpolicy_cap:
      raise ValueError(f"rl.offpolicy_mis_low must be in [0, rl.offpolicy_cap="
                       f"{self.offpolicy_cap}), got {self.offpolicy_mis_low}")
    if not isinstance(self.fused, bool):
      raise ValueError(f"rl.fused_loss must be True or False, got {self.fused!r}")
    if self.fused and (self.policy_loss != "grpo" or self.offpolicy_correction == "mis"):
      # GSPO's sequence ratio and MIS's sequence weight couple the tokens of a sequence:
      # a token's gradient is not known when its chunk is.
      raise ValueError(f"rl.fused_loss=True needs per-token loss terms: rl.policy_loss="
                       f"'grpo' and rl.offpolicy_correction 'none' or 'tis' (got "
                       f"{self.policy_loss!r}, {self.offpolicy_correction!r})")


def group_advantages(rewards: np.ndarray, scaling: str = "group", eps: float = 1e-4) -> np.ndarray:
  """Group-relative advantages A_i = (r_i - mean_group(r)) / std (DeepSeekMath Sec. 4.1.2;
  docs/method.md "Advantage estimators"; other estimators: losses/advantages.py).

  Args:
    rewards: [B, G] rewards of G samples for each of B prompts.
    scaling: "group" divides by the group's std (GRPO), "batch" by the std of all B*G
      rewards, "none" does not divide (Dr. GRPO).
    eps: added to the std (groups whose rewards are all equal get advantage 0).

  Returns:
    [B, G] float32 advantages. The std is the sample std (ddof=1), as in TRL/verl.

  Raises:
    ValueError: unknown scaling, or G < 2.
  """
  r = np.asarray(rewards, np.float64)
  if r.ndim != 2 or r.shape[1] < 2:
    raise ValueError(f"rewards must be [B, G] with G >= 2, got shape {r.shape}")
  centred = r - r.mean(axis=1, keepdims=True)
  if scaling == "group":
    a = centred / (r.std(axis=1, ddof=1, keepdims=True) + eps)
  elif scaling == "batch":
    a = centred / (r.std(ddof=1) + eps)
  elif scaling == "none":
    a = centred
  else:
    raise ValueError(f"advantage scaling must be one of {ADVANTAGE_SCALINGS}, got {scaling!r}")
  return a.astype(np.float32)


def loss_weights(mask: np.ndarray, aggregation: str, max_completion_len: int):
  """Per-token weights and the global denominator of a whole rollout batch.

  Args:
    mask: [S, T] {0, 1} completion-token mask of the whole batch (all micro-batches).
    aggregation: see GRPOConfig.
    max_completion_len: dr_grpo's constant.

  Returns:
    weights [S, T] float32 and denominator (float): loss = sum(weights * l) / denominator.
    - sequence_mean_token_mean: weights = mask / |o_i|, denominator = S (sequences with at
      least one token; fully masked ones, e.g. filtered truncations, do not count);
    - token_mean: weights = mask, denominator = number of unmasked tokens;
    - dr_grpo: weights = mask, denominator = S * max_completion_len.
  """
  mask = np.asarray(mask, np.float32)
  if aggregation == "sequence_mean_token_mean":
    n = mask.sum(axis=1, keepdims=True)
    weights = mask / np.maximum(n, 1.0)
    denom = float((n > 0).sum())
  elif aggregation == "token_mean":
    weights, denom = mask, float(mask.sum())
  elif aggregation == "dr_grpo":
    weights, denom = mask, float(mask.shape[0] * max_completion_len)
  else:
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
  return weights, max(denom, 1.0)


def token_mean_weights(mask: np.ndarray) -> np.ndarray:
  """[S, T] float32 weights mask / (number of unmasked tokens of the whole batch)."""
  mask = np.asarray(mask, np.float32)
  return mask / max(float(mask.sum()), 1.0)


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3") -> jax.Array:
  """Per-token KL(pi_theta || pi_ref) estimate from log-probs of sampled tokens.

  With log r = ref_logp - logp: k1 = -log r, k2 = (log r)^2 / 2, k3 = r - log r - 1.
  """
  log_r = ref_logp - logp
  if estimator == "k1":
    return -log_r
  if estimator == "k2":
    return 0.5 * jnp.square(log_r)
  if estimator == "k3":
    return jnp.exp(log_r) - log_r - 1.0
  raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def sequence_ratio(logp: jax.Array, old_logp: jax.Array, live: jax.Array) -> jax.Array:
  """GSPO's ratio in its token form (Zheng et al. 2025, arXiv:2507.18071, GSPO-token):

    s_{i,t} = sg[s_i] * pi(y_t) / sg[pi(y_t)],   s_i = exp(1/|y_i| sum_t log(pi / pi_old)),

  whose value is the sequence ratio s_i at every token of sequence i and whose gradient is
  s_i * grad log pi(y_t), so with one advantage per sequence and per-sequence token means
  the loss and gradient are GSPO's sequence-level ones.

  Args:
    logp: [S, T] log pi_theta (differentiable); old_logp: [S, T] log pi_old (constant);
    live: [S, T] bool completion tokens.

  Returns:
    [S, T] float32 ratios, 1 off the completion.
  """
  old_logp = jax.lax.stop_gradient(old_logp)
  n = jnp.maximum(jnp.sum(live, axis=-1, keepdims=True), 1)
  seq = jnp.sum(jnp.where(live, logp - old_logp, 0.0), axis=-1, keepdims=True) / n
  token = jnp.where(live, logp - jax.lax.stop_gradient(logp), 0.0)
  return jnp.exp(jnp.where(live, jax.lax.stop_gradient(seq) + token, 0.0))


def grpo_loss(logp: jax.Array, old_logp: jax.Array, ref_logp: Optional[jax.Array],
              advantages: jax.Array, weights: jax.Array, denominator, cfg: GRPOConfig,
              entropy: Optional[jax.Array] = None, metric_weights: Optional[jax.Array] = None,
              sampler_logp: Optional[jax.Array] = None):
  """GRPO loss of a (micro-)batch: the negative of DeepSeekMath eq. 3 (token-level form),

    l_t = -w^IS_t min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A) + beta KL_t - c_H H_t,

  aggregated as sum(weights * l) / denominator. r_t is pi_theta / pi_old per token
  ("grpo") or GSPO's sequence ratio (`sequence_ratio`, "gspo"); w^IS is the off-policy
  weight of losses/offpolicy.py (1 when cfg.offpolicy_correction == "none"); c_H H_t the
  entropy bonus (PPO eq. 9's c_2 S[pi]).

  Args:
    logp: [S, T] float32 log pi_theta of the sampled tokens (differentiable).
    old_logp: [S, T] log pi_old (constant; equal to stop_gradient(logp) when mu = 1).
      It is also the trainer's side of the off-policy importance weights.
    ref_logp: [S, T] log pi_ref, or None when cfg.beta == 0.
    advantages: [S] float32, one per sequence (broadcast over its tokens), or [S, T]
      per-token advantages (e.g. GSPO-token).
    weights: [S, T] float32 from `loss_weights` (0 off the completion).
    denominator: scalar from `loss_weights` for the *whole* rollout batch.
    cfg: GRPOConfig.
    entropy: optional [S, T] token entropies (nats): reported, and differentiated through
      when cfg.entropy_coef > 0 (then required).
    metric_weights: optional [S, T] weights of the reported per-token statistics, e.g.
      `token_mean_weights(mask)` of the whole batch (default: weights / denominator).
    sampler_logp: [S, T] log mu of the sampled tokens as the sampler reported them;
      required when cfg.offpolicy_correction != "none".

  Returns:
    (loss scalar, metrics dict). All entries add up across micro-batches like the loss:
    pg_loss (aggregated like the loss, off-policy weights included), and kl, clip_frac
    (fraction of tokens whose ratio was clipped, i.e. the clipped branch was taken),
    ratio_mean, entropy, offpolicy/* (offpolicy.mismatch_metrics) weighted by metric_weights.

  Raises:
    ValueError: beta > 0 without ref_logp, entropy_coef > 0 without entropy, off-policy
      correction without sampler_logp.
  """
  live = weights > 0
  old_logp = jax.lax.stop_gradient(old_logp)
  if cfg.policy_loss == "gspo":
    ratio = sequence_ratio(logp, old_logp, live)
  else:
    # Off-mask positions are zeroed *before* exp: 0 * exp(large) would be NaN in the gradient.
    ratio = jnp.exp(jnp.where(live, logp - old_logp, 0.0))
  a = advantages[:, None] if advantages.ndim == 1 else advantages
  unclipped = ratio * a
  clipped = jnp.clip(ratio, 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high) * a
  objective = jnp.minimum(unclipped, clipped)
  per_token = -objective
  w = weights / denominator
  # Reported per-token statistics are token means (additive over micro-batches too).
  mw = w if metric_weights is None else metric_weights
  off_metrics = {}
  if cfg.offpolicy_correction != "none":
    if sampler_logp is None:
      raise ValueError(f"rl.offpolicy_correction={cfg.offpolicy_correction!r} needs the "
                       f"sampler's log-probs (sampler_logp)")
    args = (old_logp, sampler_logp, live, cfg.offpolicy_correction, cfg.offpolicy_cap,
            cfg.offpolicy_mis_low)
    is_weight, _ = offpolicy.importance_weights(*args)
    per_token = per_token * is_weight
    off_metrics = offpolicy.mismatch_metrics(*args[:3], mw, *args[3:])
  metrics = {"pg_loss": jnp.sum(w * per_token)}
  if cfg.beta > 0:
    if ref_logp is None:
      raise ValueError("beta > 0 needs reference log-probs")
    ref = jnp.where(live, jax.lax.stop_gradient(ref_logp), logp)
    kl = kl_penalty(logp, ref, cfg.kl_estimator)
    per_token = per_token + cfg.beta * kl
    metrics["kl"] = jnp.sum(mw * kl)
  if cfg.entropy_coef > 0:
    if entropy is None:
      raise ValueError("rl.entropy_coef > 0 needs the token entropies")
    per_token = per_token - cfg.entropy_coef * jnp.where(live, entropy, 0.0)
  is_clipped = ((ratio < 1.0 - cfg.epsilon_low) & (a < 0)) | ((ratio > 1.0 + cfg.epsilon_high) & (a > 0))
  metrics["clip_frac"] = jnp.sum(mw * is_clipped)
  metrics["ratio_mean"] = jnp.sum(mw * ratio)
  if entropy is not None:
    metrics["entropy"] = jnp.sum(mw * jax.lax.stop_gradient(entropy))
  metrics.update(off_metrics)
  loss = jnp.sum(w * per_token)
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
