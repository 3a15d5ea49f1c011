"""A token-additive loss of the log-probs and entropies with its gradients formed in the
forward pass (the manner of Liger-Kernel's fused linear cross-entropy and fused linear
GRPO): no second pass over the vocabulary.

When the loss is a sum over tokens of terms that depend only on the token's own log-prob,
entropy and constants (GRPO with per-token ratios: old / reference log-probs, advantage,
weight), the cotangents g_lp = d loss / d logp_t and g_H = d loss / d H_t of a token are
known as soon as its full-vocabulary statistics are. So, for each chunk of C tokens, one
pass computes the [C, V] float32 logits (1 matmul), the statistics, the loss and its
per-token cotangents (jax.vjp of `loss_fn` on the chunk), d logits
(r1jax/kernels/logprob_xla.py), and adds d hidden = d l W^T and d W += h^T d l (2 more):
3 matmul-equivalents per token instead of 2 + 3 with a separate backward. The forward
saves d hidden [N, D] and d W [D, V] (float32) as residuals; the backward only scales them
by the scalar cotangent. Memory ~ C x V float32 (C tokens, the whole vocabulary).

Not for losses that couple tokens beyond the chunk (GSPO's sequence ratio): their per-token
cotangents are not local.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from r1jax.kernels import logprob_xla as xla


def _chunk(h, w, y, aux, loss_fn, temperature):
  """(loss, d hidden [C, D] float32, d W [D, V] float32, (logp [C], entropy [C]) float32)
  of one chunk of tokens."""
  lg = xla.logits(h, w, temperature)
  lse, ent, tgt = xla.tile_stats(lg, y)
  loss, vjp = jax.vjp(lambda lp, e: loss_fn(lp, e, aux), tgt - lse, ent)
  g_lp, g_ent = vjp(jnp.ones_like(loss))
  dl = xla.dlogits(lg, y, lse, lse - ent, g_lp.astype(jnp.float32),
                   g_ent.astype(jnp.float32), temperature).astype(h.dtype)
  dh = jnp.dot(dl, w.T, preferred_element_type=jnp.float32)
  dw = jnp.dot(h.T, dl, preferred_element_type=jnp.float32)
  return loss.astype(jnp.float32), dh, dw, (tgt - lse, ent)


def _loss_and_grads(h, w, y, aux, loss_fn, temperature, chunk_size):
  N, D = h.shape
  w = w.astype(h.dtype)
  C = max(1, min(chunk_size, N))
  k, rem = divmod(N, C)  # the remainder is one smaller chunk: no padded rows in loss_fn
  head = lambda x: x[:k * C].reshape(k, C, *x.shape[1:])
  run = functools.partial(_chunk, loss_fn=loss_fn, temperature=temperature)

  def body(carry, xs):
    total, dw = carry
    hc, yc, ac = xs
    loss, dh, dwc, stats = run(hc, w, yc, ac)
    return (total + loss, dw + dwc), (dh, stats)

  init = (jnp.zeros((), jnp.float32), jnp.zeros(w.shape, jnp.float32))
  (total, dw), (dh, stats) = jax.lax.scan(body, init,
                                          (head(h), head(y), jax.tree.map(head, aux)))
  dh = dh.reshape(k * C, D)
  stats = jax.tree.map(lambda x: x.reshape(k * C), stats)
  if rem:
    loss, dhr, dwr, sr = run(h[k * C:], w, y[k * C:], jax.tree.map(lambda x: x[k * C:], aux))
    total, dw, dh = total + loss, dw + dwr, jnp.concatenate([dh, dhr])
    stats = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), stats, sr)
  return total, dh, dw, stats


def fused_loss(hidden: jax.Array, lm_head: jax.Array, targets: jax.Array, aux: Any,
               loss_fn: Callable, *, temperature: float = 1.0,
               chunk_size: int = 256, with_stats: bool = False):
  """sum over token chunks of loss_fn(logp, entropy, aux), differentiable in hidden and
  lm_head, with the gradients formed in the forward pass.

  Args:
    hidden: [N, D] (compute dtype); lm_head: [D, V] (cast to hidden's dtype); targets: [N]
      int token ids.
    aux: a pytree of [N, ...] per-token constants (no gradient flows to them).
    loss_fn: (logp [C] float32, entropy [C] float32, aux chunk) -> scalar; the loss must
      be a sum of per-token terms (each chunk's value is added).
    temperature: logits are divided by it (> 0).
    chunk_size: tokens per chunk (memory ~ chunk_size x V float32).
    with_stats: also return the per-token statistics the loss saw (for metrics).

  Returns:
    The scalar float32 loss; its gradient is d hidden (hidden's dtype) and d lm_head
    (lm_head's dtype). With with_stats, (loss, (logp [N], entropy [N])) float32, the
    statistics carrying no gradient (cotangents sent to them are dropped).

  Raises:
    ValueError: shapes that do not match, temperature <= 0, chunk_size < 1.
  """
  if hidden.ndim != 2 or lm_head.shape[0] != hidden.shape[1] or targets.shape != (
      hidden.shape[0],):
    raise ValueError(f"expected hidden [N, D], lm_head [D, V], targets [N]; got "
                     f"{hidden.shape}, {lm_head.shape}, {targets.shape}")
  if not temperature > 0 or chunk_size < 1:
    raise ValueError(f"temperature must be > 0 and chunk_size >= 1, got {temperature}, "
                     f"{chunk_size}")
  aux = jax.tree.map(jax.lax.stop_gradient, aux)
  targets = targets.astype(jnp.int32)

  @jax.custom_vjp
  def f(h, w):
    total, _, _, stats = _loss_and_grads(h, w, targets, aux, loss_fn, temperature, chunk_size)
    return total, stats

  def fwd(h, w):
    total, dh, dw, stats = _loss_and_grads(h, w, targets, aux, loss_fn, temperature,
                                           chunk_size)
    return (total, stats), (dh, dw, jnp.zeros((), h.dtype), jnp.zeros((), w.dtype))

  def bwd(res, g):
    dh, dw, h0, w0 = res
    g = g[0]  # the statistics' cotangents are dropped (documented: no gradient)
    return (g * dh).astype(h0.dtype), (g * dw).astype(w0.dtype)

  f.defvjp(fwd, bwd)
  total, stats = f(hidden, lm_head)
  if with_stats:
    return total, jax.tree.map(jax.lax.stop_gradient, stats)
  return total
