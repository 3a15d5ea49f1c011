"""Fused per-token log-prob, entropy and KL from hidden states and the LM head.

Every RL/SFT loss needs log pi(o_t) of the sampled tokens only, yet `log_softmax(h @ W)`
builds [tokens, vocab] float32 logits (16k tokens x 151,936 = 10 GB before gradients).
`fused_logprob` never does: it streams over vocabulary tiles with an online logsumexp
(running max m, rescaled sum s = sum exp(l - m), and u = sum exp(l - m) * (l - m) for the
entropy H = log s - u / s, kept relative to m so that it does not cancel), picks the target logit inside its tile, and keeps only [N] float32 statistics.

Implementations (`impl`, config key `kernels.logprob_impl`):
  naive    log_softmax of the full [N, V] logits (reference; autodiff).
  chunked  pure JAX: lax.map over token chunks of C tokens, full vocabulary per chunk
           (memory ~ C x V floats). The default on CPU.
  pallas   Pallas forward kernel: Mosaic on TPU (r1jax/kernels/logprob_tpu.py), Triton on GPU
           (r1jax/kernels/logprob_gpu.py); on CPU the TPU kernel in interpret mode (tests: slow).
           `pallas_tpu` / `pallas_gpu` name one kernel explicitly (e.g. to interpret the
           Triton kernel on CPU).
  auto     pallas on TPU/GPU, chunked on CPU.

The backward pass (one `jax.custom_vjp` shared by chunked and pallas) recomputes the logits
chunk by chunk over tokens: with p = softmax(l), E[l] = lse - H and cotangents g_lp, g_H,

    d l_ij = g_lp_i * (1[j = y_i] - p_ij) - g_H_i * p_ij * (l_ij - E_i[l]),

then d h = (d l @ W^T) / T and d W += h^T @ d l / T per chunk. That is three matmul-sized
products per chunk (recompute, dh, dW), one fewer than two separate recomputing kernels
would need, each a plain XLA matmul (at peak on every backend); memory is bounded by the
chunk (C x V) plus d W itself, never N x V.

Source: the k3 KL estimator of R1_SPEC section 2 (Schulman 2020); the online logsumexp of
Milakov & Gimelshein 2018 (as in FlashAttention); the same idea as Liger-Kernel's fused
linear cross-entropy and Apple's Cut Cross-Entropy (Wijmans et al. 2024), in JAX.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

IMPLS = ("auto", "pallas", "chunked", "naive", "pallas_tpu", "pallas_gpu")


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
class _Spec:
  """Static settings of one fused call (hashable: a custom_vjp non-differentiable arg)."""
  temperature: float
  impl: str  # "pallas_tpu" | "pallas_gpu" | "chunked"
  chunk_size: int
  block_tokens: int
  block_vocab: int
  interpret: bool
  mesh: Optional[jax.sharding.Mesh] = None
  token_axes: Any = None


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


def default_config():
  """The `kernels` block of a stage config (ml_collections.ConfigDict)."""
  from ml_collections import ConfigDict
  c = ConfigDict()
  # auto (Pallas on TPU/GPU, chunked on CPU) | pallas | chunked | naive.
  c.logprob_impl = "auto"
  # Tokens per chunk of the chunked forward and of the backward (memory ~ chunk x vocab).
  c.logprob_chunk_size = 256
  # Pallas tiles (tokens, vocabulary); 0 = the backend's default.
  c.block_tokens = 0
  c.block_vocab = 0
  return c


def kwargs_from_config(kcfg, mesh=None, token_axes=None) -> dict:
  """`token_logprobs` / `fused_logprob` keyword arguments of a `kernels` config block.

  Args:
    kcfg: the block (see default_config).
    mesh, token_axes: the mesh and the axes that shard the tokens (for the Pallas
      kernels' shard_map); None = unsharded.

  Raises:
    ValueError: unknown logprob_impl, non-positive chunk, negative tiles.
  """
  resolve_impl(kcfg.logprob_impl)
  if kcfg.logprob_chunk_size < 1:
    raise ValueError(f"kernels.logprob_chunk_size must be >= 1, got {kcfg.logprob_chunk_size}")
  if kcfg.block_tokens < 0 or kcfg.block_vocab < 0:
    raise ValueError("kernels.block_tokens / block_vocab must be >= 0 (0 = default)")
  out = dict(impl=kcfg.logprob_impl, chunk_size=kcfg.logprob_chunk_size,
             block_tokens=kcfg.block_tokens, block_vocab=kcfg.block_vocab)
  if mesh is not None and token_axes:
    out.update(mesh=mesh, token_axes=token_axes)
  return out


def fused_logprob(hidden: jax.Array, lm_head: jax.Array, targets: jax.Array, *,
                  temperature: float = 1.0, ref_logprob: Optional[jax.Array] = None,
                  mask: Optional[jax.Array] = None, return_entropy: bool = False,
                  impl: str = "auto", chunk_size: int = 1024, block_tokens: int = 0,
                  block_vocab: int = 0, interpret: Optional[bool] = None,
                  mesh: Optional[jax.sharding.Mesh] = None,
                  token_axes: Any = None) -> LogprobOutput:
  """Log-prob of each target token (and entropy, k3 KL) without [N, V] logits.

  Args:
    hidden: [N, D] final hidden states (float32 / bfloat16 / float16).
    lm_head: [D, V] LM head (tied embeddings: the transposed embedding).
    targets: [N] int token ids in [0, V) (ids outside give meaningless values).
    temperature: logits are divided by it (> 0; match the sampler's temperature).
    ref_logprob: [N] reference-policy log-probs; when given, `kl` is returned.
    mask: [N] bool/float; tokens with mask == 0 give 0 outputs and no gradient.
    return_entropy: also return the entropy of each next-token distribution.
    impl: "auto" | "pallas" | "chunked" | "naive" | "pallas_tpu" | "pallas_gpu" (see the
      module docstring).
    chunk_size: tokens per chunk of the chunked forward and of the backward (memory
      ~ chunk_size x V float32).
    block_tokens, block_vocab: Pallas tile sizes (0 = the backend's default).
    interpret: run Pallas in interpret mode (default: when the backend is CPU).
    mesh, token_axes: when the tokens are sharded over mesh axes `token_axes` (a name or
      tuple of names, as in a PartitionSpec entry), the Pallas forward runs per shard under
      shard_map (a pallas_call is opaque to XLA's partitioner, which would otherwise gather
      every token onto every device); the LM head is gathered whole for it. Pure-JAX impls
      are partitioned by XLA and ignore these.

  Returns:
    LogprobOutput(logprob [N], entropy [N] | None, kl [N] | None), float32. Differentiable
    with respect to hidden and lm_head for any cotangents of the three outputs.

  Raises:
    ValueError: shapes that do not match, temperature <= 0, unknown impl.
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
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  impl = resolve_impl(impl)
  targets = targets.astype(jnp.int32)
  if impl == "naive":
    logp, ent = _naive(hidden, lm_head, targets, float(temperature))
  else:
    if interpret is None:
      interpret = jax.default_backend() == "cpu"
    spec = _Spec(float(temperature), impl, int(chunk_size), int(block_tokens),
                 int(block_vocab), bool(interpret), mesh,
                 tuple(token_axes) if isinstance(token_axes, list) else token_axes)
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
                   temperature: float = 1.0, chunk_size: int = 1024, impl: str = "auto",
                   block_tokens: int = 0, block_vocab: int = 0, mesh=None, token_axes=None):
  """Batched convenience form used by the losses: log-probs and entropies per position.

  Args:
    hidden: [B, T, D]; weight: [D, V]; targets: [B, T] int.
    temperature, chunk_size, impl, block_tokens, block_vocab, mesh, token_axes: as in
      `fused_logprob` (chunk_size counts tokens, i.e. rows of the flattened [B * T] batch;
      token_axes shard B).

  Returns:
    (logp [B, T], entropy [B, T]) float32.
  """
  B, T, D = hidden.shape
  out = fused_logprob(hidden.reshape(B * T, D), weight, targets.reshape(B * T),
                      temperature=temperature, return_entropy=True, impl=impl,
                      chunk_size=chunk_size, block_tokens=block_tokens,
                      block_vocab=block_vocab, mesh=mesh, token_axes=token_axes)
  return out.logprob.reshape(B, T), out.entropy.reshape(B, T)


# ---------------------------------------------------------------------- naive reference
def _compute_dtype(h, w):
  return jnp.promote_types(h.dtype, w.dtype)


def _logits(h, w, temperature):
  """[C, D] x [D, V] -> [C, V] float32 logits / T (inputs in their common dtype)."""
  dt = _compute_dtype(h, w)
  return jnp.dot(h.astype(dt), w.astype(dt), preferred_element_type=jnp.float32) / temperature


def _naive(h, w, y, temperature):
  logits = _logits(h, w, temperature)
  logsm = jax.nn.log_softmax(logits, axis=-1)
  logp = jnp.take_along_axis(logsm, y[:, None], axis=-1)[:, 0]
  ent = -jnp.sum(jnp.exp(logsm) * logsm, axis=-1)
  return logp, ent


# ---------------------------------------------------------------------- fused custom_vjp
def _pad_rows(x, n):
  pad = n - x.shape[0]
  return x if pad == 0 else jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))


