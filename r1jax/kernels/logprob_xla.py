"""Pure-JAX (XLA) pieces of the fused log-prob: the naive reference, and the forward and
backward of one vocabulary chunk looped over token chunks (the `chunked` implementation
and the fallback backward; r1jax/kernels/logprob.py streams the chunks).

A vocabulary chunk is a [D, Vc] slice of the head. Within it the tokens go C at a time,
so the largest temporaries are [C, Vc] float32 logits, probabilities and d logits. The
backward accumulates the chunk's d W [D, Vc] in the loop carry (float32) and returns it
once, and adds d hidden to a float32 [n, D] accumulator row block by row block.

Backward of log p = l_y - lse and H = lse - E_p[l] with respect to the logits l (p =
softmax(l), E_p[l] = lse - H), for cotangents g_lp and g_H:

    d l_j = g_lp (1[j = y] - p_j) - g_H p_j (l_j - E_p[l]),

and the logits are h W / T, so d h = d l W^T / T and d W = h^T d l / T.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def logits(h: jax.Array, w: jax.Array, temperature: float) -> jax.Array:
  """[C, D] x [D, V] -> [C, V] float32 logits / T; products in h's dtype."""
  return jnp.dot(h, w.astype(h.dtype), preferred_element_type=jnp.float32) / temperature


def naive(h, w, y, temperature):
  """(logp, entropy) [N] float32 from the full [N, V] log_softmax (reference; autodiff)."""
  logsm = jax.nn.log_softmax(logits(h, w, temperature), axis=-1)
  logp = jnp.take_along_axis(logsm, y[:, None], axis=-1)[:, 0]
  return logp, -jnp.sum(jnp.exp(logsm) * logsm, axis=-1)


def pad_rows(x: jax.Array, n: int, value=0) -> jax.Array:
  pad = n - x.shape[0]
  if pad == 0:
    return x
  return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=value)


def token_blocks(n: int, chunk: int) -> tuple[int, int]:
  """(C, number of chunks) for n tokens in chunks of at most `chunk`."""
  c = max(1, min(chunk, n))
  return c, -(-n // c)


def as_blocks(x: jax.Array, c: int, k: int, value=0) -> jax.Array:
  """[n, ...] -> [k, c, ...], padded with `value`."""
  return pad_rows(x, k * c, value).reshape(k, c, *x.shape[1:])


def tile_stats(lg: jax.Array, y: jax.Array):
  """(lse, ent, tgt) [C] of a [C, Vc] float32 logits tile; y: [C] column ids of the
  targets in this tile (outside [0, Vc): tgt = 0)."""
  lse = jax.nn.logsumexp(lg, axis=-1)
  hit = jax.lax.broadcasted_iota(jnp.int32, lg.shape, 1) == y[:, None]
  tgt = jnp.sum(jnp.where(hit, lg, 0.0), axis=-1)
  # H = sum p (lse - l): every term >= 0 (lse - E[l] would cancel for peaked logits).
  ent = jnp.sum(jnp.exp(lg - lse[:, None]) * (lse[:, None] - lg), axis=-1)
  return lse, ent, tgt


def chunk_forward(hs: jax.Array, w: jax.Array, ys: jax.Array, temperature: float):
  """Partial statistics of one vocabulary chunk.

  Args:
    hs: [k, C, D] hidden states in token blocks (compute dtype); w: [D, Vc] in the same
      dtype; ys: [k, C] int32 target columns relative to the chunk.

  Returns:
    (lse, ent, tgt), each [k, C] float32 (see logprob_layout).
  """
  return jax.lax.map(lambda a: tile_stats(logits(a[0], w, temperature), a[1]), (hs, ys))


def dlogits(lg, y, lse, mean_l, g_lp, g_ent, temperature):
  """d loss / d (h W) of a [C, Vc] float32 logits tile (1/T included), float32."""
  p = jnp.exp(lg - lse[:, None])
  hit = jax.lax.broadcasted_iota(jnp.int32, lg.shape, 1) == y[:, None]
  dl = jnp.where(hit, g_lp[:, None], 0.0) - p * (g_lp[:, None] + g_ent[:, None] *
                                                  (lg - mean_l[:, None]))
  return dl / temperature


def chunk_backward(hs, w, ys, lse, mean_l, g_lp, g_ent, dh, temperature: float):
  """d hidden added to `dh` and d W of one vocabulary chunk.

  Args:
    hs: [k, C, D] (compute dtype); w: [D, Vc] (same dtype); ys: [k, C] int32 target
      columns relative to the chunk; lse, mean_l (= lse - entropy), g_lp, g_ent: [k, C]
      float32 over the whole vocabulary (padded rows: zero cotangents); dh: [k, C, D]
      float32 accumulator.

  Returns:
    (dh + this chunk's d hidden [k, C, D] float32, d W [D, Vc] float32).
  """
  dt = hs.dtype

  def body(dw, x):
    hc, yc, lc, mc, gl, ge, dhc = x
    dl = dlogits(logits(hc, w, temperature), yc, lc, mc, gl, ge, temperature).astype(dt)
    dhc = dhc + jnp.dot(dl, w.T, preferred_element_type=jnp.float32)
    return dw + jnp.dot(hc.T, dl, preferred_element_type=jnp.float32), dhc

  dw0 = jnp.zeros((hs.shape[2], w.shape[1]), jnp.float32)
  dw, dh = jax.lax.scan(body, dw0, (hs, ys, lse, mean_l, g_lp, g_ent, dh))
  return dh, dw
