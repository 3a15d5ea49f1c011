"""Logit distillation: per-token KL(teacher || student), mixed with the SFT NLL.

R1 distils by SFT of the student on teacher samples (DeepSeek-R1, section 2.4;
configs/distill.py, plain SFT). When the
student shares the teacher's tokenizer, the teacher's whole next-token distribution can be
matched as well (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network",
eq. 1 and section 2):

    KL_T(t)  = sum_v p_t(v) * (log p_t(v) - log p_s(v)),   p = softmax(logits / T)
    L        = (1 - alpha) * NLL + alpha * T^2 * sum_t w_t KL_T(t) / D

with w the response-token mask and D the global denominator of the SFT loss (response tokens
of the optimizer batch), so micro-batches add up exactly. T^2 keeps the gradient scale of the
soft term independent of T (Hinton et al., section 2). The NLL term is the SFT loss at T = 1
(r1jax.losses.sft, through kernels.logprob).

`token_kl` never builds [N, V] logits for all tokens: it maps over chunks of C tokens (full
vocabulary per chunk, like the `chunked` impl of r1jax/kernels/logprob.py) with `jax.checkpoint` on
each chunk, so the backward pass keeps only the chunk inputs and recomputes the [C, V]
logits; memory ~ C x V floats plus d W. The teacher is under `stop_gradient`.

The teacher params enter the jitted update as an argument (not a closure: jit would bake
closed-over arrays into the executable as constants): the loss takes them as its 4th argument,
the frozen params of `r1jax.train.trainer.Trainer(frozen_axes=...)`.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from r1jax.kernels.logprob import token_logprobs
from r1jax import models
from r1jax.losses import sft as sft_lib
from r1jax.models.config import ModelConfig


def _logits(h, w, temperature):
  """[C, D] x [D, V] -> [C, V] float32 logits / T (inputs in their common dtype)."""
  dt = jnp.promote_types(h.dtype, w.dtype)
  return jnp.dot(h.astype(dt), w.astype(dt), preferred_element_type=jnp.float32) / temperature


def _pad_rows(x, n):
  pad = n - x.shape[0]
  return x if pad == 0 else jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))


def token_kl(student_hidden: jax.Array, student_head: jax.Array, teacher_hidden: jax.Array,
             teacher_head: jax.Array, *, temperature: float = 1.0, chunk_size: int = 256,
             mask: Optional[jax.Array] = None) -> jax.Array:
  """Per-token KL(teacher || student) of the temperature-scaled next-token distributions.

  KL_i = sum_v p_t(v) (log p_t(v) - log p_s(v)), p = softmax(h @ W / T) (Hinton et al. 2015).

  Args:
    student_hidden: [N, Ds] final hidden states of the student (any float dtype).
    student_head: [Ds, V] student LM head.
    teacher_hidden: [N, Dt] final hidden states of the teacher (no gradient flows to it).
    teacher_head: [Dt, V] teacher LM head (same V; no gradient).
    temperature: T > 0, divides both models' logits.
    chunk_size: tokens per chunk (memory ~ chunk_size x V float32 per model).
    mask: optional [N] bool/float; tokens with mask == 0 give 0 and no gradient.

  Returns:
    [N] float32 KL per token (>= 0 up to rounding), differentiable w.r.t. the student's
    hidden states and head.

  Raises:
    ValueError: shapes that do not match (in particular different vocabularies),
      temperature <= 0, chunk_size < 1.
  """
  if student_hidden.ndim != 2 or teacher_hidden.ndim != 2:
    raise ValueError(f"expected hidden states [N, D]; got {student_hidden.shape}, "
                     f"{teacher_hidden.shape}")
  N = student_hidden.shape[0]
  if teacher_hidden.shape[0] != N:
    raise ValueError(f"student and teacher hidden states have {N} and "
                     f"{teacher_hidden.shape[0]} tokens")
  if student_head.shape[0] != student_hidden.shape[1] or \
     teacher_head.shape[0] != teacher_hidden.shape[1]:
    raise ValueError(f"LM heads {student_head.shape} / {teacher_head.shape} do not match the "
                     f"hidden sizes {student_hidden.shape[1]} / {teacher_hidden.shape[1]}")
  if student_head.shape[1] != teacher_head.shape[1]:
    raise ValueError(f"vocabulary sizes differ: student {student_head.shape[1]}, teacher "
                     f"{teacher_head.shape[1]}; logit distillation needs a shared tokenizer")
  if mask is not None and mask.shape != (N,):
    raise ValueError(f"mask must have shape ({N},), got {mask.shape}")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  teacher_hidden = jax.lax.stop_gradient(teacher_hidden)
  teacher_head = jax.lax.stop_gradient(teacher_head)
  T = float(temperature)
  C = min(int(chunk_size), N)
  n = -(-N // C)
  hs = _pad_rows(student_hidden, n * C).reshape(n, C, -1)
  ht = _pad_rows(teacher_hidden, n * C).reshape(n, C, -1)

  # checkpoint: the backward recomputes the chunk's [C, V] logits instead of storing
  # [n, C, V] residuals, i.e. all N x V of them.
  @jax.checkpoint
  def chunk(h_s, h_t, w_s, w_t):
    logp_s = jax.nn.log_softmax(_logits(h_s, w_s, T), axis=-1)
    logp_t = jax.nn.log_softmax(_logits(h_t, w_t, T), axis=-1)
    return jnp.sum(jnp.exp(logp_t) * (logp_t - logp_s), axis=-1)

  kl = jax.lax.map(lambda a: chunk(a[0], a[1], student_head, teacher_head), (hs, ht))
  kl = kl.reshape(n * C)[:N]
  if mask is not None:
    kl = jnp.where(mask > 0, kl, 0.0)
  return kl


def distill_loss(nll: jax.Array, kl: jax.Array, loss_mask: jax.Array, denominator, *,
                 alpha: float, temperature: float) -> tuple[jax.Array, dict]:
  """(1 - alpha) * NLL + alpha * T^2 * masked KL sum / D (Hinton et al. 2015, section 2).

  Args:
    nll: scalar, the SFT loss of the micro-batch (already divided by D).
    kl: [B, T] float32 per-token KL(teacher || student) at temperature T.
    loss_mask: [B, T] float weights (1 on response tokens).
    denominator: scalar D, the total weight of the optimizer batch.
    alpha: weight of the distillation term in [0, 1].
    temperature: T of `kl` (the term is scaled by T^2).

  Returns:
    (loss scalar, {"kl": masked KL sum / D}) (sums / D: exact over micro-batches).
  """
  w = loss_mask.astype(jnp.float32)
  kl_mean = jnp.sum(jnp.where(w > 0, kl * w, 0.0)) / denominator
  loss = (1.0 - alpha) * nll + alpha * temperature ** 2 * kl_mean
  return loss, {"kl": kl_mean}


def make_loss_fn(cfg: ModelConfig, teacher_cfg: ModelConfig, *, alpha: float,
                 temperature: float, chunk_size: int = 256, kernel: Optional[dict] = None,
                 remat: bool = False) -> Callable:
  """`(params, micro_batch, denominator, teacher_params) -> (loss, metrics)`.

  The student's NLL goes through kernels.logprob (as plain SFT); the KL through `token_kl`
  on the response tokens (loss_mask > 0). Metrics: nll, entropy, kl (sums / D).

  Args:
    cfg, teacher_cfg: student and teacher model configs (same vocab_size).
    alpha, temperature: the mixture (see `distill_loss`).
    chunk_size: tokens per chunk of `token_kl`.
    kernel, remat: as in r1jax.losses.sft.make_loss_fn (remat applies to the student).

  Raises:
    ValueError: the vocabularies differ (see `check_vocab`).
  """
  check_vocab(cfg, teacher_cfg)

  def loss_fn(params, mb, denominator, teacher_params):
    hidden = models.forward(params, cfg, mb["tokens"], mb["positions"], mb["segment_ids"],
                            remat=remat)
    w_s = models.lm_head_weight(params, cfg)
    logp, ent = token_logprobs(hidden, w_s, mb["targets"], **(kernel or {}))
    nll, metrics = sft_lib.sft_loss(logp, mb["loss_mask"], denominator,
                                    jax.lax.stop_gradient(ent))
    teacher_params = jax.lax.stop_gradient(teacher_params)
    h_t = models.forward(teacher_params, teacher_cfg, mb["tokens"], mb["positions"],
                         mb["segment_ids"])
    B, T, _ = hidden.shape
    kl = token_kl(hidden.reshape(B * T, -1), w_s, h_t.reshape(B * T, -1),
                  models.lm_head_weight(teacher_params, teacher_cfg), temperature=temperature,
                  chunk_size=chunk_size, mask=mb["loss_mask"].reshape(B * T))
    loss, m = distill_loss(nll, kl.reshape(B, T), mb["loss_mask"], denominator, alpha=alpha,
                           temperature=temperature)
    metrics.update(m)
    return loss, metrics
  return loss_fn


def check_vocab(cfg: ModelConfig, teacher_cfg: ModelConfig) -> None:
  """Raise ValueError unless student and teacher have the same vocabulary size."""
  if cfg.vocab_size != teacher_cfg.vocab_size:
    raise ValueError(f"distill.teacher has vocab_size={teacher_cfg.vocab_size} but the student "
                     f"has {cfg.vocab_size}: logit distillation needs a student that shares the "
                     f"teacher's tokenizer (set distill.teacher='' for SFT on teacher samples)")