def _chunk_stats(h, w, y, temperature):
  """One token chunk, full vocabulary: (logp, entropy, lse), each [C] float32."""
  logits = _logits(h, w, temperature)
  lse = jax.nn.logsumexp(logits, axis=-1)
  target = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
  p = jnp.exp(logits - lse[:, None])
  # H = sum p (lse - l): every term >= 0 (lse - E[l] would cancel for peaked logits).
  return target - lse, jnp.sum(p * (lse[:, None] - logits), axis=-1), lse


def _forward_chunked(h, w, y, spec: _Spec):
  N, D = h.shape
  C = min(spec.chunk_size, N)
  n = -(-N // C)
  hs = _pad_rows(h, n * C).reshape(n, C, D)
  ys = _pad_rows(y, n * C).reshape(n, C)
  out = jax.lax.map(lambda a: _chunk_stats(a[0], w, a[1], spec.temperature), (hs, ys))
  return tuple(x.reshape(n * C)[:N] for x in out)


def _forward(h, w, y, spec: _Spec):
  """(logp, entropy, lse), each [N] float32, by the configured implementation."""
  if spec.impl == "chunked":
    return _forward_chunked(h, w, y, spec)
  if spec.impl in ("pallas_tpu", "pallas_gpu"):
    dt = _compute_dtype(h, w)
    if spec.impl == "pallas_gpu":
      from r1jax.kernels import logprob_gpu as kernel
    else:
      from r1jax.kernels import logprob_tpu as kernel
    run = functools.partial(kernel.forward, temperature=spec.temperature,
                            block_tokens=spec.block_tokens, block_vocab=spec.block_vocab,
                            interpret=spec.interpret)
    if spec.mesh is not None and spec.token_axes:
      P = jax.sharding.PartitionSpec
      tok = P(spec.token_axes)
      run = jax.shard_map(run, mesh=spec.mesh, in_specs=(P(spec.token_axes, None), P(), tok),
                          out_specs=(tok, tok, tok), check_vma=False)
    return run(h.astype(dt), w.astype(dt), y)
  raise ValueError(f"unknown fused impl {spec.impl!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fused(h, w, y, spec: _Spec):
  logp, ent, _ = _forward(h, w, y, spec)
  return logp, ent


def _fused_fwd(h, w, y, spec):
  logp, ent, lse = _forward(h, w, y, spec)
  return (logp, ent), (h, w, y, lse, ent)


def _fused_bwd(spec, res, cts):
  h, w, y, lse, ent = res
  g_lp, g_ent = cts
  dh, dw = _backward_chunked(h, w, y, lse, ent, g_lp, g_ent, spec)
  return dh, dw, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def _backward_chunked(h, w, y, lse, ent, g_lp, g_ent, spec: _Spec):
  """d hidden [N, D] and d lm_head [D, V], recomputing logits per chunk of C tokens."""
  N, D = h.shape
  V = w.shape[1]
  dt = _compute_dtype(h, w)
  C = min(spec.chunk_size, N)
  n = -(-N // C)
  rows = lambda x: _pad_rows(x, n * C).reshape(n, C, *x.shape[1:])
  # Padded rows have zero cotangents, hence zero d logits.
  xs = (rows(h), rows(y), rows(lse), rows(ent), rows(g_lp.astype(jnp.float32)),
        rows(g_ent.astype(jnp.float32)))
  wc = w.astype(dt)
  inv_t = 1.0 / spec.temperature

  def body(dw, x):
    hc, yc, lsec, entc, glp, gent = x
    logits = _logits(hc, wc, spec.temperature)
    p = jnp.exp(logits - lsec[:, None])
    mean_l = (lsec - entc)[:, None]  # E_p[l] = lse - H
    onehot = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1) == yc[:, None]
    dl = (jnp.where(onehot, glp[:, None], 0.0) - p * (glp[:, None] + gent[:, None] *
                                                      (logits - mean_l))) * inv_t
    dl = dl.astype(dt)
    dhc = jnp.dot(dl, wc.T, preferred_element_type=jnp.float32)
    dw = dw + jnp.dot(hc.astype(dt).T, dl, preferred_element_type=jnp.float32)
    return dw, dhc

  dw, dh = jax.lax.scan(body, jnp.zeros((D, V), jnp.float32), xs)
  return dh.reshape(n * C, D)[:N].astype(h.dtype), dw.astype(w.dtype)
