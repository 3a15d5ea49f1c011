"""Triton (GPU) Pallas forward of the fused log-prob: programs over (token tile, vocabulary
split), each looping over its split's vocabulary tiles with an online logsumexp.

Program (i, s) owns bn tokens and V / S columns. For each vocabulary tile of bv columns it
accumulates the [bn, bv] logits over the hidden dimension in chunks of bd (Triton tensors
must have power-of-two shapes; hidden sizes such as 576 or 1536 are not), with
jnp.dot(..., preferred_element_type=float32), then updates four [bn] float32 statistics
held in registers: running max m, s = sum exp(l - m), u = sum exp(l - m) (l - m) (entropy)
and the target logit t. It writes the split's partial (lse, entropy, target logit); JAX
merges the S partials exactly (r1jax/kernels/logprob_layout.py). The splits make
n_tiles x S programs, enough to fill the GPU's SMs when a device holds few tokens (2,048
tokens in tiles of 64 are 32 programs for 132 SMs without them). Axis 0 (token tiles) is
launched fastest, so the programs that run together share one split's W columns in L2.
The vocabulary and hidden edges use masked loads (no padded copy of the [D, V] head);
tokens are padded to a multiple of bn (cheap: [N, D]).

Triton rather than Mosaic GPU: Mosaic GPU's warpgroup API targets Hopper and later only
and has changed between the JAX versions this project supports (0.10 and 0.12), while the
Triton lowering accepts the same kernel on both and on any CUDA GPU; neither could be
compiled or timed here (no GPU). The backward is r1jax/kernels/logprob_bwd_gpu.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from r1jax.kernels import logprob_layout as lay

DEFAULT_BLOCK_TOKENS = 64
DEFAULT_BLOCK_VOCAB = 128
BLOCK_HIDDEN = 64
SM_COUNT = 132  # H100 / H200 SXM streaming multiprocessors (programs to fill: 2 per SM)


def is_pow2(x: int) -> bool:
  return x > 0 and x & (x - 1) == 0


def _kernel(y_ref, h_ref, w_ref, lse_ref, ent_ref, tgt_ref, *, vocab: int, hidden: int,
            block_tokens: int, block_vocab: int, block_hidden: int, inv_temperature: float,
            tiles_per_split: int):
  bn, bv, bd = block_tokens, block_vocab, block_hidden
  y = y_ref[...]  # [bn]
  n_d = pl.cdiv(hidden, bd)
  d_edge = hidden % bd != 0  # static: only then are hidden-dimension masks needed
  split = pl.program_id(1)
  first = split * tiles_per_split
  last = jnp.minimum(first + tiles_per_split, pl.cdiv(vocab, bv))

  def logits_tile(j):
    cols = j * bv + jnp.arange(bv)
    vmask = cols < vocab

    def d_step(k, acc):
      rows = k * bd + jnp.arange(bd)
      if d_edge:
        dmask = rows < hidden
        hk = plgpu.load(h_ref.at[:, pl.ds(k * bd, bd)], mask=dmask[None, :], other=0.0)
        wk = plgpu.load(w_ref.at[pl.ds(k * bd, bd), pl.ds(j * bv, bv)],
                        mask=dmask[:, None] & vmask[None, :], other=0.0)
      else:
        hk = h_ref[:, pl.ds(k * bd, bd)]
        wk = plgpu.load(w_ref.at[pl.ds(k * bd, bd), pl.ds(j * bv, bv)],
                        mask=vmask[None, :], other=0.0)
      return acc + jnp.dot(hk, wk, preferred_element_type=jnp.float32)

    acc = jax.lax.fori_loop(0, n_d, d_step, jnp.zeros((bn, bv), jnp.float32))
    return acc * inv_temperature, cols, vmask

  def v_step(j, carry):
    m, s, u, t = carry
    logits, cols, vmask = logits_tile(j)
    logits = jnp.where(vmask[None, :], logits, -jnp.inf)
    hit = (cols[None, :] == y[:, None]) & vmask[None, :]
    t = t + jnp.sum(jnp.where(hit, logits, 0.0), axis=1)
    m_new = jnp.maximum(m, jnp.max(logits, axis=1))
    alpha = jnp.exp(m - m_new)
    e = jnp.exp(logits - m_new[:, None])
    # u is relative to the running max (see logprob_tpu.py); guarded on the first tile.
    shift = jnp.where(s > 0, (m - m_new) * s, 0.0)
    u = alpha * (u + shift) + jnp.sum(
        e * jnp.where(vmask[None, :], logits - m_new[:, None], 0.0), axis=1)
    s = alpha * s + jnp.sum(e, axis=1)
    return m_new, s, u, t

  zeros = jnp.zeros((bn,), jnp.float32)
  m, s, u, t = jax.lax.fori_loop(first, last, v_step, (zeros - jnp.inf, zeros, zeros, zeros))
  # A split past the vocabulary (s = 0) gives lse = -inf: merged as no mass.
  lse_ref[...] = (m + jnp.log(s))[None, :]
  tgt_ref[...] = t[None, :]
  ent_ref[...] = jnp.where(s > 0, jnp.log(s) - u / s, 0.0)[None, :]


def vocab_splits(n_tiles: int, v_tiles: int, programs: int = 2 * SM_COUNT) -> int:
  """Vocabulary splits S so that n_tiles x S programs fill the GPU (>= `programs`)."""
  return max(1, min(v_tiles, -(-programs // n_tiles)))


@functools.partial(jax.jit, static_argnames=("temperature", "block_tokens", "block_vocab",
                                             "splits", "interpret", "num_warps",
                                             "num_stages"))
def forward(hidden: jax.Array, lm_head: jax.Array, targets: jax.Array, *,
            temperature: float = 1.0, block_tokens: int = 0, block_vocab: int = 0,
            splits: int = 0, interpret: bool = False, num_warps: int = 4,
            num_stages: int = 3):
  """Partial statistics (lse, entropy, target logit), each [N] float32, of
  softmax(hidden @ lm_head / temperature) over this head slice (r1jax/kernels/
  logprob_layout.py); log p = tgt - lse when the slice is the whole vocabulary.

  Args:
    hidden: [N, D]; lm_head: [D, V] of the same dtype; targets: [N] int32 columns of the
      slice (outside [0, V): target logit 0).
    temperature: > 0.
    block_tokens: bn, a power of two >= 16 (0 = 64). block_vocab: bv, a power of two
      >= 16 (0 = 128). The hidden dimension is read in chunks of 64.
    splits: vocabulary splits S of the program grid (0 = enough to fill the GPU,
      `vocab_splits`); their partial statistics are merged in JAX.
    interpret: run in Pallas interpret mode (on CPU, for tests).
    num_warps, num_stages: Triton launch / software-pipelining settings.

  Raises:
    ValueError: tiles that are not powers of two >= 16 (tl.dot's minimum).
  """
  N, D = hidden.shape
  V = lm_head.shape[1]
  bn = block_tokens or DEFAULT_BLOCK_TOKENS
  bv = block_vocab or DEFAULT_BLOCK_VOCAB
  bd = min(BLOCK_HIDDEN, pl.next_power_of_2(D))
  for name, b in (("block_tokens", bn), ("block_vocab", bv)):
    if not is_pow2(b) or b < 16:
      raise ValueError(f"Triton tiles must be powers of two >= 16, got {name}={b}")
  n_tiles, v_tiles = pl.cdiv(N, bn), pl.cdiv(V, bv)
  S = min(splits or vocab_splits(n_tiles, v_tiles), v_tiles)
  tps = pl.cdiv(v_tiles, S)
  Np = n_tiles * bn
  if Np != N:
    hidden = jnp.pad(hidden, ((0, Np - N), (0, 0)))
    targets = jnp.pad(targets, (0, Np - N))
  kernel = functools.partial(_kernel, vocab=V, hidden=D, block_tokens=bn, block_vocab=bv,
                             block_hidden=bd, inv_temperature=1.0 / temperature,
                             tiles_per_split=tps)
  stat = jax.ShapeDtypeStruct((S, Np), jnp.float32)
  stat_spec = pl.BlockSpec((1, bn), lambda i, s: (s, i))
  lse, ent, tgt = pl.pallas_call(
      kernel,
      out_shape=(stat, stat, stat),
      # (token tile, split): Triton launches axis 0 fastest, so the token tiles that share
      # a vocabulary split (the same W columns) run together and reuse them from L2.
      grid=(n_tiles, S),
      in_specs=[pl.BlockSpec((bn,), lambda i, s: (i,)),
                pl.BlockSpec((bn, D), lambda i, s: (i, 0)),
                pl.BlockSpec((D, V), lambda i, s: (0, 0))],
      out_specs=(stat_spec, stat_spec, stat_spec),
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      cost_estimate=pl.CostEstimate(flops=2 * Np * D * V, transcendentals=Np * V,
                                    bytes_accessed=(D * V + Np * D) * hidden.dtype.itemsize),
      interpret=interpret,
      name="fused_logprob_fwd",
  )(targets.astype(jnp.int32), hidden, lm_head)
  if S > 1:
    lse, ent, tgt = lay.merge_partials(lse, ent, tgt, axis=0)
  else:
    lse, ent, tgt = lse[0], ent[0], tgt[0]
  return lse[:N], ent[:N], tgt[:N]
