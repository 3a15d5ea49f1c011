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

Data parallelism (`mesh`, `token_axes`): forward and backward both run under one
`shard_map` in which each device sees only its own tokens. The token axes are the batch
axes plus every other mesh axis of size > 1 that still divides the local token count
(e.g. `tensor`): the LM head is computed once per token, never once per replica. The head
enters whole (XLA all-gathers an FSDP-split head once, in the compute dtype); the local
d W is reduced once, by `psum_scatter` into W's own layout (`weight_spec`, default from
r1jax.sharding.DEFAULT_RULES) over the token axes that split it and `psum` over the rest.
No [tokens, D] hidden state or [tokens, V] logit is ever gathered. Vocabulary-parallel
tensor sharding (partial statistics merged across vocabulary shards) is the alternative
this does not take: splitting tokens needs no cross-device merge in the forward.

Precision: products run in the hidden states' dtype (W is cast to h.dtype, as
`models.decoder.logits` does) with float32 accumulation; statistics, log-probs and d W
accumulate in float32.

Source: the k3 KL estimator of R1_SPEC section 2 (Schulman 2020); the online logsumexp of
Milakov & Gimelshein 2018 (as in FlashAttention); the same idea as Liger-Kernel's fused
linear cross-entropy and Apple's Cut Cross-Entropy (Wijmans et al. 2024), in JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import PartitionSpec as P

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
  token_axes: tuple[str, ...] = ()  # mesh axes splitting the tokens, major to minor
  weight_spec: Optional[P] = None  # layout of d W (W's own); None: replicated


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


