"""Mosaic (TPU) Pallas backward of the fused log-prob: two kernels in the manner of
FlashAttention-2's backward (Dao 2023), each recomputing its logits tile on chip from the
saved logsumexp and accumulating one float32 output tile in VMEM, written once.

  d hidden: grid (token tiles i "parallel", vocabulary tiles j "arbitrary"); the
            [bn, D] float32 accumulator lives across j.
  d W:      grid (vocabulary tiles j "parallel", token tiles i "arbitrary"); the
            [D, bv] float32 accumulator lives across i.

Each computes, for its [bn, bv] tile, l = h W / T, p = exp(l - lse) and

    d l = (g_lp (1[j = y] - p) - g_H p (l - E[l])) / T        (E[l] = lse - H)

(r1jax/kernels/logprob_xla.py derives it), casts d l to the compute dtype and adds
d l W^T (d hidden) or h^T d l (d W). That is 2 + 2 matmul-sized products, one more than a
single kernel with atomics, and no [D, V] read-modify-write traffic. Columns past the
vocabulary in the partial last tile are zeroed in W and in d l (their block contents are
unspecified). Optional gradient filtering (Cut Cross-Entropy, Wijmans et al. 2024): a tile
whose |d l| are all below `grad_filter` skips its accumulation (off when 0).

Statistics enter as [N, 1] float32 columns (one tiny block per token tile); D is padded to a
multiple of 128 once, outside the kernels (zero rows change no product).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from r1jax.kernels import logprob_tpu as fwd_tpu

_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b


def _dlogits(y_ref, h_ref, w_ref, st_ref, j, *, vocab, block_vocab, inv_t, mask_cols):
  """(d logits [bn, bv] float32, W tile with columns past V zeroed)."""
  w = w_ref[...]
  col = j * block_vocab + jax.lax.broadcasted_iota(jnp.int32, (1, w.shape[1]), 1)
  if mask_cols:
    w = jnp.where(col < vocab, w, jnp.zeros_like(w))
  lg = jnp.dot(h_ref[...], w, preferred_element_type=jnp.float32) * inv_t
  st = st_ref[...]  # [bn, 4]: lse, E[l], g_lp, g_H
  lse, mean_l, g_lp, g_ent = (st[:, k:k + 1] for k in range(4))
  p = jnp.exp(lg - lse)
  hit = col == y_ref[...]
  dl = (jnp.where(hit, g_lp, 0.0) - p * (g_lp + g_ent * (lg - mean_l))) * inv_t
  if mask_cols:
    dl = jnp.where(col < vocab, dl, 0.0)
  return dl, w


def _maybe(add, dl, grad_filter):
  """add() unless gradient filtering is on and every |d l| of the tile is below it."""
  if grad_filter <= 0:
    add()
  else:
    pl.when(jnp.max(jnp.abs(dl)) >= grad_filter)(add)


def _dh_kernel(y_ref, h_ref, w_ref, st_ref, dh_ref, acc, **kw):
  j = pl.program_id(1)
  grad_filter = kw.pop("grad_filter")

  @pl.when(j == 0)
  def _init():
    acc[...] = jnp.zeros(acc.shape, jnp.float32)

  dl, w = _dlogits(y_ref, h_ref, w_ref, st_ref, j, **kw)

  def _add():
    acc[...] += jax.lax.dot_general(dl.astype(w.dtype), w, _NT,
                                    preferred_element_type=jnp.float32)
  _maybe(_add, dl, grad_filter)

  @pl.when(j == pl.num_programs(1) - 1)
  def _write():
    dh_ref[...] = acc[...]


def _dw_kernel(y_ref, h_ref, w_ref, st_ref, dw_ref, acc, **kw):
  i, j = pl.program_id(1), pl.program_id(0)
  grad_filter = kw.pop("grad_filter")

  @pl.when(i == 0)
  def _init():
    acc[...] = jnp.zeros(acc.shape, jnp.float32)

  h = h_ref[...]
  dl, _ = _dlogits(y_ref, h_ref, w_ref, st_ref, j, **kw)

  def _add():
    acc[...] += jax.lax.dot_general(h, dl.astype(h.dtype), _TN,
                                    preferred_element_type=jnp.float32)
  _maybe(_add, dl, grad_filter)

  @pl.when(i == pl.num_programs(1) - 1)
  def _write():
    dw_ref[...] = acc[...]


@functools.partial(jax.jit, static_argnames=("temperature", "block_tokens", "block_vocab",
                                             "grad_filter", "interpret"))
def backward(hidden, lm_head, targets, lse, mean_logit, g_logp, g_entropy, *,
             temperature: float = 1.0, block_tokens: int = 0, block_vocab: int = 0,
             grad_filter: float = 0.0, interpret: bool = False):
  """(d hidden [N, D] float32, d lm_head [D, V] float32) of sum g_logp log p + g_entropy H.

  Args:
    hidden: [N, D]; lm_head: [D, V] of the same dtype; targets: [N] int32 columns of this
      head slice (outside [0, V): no target term).
    lse, mean_logit: [N] float32 logsumexp and E_p[l] = lse - H over the whole vocabulary
      (from the forward); g_logp, g_entropy: [N] float32 cotangents.
    temperature: > 0. block_tokens / block_vocab: tiles (multiples of 8 / 128; 0 = the
      forward's per-chip default). grad_filter: >= 0 (0 = off).
    interpret: TPU interpret mode (CPU tests).

  Raises:
    ValueError: tiles that break Mosaic's (8, 128) tiling.
  """
  N, D = hidden.shape
  V = lm_head.shape[1]
  bn, bv = fwd_tpu.tiles(N, V, block_tokens, block_vocab)
  hidden, lm_head, Dp = fwd_tpu.pad_hidden(hidden, lm_head)
  n_tiles, v_tiles = pl.cdiv(N, bn), pl.cdiv(V, bv)
  Np = n_tiles * bn
  pad = lambda x: jnp.pad(x, ((0, Np - N),) + ((0, 0),) * (x.ndim - 1))
  # Padded tokens: zero cotangents, hence zero d logits.
  stats = pad(jnp.stack([lse, mean_logit, g_logp, g_entropy], axis=1).astype(jnp.float32))
  y = pad(targets.astype(jnp.int32)[:, None])
  h = pad(hidden)
  kw = dict(vocab=V, block_vocab=bv, inv_t=1.0 / temperature, mask_cols=V % bv != 0,
            grad_filter=float(grad_filter))
  itemsize = hidden.dtype.itemsize
  vmem = 2 * (bn * Dp + Dp * bv) * itemsize + 6 * bn * bv * 4 + bn * Dp * 4 + Dp * bv * 4
  params = lambda: pltpu.CompilerParams(
      dimension_semantics=("parallel", "arbitrary"),
      vmem_limit_bytes=int(min(max(2 * vmem, 32 << 20), 100 << 20)))
  flops = 4 * Np * Dp * V
  row = lambda f: pl.BlockSpec((bn, 1), f)
  dh = pl.pallas_call(
      functools.partial(_dh_kernel, **kw),
      out_shape=jax.ShapeDtypeStruct((Np, Dp), jnp.float32),
      grid=(n_tiles, v_tiles),
      in_specs=[row(lambda i, j: (i, 0)), pl.BlockSpec((bn, Dp), lambda i, j: (i, 0)),
                pl.BlockSpec((Dp, bv), lambda i, j: (0, j)),
                pl.BlockSpec((bn, 4), lambda i, j: (i, 0))],
      out_specs=pl.BlockSpec((bn, Dp), lambda i, j: (i, 0)),
      scratch_shapes=[pltpu.VMEM((bn, Dp), jnp.float32)],
      compiler_params=params(),
      cost_estimate=pl.CostEstimate(flops=flops, transcendentals=Np * V,
                                    bytes_accessed=n_tiles * Dp * V * itemsize),
      interpret=interpret, name="fused_logprob_bwd_dh",
  )(y, h, lm_head, stats)
  dw = pl.pallas_call(
      functools.partial(_dw_kernel, **kw),
      out_shape=jax.ShapeDtypeStruct((Dp, V), jnp.float32),
      grid=(v_tiles, n_tiles),
      in_specs=[row(lambda j, i: (i, 0)), pl.BlockSpec((bn, Dp), lambda j, i: (i, 0)),
                pl.BlockSpec((Dp, bv), lambda j, i: (0, j)),
                pl.BlockSpec((bn, 4), lambda j, i: (i, 0))],
      out_specs=pl.BlockSpec((Dp, bv), lambda j, i: (0, j)),
      scratch_shapes=[pltpu.VMEM((Dp, bv), jnp.float32)],
      compiler_params=params(),
      cost_estimate=pl.CostEstimate(flops=flops, transcendentals=Np * V,
                                    bytes_accessed=v_tiles * Np * Dp * itemsize),
      interpret=interpret, name="fused_logprob_bwd_dw",
  )(y, h, lm_head, stats)
  return dh[:N, :D], dw[:D]
