"""Triton (GPU) Pallas backward of the fused log-prob: one kernel over (token tile, vocabulary
tile) programs that recomputes its [bn, bv] logits tile from the saved logsumexp, forms
d logits (r1jax/kernels/logprob_xla.py) and adds both products with float32 atomics:

    d hidden[i] += d l W[:, j]^T,        d W[:, j] += h[i]^T d l,

as Cut Cross-Entropy (Wijmans et al. 2024) and tokamax do on GPU: three matmul-sized
products in one pass, no [N, V] buffer; the price is atomic traffic into the float32
[N, D] and [D, V] accumulators (their order, hence the last bits, varies run to run):
(N / bn) x D x V x 4 bytes of d W read-modify-writes, 120 GB at N = 16384, D = 1536,
V = 151936, bn = 128 (arithmetic, not measured), which gradient filtering cuts where
most tiles are negligible. `kernels.logprob_backward = "chunked"` is the fallback (cuBLAS
matmuls per vocabulary chunk); tools/device_check.py times both.
Triton tensors are powers of two, so the hidden dimension goes in chunks of bd = 64; D is
zero-padded to a multiple of bd and the accumulators to whole tiles once, outside the
kernel, so that the atomics need no masks. Optional gradient filtering
(Cut Cross-Entropy): a tile whose |d l| are all below `grad_filter` adds nothing and skips
both products (off when 0).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from r1jax.kernels import logprob_gpu as fwd_gpu

# Atomic d W traffic is (N / bn) x D x V x 4 bytes: the larger bn, the less of it.
DEFAULT_BLOCK_TOKENS = 128
DEFAULT_BLOCK_VOCAB = 64
_NT = (((1,), (1,)), ((), ()))  # a @ b.T: [bn, bv] x [bd, bv] -> [bn, bd]
_TN = (((0,), (0,)), ((), ()))  # a.T @ b: [bn, bd] x [bn, bv] -> [bd, bv]


def _kernel(y_ref, st_ref, h_ref, w_ref, dh_in, dw_in, dh_ref, dw_ref, *, vocab: int,
            hidden: int, block_vocab: int, block_hidden: int, inv_t: float,
            grad_filter: float):
  del dh_in, dw_in  # aliased to dh_ref / dw_ref (zeros on entry)
  bv, bd = block_vocab, block_hidden
  j = pl.program_id(1)
  bn = y_ref.shape[0]
  n_d = hidden // bd  # D is padded to a multiple of bd
  cols = j * bv + jnp.arange(bv)
  vmask = cols < vocab

  def load_h(k):
    return h_ref[:, pl.ds(k * bd, bd)]

  def load_w(k):
    return plgpu.load(w_ref.at[pl.ds(k * bd, bd), pl.ds(j * bv, bv)],
                      mask=vmask[None, :], other=0.0)

  lg = jax.lax.fori_loop(
      0, n_d, lambda k, acc: acc + jnp.dot(load_h(k), load_w(k),
                                           preferred_element_type=jnp.float32),
      jnp.zeros((bn, bv), jnp.float32)) * inv_t
  lse, mean_l, g_lp, g_ent = (st_ref[k, :][:, None] for k in range(4))
  p = jnp.exp(lg - lse)
  hit = cols[None, :] == y_ref[...][:, None]
  dl = (jnp.where(hit, g_lp, 0.0) - p * (g_lp + g_ent * (lg - mean_l))) * inv_t
  dl = jnp.where(vmask[None, :], dl, 0.0)

  def add():
    dlc = dl.astype(h_ref.dtype)

    # Unmasked atomics: D and the d W columns are padded to whole tiles, and d l is 0 in
    # the columns past V.
    def d_step(k, carry):
      dh = jax.lax.dot_general(dlc, load_w(k), _NT, preferred_element_type=jnp.float32)
      plgpu.atomic_add(dh_ref, (pl.ds(0, bn), pl.ds(k * bd, bd)), dh)
      dw = jax.lax.dot_general(load_h(k), dlc, _TN, preferred_element_type=jnp.float32)
      plgpu.atomic_add(dw_ref, (pl.ds(k * bd, bd), pl.ds(j * bv, bv)), dw)
      return carry

    jax.lax.fori_loop(0, n_d, d_step, 0)

  if grad_filter > 0:
    pl.when(jnp.max(jnp.abs(dl)) >= grad_filter)(add)
  else:
    add()


@functools.partial(jax.jit, static_argnames=("temperature", "block_tokens", "block_vocab",
                                             "grad_filter", "interpret", "num_warps",
                                             "num_stages"))
def backward(hidden, lm_head, targets, lse, mean_logit, g_logp, g_entropy, *,
             temperature: float = 1.0, block_tokens: int = 0, block_vocab: int = 0,
             grad_filter: float = 0.0, interpret: bool = False, num_warps: int = 4,
             num_stages: int = 2):
  """(d hidden [N, D] float32, d lm_head [D, V] float32) of sum g_logp log p + g_entropy H.

  Args:
    hidden: [N, D]; lm_head: [D, V] of the same dtype; targets: [N] int32 columns of this
      head slice (outside [0, V): no target term).
    lse, mean_logit: [N] float32 logsumexp and E_p[l] = lse - H over the whole vocabulary;
      g_logp, g_entropy: [N] float32 cotangents.
    temperature: > 0. block_tokens, block_vocab: powers of two >= 16 (0 = 128, 64).
    grad_filter: >= 0 (0 = off). interpret: Pallas interpret mode (CPU tests).
    num_warps, num_stages: Triton launch settings.

  Raises:
    ValueError: tiles that are not powers of two >= 16.
  """
  N, D = hidden.shape
  V = lm_head.shape[1]
  bn = block_tokens or DEFAULT_BLOCK_TOKENS
  bv = block_vocab or DEFAULT_BLOCK_VOCAB
  for name, b in (("block_tokens", bn), ("block_vocab", bv)):
    if not fwd_gpu.is_pow2(b) or b < 16:
      raise ValueError(f"Triton tiles must be powers of two >= 16, got {name}={b}")
  bd = min(fwd_gpu.BLOCK_HIDDEN, pl.next_power_of_2(D))
  Dp = pl.cdiv(D, bd) * bd  # zero rows: once, outside the kernel (none for D % 64 == 0)
  if Dp != D:
    hidden = jnp.pad(hidden, ((0, 0), (0, Dp - D)))
    lm_head = jnp.pad(lm_head, ((0, Dp - D), (0, 0)))
  n_tiles, v_tiles = pl.cdiv(N, bn), pl.cdiv(V, bv)
  Np, Vp = n_tiles * bn, v_tiles * bv
  pad = lambda x: jnp.pad(x, ((0, Np - N),) + ((0, 0),) * (x.ndim - 1))
  # Padded tokens: zero cotangents, hence zero d logits.
  stats = pad(jnp.stack([lse, mean_logit, g_logp, g_entropy], axis=1).astype(
      jnp.float32)).T  # [4, Np]
  kernel = functools.partial(_kernel, vocab=V, hidden=Dp, block_vocab=bv, block_hidden=bd,
                             inv_t=1.0 / temperature, grad_filter=float(grad_filter))
  dh_spec = pl.BlockSpec((bn, Dp), lambda i, j: (i, 0))
  dw_spec = pl.BlockSpec((Dp, Vp), lambda i, j: (0, 0))
  dh, dw = pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((Np, Dp), jnp.float32),
                 jax.ShapeDtypeStruct((Dp, Vp), jnp.float32)),
      grid=(n_tiles, v_tiles),
      in_specs=[pl.BlockSpec((bn,), lambda i, j: (i,)),
                pl.BlockSpec((4, bn), lambda i, j: (0, i)),
                dh_spec, pl.BlockSpec((Dp, V), lambda i, j: (0, 0)), dh_spec, dw_spec],
      out_specs=(dh_spec, dw_spec),
      input_output_aliases={4: 0, 5: 1},
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      cost_estimate=pl.CostEstimate(flops=6 * Np * D * V, transcendentals=Np * V,
                                    bytes_accessed=(D * V + Np * D) * 3 * 4),
      interpret=interpret, name="fused_logprob_bwd",
  )(pad(targets.astype(jnp.int32)), stats, pad(hidden), lm_head,
    jnp.zeros((Np, Dp), jnp.float32), jnp.zeros((Dp, Vp), jnp.float32))
  return dh[:N, :D], dw[:D, :V]
