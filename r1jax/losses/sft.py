"""SFT-family loss: token-mean negative log-likelihood of the response (DeepSeek-R1, sections
2.3.1, 2.3.3 and 2.4: cold start, rejection-sampling SFT and distillation are all SFT).

    L(theta) = - sum_{rows r, slots t} w_rt * log pi_theta(y_rt | x_r<=t) / D

with w the loss mask (1 on response tokens, 0 on prompt and padding) and D a *global*
denominator: the number of response tokens in the whole optimizer batch, not the
micro-batch. The Trainer adds the micro-batch losses, so the sum is exactly the token mean
over the batch whatever the micro-batching. Per-token weights other than 0/1 (e.g. RFT
sample weights) go through the same function.

Log-probs come from `kernels.logprob.token_logprobs(hidden, W, targets)`, chunked over the
sequence, so no [tokens, vocab] logits are built. Batches are packed rows (see
r1jax.data.sft_data): the decoder attends within a segment only and positions restart per
segment, so a packed row gives the same loss and gradients as separate rows.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.kernels.logprob import token_logprobs
from r1jax import models
from r1jax.models.config import ModelConfig

BATCH_KEYS = ("tokens", "targets", "loss_mask", "positions", "segment_ids")


def sequence_logprobs(params, cfg: ModelConfig, batch: dict, *, kernel: Optional[dict] = None,
                      remat: bool = False, temperature: float = 1.0):
  """Log-prob and entropy of each target token of a (packed) batch.

  Args:
    params: model params.
    cfg: model config.
    batch: tokens, targets, positions, segment_ids, each [B, T] int32 (see sft_data).
    kernel: token_logprobs settings (kernels.logprob.kwargs_from_config; None = defaults).
    remat: recompute each decoder block in the backward pass.
    temperature: divides the logits (1 for SFT).
  Returns:
    logp [B, T] float32 = log pi(targets | inputs up to t, same segment), entropy [B, T].
  """
  hidden = models.forward(params, cfg, batch["tokens"], batch["positions"],
                          batch["segment_ids"], remat=remat)
  return token_logprobs(hidden, models.lm_head_weight(params, cfg), batch["targets"],
                        temperature=temperature, **(kernel or {}))


def sft_loss(logp: jax.Array, loss_mask: jax.Array, denominator, entropy=None
             ) -> tuple[jax.Array, dict]:
  """Masked token NLL normalised by a global denominator.

  Args:
    logp: [B, T] float32 log-probs of the targets.
    loss_mask: [B, T] float weights (1 = response token, 0 = prompt / padding).
    denominator: scalar, the total weight of the optimizer batch (> 0).
    entropy: optional [B, T] float32 entropies, reported as a weighted mean.
  Returns:
    (loss scalar = -sum(w * logp) / D, metrics {"nll", "entropy"?} as sums / D, so they add
    up exactly over micro-batches).
  """
  w = loss_mask.astype(jnp.float32)
  # where, not multiply: a -inf log-prob on a masked slot must not give NaN.
  nll = -jnp.sum(jnp.where(w > 0, logp * w, 0.0)) / denominator
  metrics = {"nll": nll}
  if entropy is not None:
    metrics["entropy"] = jnp.sum(jnp.where(w > 0, entropy * w, 0.0)) / denominator
  return nll, metrics


def make_loss_fn(cfg: ModelConfig, *, kernel: Optional[dict] = None, remat: bool = False
                 ) -> Callable:
  """`(params, micro_batch, denominator) -> (loss, metrics)` for `train.trainer.Trainer`."""
  def loss_fn(params, mb, denominator):
    logp, ent = sequence_logprobs(params, cfg, mb, kernel=kernel, remat=remat)
    return sft_loss(logp, mb["loss_mask"], denominator, jax.lax.stop_gradient(ent))
  return loss_fn


def loss_denominator(batch: dict) -> float:
  """D of a host batch: its total loss weight (1 when it has none, so the loss is 0)."""
  return max(float(np.asarray(batch["loss_mask"], np.float64).sum()), 1.0)
