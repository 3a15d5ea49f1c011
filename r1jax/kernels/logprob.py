"""Fused per-token log-prob, entropy and KL from hidden states and the LM head.

Every RL/SFT loss needs log pi(o_t) of the sampled tokens only, yet `log_softmax(h @ W)`
builds [tokens, vocab] float32 logits (16k tokens x 151,936 = 10 GB before gradients).
`fused_logprob` never does: it streams over vocabulary tiles with an online logsumexp,
picks the target logit inside its tile, and keeps only [N] float32 statistics: the
logsumexp, the entropy and the target logit of each token (merged across vocabulary
slices as in r1jax/kernels/logprob_layout.py).

Implementations (`impl`, config key `kernels.logprob_impl`):
  naive    log_softmax of the full [N, V] logits (reference; autodiff).
  chunked  pure JAX (r1jax/kernels/logprob_xla.py): vocabulary chunks of Vc columns, each
           over token chunks of C tokens (memory ~ C x Vc floats). The default on CPU.
  pallas   Pallas kernels: Mosaic on TPU (logprob_tpu.py, logprob_bwd_tpu.py), Triton on
           GPU (logprob_gpu.py, logprob_bwd_gpu.py); on CPU the TPU kernels in interpret
           mode (tests: slow). `pallas_tpu` / `pallas_gpu` name one backend explicitly.
  auto     pallas on TPU/GPU, chunked on CPU.
The backward (`backward`, config `kernels.logprob_backward`) is the forward's by default
("auto"); "chunked" selects the XLA one after a Pallas forward.

Backward (one `jax.custom_vjp`). With p = softmax(l), E[l] = lse - H and cotangents g_lp,
g_H, d l_j = g_lp (1[j = y] - p_j) - g_H p_j (l_j - E[l]); d h = d l W^T / T and
d W = h^T d l / T. It recomputes the logits from the saved logsumexp and entropy:
  - chunked: for each vocabulary chunk, a scan over token chunks accumulates the chunk's
    float32 d W [D, Vc] in the loop carry and writes it once (reduce-scattered into the
    head's layout on a mesh); d hidden accumulates in float32 [N, D];
  - Pallas TPU: two kernels in the FlashAttention-2 manner (d hidden over vocabulary
    tiles, d W over token tiles), each accumulating its float32 tile in VMEM;
  - Pallas GPU: one kernel over (token, vocabulary) tiles adding d hidden and d W with
    atomics (as Cut Cross-Entropy and tokamax do), optional gradient filtering.

Mesh (`mesh`, `token_axes`, `weight_spec`): forward and backward run under one shard_map.
The tokens are split over the batch axes (and any other axis that divides them), the
vocabulary over the axes that split the head's vocabulary dimension (`tensor` under the
default rules: vocabulary-parallel, statistics merged across shards, d hidden summed),
and the head's FSDP-split rows are all-gathered one vocabulary chunk at a time, with each
chunk's d W reduce-scattered straight back (r1jax/kernels/logprob_layout.py).

Precision: products run in the hidden states' dtype (W is cast to h.dtype, as
`models.decoder.logits` does) with float32 accumulation; statistics, log-probs and d W
accumulate in float32; d hidden comes back in h's dtype and d W in W's.

Source: the k3 KL estimator of R1_SPEC section 2 (Schulman 2020); the online logsumexp of
Milakov & Gimelshein 2018 (as in FlashAttention, Dao 2023 for the two-kernel backward);
the same idea as Liger-Kernel's fused linear cross-entropy and Apple's Cut Cross-Entropy
(Wijmans et al. 2024, gradient filtering), in JAX.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from r1jax.kernels import logprob_layout as lay
from r1jax.kernels import logprob_xla as xla
from r1jax.kernels.logprob_layout import default_weight_spec, split_axes  # noqa: F401

IMPLS = ("auto", "pallas", "chunked", "naive", "pallas_tpu", "pallas_gpu")
BACKWARDS = ("auto", "pallas", "chunked")
# Forward impls that have a Pallas backward of their own (the others fall back to chunked).
PALLAS_BACKWARDS = ("pallas_tpu", "pallas_gpu")
# Columns per vocabulary chunk of the chunked implementation when the config says 0.
DEFAULT_VOCAB_CHUNK = 4096
# Pallas with an FSDP-split head: columns gathered (and d W reduce-scattered) at a time, so
# that no device holds the whole local head or its whole float32 gradient.
DEFAULT_PALLAS_VOCAB_CHUNK = 32768


class LogprobOutput(NamedTuple):
  """Per-token outputs, all float32 [N]; entropy / kl are None unless asked for.

  logprob: log softmax(h @ W / T)[target].
  entropy: entropy (nats) of softmax(h @ W / T).
  kl: k3 estimate of KL(pi_theta || pi_ref) = r - log r - 1 with r = pi_ref / pi_theta
      (R1_SPEC section 2), always >= 0.
  Masked tokens (mask == 0) are 0 in every output and get no gradient.
  """
  logprob: jax.Array
  entropy: Optional[jax.Array]
  kl: Optional[jax.Array]


@dataclasses.dataclass(frozen=True)
class Spec:
  """Static settings of one fused call (hashable: a custom_vjp non-differentiable arg).

  impl / backward: "chunked" | "pallas_tpu" | "pallas_gpu" (resolved).
  chunk_size: tokens per token chunk (chunked); vocab_chunk: columns per vocabulary chunk
  (0 = the whole local vocabulary). grad_filter: skip kernel tiles whose |d logits| are
  all below it (0 = off). layout: the mesh layout (logprob_layout.Layout).
  """
  temperature: float
  impl: str
  backward: str = "chunked"
  chunk_size: int = 256
  vocab_chunk: int = 0
  block_tokens: int = 0
  block_vocab: int = 0
  grad_filter: float = 0.0
  interpret: bool = False
  mesh: Optional[jax.sharding.Mesh] = None
  layout: lay.Layout = lay.Layout()


def resolve_impl(impl: str, backend: Optional[str] = None) -> str:
  """The implementation `impl` means on `backend` (default: jax's default backend).

  Raises:
    ValueError: unknown impl.
  """
  if impl not in IMPLS:
    raise ValueError(f"kernels.logprob_impl must be one of {IMPLS}, got {impl!r}")
  backend = backend or jax.default_backend()
  if impl == "auto":
    impl = "pallas" if backend in ("tpu", "gpu", "cuda", "rocm") else "chunked"
  if impl == "pallas":
    impl = "pallas_gpu" if backend in ("gpu", "cuda", "rocm") else "pallas_tpu"
  return impl


def resolve_backward(backward: str, impl: str, backend: Optional[str] = None) -> str:
  """The backward `backward` means after the (resolved) forward `impl`.

  Raises:
    ValueError: unknown backward.
  """
  if backward not in BACKWARDS:
    raise ValueError(f"kernels.logprob_backward must be one of {BACKWARDS}, got "
                     f"{backward!r}")
  if backward == "auto":
    return impl if impl in PALLAS_BACKWARDS else "chunked"
  resolved = resolve_impl(backward, backend)
  if resolved in ("pallas_tpu", "pallas_gpu") and resolved not in PALLAS_BACKWARDS:
    raise ValueError(f"kernels.logprob_backward: no Pallas backward for {resolved!r} yet")
  return resolved


def default_config():
  """The `kernels` block of a stage config (ml_collections.ConfigDict)."""
  from ml_collections import ConfigDict
  c = ConfigDict()
  # auto (Pallas on TPU/GPU, chunked on CPU) | pallas | chunked | naive.
  c.logprob_impl = "auto"
  # Backward: auto (the forward's) | pallas | chunked (XLA).
  c.logprob_backward = "auto"
  # Tokens per token chunk of the chunked forward / backward (memory ~ chunk x vocab chunk).
  c.logprob_chunk_size = 256
  # Columns per vocabulary chunk (the head is gathered and its gradient reduce-scattered
  # one chunk at a time); 0 = 4096 for chunked; for pallas the whole local vocabulary, or
  # 32768 when the head's rows are FSDP-split.
  c.logprob_vocab_chunk = 0
  # Pallas tiles (tokens, vocabulary); 0 = the backend's default (per TPU generation).
  c.block_tokens = 0
  c.block_vocab = 0
  # Pallas backward: skip tiles whose |d logits| are all below this (0 = off; Cut
  # Cross-Entropy uses 2**-12 for bf16).
  c.grad_filter = 0.0
  return c


def kwargs_from_config(kcfg, mesh=None, token_axes=None, weight_spec=None) -> dict:
  """`token_logprobs` / `fused_logprob` keyword arguments of a `kernels` config block.

  Args:
    kcfg: the block (see default_config).
    mesh, token_axes: the mesh and the axes that shard the tokens (the batch axes); None =
      unsharded (then XLA partitions the pure-JAX impls as it likes).
    weight_spec: PartitionSpec of the LM head [D, V] (layout of its gradient); None = from
      r1jax.sharding.DEFAULT_RULES.

  Raises:
    ValueError: unknown logprob_impl / logprob_backward, non-positive chunk, negative
      tiles, vocabulary chunk or grad_filter.
  """
  resolve_impl(kcfg.logprob_impl)
  backward = kcfg.get("logprob_backward", "auto")
  resolve_backward(backward, "chunked")
  if kcfg.logprob_chunk_size < 1:
    raise ValueError(f"kernels.logprob_chunk_size must be >= 1, got {kcfg.logprob_chunk_size}")
  vocab_chunk = kcfg.get("logprob_vocab_chunk", 0)
  grad_filter = kcfg.get("grad_filter", 0.0)
  for key, value in (("block_tokens", kcfg.block_tokens), ("block_vocab", kcfg.block_vocab),
                     ("logprob_vocab_chunk", vocab_chunk), ("grad_filter", grad_filter)):
    if value < 0:
      raise ValueError(f"kernels.{key} must be >= 0 (0 = default / off), got {value}")
  out = dict(impl=kcfg.logprob_impl, backward=backward, chunk_size=kcfg.logprob_chunk_size,
             vocab_chunk=vocab_chunk, block_tokens=kcfg.block_tokens,
             block_vocab=kcfg.block_vocab, grad_filter=float(grad_filter))
  if mesh is not None:
    out.update(mesh=mesh, token_axes=token_axes)
    if weight_spec is not None:
      out["weight_spec"] = weight_spec
  return out


def make_spec(num_tokens: int, lm_head_shape, *, temperature: float = 1.0,
              impl: str = "auto", backward: str = "auto", chunk_size: int = 256,
              vocab_chunk: int = 0, block_tokens: int = 0, block_vocab: int = 0,
              grad_filter: float = 0.0, interpret: Optional[bool] = None, mesh=None,
              token_axes: Any = None, weight_spec: Optional[P] = None,
              vocab_parallel: bool = True) -> Spec:
  """The Spec of a call with these settings (see fused_logprob for the arguments).

  Raises:
    ValueError: temperature <= 0, bad chunk sizes, unknown impl / backward, a gradient
      filter without a Pallas backward, tokens that the batch axes do not divide.
  """
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  if vocab_chunk < 0 or grad_filter < 0:
    raise ValueError(f"vocab_chunk and grad_filter must be >= 0, got {vocab_chunk}, "
                     f"{grad_filter}")
  impl = resolve_impl(impl)
  bwd = resolve_backward(backward, impl)
  if grad_filter > 0 and bwd == "chunked":
    raise ValueError("kernels.grad_filter needs a Pallas backward (kernels.logprob_backward"
                     f" resolves to 'chunked' for impl {impl!r})")
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  layout = lay.Layout()
  if mesh is not None:
    if weight_spec is None:
      weight_spec = default_weight_spec(mesh, lm_head_shape)
    layout = lay.plan(mesh, token_axes, num_tokens, weight_spec, vocab_parallel)
    if not (layout.token_axes or layout.vocab_axes or layout.row_axes):
      mesh = None
  return Spec(float(temperature), impl, bwd, int(chunk_size), int(vocab_chunk),
              int(block_tokens), int(block_vocab), float(grad_filter), bool(interpret),
              mesh, layout)


def fused_logprob(hidden: jax.Array, lm_head: jax.Array, targets: jax.Array, *,
                  temperature: float = 1.0, ref_logprob: Optional[jax.Array] = None,
                  mask: Optional[jax.Array] = None, return_entropy: bool = False,
                  impl: str = "auto", backward: str = "auto", chunk_size: int = 256,
                  vocab_chunk: int = 0, block_tokens: int = 0, block_vocab: int = 0,
                  grad_filter: float = 0.0, interpret: Optional[bool] = None,
                  mesh: Optional[jax.sharding.Mesh] = None, token_axes: Any = None,
                  weight_spec: Optional[P] = None) -> LogprobOutput:
  """Log-prob of each target token (and entropy, k3 KL) without [N, V] logits.

  Args:
    hidden: [N, D] final hidden states (float32 / bfloat16 / float16); the products run in
      this dtype with float32 accumulation.
    lm_head: [D, V] LM head (tied embeddings: the transposed embedding), any float dtype
      (cast to hidden's); its gradient comes back in its own dtype.
    targets: [N] int token ids in [0, V) (ids outside give meaningless values).
    temperature: logits are divided by it (> 0; match the sampler's temperature).
    ref_logprob: [N] reference-policy log-probs; when given, `kl` is returned.
    mask: [N] bool/float; tokens with mask == 0 give 0 outputs and no gradient.
    return_entropy: also return the entropy of each next-token distribution.
    impl: "auto" | "pallas" | "chunked" | "naive" | "pallas_tpu" | "pallas_gpu" (see the
      module docstring).
    backward: "auto" (the forward's) | "pallas" | "chunked".
    chunk_size: tokens per token chunk of the chunked forward / backward.
    vocab_chunk: columns per vocabulary chunk (0 = 4096 for chunked; for Pallas the whole
      local vocabulary, 32768 when the head's rows are FSDP-split); memory of chunked
      ~ chunk_size x vocab_chunk floats.
    block_tokens, block_vocab: Pallas tile sizes (0 = the backend's default).
    grad_filter: Pallas backward: skip tiles whose |d logits| are all below it (0 = off).
    interpret: run Pallas in interpret mode (default: when the backend is CPU).
    mesh, token_axes: the tokens are sharded over mesh axes `token_axes` (a name or tuple
      of names, as in a PartitionSpec entry; None = none): forward and backward then run
      per device under shard_map (module docstring), every impl.
    weight_spec: PartitionSpec of lm_head on `mesh`; None = ("embed", "vocab") under
      r1jax.sharding.DEFAULT_RULES.

  Returns:
    LogprobOutput(logprob [N], entropy [N] | None, kl [N] | None), float32. Differentiable
    with respect to hidden and lm_head for any cotangents of the three outputs.

  Raises:
    ValueError: shapes that do not match, temperature <= 0, unknown impl, tokens that the
      batch axes of `token_axes` do not divide, grad_filter with the chunked backward.
  """
  if hidden.ndim != 2 or lm_head.ndim != 2 or targets.ndim != 1:
    raise ValueError(f"expected hidden [N, D], lm_head [D, V], targets [N]; got "
                     f"{hidden.shape}, {lm_head.shape}, {targets.shape}")
  N, D = hidden.shape
  if lm_head.shape[0] != D or targets.shape[0] != N:
    raise ValueError(f"shapes do not match: hidden {hidden.shape}, lm_head {lm_head.shape}, "
                     f"targets {targets.shape}")
  for name, x in (("ref_logprob", ref_logprob), ("mask", mask)):
    if x is not None and x.shape != (N,):
      raise ValueError(f"{name} must have shape ({N},), got {x.shape}")
  naive = resolve_impl(impl) == "naive"
  spec = make_spec(N, lm_head.shape, temperature=temperature,
                   impl="chunked" if naive else impl, backward=backward,
                   chunk_size=chunk_size, vocab_chunk=vocab_chunk,
                   block_tokens=block_tokens, block_vocab=block_vocab,
                   grad_filter=grad_filter, interpret=interpret, mesh=mesh,
                   token_axes=token_axes, weight_spec=weight_spec,
                   vocab_parallel=not naive)
  targets = targets.astype(jnp.int32)
  if naive:
    logp, ent = _naive_sharded(hidden, lm_head, targets, spec)
  else:
    logp, ent = _fused(hidden, lm_head, targets, spec)
  kl = None
  if ref_logprob is not None:
    d = ref_logprob.astype(jnp.float32) - logp
    kl = jnp.exp(d) - d - 1.0
  if mask is not None:
    keep = mask > 0
    zero = lambda x: None if x is None else jnp.where(keep, x, 0.0)
    logp, ent, kl = zero(logp), zero(ent), zero(kl)
  return LogprobOutput(logp, ent if return_entropy else None, kl)


def token_logprobs(hidden: jax.Array, weight: jax.Array, targets: jax.Array, *,
                   temperature: float = 1.0, **kwargs):
  """Batched convenience form used by the losses: log-probs and entropies per position.

  Args:
    hidden: [B, T, D]; weight: [D, V]; targets: [B, T] int.
    temperature, **kwargs: as in `fused_logprob` (chunk_size counts tokens, i.e. rows of
      the flattened [B * T] batch; token_axes shard B).

  Returns:
    (logp [B, T], entropy [B, T]) float32.
  """
  B, T, D = hidden.shape
  out = fused_logprob(hidden.reshape(B * T, D), weight, targets.reshape(B * T),
                      temperature=temperature, return_entropy=True, **kwargs)
  return out.logprob.reshape(B, T), out.entropy.reshape(B, T)


# ---------------------------------------------------------------------- naive reference
def _naive_sharded(h, w, y, spec: Spec):
  tok = P(spec.layout.token_axes)
  # check_vma: autodiff then psums the replicated head's cotangent itself.
  run = lay.sharded(functools.partial(xla.naive, temperature=spec.temperature), spec.mesh,
                    (P(spec.layout.token_axes, None), P(), tok), (tok, tok), check_vma=True)
  return run(h, w.astype(h.dtype), y)


# ---------------------------------------------------------------------- kernels
def kernel_module(name: tuple[str, str]):
  """The Pallas module of (resolved impl, "fwd" | "bwd")."""
  import importlib
  module = {("pallas_tpu", "fwd"): "logprob_tpu", ("pallas_gpu", "fwd"): "logprob_gpu",
            ("pallas_tpu", "bwd"): "logprob_bwd_tpu", ("pallas_gpu", "bwd"): "logprob_bwd_gpu"}
  return importlib.import_module(f"r1jax.kernels.{module[name]}")


def vocab_chunks(local_vocab: int, spec: Spec, impl: str) -> tuple[int, int, int]:
  """(columns per chunk Vc, number of full chunks, columns of the last partial chunk)."""
  if spec.vocab_chunk:
    vc = spec.vocab_chunk
  elif impl == "chunked":
    vc = DEFAULT_VOCAB_CHUNK
  else:  # one kernel call over the whole local vocabulary unless rows are gathered
    vc = DEFAULT_PALLAS_VOCAB_CHUNK if spec.layout.row_axes else local_vocab
  vc = min(vc, local_vocab)
  n_full, rem = divmod(local_vocab, vc)
  return vc, n_full, rem


def _forward_partial(h, w, y, spec: Spec):
  """(lse, ent, tgt) [n] float32 over this device's vocabulary slice w [D', V'] (compute
  dtype, rows as stored); y: [n] target columns relative to the slice."""
  n = h.shape[0]
  vc, n_full, rem = vocab_chunks(w.shape[1], spec, spec.impl)
  gather = lambda wc: lay.gather_rows(wc, spec.layout)
  if spec.impl == "chunked":
    C, k = xla.token_blocks(n, spec.chunk_size)
    hs, ys = xla.as_blocks(h, C, k), xla.as_blocks(y, C, k, -1)

    def part(wc, start):
      out = xla.chunk_forward(hs, gather(wc), ys - start, spec.temperature)
      return tuple(x.reshape(-1)[:n] for x in out)
  else:
    fwd = kernel_module((spec.impl, "fwd")).forward

    def part(wc, start):
      return fwd(h, gather(wc), y - start, temperature=spec.temperature,
                 block_tokens=spec.block_tokens, block_vocab=spec.block_vocab,
                 interpret=spec.interpret)

  stats = part(w[:, :vc], 0)
  if n_full > 1:
    def body(st, c):
      start = c * vc
      return lay.merge_two(st, part(jax.lax.dynamic_slice_in_dim(w, start, vc, 1), start)), None
    stats, _ = jax.lax.scan(body, stats, jnp.arange(1, n_full))
  if rem:
    stats = lay.merge_two(stats, part(w[:, n_full * vc:], n_full * vc))
  return stats


def _backward_local(h, w, y, lse, mean_l, g_lp, g_ent, spec: Spec):
  """(d hidden [n, D] float32, d W [D', V'] float32 summed over all devices' tokens, in
  the head's local layout) for this device's tokens and vocabulary slice."""
  n, D = h.shape
  vc, n_full, rem = vocab_chunks(w.shape[1], spec, spec.backward)
  gather = lambda wc: lay.gather_rows(wc, spec.layout)
  reduce = lambda dw: lay.reduce_rows(dw, spec.layout, spec.mesh)
  if spec.backward == "chunked":
    C, k = xla.token_blocks(n, spec.chunk_size)
    hs, ys = xla.as_blocks(h, C, k), xla.as_blocks(y, C, k, -1)
    stats = [xla.as_blocks(x, C, k) for x in (lse, mean_l, g_lp, g_ent)]
    dh0 = jnp.zeros((k, C, D), jnp.float32)

    def part(wc, start, dh):
      dh, dw = xla.chunk_backward(hs, gather(wc), ys - start, *stats, dh, spec.temperature)
      return dh, reduce(dw)
    finish = lambda dh: dh.reshape(k * C, D)[:n]
  else:
    bwd = kernel_module((spec.backward, "bwd")).backward
    dh0 = None

    def part(wc, start, dh):
      dhc, dw = bwd(h, gather(wc), y - start, lse, mean_l, g_lp, g_ent,
                    temperature=spec.temperature, block_tokens=spec.block_tokens,
                    block_vocab=spec.block_vocab, grad_filter=spec.grad_filter,
                    interpret=spec.interpret)
      return (dhc if dh is None else dh + dhc), reduce(dw)
    finish = lambda dh: dh

  if n_full == 1 and rem == 0:
    dh, dw = part(w, 0, dh0)
    return finish(dh), dw
  if dh0 is None:
    dh0 = jnp.zeros((n, D), jnp.float32)

  def body(carry, c):  # each chunk's d W slice is written once, in place
    dh, dw_all = carry
    start = c * vc
    dh, dwc = part(jax.lax.dynamic_slice_in_dim(w, start, vc, 1), start, dh)
    return (dh, jax.lax.dynamic_update_slice_in_dim(dw_all, dwc, start, 1)), None

  (dh, dw), _ = jax.lax.scan(body, (dh0, jnp.zeros(w.shape, jnp.float32)),
                             jnp.arange(n_full))
  if rem:
    dh, dwc = part(w[:, n_full * vc:], n_full * vc, dh)
    dw = dw.at[:, n_full * vc:].set(dwc)
  return finish(dh), dw


# ---------------------------------------------------------------------- custom_vjp
def _local_targets(y, w, spec: Spec):
  """Target ids relative to this device's vocabulary slice (inside shard_map)."""
  if not spec.layout.vocab_axes:
    return y
  return y - lay.vocab_offset(spec.layout, spec.mesh, w.shape[1])


def _forward(h, w, y, spec: Spec):
  L = spec.layout
  tok = P(L.token_axes)

  def local(h, w, y):
    stats = _forward_partial(h, w, _local_targets(y, w, spec), spec)
    lse, ent, tgt = lay.merge_across(L.vocab_axes, *stats)
    return tgt - lse, ent, lse

  run = lay.sharded(local, spec.mesh, (P(L.token_axes, None), L.weight_in, tok),
                    (tok, tok, tok))
  return run(h, w.astype(h.dtype), y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fused(h, w, y, spec: Spec):
  logp, ent, _ = _forward(h, w, y, spec)
  return logp, ent


def _fused_fwd(h, w, y, spec):
  logp, ent, lse = _forward(h, w, y, spec)
  return (logp, ent), (h, w, y, lse, ent)


def _fused_bwd(spec, res, cts):
  h, w, y, lse, ent = res
  g_lp, g_ent = cts
  L = spec.layout
  tok = P(L.token_axes)

  def local(h, w, y, lse, ent, g_lp, g_ent):
    dh, dw = _backward_local(h, w, _local_targets(y, w, spec), lse, lse - ent, g_lp, g_ent,
                             spec)
    if L.vocab_axes:  # each vocabulary slice contributes to every token's d hidden
      dh = jax.lax.psum(dh, L.vocab_axes)
    return dh.astype(h.dtype), dw

  run = lay.sharded(local, spec.mesh, (P(L.token_axes, None), L.weight_in) + (tok,) * 5,
                    (P(L.token_axes, None), L.weight_in))
  dh, dw = run(h, w.astype(h.dtype), y, lse, ent, g_lp.astype(jnp.float32),
               g_ent.astype(jnp.float32))
  return dh, dw.astype(w.dtype), None


_fused.defvjp(_fused_fwd, _fused_bwd)
