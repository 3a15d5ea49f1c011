"""Off-policy correction between the sampler's and the trainer's log-probs.

The sampler (bf16 decoding, other kernels, or a policy one update stale under asynchronous
rollouts) does not give the same token probabilities mu(y_t) as the trainer's pi_old(y_t),
so the "on-policy" GRPO gradient is in fact off-policy. Two corrections, both constants
(no gradient) that multiply the per-token policy-gradient term of the loss:

- "tis", token-level truncated importance sampling (Yao et al. 2025, "Your efficient RL
  framework secretly brings you off-policy RL training", fengyao.notion.site/off-policy-rl;
  the TIS of verl):  w_t = min(pi_old(y_t) / mu(y_t), C).
- "mis", sequence-level masked importance sampling (Liu, Li et al. 2025, "When speed kills
  stability: demystifying RL collapse from the training-inference mismatch", the Seq-MIS
  estimator; masking as in IcePop, Ling Team 2025): with the sequence ratio
  rho(y) = prod_t pi_old(y_t) / mu(y_t),  w_t = rho(y) * 1[low <= rho(y) <= C], i.e. whole
  sequences whose ratio leaves the band [low, C] are dropped and the others importance
  weighted. Dropped sequences still count in the loss denominator (the estimator is
  E_mu[1[rho in band] rho A grad log pi], an average over all samples).

Shapes: S sequences, T token positions aligned with the targets (see losses/grpo.py);
`mask` marks the completion tokens. Everything here is jnp and traceable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MODES = ("none", "tis", "mis")
# exp(+-20) keeps a product of many token ratios finite in float32 (the band test is done
# on the unclamped log-ratio).
_LOG_BOUND = 20.0


def log_ratios(trainer_logp: jax.Array, sampler_logp: jax.Array, mask: jax.Array) -> jax.Array:
  """[S, T] float32 log(pi_old / mu) on completion tokens, 0 elsewhere (no gradient)."""
  live = mask > 0
  d = jax.lax.stop_gradient(trainer_logp) - jax.lax.stop_gradient(sampler_logp)
  return jnp.where(live, d, 0.0).astype(jnp.float32)


def importance_weights(trainer_logp: jax.Array, sampler_logp: jax.Array, mask: jax.Array,
                       mode: str, cap: float, low: float = 0.0):
  """Per-token importance weights of the policy-gradient term.

  Args:
    trainer_logp: [S, T] float32 log pi_old(y_t) from the trainer (gradient stopped here).
    sampler_logp: [S, T] float32 log mu(y_t) that the sampler reported for the same tokens.
    mask: [S, T] {0, 1} (or any weights; > 0 marks a completion token).
    mode: "none" | "tis" | "mis" (see the module docstring).
    cap: C, the TIS cap, or the upper end of the MIS band (> 0).
    low: lower end of the MIS band (0 <= low < cap); unused by "tis".

  Returns:
    (weights [S, T] float32, corrected [S, T] bool): weights are 1 for "none" and 0 off the
    mask; corrected marks completion tokens whose weight was capped ("tis") or whose
    sequence was masked ("mis").

  Raises:
    ValueError: unknown mode.
  """
  live = mask > 0
  lr = log_ratios(trainer_logp, sampler_logp, mask)
  if mode == "none":
    return live.astype(jnp.float32), jnp.zeros(lr.shape, bool)
  if mode == "tis":
    log_cap = jnp.log(jnp.float32(cap))
    corrected = live & (lr > log_cap)
    w = jnp.exp(jnp.minimum(lr, log_cap))
    return jnp.where(live, w, 0.0), corrected
  if mode == "mis":
    seq = jnp.sum(lr, axis=-1, keepdims=True)  # log rho(y), [S, 1]
    lo = jnp.log(jnp.float32(low)) if low > 0 else -jnp.inf
    keep = (seq >= lo) & (seq <= jnp.log(jnp.float32(cap)))
    w = jnp.where(keep, jnp.exp(jnp.clip(seq, -_LOG_BOUND, _LOG_BOUND)), 0.0)
    return jnp.where(live, w, 0.0), live & ~keep
  raise ValueError(f"rl.offpolicy_correction must be one of {MODES}, got {mode!r}")


def mismatch_metrics(trainer_logp: jax.Array, sampler_logp: jax.Array, mask: jax.Array,
                     metric_weights: jax.Array, mode: str, cap: float,
                     low: float = 0.0) -> dict[str, jax.Array]:
  """Sampler-vs-trainer mismatch statistics of a (micro-)batch, as weighted sums.

  With metric_weights = mask / (completion tokens of the whole batch) (e.g.
  grpo.token_mean_weights of the whole batch), each entry is that micro-batch's share of a
  token mean over the whole batch, so summing micro-batches gives the exact batch value.

  Returns dict of float32 scalars:
    offpolicy/logp_diff_abs: mean |log pi_old - log mu| over completion tokens;
    offpolicy/is_weight: mean importance weight applied (1 for "none");
    offpolicy/capped_frac ("tis") or offpolicy/masked_frac ("mis"): fraction of completion
      tokens capped / in masked sequences.
  The maximum is not additive over micro-batches: see `mismatch_summary`.
  """
  lr = log_ratios(trainer_logp, sampler_logp, mask)
  w, corrected = importance_weights(trainer_logp, sampler_logp, mask, mode, cap, low)
  mw = jnp.where(mask > 0, metric_weights, 0.0)
  out = {"offpolicy/logp_diff_abs": jnp.sum(mw * jnp.abs(lr)),
         "offpolicy/is_weight": jnp.sum(mw * w)}
  if mode == "tis":
    out["offpolicy/capped_frac"] = jnp.sum(mw * corrected)
  elif mode == "mis":
    out["offpolicy/masked_frac"] = jnp.sum(mw * corrected)
  return out


def micro_batch_metrics(trainer_logp: jax.Array, sampler_logp: jax.Array, live: jax.Array,
                        metric_weights: jax.Array, mode: str, cap: float,
                        low: float = 0.0) -> dict[str, jax.Array]:
  """The mismatch metrics the GRPO update logs every step whatever the mode:
  `mismatch_metrics` plus offpolicy/logp_diff (the signed token mean of
  log pi_old - log mu, additive over micro-batches like the others) and
  offpolicy/logp_diff_abs_max, the micro-batch's largest |log pi_old - log mu| (the Trainer
  takes the maximum of "_max" metrics over micro-batches, so it is the batch's exact max).

  Args:
    trainer_logp, sampler_logp: [S, T] float32 log pi_old and log mu of the sampled tokens.
    live: [S, T] bool completion tokens in the loss; metric_weights: [S, T] float32 token
      weights of the whole batch (grpo.token_mean_weights); mode, cap, low: as
      `importance_weights`.
  """
  lr = log_ratios(trainer_logp, sampler_logp, live)
  out = mismatch_metrics(trainer_logp, sampler_logp, live, metric_weights, mode, cap, low)
  mw = jnp.where(live, metric_weights, 0.0)
  out["offpolicy/logp_diff"] = jnp.sum(mw * lr)
  out["offpolicy/logp_diff_abs_max"] = jnp.max(jnp.abs(lr))
  return out


def mismatch_summary(trainer_logp: jax.Array, sampler_logp: jax.Array,
                     mask: jax.Array) -> dict[str, jax.Array]:
  """Whole-batch mismatch statistics, including the maximum (not additive, so computed
  where both log-probs of the whole batch are at hand, e.g. pi_old's log-probs when mu > 1).

  Args:
    trainer_logp, sampler_logp: [..., T] float32 log-probs of the same tokens.
    mask: [..., T] {0, 1} completion-token mask.

  Returns dict of float32 scalars: offpolicy/logp_diff_abs (token mean of |diff|),
  offpolicy/logp_diff_abs_max, offpolicy/logp_diff (token mean of log pi_old - log mu).
  Empty masks give 0.
  """
  lr = log_ratios(trainer_logp, sampler_logp, mask)
  n = jnp.maximum(jnp.sum(mask > 0), 1)
  return {"offpolicy/logp_diff_abs": jnp.sum(jnp.abs(lr)) / n,
          "offpolicy/logp_diff_abs_max": jnp.max(jnp.abs(lr)),
          "offpolicy/logp_diff": jnp.sum(lr) / n}
