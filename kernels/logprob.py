"""Per-token log-prob and entropy from hidden states and the LM head, without [N, V] logits.

`token_logprobs` is the interface the losses call; this file holds the pure-JAX chunked
reference (used on CPU and as the test oracle for the Pallas kernels). It scans over
chunks of the sequence axis; each chunk's logits [B, C, V] are recomputed in the backward
pass (jax.checkpoint), so peak memory is O(B * C * V) instead of O(B * T * V).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _chunk_stats(h, w, y, temperature):
  """h [B, C, D], w [D, V], y [B, C] -> (log p(y) [B, C], entropy [B, C]), float32."""
  logits = jnp.einsum("bcd,dv->bcv", h, w.astype(h.dtype),
                      preferred_element_type=jnp.float32) / temperature
  lse = jax.nn.logsumexp(logits, axis=-1)
  target = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
  p = jnp.exp(logits - lse[..., None])
  entropy = lse - jnp.sum(p * logits, axis=-1)
  return target - lse, entropy


@functools.partial(jax.jit, static_argnames=("temperature", "chunk_size"))
def token_logprobs(hidden: jax.Array, weight: jax.Array, targets: jax.Array, *,
                   temperature: float = 1.0, chunk_size: int = 128):
  """Log-probability of each target token and the entropy of each next-token distribution.

  Args:
    hidden: [B, T, D] final hidden states (any float dtype).
    weight: [D, V] LM head.
    targets: [B, T] int32 token ids whose log-prob is wanted at each position.
    temperature: logits are divided by it (match the sampler's temperature).
    chunk_size: positions per chunk along T (memory ~ B * chunk_size * V floats).

  Returns:
    logp [B, T] float32 = log softmax(hidden @ weight / temperature)[targets];
    entropy [B, T] float32 of that softmax. Differentiable w.r.t. hidden and weight.
  """
  B, T, D = hidden.shape
  C = min(chunk_size, T)
  n = -(-T // C)
  pad = n * C - T
  if pad:
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
  hs = hidden.reshape(B, n, C, D).swapaxes(0, 1)  # [n, B, C, D]
  ys = targets.reshape(B, n, C).swapaxes(0, 1)
  stats = jax.checkpoint(functools.partial(_chunk_stats, temperature=temperature))

  def body(_, xs):
    return None, stats(xs[0], weight, xs[1])

  _, (logp, ent) = jax.lax.scan(body, None, (hs, ys))
  logp = logp.swapaxes(0, 1).reshape(B, n * C)[:, :T]
  ent = ent.swapaxes(0, 1).reshape(B, n * C)[:, :T]
  return logp, ent
