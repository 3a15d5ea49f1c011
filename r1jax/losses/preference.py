"""Pairwise preference loss of reward models (Bradley-Terry).

    L(phi) = - sum_pairs w_i * log sigmoid(r_phi(x_i, y_i^chosen) - r_phi(x_i, y_i^rejected)) / D

(Ouyang et al. 2022, eq. 1; Stiennon et al. 2020, section 3.4), with w the pair weights
(1 for real pairs, 0 for batch padding) and D a *global* denominator: the number of real
pairs in the optimizer batch. The Trainer adds the micro-batch losses, so the sum is the
exact mean over the batch whatever the micro-batching. An optional centering term
coef * (r_chosen + r_rejected)^2 (Eisenstein et al. 2023, "Helping or herding?") pins the
free offset of the scores, which matters when scores of two RMs are added.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from r1jax.models import reward_model as rm_lib
from r1jax.models.config import ModelConfig

BATCH_KEYS = ("chosen_tokens", "chosen_lengths", "rejected_tokens", "rejected_lengths", "weight")


def bradley_terry_loss(r_chosen: jax.Array, r_rejected: jax.Array, weight: jax.Array,
                       denominator, *, center_coef: float = 0.0) -> tuple[jax.Array, dict]:
  """Bradley-Terry negative log-likelihood, normalised by a global denominator.

  Args:
    r_chosen: [B] float32 scores of the preferred responses.
    r_rejected: [B] float32 scores of the other responses.
    weight: [B] float weights (1 = real pair, 0 = padding).
    denominator: scalar > 0, the total weight of the optimizer batch.
    center_coef: weight of the (r_chosen + r_rejected)^2 centering term (0 = off).
  Returns:
    (loss scalar, metrics {"bt_loss", "accuracy", "margin", "reward_mean"}), all sums / D so
    they add up exactly over micro-batches; accuracy counts r_chosen > r_rejected.
  """
  w = weight.astype(jnp.float32)
  margin = r_chosen.astype(jnp.float32) - r_rejected.astype(jnp.float32)
  # -log sigmoid(m) = softplus(-m): stable for large |m|.
  nll = jnp.sum(w * jax.nn.softplus(-margin)) / denominator
  loss = nll
  if center_coef:
    loss = loss + center_coef * jnp.sum(w * jnp.square(r_chosen + r_rejected)) / denominator
  metrics = {"bt_loss": nll,
             "accuracy": jnp.sum(w * (margin > 0)) / denominator,
             "margin": jnp.sum(w * margin) / denominator,
             "reward_mean": jnp.sum(w * 0.5 * (r_chosen + r_rejected)) / denominator}
  return loss, metrics


def pair_scores(params, cfg: ModelConfig, mb: dict, *, remat: bool = False
                ) -> tuple[jax.Array, jax.Array]:
  """(r_chosen [B], r_rejected [B]) of a batch, in one forward over the 2B sequences."""
  B = mb["chosen_tokens"].shape[0]
  tokens = jnp.concatenate([mb["chosen_tokens"], mb["rejected_tokens"]], axis=0)
  lengths = jnp.concatenate([mb["chosen_lengths"], mb["rejected_lengths"]], axis=0)
  r = rm_lib.score(params, cfg, tokens, lengths, remat=remat)
  return r[:B], r[B:]


def make_loss_fn(cfg: ModelConfig, *, remat: bool = False, center_coef: float = 0.0
                 ) -> Callable:
  """`(params, micro_batch, denominator) -> (loss, metrics)` for `train.trainer.Trainer`.

  The micro-batch holds BATCH_KEYS: {chosen,rejected}_tokens [B, T] int32,
  {chosen,rejected}_lengths [B] int32, weight [B] float32
  (r1jax.data.preference_data.build_pair_batch).
  """
  def loss_fn(params, mb, denominator):
    rc, rr = pair_scores(params, cfg, mb, remat=remat)
    return bradley_terry_loss(rc, rr, mb["weight"], denominator, center_coef=center_coef)
  return loss_fn


def loss_denominator(batch: dict) -> float:
  """Global denominator of a (host) batch: the number of real pairs (at least 1)."""
  return max(float(batch["weight"].sum()), 1.0)
