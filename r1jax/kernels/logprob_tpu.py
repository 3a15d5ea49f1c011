"""Mosaic (TPU) Pallas forward of the fused log-prob: online logsumexp over vocabulary tiles.

Grid (token tiles i, vocabulary tiles j). Axis i is "parallel" (megacore-shardable), axis j
"arbitrary": the same output block is revisited for every j while four [bn, 1] float32
statistics live in VMEM scratch (running max m, rescaled sum s = sum exp(l - m),
u = sum exp(l - m) * (l - m) for the entropy, and the target logit t). A hidden block [bn, D]
keeps its block index across j, so Pallas fetches it once per token tile while lm_head
blocks [D, bv] stream through double-buffered VMEM. At the last j the kernel writes
lse = m + log s, logp = t - lse and entropy = log s - u / s.

Block shapes follow Mosaic's rules: bn is a multiple of 8, bv of 128, D is the full
dimension. Tokens are padded to a multiple of bn (cheap: [N, D]); the last vocabulary tile
may be partial (its out-of-range columns hold unspecified values and are masked to -inf,
never read as data). The backward pass is the token-chunked recompute in r1jax/kernels/logprob.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

DEFAULT_BLOCK_TOKENS = 256
DEFAULT_BLOCK_VOCAB = 512


def _kernel(y_ref, h_ref, w_ref, lse_ref, ent_ref, tgt_ref, m_sc, s_sc, u_sc, t_sc, *,
            vocab: int, block_vocab: int, inv_temperature: float):
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
    s_sc[...] = jnp.zeros(s_sc.shape, jnp.float32)
    u_sc[...] = jnp.zeros(u_sc.shape, jnp.float32)
    t_sc[...] = jnp.zeros(t_sc.shape, jnp.float32)

  logits = jnp.dot(h_ref[...], w_ref[...], preferred_element_type=jnp.float32)
  logits = logits * inv_temperature  # [bn, bv]
  col = j * block_vocab + jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
  valid = col < vocab
  logits = jnp.where(valid, logits, -jnp.inf)
  hit = (col == y_ref[...]) & valid  # targets outside this head slice never hit
  t_sc[...] += jnp.sum(jnp.where(hit, logits, 0.0), axis=1, keepdims=True)
  m_prev = m_sc[...]
  m_new = jnp.maximum(m_prev, jnp.max(logits, axis=1, keepdims=True))
  alpha = jnp.exp(m_prev - m_new)  # exp(-inf) = 0 on the first tile
  e = jnp.exp(logits - m_new)  # 0 on masked columns
  s_prev = s_sc[...]
  s_sc[...] = alpha * s_prev + jnp.sum(e, axis=1, keepdims=True)
  # u is relative to the running max: moving m_prev -> m_new adds (m_prev - m_new) per
  # unit of mass (guarded on the first tile, where it is -inf * 0). where(): masked
  # columns are -inf, and 0 * -inf is NaN.
  shift = jnp.where(s_prev > 0, (m_prev - m_new) * s_prev, 0.0)
  u_sc[...] = alpha * (u_sc[...] + shift) + jnp.sum(
      e * jnp.where(valid, logits - m_new, 0.0), axis=1, keepdims=True)
  m_sc[...] = m_new

  @pl.when(j == pl.num_programs(1) - 1)
  def _finish():
    s = s_sc[...]
    lse = m_sc[...] + jnp.log(s)
    lse_ref[...] = lse
    tgt_ref[...] = t_sc[...]
    ent_ref[...] = jnp.log(s) - u_sc[...] / s


def _vmem_bytes(bn, bv, D, itemsize):
  blocks = 2 * (bn * D + D * bv) * itemsize  # double-buffered inputs
  temps = 4 * bn * bv * 4  # logits and a few elementwise temporaries, float32
  return blocks + temps + 8 * bn * 128 * 4


@functools.partial(jax.jit, static_argnames=("temperature", "block_tokens", "block_vocab",
                                             "interpret"))
def forward(hidden: jax.Array, lm_head: jax.Array, targets: jax.Array, *,
            temperature: float = 1.0, block_tokens: int = 0, block_vocab: int = 0,
            interpret: bool = False):
  """Partial statistics (lse, entropy, target logit), each [N] float32, of
  softmax(hidden @ lm_head / temperature) over this head slice (r1jax/kernels/
  logprob_layout.py); log p = tgt - lse when the slice is the whole vocabulary.

  Args:
    hidden: [N, D]; lm_head: [D, V] of the same dtype; targets: [N] int32 columns of the
      slice (outside [0, V): target logit 0).
    temperature: > 0.
    block_tokens: bn, a multiple of 8 (0 = 256). block_vocab: bv, a multiple of 128
      (0 = 512).
    interpret: run in the TPU interpret mode (on CPU, for tests).

  Raises:
    ValueError: block sizes that break Mosaic's (8, 128) tiling.
  """
  N, D = hidden.shape
  V = lm_head.shape[1]
  bn = block_tokens or min(DEFAULT_BLOCK_TOKENS, pl.cdiv(N, 8) * 8)
  bv = block_vocab or min(DEFAULT_BLOCK_VOCAB, pl.cdiv(V, 128) * 128)
  if bn % 8 or bv % 128:
    raise ValueError(f"TPU tiles must be multiples of (8, 128), got ({bn}, {bv})")
  n_tiles = pl.cdiv(N, bn)
  Np = n_tiles * bn
  if Np != N:
    hidden = jnp.pad(hidden, ((0, Np - N), (0, 0)))
    targets = jnp.pad(targets, (0, Np - N))
  y = targets.astype(jnp.int32).reshape(Np, 1)
  kernel = functools.partial(_kernel, vocab=V, block_vocab=bv,
                             inv_temperature=1.0 / temperature)
  stat = jax.ShapeDtypeStruct((Np, 1), jnp.float32)
  stat_spec = pl.BlockSpec((bn, 1), lambda i, j: (i, 0))
  vmem = _vmem_bytes(bn, bv, D, hidden.dtype.itemsize)
  lse, ent, tgt = pl.pallas_call(
      kernel,
      out_shape=(stat, stat, stat),
      grid=(n_tiles, pl.cdiv(V, bv)),
      in_specs=[pl.BlockSpec((bn, 1), lambda i, j: (i, 0)),
                pl.BlockSpec((bn, D), lambda i, j: (i, 0)),
                pl.BlockSpec((D, bv), lambda i, j: (0, j))],
      out_specs=(stat_spec, stat_spec, stat_spec),
      scratch_shapes=[pltpu.VMEM((bn, 1), jnp.float32) for _ in range(4)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "arbitrary"),
          vmem_limit_bytes=int(min(max(2 * vmem, 32 << 20), 100 << 20))),
      cost_estimate=pl.CostEstimate(flops=2 * Np * D * V, transcendentals=Np * V,
                                    bytes_accessed=(n_tiles * D * V + Np * D) *
                                    hidden.dtype.itemsize),
      # Plain interpret mode: pltpu.InterpretParams simulates devices with threads and
      # barriers, which deadlocks under shard_map on many fake CPU devices.
      interpret=interpret,
      name="fused_logprob_fwd",
  )(y, hidden, lm_head)
  return lse[:N, 0], ent[:N, 0], tgt[:N, 0]
