"""The GRPO loss with its gradients formed in the forward pass (config rl.fused_loss).

The per-token GRPO loss (losses/grpo.py, DeepSeekMath eq. 3 with the KL, entropy and TIS
terms) depends only on the token's own log-prob and entropy and on constants (pi_old,
pi_ref, mu, advantage, weight), so d loss / d logits of a token is known as soon as its
full-vocabulary statistics are: r1jax/kernels/logprob_fused_loss.py computes, per chunk of
tokens, the logits, the loss, d hidden and d W in one pass (the manner of Liger-Kernel's
fused linear GRPO), instead of the log-prob forward followed by its backward. It is pure
JAX (XLA) on every backend; the chunk is kernels.logprob_chunk_size tokens (memory ~
chunk x V float32).

Not for GSPO or sequence-level MIS (GRPOConfig refuses them): their ratios couple the
tokens of a sequence.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from r1jax.kernels.logprob_fused_loss import fused_loss
from r1jax.losses import grpo as grpo_lib


def fused_grpo_loss(hidden: jax.Array, lm_head: jax.Array, targets: jax.Array,
                    advantages: jax.Array, weights: jax.Array, denominator,
                    cfg: grpo_lib.GRPOConfig, *, old_logp: Optional[jax.Array] = None,
                    ref_logp: Optional[jax.Array] = None,
                    sampler_logp: Optional[jax.Array] = None,
                    metric_weights: Optional[jax.Array] = None, temperature: float = 1.0,
                    chunk_size: int = 256):
  """grpo_lib.grpo_loss from hidden states, fused with the LM head and its gradient.

  Args:
    hidden: [S, T, D] predictor hidden states of the completion tokens (compute dtype).
    lm_head: [D, V] head weight (cast to hidden's dtype).
    targets: [S, T] int token ids; advantages: [S] or [S, T] float32.
    weights, denominator: from grpo_lib.loss_weights (weights [S, T], 0 off the completion).
    cfg: GRPOConfig (policy_loss "grpo", offpolicy_correction "none" / "tis").
    old_logp: [S, T] log pi_old, or None when mu = 1 (pi_old = the current policy).
    ref_logp: [S, T] log pi_ref (cfg.beta > 0); sampler_logp: [S, T] log mu (TIS).
    metric_weights: [S, T] weights of the reported statistics (as grpo_loss).
    temperature: logits are divided by it; chunk_size: tokens per chunk.

  Returns:
    (loss scalar float32, metrics dict as grpo_loss, logp [S, T] float32 without gradient).

  Raises:
    ValueError: cfg with sequence-coupled terms (GSPO, MIS), bad shapes, or the missing
      inputs grpo_loss refuses (ref_logp with beta > 0, sampler_logp with TIS).
  """
  if cfg.policy_loss != "grpo" or cfg.offpolicy_correction == "mis":
    raise ValueError("the fused GRPO loss needs per-token terms (policy_loss 'grpo', "
                     "offpolicy_correction 'none' or 'tis')")
  S, T, D = hidden.shape
  if advantages.ndim == 1:
    advantages = jnp.broadcast_to(advantages[:, None], (S, T))
  aux = {"adv": advantages, "weights": weights, "old": old_logp, "ref": ref_logp,
         "sampler": sampler_logp}
  aux = {k: v.reshape(S * T).astype(jnp.float32) for k, v in aux.items() if v is not None}

  def per_chunk(lp, ent, c):
    row = lambda k: c[k][None] if k in c else None
    old = row("old") if "old" in c else lp[None]  # grpo_loss stops its gradient
    return grpo_lib.grpo_loss(lp[None], old, row("ref"), c["adv"][None], c["weights"][None],
                              denominator, cfg, ent[None], None, row("sampler"))[0]

  loss, (logp, ent) = fused_loss(hidden.reshape(S * T, D), lm_head, targets.reshape(S * T),
                                 aux, per_chunk, temperature=temperature,
                                 chunk_size=chunk_size, with_stats=True)
  logp, ent = logp.reshape(S, T), ent.reshape(S, T)
  # Metrics from the same statistics (elementwise; no gradient flows through them).
  _, metrics = grpo_lib.grpo_loss(logp, logp if old_logp is None else old_logp, ref_logp,
                                  advantages, weights, denominator, cfg, ent, metric_weights,
                                  sampler_logp)
  return loss, metrics, logp