def kwargs_from_config(kcfg, mesh=None, token_axes=None, weight_spec=None) -> dict:
  """`token_logprobs` / `fused_logprob` keyword arguments of a `kernels` config block.

  Args:
    kcfg: the block (see default_config).
    mesh, token_axes: the mesh and the axes that shard the tokens (the batch axes); None =
      unsharded (then XLA partitions the pure-JAX impls as it likes).
    weight_spec: PartitionSpec of the LM head [D, V] (layout of its gradient); None = from
      r1jax.sharding.DEFAULT_RULES.

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
  if mesh is not None:
    out.update(mesh=mesh, token_axes=token_axes)
    if weight_spec is not None:
      out["weight_spec"] = weight_spec
  return out


def fused_logprob(hidden: jax.Array, lm_head: jax.Array, targets: jax.Array, *,
                  temperature: float = 1.0, ref_logprob: Optional[jax.Array] = None,
                  mask: Optional[jax.Array] = None, return_entropy: bool = False,
                  impl: str = "auto", chunk_size: int = 1024, block_tokens: int = 0,
                  block_vocab: int = 0, interpret: Optional[bool] = None,
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
    chunk_size: tokens per chunk of the chunked forward and of the backward (memory
      ~ chunk_size x V float32).
    block_tokens, block_vocab: Pallas tile sizes (0 = the backend's default).
    interpret: run Pallas in interpret mode (default: when the backend is CPU).
    mesh, token_axes: the tokens are sharded over mesh axes `token_axes` (a name or tuple
      of names, as in a PartitionSpec entry; None = none): forward and backward then run
      per device on its own tokens under shard_map (module docstring), every impl. The
      other mesh axes of size > 1 split the tokens further where they divide them.
    weight_spec: PartitionSpec of lm_head on `mesh` (where its gradient is reduce-scattered
      to); None = ("embed", "vocab") under r1jax.sharding.DEFAULT_RULES.

  Returns:
    LogprobOutput(logprob [N], entropy [N] | None, kl [N] | None), float32. Differentiable
    with respect to hidden and lm_head for any cotangents of the three outputs.

  Raises:
    ValueError: shapes that do not match, temperature <= 0, unknown impl, tokens that the
      batch axes of `token_axes` do not divide.
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
  axes: tuple[str, ...] = ()
  if mesh is not None:
    axes = split_axes(mesh, token_axes, N)
    if weight_spec is None:
      weight_spec = default_weight_spec(mesh, lm_head.shape)
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  spec = _Spec(float(temperature), impl, int(chunk_size), int(block_tokens),
               int(block_vocab), bool(interpret), mesh if axes else None, axes,
               weight_spec if axes else None)
  if impl == "naive":
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
                   temperature: float = 1.0, chunk_size: int = 1024, impl: str = "auto",
                   block_tokens: int = 0, block_vocab: int = 0, mesh=None, token_axes=None,
                   weight_spec=None, interpret: Optional[bool] = None):
  """Batched convenience form used by the losses: log-probs and entropies per position.

  Args:
    hidden: [B, T, D]; weight: [D, V]; targets: [B, T] int.
    temperature, chunk_size, impl, block_tokens, block_vocab, mesh, token_axes,
      weight_spec, interpret: as in `fused_logprob` (chunk_size counts tokens, i.e. rows
      of the flattened [B * T] batch; token_axes shard B).

  Returns:
    (logp [B, T], entropy [B, T]) float32.
  """
  B, T, D = hidden.shape
  out = fused_logprob(hidden.reshape(B * T, D), weight, targets.reshape(B * T),
                      temperature=temperature, return_entropy=True, impl=impl,
                      chunk_size=chunk_size, block_tokens=block_tokens,
                      block_vocab=block_vocab, mesh=mesh, token_axes=token_axes,
                      weight_spec=weight_spec, interpret=interpret)
  return out.logprob.reshape(B, T), out.entropy.reshape(B, T)


# ---------------------------------------------------------------------- sharding
def _as_axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def split_axes(mesh: jax.sharding.Mesh, token_axes: Any, num_tokens: int) -> tuple[str, ...]:
  """Mesh axes that split `num_tokens` tokens, major to minor: the batch axes
  `token_axes` (size-1 axes dropped), then every other mesh axis of size > 1 that divides
  what is left (an axis that does not is logged: its devices repeat the same tokens).

  Raises:
    ValueError: the batch axes do not divide num_tokens, or name an unknown mesh axis.
  """
  given = _as_axes(token_axes)
  unknown = [a for a in given if a not in mesh.shape]
  if unknown:
    raise ValueError(f"token_axes {unknown} are not axes of the mesh {dict(mesh.shape)}")
  axes = [a for a in given if mesh.shape[a] > 1]
  n = math.prod(mesh.shape[a] for a in axes)
  if num_tokens % n:
    raise ValueError(f"{num_tokens} tokens do not split over the batch axes {axes} "
                     f"({n} shards)")
  for a in mesh.axis_names:
    if a in given or mesh.shape[a] == 1:
      continue
    if num_tokens % (n * mesh.shape[a]) == 0:
      axes.append(a)
      n *= mesh.shape[a]
    else:
      logging.log_first_n(logging.WARNING, "fused log-prob: %d tokens do not split over mesh "
                          "axis %r as well; its %d devices compute the same tokens", 4,
                          num_tokens, a, mesh.shape[a])
  return tuple(axes)


def default_weight_spec(mesh: jax.sharding.Mesh, shape) -> P:
  """Layout of an LM head [D, V] under r1jax.sharding.DEFAULT_RULES (embed, vocab)."""
  from r1jax import sharding as shd
  return shd.logical_to_spec(("embed", "vocab"), shape, mesh, shd.DEFAULT_RULES,
                             on_indivisible="replicate")


def _reduce_weight_grad(dw: jax.Array, spec: _Spec) -> jax.Array:
  """Local d W partial sums -> the sum over the token axes, in W's layout (inside
  shard_map): psum_scatter along each dim over its token axes, psum over the others; a
  layout axis that does not split tokens (its devices hold equal sums) is a local slice."""
  layout = list(spec.weight_spec or P()) + [None] * (dw.ndim - len(spec.weight_spec or P()))
  tokens = set(spec.token_axes)
  scattered = set()
  for dim, entry in enumerate(layout):
    names = [a for a in _as_axes(entry) if spec.mesh.shape[a] > 1]
    if not names:
      continue
    if all(a in tokens for a in names):
      dw = jax.lax.psum_scatter(dw, tuple(names), scatter_dimension=dim, tiled=True)
      scattered.update(names)
    else:  # slice (major to minor), summing over the token axes among them first
      for a in names:
        if a in tokens:
          dw = jax.lax.psum_scatter(dw, a, scatter_dimension=dim, tiled=True)
          scattered.add(a)
        else:
          size = dw.shape[dim] // spec.mesh.shape[a]
          dw = jax.lax.dynamic_slice_in_dim(dw, jax.lax.axis_index(a) * size, size, dim)
  rest = tuple(a for a in spec.token_axes if a not in scattered)
  return jax.lax.psum(dw, rest) if rest else dw


def _sharded(fn, spec: _Spec, in_specs, out_specs, check_vma=False):
  """fn per device under shard_map over spec.token_axes, or fn itself when unsharded."""
  if spec.mesh is None:
    return fn
  return jax.shard_map(fn, mesh=spec.mesh, in_specs=in_specs, out_specs=out_specs,
                       check_vma=check_vma)


# ---------------------------------------------------------------------- naive reference
def _logits(h, w, temperature):
  """[C, D] x [D, V] -> [C, V] float32 logits / T, products in h's dtype."""
  return jnp.dot(h, w.astype(h.dtype), preferred_element_type=jnp.float32) / temperature


