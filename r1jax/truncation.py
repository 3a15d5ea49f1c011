"""Top-k and top-p (nucleus) truncation of next-token distributions, without a selection
over the whole vocabulary.

`top_k_values` equals lax.top_k(x, k)[0] through block maxima (the bin-maximum partition of
Chern et al. 2022, "TPU-KNN", made exact); `top_p_cutoff` is the nucleus of Holtzman et
al. 2020 ("The Curious Case of Neural Text Degeneration"), exact: the candidate path sorts
the top candidates only, and rows with a wider nucleus use a binary search over the
float32 logits' int32 keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def top_k_values(x: jax.Array, k: int, block: int = 32) -> jax.Array:
  """The k largest entries of x [..., V] in descending order: equal to lax.top_k(x, k)[0].

  Two levels instead of a selection over all V entries: the maximum of each block of
  `block` entries (one cheap pass), lax.top_k over those V / block maxima, then lax.top_k
  over the k * block entries of the k chosen blocks. Exact: an entry outside the chosen
  blocks lies in a block whose maximum is <= each of the k chosen maxima, i.e. below k
  distinct entries, so it is not among the k largest (the bin-maximum partition of Chern
  et al. 2022, "TPU-KNN", made exact by re-ranking the whole chosen bins). lax.approx_max_k
  (that paper's TPU kernel) is not used: its recall is below 1, which would change samples.

  Args:
    x: [..., V] float array (-inf allowed).
    k: how many values, 1 <= k <= V.
    block: entries per block (static).

  Returns:
    [..., k] values, descending, the same dtype as x.
  """
  V = x.shape[-1]
  if k * block >= V:  # no saving: one selection over V
    return jax.lax.top_k(x, k)[0]
  nb = -(-V // block)
  if nb * block != V:
    pad = [(0, 0)] * (x.ndim - 1) + [(0, nb * block - V)]
    x = jnp.pad(x, pad, constant_values=-jnp.inf)
  blocks = x.reshape(*x.shape[:-1], nb, block)
  _, chosen = jax.lax.top_k(jnp.max(blocks, axis=-1), k)  # [..., k]
  cand = jnp.take_along_axis(blocks, chosen[..., None], axis=-2)  # [..., k, block]
  return jax.lax.top_k(cand.reshape(*x.shape[:-1], k * block), k)[0]


def _ordered_key(x: jax.Array) -> jax.Array:
  """int32 keys with the order of the float32 values x (-0.0 just below +0.0)."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
  return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _from_ordered_key(k: jax.Array) -> jax.Array:
  """Inverse of `_ordered_key`."""
  return jax.lax.bitcast_convert_type(jnp.where(k < 0, k ^ jnp.int32(0x7FFFFFFF), k),
                                      jnp.float32)


def top_p_cutoff(logits: jax.Array, top_p: float, candidates: int = 256,
                 bisection_steps: int = 32) -> jax.Array:
  """Smallest logit kept by nucleus sampling: the smallest prefix of the distribution sorted
  by probability whose mass reaches top_p (the most likely token always survives; tokens
  tied with the last one kept are kept too).

  A full sort of the vocabulary costs ~1.7 s per step for 200 rows of 49k on a CPU, and
  lax.top_k(256) over the whole vocabulary still dominates this function (with
  `top_k_values` instead it took less than half the time for 32 rows of 49k on a 2-core
  CPU), so:
  the top `candidates` logits (`top_k_values`: block maxima, then a selection over the
  chosen blocks only) decide every row whose nucleus lies among them; rows with a wider
  nucleus are resolved by an exact bisection on the logit threshold (each step one masked
  sum over V; at most 32 steps, a binary search over the float32 values' int32 keys), run
  only when some row needs it. Sorting-free samplers (FlashInfer's) draw by
  rejection instead, which gives other samples for the same random numbers; this keeps
  the draw of `categorical` unchanged.

  Args:
    logits: [..., V] float32 (already temperature-scaled, -inf for excluded tokens).
    top_p: nucleus mass in (0, 1).
    candidates: logits examined by the sorted path (static).
    bisection_steps: at most this many bisection steps (<= 32 are ever needed: each halves
      a range of int32 keys).

  Returns:
    [..., 1] float32 cutoff: keep tokens with logit >= cutoff.
  """
  V = logits.shape[-1]
  K = min(candidates, V)
  lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  vals = top_k_values(logits, K)  # descending
  pk = jnp.exp(vals - lse)
  keep = (jnp.cumsum(pk, axis=-1) - pk) < top_p
  cutoff = jnp.min(jnp.where(keep, vals, jnp.inf), axis=-1, keepdims=True)
  covered = jnp.sum(pk, axis=-1, keepdims=True) >= top_p

  def bisect():
    # The cutoff is the largest logit c with mass(logits >= c) >= top_p. Binary search on
    # the order-preserving int32 keys of the float32 logits, so it ends on a logit exactly:
    # invariant mass(key >= lo) >= top_p > mass(key >= hi); done when hi == lo + 1.
    p = jnp.exp(logits - lse)
    keys = _ordered_key(logits)
    mass = lambda k: jnp.sum(jnp.where(keys >= k, p, 0.0), axis=-1, keepdims=True)
    top = jnp.max(logits, axis=-1, keepdims=True)
    hi = _ordered_key(top)
    at_top = mass(hi) >= top_p  # the most likely token(s) alone reach top_p
    # Tokens below lse + log((1 - top_p) / V) hold < 1 - top_p in all: mass above >= top_p
    # (1 nat lower still, a margin for float32 rounding of the sums).
    lo = _ordered_key(lse + float(np.log1p(-top_p) - np.log(V)) - 1.0)
    lo = jnp.where(covered | at_top, hi - 1, jnp.minimum(lo, hi - 1))  # nothing to search

    def body(carry):
      i, lo, hi = carry
      mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
      ok = mass(mid) >= top_p
      return i + 1, jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    cond = lambda c: (c[0] < bisection_steps) & jnp.any(c[1] + 1 < c[2])
    _, lo, _ = jax.lax.while_loop(cond, body, (0, lo, hi))
    return jnp.where(covered, cutoff, jnp.where(at_top, top, _from_ordered_key(lo)))

  return jax.lax.cond(jnp.all(covered), lambda: cutoff, bisect)
