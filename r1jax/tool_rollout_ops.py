"""Jitted parts of tool rollouts (r1jax.tool_rollout): prefill, decode segments with
per-sample cache lengths and pause / stop automata, and the resume that prefills tool
messages into the KV cache. Host NumPy in, device arrays out; the host loop lives in
r1jax.tool_rollout.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from r1jax import sampling
from r1jax.models import decoder
from r1jax.models.config import ModelConfig

__all__ = ["sample_rows", "token_keys", "write_chunk", "prefill", "decode_segment", "resume",
           "grow", "bucket_rows", "SAMPLING"]


def sample_rows(logits, keys, temperature, top_p, top_k):
  """sample_from_logits with one key per row: logits [..., V], keys [...]."""
  shape = keys.shape
  f = lambda lg, k: sampling.sample_from_logits(lg[None], k, temperature, top_p, top_k)
  tok, lp = jax.vmap(f)(logits.reshape(-1, logits.shape[-1]), keys.reshape(-1))
  return tok.reshape(shape), lp.reshape(shape)


def token_keys(row_keys, index):
  """Key of token `index` [...] of each row (row_keys [...])."""
  return jax.vmap(jax.random.fold_in)(row_keys.reshape(-1), index.reshape(-1)).reshape(
      index.shape)


def write_chunk(cache: decoder.KVCache, k, v, b, g, start, counts) -> decoder.KVCache:
  """Scatter chunk keys/values k, v [L, *S, T, K, Dh] of rows (b, g) (broadcast to S) into
  completion slots start + t, t < counts (start, counts broadcast to S); other positions
  are dropped."""
  N, T = cache.gen_k.shape[3], k.shape[-3]
  t = jnp.arange(T)
  slots = jnp.where(t < counts[..., None], start[..., None] + t, N)
  idx = (slice(None), b[..., None], g[..., None], slots)
  return cache._replace(gen_k=cache.gen_k.at[idx].set(k, mode="drop"),
                        gen_v=cache.gen_v.at[idx].set(v, mode="drop"))


SAMPLING = ("temperature", "top_p", "top_k")


@functools.partial(jax.jit, static_argnames=("cfg", "num_samples", "cache_len") + SAMPLING)
def prefill(params, ids, prompt_lengths, row_keys, *, cfg: ModelConfig, num_samples: int,
             cache_len: int, temperature: float, top_p: float, top_k: int):
  """Prompt cache with `cache_len` empty completion slots and token 0 of every sample."""
  last, cache = decoder.prefill(params, cfg, ids, prompt_lengths, num_samples, cache_len)
  lg = decoder.logits(params, cfg, last)
  lg = jnp.broadcast_to(lg[:, None], (lg.shape[0], num_samples, lg.shape[-1]))
  tok, lp = sample_rows(lg, token_keys(row_keys, jnp.zeros(row_keys.shape, jnp.int32)),
                         temperature, top_p, top_k)
  return cache, tok, lp


@functools.partial(jax.jit, static_argnames=("cfg", "stop_ids", "pad_id") + SAMPLING,
                   donate_argnames=("cache",))
def decode_segment(params, cache, prompt_lengths, row_keys, tokens, logprobs, n, done, paused,
            sstate, cstate, limit, wait_steps, stop_table, call_tbl, *, cfg: ModelConfig,
            stop_ids: tuple[int, ...], pad_id: int, temperature: float, top_p: float,
            top_k: int):
  """Decode every active sample (not done, not paused) one token per step until a pause has
  waited `wait_steps` steps, no sample is active, or an active sample would write past the
  cache. Sample (b, g) holds tokens [0, n) and cache slots [0, n - 1); its step feeds token
  n - 1 into slot n - 1 and samples token n."""
  B, G, N = tokens.shape
  C = cache.gen_k.shape[3]
  stop = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)
  sfinal, cfinal = stop_table.shape[0] - 1, call_tbl.shape[0] - 1
  bi = jnp.arange(B)[:, None]
  gi = jnp.arange(G)[None, :]

  def cond(s):
    steps, waited, _, _, _, n, done, paused, _, _ = s
    active = ~done & ~paused
    fits = jnp.all(jnp.where(active, n <= C, True))
    waiting = jnp.any(paused) & (waited >= wait_steps)
    return jnp.any(active) & fits & ~waiting

  def body(s):
    steps, waited, cache, tokens, logprobs, n, done, paused, sstate, cstate = s
    active = ~done & ~paused
    cur = tokens[bi, gi, n - 1]
    pos = prompt_lengths[:, None] + n - 1
    hidden, k, v = decoder.extend(params, cfg, cur[..., None], pos[..., None], cache, n - 1)
    cache = write_chunk(cache, k, v, bi, gi, n - 1, active.astype(jnp.int32))
    nxt, lp = sample_rows(decoder.logits(params, cfg, hidden[:, :, 0]),
                           token_keys(row_keys, n), temperature, top_p, top_k)
    at = jnp.where(active, n, N)  # inactive samples write nothing
    tokens = tokens.at[bi, gi, at].set(nxt, mode="drop")
    logprobs = logprobs.at[bi, gi, at].set(lp, mode="drop")
    n = n + active.astype(jnp.int32)
    sstate = jnp.where(active, stop_table[sstate, nxt], sstate)
    cstate = jnp.where(active, call_tbl[cstate, nxt], cstate)
    ends = jnp.any(nxt[..., None] == stop, axis=-1) | (sstate == sfinal) | (n >= limit)
    done = done | (active & ends)
    paused = paused | (active & ~ends & (cstate == cfinal))
    waited = jnp.where(jnp.any(paused), waited + 1, 0)
    return steps + 1, waited, cache, tokens, logprobs, n, done, paused, sstate, cstate

  s = (jnp.int32(0), jnp.int32(0), cache, tokens, logprobs, n, done, paused, sstate, cstate)
  s = jax.lax.while_loop(cond, body, s)
  return s[0], s[2], s[3:]


@functools.partial(jax.jit, static_argnames=("cfg", "num_samples") + SAMPLING,
                   donate_argnames=("cache",))
def resume(params, cache, prompt_lengths, row_keys, rows, chunk, counts, n, *,
            cfg: ModelConfig, num_samples: int, temperature: float, top_p: float, top_k: int):
  """Prefill chunk [R, T] (counts [R] real tokens: the last model token, then the tool
  message) of samples `rows` [R] (flat b * G + g; counts 0 = padding row) at slots
  n - 1 ... and sample each row's next token (index n - 1 + counts)."""
  G = num_samples
  b, g = rows // G, rows % G
  sub = decoder.KVCache(cache.prompt_k[:, b], cache.prompt_v[:, b],
                        cache.gen_k[:, b, g][:, :, None], cache.gen_v[:, b, g][:, :, None],
                        cache.prompt_mask[b])
  T = chunk.shape[-1]
  pos = (prompt_lengths[b] + n - 1)[:, None] + jnp.arange(T)
  hidden, k, v = decoder.extend(params, cfg, chunk[:, None], pos[:, None], sub,
                                (n - 1)[:, None])
  cache = write_chunk(cache, k[:, :, 0], v[:, :, 0], b, g, n - 1, counts)
  last = hidden[jnp.arange(rows.shape[0]), 0, jnp.maximum(counts - 1, 0)]
  keys = token_keys(row_keys.reshape(-1)[rows], n - 1 + counts)
  nxt, lp = sample_rows(decoder.logits(params, cfg, last), keys, temperature, top_p, top_k)
  return cache, nxt, lp


# No donation: the grown cache has a new shape, the old buffers could not be reused.
grow = jax.jit(decoder.grow_cache, static_argnums=1)


def bucket_rows(r: int, total: int) -> int:
  """Rows of a resume batch: 1, 4, 16, ... (few compiles), at most `total`."""
  b = 1
  while b < r:
    b *= 4
  return min(b, total)