def _naive(h, w, y, temperature):
  logits = _logits(h, w, temperature)
  logsm = jax.nn.log_softmax(logits, axis=-1)
  logp = jnp.take_along_axis(logsm, y[:, None], axis=-1)[:, 0]
  ent = -jnp.sum(jnp.exp(logsm) * logsm, axis=-1)
  return logp, ent


def _naive_sharded(h, w, y, spec: _Spec):
  tok = P(spec.token_axes)
  # check_vma: autodiff then psums the replicated head's cotangent itself.
  run = _sharded(functools.partial(_naive, temperature=spec.temperature), spec,
                 (P(spec.token_axes, None), P(), tok), (tok, tok), check_vma=True)
  return run(h, w.astype(h.dtype), y)


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


def _forward_local(h, w, y, spec: _Spec):
  """(logp, entropy, lse), each [n] float32, of this device's tokens; w in h's dtype."""
  if spec.impl == "chunked":
    return _forward_chunked(h, w, y, spec)
  if spec.impl in ("pallas_tpu", "pallas_gpu"):
    if spec.impl == "pallas_gpu":
      from r1jax.kernels import logprob_gpu as kernel
    else:
      from r1jax.kernels import logprob_tpu as kernel
    return kernel.forward(h, w, y, temperature=spec.temperature,
                          block_tokens=spec.block_tokens, block_vocab=spec.block_vocab,
                          interpret=spec.interpret)
  raise ValueError(f"unknown fused impl {spec.impl!r}")


def _forward(h, w, y, spec: _Spec):
  tok = P(spec.token_axes)
  run = _sharded(functools.partial(_forward_local, spec=spec), spec,
                 (P(spec.token_axes, None), P(), tok), (tok, tok, tok))
  return run(h, w.astype(h.dtype), y)


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
  tok = P(spec.token_axes)

  def local(h, wc, y, lse, ent, g_lp, g_ent):
    dh, dw = _backward_chunked(h, wc, y, lse, ent, g_lp, g_ent, spec)
    if spec.mesh is not None:
      dw = _reduce_weight_grad(dw, spec)
    return dh, dw

  run = _sharded(local, spec, (P(spec.token_axes, None), P(), tok, tok, tok, tok, tok),
                 (P(spec.token_axes, None), spec.weight_spec or P()))
  dh, dw = run(h, w.astype(h.dtype), y, lse, ent, g_lp.astype(jnp.float32),
               g_ent.astype(jnp.float32))
  return dh, dw.astype(w.dtype), None


_fused.defvjp(_fused_fwd, _fused_bwd)


def _backward_chunked(h, w, y, lse, ent, g_lp, g_ent, spec: _Spec):
  """d hidden [n, D] (h's dtype) and the float32 d lm_head [D, V] of this device's tokens,
  recomputing logits per chunk of C tokens; w is in h's dtype."""
  N, D = h.shape
  V = w.shape[1]
  dt = h.dtype
  C = min(spec.chunk_size, N)
  n = -(-N // C)
  rows = lambda x: _pad_rows(x, n * C).reshape(n, C, *x.shape[1:])
  # Padded rows have zero cotangents, hence zero d logits.
  xs = (rows(h), rows(y), rows(lse), rows(ent), rows(g_lp), rows(g_ent))
  inv_t = 1.0 / spec.temperature

  def body(dw, x):
    hc, yc, lsec, entc, glp, gent = x
    logits = _logits(hc, w, spec.temperature)
    p = jnp.exp(logits - lsec[:, None])
    mean_l = (lsec - entc)[:, None]  # E_p[l] = lse - H
    onehot = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1) == yc[:, None]
    dl = (jnp.where(onehot, glp[:, None], 0.0) - p * (glp[:, None] + gent[:, None] *
                                                      (logits - mean_l))) * inv_t
    dl = dl.astype(dt)
    dhc = jnp.dot(dl, w.T, preferred_element_type=jnp.float32)
    dw = dw + jnp.dot(hc.T, dl, preferred_element_type=jnp.float32)
    return dw, dhc

  dw, dh = jax.lax.scan(body, jnp.zeros((D, V), jnp.float32), xs)
  return dh.reshape(n * C, D)[:N].astype(dt), dw
