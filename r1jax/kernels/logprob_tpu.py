"""Mosaic (TPU) Pallas forward of the fused log-prob: online logsumexp over vocabulary tiles.

Grid (token tiles i, vocabulary tiles j). Axis i is "parallel" (megacore-shardable), axis j
"arbitrary": the same output block is revisited for every j while four float32
statistics live in VMEM scratch, lane-replicated [bn, 128] (lane-dense, as JAX's TPU flash
attention keeps its m and l) (running max m, rescaled sum s = sum exp(l - m),
u = sum exp(l - m) * (l - m) for the entropy, and the target logit t). A hidden block [bn, D]
keeps its block index across j, so Pallas fetches it once per token tile while lm_head
blocks [D, bv] stream through double-buffered VMEM. At the last j the kernel writes
lse = m + log s, entropy = log s - u / s and the target logit t (mergeable partial
statistics of this head slice, r1jax/kernels/logprob_layout.py).

Block shapes follow Mosaic's rules: bn is a multiple of 8, bv of 128; tiles default per chip
generation (CHIP_TILES). D is zero-padded to a multiple of 128 once, outside the kernel;
tokens are padded to a multiple of bn (cheap: [N, D]). Only the last vocabulary tile is
masked, and only when partial (its out-of-range columns hold unspecified values and become
-inf, never read as data). The backward is r1jax/kernels/logprob_bwd_tpu.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

DEFAULT_BLOCK_TOKENS = 256
DEFAULT_BLOCK_VOCAB = 512
LANES = 128
# (bn, bv) per chip generation, from the roofline: streaming W once per token tile gives
# bn flop per byte of W (bf16), so bn must exceed peak / HBM bandwidth: v5e 197 TF/s /
# 0.82 TB/s = 240, v5p 459 / 2.76 = 166, v6e 918 / 1.64 = 560 (public chip figures; not
# measured here: no TPU was available). bv keeps the [bn, bv] float32 temporaries and the
# double-buffered blocks within the default scoped VMEM.
CHIP_TILES = {"v5e": (512, 512), "v5p": (512, 1024), "v6e": (1024, 512)}


def chip_generation(device_kind: str) -> str:
  """'v5e' | 'v5p' | 'v6e' | '' from a TPU device_kind ('TPU v5 lite', 'TPU v6e', ...)."""
  kind = device_kind.lower().replace(" ", "")
  for gen, names in (("v5e", ("v5lite", "v5e")), ("v6e", ("v6lite", "v6e")),
                     ("v5p", ("v5p", "tpuv5"))):
    if any(n in kind for n in names):
      return gen
  return ""


def _device_kind() -> str:
  """The target chip: the abstract mesh's device (a cross-platform export names one),
  else the first local device."""
  dev = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  if dev is not None and getattr(dev, "device_kind", None):
    return dev.device_kind
  return jax.devices()[0].device_kind


def tiles(n: int, v: int, block_tokens: int = 0, block_vocab: int = 0) -> tuple[int, int]:
  """(bn, bv) for n tokens and v columns: the given sizes, else this chip's defaults,
  shrunk to the problem.

  Raises:
    ValueError: sizes that are not multiples of (8, 128).
  """
  bn0, bv0 = CHIP_TILES.get(chip_generation(_device_kind()),
                            (DEFAULT_BLOCK_TOKENS, DEFAULT_BLOCK_VOCAB))
  bn = block_tokens or min(bn0, pl.cdiv(n, 8) * 8)
  bv = block_vocab or min(bv0, pl.cdiv(v, 128) * 128)
  if bn % 8 or bv % 128:
    raise ValueError(f"TPU tiles must be multiples of (8, 128), got ({bn}, {bv})")
  return bn, bv


def pad_hidden(hidden: jax.Array, lm_head: jax.Array):
  """(hidden [N, Dp], lm_head [Dp, V], Dp): D zero-padded to a multiple of 128 lanes, once,
  outside the kernel (zero rows add nothing to any product)."""
  D = hidden.shape[1]
  Dp = pl.cdiv(D, LANES) * LANES
  if Dp != D:
    hidden = jnp.pad(hidden, ((0, 0), (0, Dp - D)))
    lm_head = jnp.pad(lm_head, ((0, Dp - D), (0, 0)))
  return hidden, lm_head, Dp


def _kernel(y_ref, h_ref, w_ref, lse_ref, ent_ref, tgt_ref, m_sc, s_sc, u_sc, t_sc, *,
            vocab: int, block_vocab: int, inv_temperature: float):
  j = pl.program_id(1)
  last = pl.num_programs(1) - 1

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
    s_sc[...] = jnp.zeros(s_sc.shape, jnp.float32)
    u_sc[...] = jnp.zeros(u_sc.shape, jnp.float32)
    t_sc[...] = jnp.zeros(t_sc.shape, jnp.float32)

  def update(masked: bool):
    logits = jnp.dot(h_ref[...], w_ref[...], preferred_element_type=jnp.float32)
    logits = logits * inv_temperature  # [bn, bv]
    col = j * block_vocab + jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    if masked:  # only the partial last tile: columns past V hold unspecified values
      valid = col < vocab
      logits = jnp.where(valid, logits, -jnp.inf)
    # Statistics are lane-replicated [bn, 128] (lane-dense, as JAX's flash attention).
    hit = col == y_ref[...][:, :1]  # targets outside this head slice never hit
    if masked:
      hit = hit & valid
    t_sc[...] += jnp.sum(jnp.where(hit, logits, 0.0), axis=1, keepdims=True)
    m_prev = m_sc[...]
    m_new = jnp.maximum(m_prev, jnp.max(logits, axis=1, keepdims=True))
    m1 = m_new[:, :1]
    alpha = jnp.exp(m_prev - m_new)  # exp(-inf) = 0 on the first tile
    e = jnp.exp(logits - m1)  # 0 on masked columns
    s_prev = s_sc[...]
    s_sc[...] = alpha * s_prev + jnp.sum(e, axis=1, keepdims=True)
    # u is relative to the running max: moving m_prev -> m_new adds (m_prev - m_new) per
    # unit of mass (guarded on the first tile, where it is -inf * 0). where(): masked
    # columns are -inf, and 0 * -inf is NaN.
    shift = jnp.where(s_prev > 0, (m_prev - m_new) * s_prev, 0.0)
    centered = logits - m1
    if masked:
      centered = jnp.where(valid, centered, 0.0)
    u_sc[...] = alpha * (u_sc[...] + shift) + jnp.sum(e * centered, axis=1, keepdims=True)
    m_sc[...] = m_new

  if vocab % block_vocab:
    pl.when(j < last)(lambda: update(False))
    pl.when(j == last)(lambda: update(True))
  else:
    update(False)

  @pl.when(j == last)
  def _finish():
    s = s_sc[...]
    lse_ref[...] = m_sc[...] + jnp.log(s)
    tgt_ref[...] = t_sc[...]
    ent_ref[...] = jnp.log(s) - u_sc[...] / s


def _vmem_bytes(bn, bv, D, itemsize):
  blocks = 2 * (bn * D + D * bv) * itemsize  # double-buffered inputs
  temps = 4 * bn * bv * 4  # logits and a few elementwise temporaries, float32
  return blocks + temps + 8 * bn * LANES * 4


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
    block_tokens: bn, a multiple of 8; block_vocab: bv, a multiple of 128 (0 = the
      chip generation's default, CHIP_TILES; 256 x 512 elsewhere).
    interpret: run in the TPU interpret mode (on CPU, for tests).

  Raises:
    ValueError: block sizes that break Mosaic's (8, 128) tiling.
  """
  N, D = hidden.shape
  V = lm_head.shape[1]
  bn, bv = tiles(N, V, block_tokens, block_vocab)
  hidden, lm_head, D = pad_hidden(hidden, lm_head)
  n_tiles = pl.cdiv(N, bn)
  Np = n_tiles * bn
  if Np != N:
    hidden = jnp.pad(hidden, ((0, Np - N), (0, 0)))
    targets = jnp.pad(targets, (0, Np - N))
  # Targets lane-replicated too ([Np, 128] int32: one tile-aligned block per token tile).
  y = jnp.broadcast_to(targets.astype(jnp.int32)[:, None], (Np, LANES))
  kernel = functools.partial(_kernel, vocab=V, block_vocab=bv,
                             inv_temperature=1.0 / temperature)
  stat = jax.ShapeDtypeStruct((Np, LANES), jnp.float32)
  stat_spec = pl.BlockSpec((bn, LANES), lambda i, j: (i, 0))
  vmem = _vmem_bytes(bn, bv, D, hidden.dtype.itemsize)
  lse, ent, tgt = pl.pallas_call(
      kernel,
      out_shape=(stat, stat, stat),
      grid=(n_tiles, pl.cdiv(V, bv)),
      in_specs=[pl.BlockSpec((bn, LANES), lambda i, j: (i, 0)),
                pl.BlockSpec((bn, D), lambda i, j: (i, 0)),
                pl.BlockSpec((D, bv), lambda i, j: (0, j))],
      out_specs=(stat_spec, stat_spec, stat_spec),
      scratch_shapes=[pltpu.VMEM((bn, LANES), jnp.float32) for _ in range(4)],
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
