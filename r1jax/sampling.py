"""Jit-compiled group sampler: prefill once per prompt, decode G samples per prompt.

`generate()` is one jitted program: a prefill over the B prompts, then a
`lax.while_loop` that decodes one token per step for all B*G samples from a KV cache
whose prompt part ([L, B, P, K, Dh]) is shared by the G samples of each prompt; only the
completion part ([L, B, G, n, K, Dh]) is per sample. The loop stops as soon as every
sample has emitted a stop token or completed a stop string.

Stop strings are matched on decoded text, whatever the tokenisation (`</answer>` may end
inside the token `>.`): `StopStrings` compiles them into a character-level Aho-Corasick
automaton (Aho & Corasick 1975) lifted to tokens as a [states, V] table, built once on the
host from each token's decoded text; the decode loop carries one automaton state per sample
and stops it when the final state is reached. The caller then cuts the decoded text right
after the stop string (`decode_completions`, as vLLM does), so `</answer>.` stops and the
rewards see `...</answer>`. `Sampler` wraps it with length bucketing so that a run
compiles once per (prompt bucket, completion bucket) instead of every step.

Decode cost follows the generated length, not the budget: the completion cache starts
with `cache_block` slots and doubles (`decoder.grow_cache`) each time the samples reach its
end, so the attention of step t covers at most max(cache_block, 2t) slots instead of the
whole budget N (see `decode_phases`).

Sampling: temperature (0 = greedy), top-k, top-p (nucleus, Holtzman et al. 2020; both in
`r1jax.truncation`, without a selection over the whole vocabulary).
The log-prob returned for each sampled token is log softmax(logits / temperature) at the
token (raw logits when greedy), i.e. the policy's own probability before top-k/top-p
truncation: this is the "old log-prob" of the GRPO ratio (docs/method.md, "GRPO objective").
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.models import decoder
from r1jax.models.config import ModelConfig
# Re-exported: the stages build and decode stop strings through this module.
from r1jax.stop_strings import (StopStrings, decode_completions,  # noqa: F401
                                stop_sequences_for, token_texts, truncate_at_stop)
from r1jax.truncation import top_k_values, top_p_cutoff


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How to pick tokens.

  temperature: softmax temperature; 0 means greedy (argmax).
  top_p: nucleus mass in (0, 1]; 1 disables.
  top_k: keep the k most likely tokens; 0 disables.
  max_new_tokens: completion budget per sample (tokens).
  stop_ids: token ids that end a sample (the stop token is kept in the output).
  stop_sequences: stop strings compiled for a vocabulary (`StopStrings`, made by
    `stop_sequences_for(tokenizer, strings)`), or None: a sample ends at the token where its
    decoded text first contains one of them (the token is kept; `decode_completions` cuts
    the text after the string).
  """
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  max_new_tokens: int = 128
  stop_ids: tuple[int, ...] = ()
  stop_sequences: Optional[StopStrings] = None

  def __post_init__(self):
    if self.stop_sequences is not None and not isinstance(self.stop_sequences, StopStrings):
      raise TypeError("stop_sequences must be a StopStrings (sampling.stop_sequences_for("
                      f"tokenizer, strings)) or None, got {type(self.stop_sequences).__name__}")
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


class SampleOutput(NamedTuple):
  """Completions of B prompts x G samples.

  tokens: [B, G, N] int32; positions at or after `lengths` hold the pad id.
  lengths: [B, G] int32, completion tokens per sample (a final stop token included).
  logprobs: [B, G, N] float32, log-prob of each sampled token (0 past `lengths`).
  finished: [B, G] bool, True if the sample ended on a stop token (False = truncated).
  num_steps: int32 scalar, decode steps actually run (<= N; early exit).
  """
  tokens: jax.Array
  lengths: jax.Array
  logprobs: jax.Array
  finished: jax.Array
  num_steps: jax.Array


def sample_from_logits(logits: jax.Array, key: jax.Array, temperature: float, top_p: float,
                       top_k: int) -> tuple[jax.Array, jax.Array]:
  """Sample one token per row.

  Args:
    logits: [..., V] float32.
    key: PRNG key.
    temperature, top_p, top_k: see SamplingParams (static Python values).

  Returns:
    tokens [...] int32 and their log-probs [...] float32 under softmax(logits / T)
    (before top-k/top-p truncation; raw logits when greedy).
  """
  logits = logits.astype(jnp.float32)
  if temperature == 0:
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return tok, jnp.take_along_axis(logp, tok[..., None], axis=-1)[..., 0]
  scaled = logits / temperature
  logp = jax.nn.log_softmax(scaled, axis=-1)
  masked = scaled
  if top_k > 0 and top_k < logits.shape[-1]:
    kth = top_k_values(scaled, top_k)[..., -1:]
    masked = jnp.where(scaled < kth, -jnp.inf, masked)
  if top_p < 1.0:
    masked = jnp.where(masked < top_p_cutoff(masked, top_p), -jnp.inf, masked)
  tok = categorical(key, masked)
  return tok, jnp.take_along_axis(logp, tok[..., None], axis=-1)[..., 0]


def categorical(key: jax.Array, logits: jax.Array, block: int = 256) -> jax.Array:
  """Sample from softmax(logits) [..., V] by two-level inverse CDF: one uniform per row.

  jax.random.categorical draws V Gumbel variates per row (~0.27 s per step for 200 rows of
  a 49k vocabulary on a CPU); here a row costs one uniform, block sums, and one cumsum over
  `block` entries. -inf logits are never drawn.

  Returns:
    [...] int32 token ids.
  """
  shape, V = logits.shape[:-1], logits.shape[-1]
  flat = logits.reshape(-1, V).astype(jnp.float32)
  R = flat.shape[0]
  C = min(block, V)
  nb = -(-V // C)
  p = jnp.exp(flat - jnp.max(flat, axis=-1, keepdims=True))
  p = jnp.pad(p, ((0, 0), (0, nb * C - V)))
  blocks = p.reshape(R, nb, C)
  bsum = blocks.sum(axis=-1)  # [R, nb]
  cb = jnp.cumsum(bsum, axis=-1)
  u = jax.random.uniform(key, (R,), jnp.float32) * cb[:, -1]
  rows = jnp.arange(R)
  # First block whose cumulative mass exceeds u, among blocks with any mass.
  b = jnp.argmax((cb > u[:, None]) & (bsum > 0), axis=-1)
  u = u - (cb[rows, b] - bsum[rows, b])
  inner = blocks[rows, b]  # [R, C]
  ci = jnp.cumsum(inner, axis=-1)
  j = jnp.argmax((ci > u[:, None]) & (inner > 0), axis=-1)
  # Rounding can leave u >= the block's total: take its last token with mass.
  last = C - 1 - jnp.argmax((inner > 0)[:, ::-1], axis=-1)
  j = jnp.where(ci[rows, -1] > u, j, last)
  return (b * C + j).astype(jnp.int32).reshape(shape)


@functools.partial(jax.jit, static_argnames=("cfg", "num_samples", "cache_len", "temperature",
                                             "top_p", "top_k", "stop_ids", "pad_id",
                                             "cache_shardings", "cache_block"))
def generate(params, prompt_tokens: jax.Array, prompt_lengths: jax.Array, key: jax.Array,
             max_new_tokens: jax.Array, *, cfg: ModelConfig, num_samples: int, cache_len: int,
             temperature: float, top_p: float, top_k: int, stop_ids: tuple[int, ...],
             pad_id: int, stop_table: Optional[jax.Array] = None,
             cache_shardings: Optional[decoder.KVCache] = None,
             cache_block: int = 128) -> SampleOutput:
  """Prefill B prompts once and decode `num_samples` completions for each.

  Args:
    params: model params.
    prompt_tokens: [B, P] int32, right-padded prompts.
    prompt_lengths: [B] int32, real tokens per prompt (>= 1).
    key: PRNG key; the same key gives the same samples.
    max_new_tokens: int32 scalar <= cache_len (traced: changing it does not recompile).
    cfg: model config (static).
    num_samples: G (static).
    cache_len: N, the completion budget: length of the outputs and most slots the KV cache
      grows to (static).
    temperature, top_p, top_k: sampling settings (static).
    stop_ids: ids that end a sample (static).
    stop_table: [S, V] int32 stop-string automaton (`StopStrings.table`) or None; a sample
      ends when its state reaches S - 1.
    pad_id: id written after a sample ends (static).
    cache_shardings: optional KVCache of NamedShardings the cache is constrained to
      (static; see Sampler), else XLA propagates a layout from params and prompts.
    cache_block: completion slots the KV cache starts with; it doubles when the samples
      reach its end (static; see `decode_phases`). >= cache_len: one cache of cache_len
      slots from the start, whose attention covers the whole budget at every step.

  Returns:
    SampleOutput with N = cache_len.
  """
  B = prompt_tokens.shape[0]
  G, N = num_samples, cache_len
  stop = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)
  is_stop = lambda t: jnp.any(t[..., None] == stop, axis=-1)
  sample = functools.partial(sample_from_logits, temperature=temperature, top_p=top_p,
                             top_k=top_k)

  sizes = cache_schedule(N, cache_block)
  constrain = lambda c: (c if cache_shardings is None
                         else jax.lax.with_sharding_constraint(c, cache_shardings))
  last_hidden, cache = decoder.prefill(params, cfg, prompt_tokens, prompt_lengths, G, sizes[0])
  cache = constrain(cache)
  first_logits = decoder.logits(params, cfg, last_hidden)  # [B, V]
  tok0, lp0 = sample(jnp.broadcast_to(first_logits[:, None], (B, G, first_logits.shape[-1])),
                     jax.random.fold_in(key, 0))
  tokens = jnp.full((B, G, N), pad_id, jnp.int32).at[:, :, 0].set(tok0)
  logprobs = jnp.zeros((B, G, N), jnp.float32).at[:, :, 0].set(lp0)
  if stop_table is None:
    stop_table = jnp.zeros((2, first_logits.shape[-1]), jnp.int32)  # never reaches state 1
  final = stop_table.shape[0] - 1
  sstate = stop_table[0, tok0]  # [B, G] automaton state of each sample
  done = is_stop(tok0) | (sstate == final)
  lengths = jnp.ones((B, G), jnp.int32)
  limit = jnp.minimum(max_new_tokens, N)

  def cond(state):
    t, _, _, _, _, done, _, _ = state
    return (t + 1 < limit) & ~jnp.all(done)

  def body(state):
    t, cur, cache, tokens, logprobs, done, lengths, sstate = state
    positions = prompt_lengths[:, None] + t
    hidden, cache = decoder.decode_step(params, cfg, cur, jnp.broadcast_to(positions, (B, G)),
                                        cache, t)
    nxt, lp = sample(decoder.logits(params, cfg, hidden), jax.random.fold_in(key, t + 1))
    nxt = jnp.where(done, pad_id, nxt)
    lp = jnp.where(done, 0.0, lp)
    tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, :, None], (0, 0, t + 1))
    logprobs = jax.lax.dynamic_update_slice(logprobs, lp[:, :, None], (0, 0, t + 1))
    lengths = lengths + (~done).astype(jnp.int32)
    sstate = jnp.where(done, sstate, stop_table[sstate, nxt])
    done = done | is_stop(nxt) | (sstate == final)
    return t + 1, nxt, cache, tokens, logprobs, done, lengths, sstate

  state = (jnp.int32(0), tok0, cache, tokens, logprobs, done, lengths, sstate)
  t, _, _, tokens, logprobs, done, lengths, _ = decode_phases(
      cond, body, state, sizes, lambda c, n: constrain(decoder.grow_cache(c, n)))
  return SampleOutput(tokens, lengths, logprobs, done, t + 1)


def cache_schedule(cache_len: int, cache_block: int) -> tuple[int, ...]:
  """Completion-cache sizes the decode loop steps through: cache_block, 2*cache_block,
  4*cache_block, ..., then cache_len (the last size is always cache_len)."""
  if cache_block < 1:
    raise ValueError(f"cache_block must be >= 1, got {cache_block}")
  sizes = [min(cache_block, cache_len)]
  while sizes[-1] < cache_len:
    sizes.append(min(2 * sizes[-1], cache_len))
  return tuple(sizes)


def decode_phases(cond, body, state, sizes: Sequence[int], grow, cache_index: int = 2):
  """`lax.while_loop(cond, body, state)` over a KV cache that grows through `sizes`.

  Phase j runs the loop with a cache of sizes[j] slots while cond holds and the step
  state[0] (the slot `body` writes) is < sizes[j]; if cond still holds, the cache is
  grown to sizes[j + 1] (`grow(cache, n)`) and phase j + 1 continues from that state. Each
  phase is compiled with its own static cache length, so the decode attention reads only
  that many slots: no per-step or per-layer control flow and no dynamic shapes; a run
  whose samples all stop inside phase j never executes later phases (nor zero-fills or
  copies their caches; XLA's static buffer assignment may still reserve their memory).

  Choice (after JAX's ragged paged attention, vLLM's PagedAttention and MaxText's ragged
  decode, which bound the attention of each sequence by its kv length, block by block):
  every sample of a group decodes at the same step, so the valid prefix of the completion
  cache has one length for the whole batch and a doubling cache gets the same bound
  (<= 2x the valid prefix) from plain XLA ops that run, unchanged, on CPU, GPU and TPU and
  under any batch / KV-head sharding; the attention of each phase is the full-budget
  formula on a shorter cache, so results equal the single full-size cache up to fp32
  summation order over masked (exactly zero) slots.

  Args:
    cond, body: as for lax.while_loop; the state is a tuple whose element 0 is the int32
      step and element `cache_index` the KVCache.
    state: initial state, its cache holding sizes[0] slots.
    sizes: increasing cache sizes (see `cache_schedule`).
    grow: (cache, slots) -> cache with `slots` slots.

  Returns:
    the final state with the cache element replaced by None (its size depends on the
    phase the loop ended in).
  """
  without_cache = lambda s: s[:cache_index] + (None,) + s[cache_index + 1:]

  def run(j, state):
    n = sizes[j]
    state = jax.lax.while_loop(lambda s: cond(s) & (s[0] < n), body, state)
    if j + 1 == len(sizes):
      return without_cache(state)

    def next_phase(s):
      return run(j + 1, s[:cache_index] + (grow(s[cache_index], sizes[j + 1]),)
                 + s[cache_index + 1:])

    return jax.lax.cond(cond(state), next_phase, without_cache, state)

  return run(0, state)


def _to_host(out: SampleOutput, process_local: bool) -> SampleOutput:
  """NumPy outputs: this process's rows (process_local) or the whole global arrays."""
  if jax.process_count() == 1 or all(x.is_fully_addressable for x in out):
    return jax.device_get(out)
  from r1jax import sharding as shd
  if process_local:
    return SampleOutput(*(shd.local_rows(x) for x in out))
  from jax.experimental import multihost_utils
  return SampleOutput(*(np.asarray(x) if x.is_fully_replicated
                        else np.asarray(multihost_utils.process_allgather(x, tiled=True))
                        for x in out))


def bucket_length(n: int, minimum: int = 16) -> int:
  """Smallest bucket >= n on the ladder minimum, 2*minimum, 3*minimum, 4*minimum, 6*minimum,
  8*minimum, 12*minimum, ... (powers of two and 1.5x powers of two): padded lengths take few
  distinct values, so jit compiles a handful of programs per run instead of one per step,
  and padding wastes at most a third."""
  b = minimum
  while True:
    if b >= n:
      return b
    if b >= 2 * minimum and (b * 3 // 2) >= n and (b * 3) % 2 == 0:
      return b * 3 // 2
    b *= 2


class Sampler:
  """Group rollouts with bucketed shapes.

  Example:
    sampler = Sampler(cfg, pad_id=tok.pad_id)
    out = sampler(params, prompts, key, num_samples=4,
                  sampling=SamplingParams(temperature=1.0, max_new_tokens=128, stop_ids=tok.stop_ids))
  """

  def __init__(self, cfg: ModelConfig, *, pad_id: int = 0, min_prompt_bucket: int = 16,
               min_completion_bucket: int = 16, max_total_len: Optional[int] = None,
               mesh=None, rules: Optional[dict] = None, cache_block: int = 128):
    self.cfg = cfg
    self.pad_id = pad_id
    self.min_prompt_bucket = min_prompt_bucket
    self.min_completion_bucket = min_completion_bucket
    self.max_total_len = max_total_len or cfg.max_position_embeddings
    # First completion-cache size; the cache doubles as samples grow (see decode_phases).
    # Each size in the schedule compiles its own decode step (log2(budget / cache_block)
    # of them, in one program).
    self.cache_block = cache_block
    # With a mesh, prompts (and the KV cache) are split over the batch axes of `rules`
    # (data-parallel rollouts) whenever the batch divides evenly, and the cache's KV heads
    # over `kv_heads`' axes; params keep whatever sharding they have (the caller reshards
    # them to the sampler's layout explicitly).
    self.mesh = mesh
    from r1jax import sharding as shd
    self.rules = dict(rules if rules is not None else shd.DEFAULT_RULES)
    self.last_stats: dict[str, float] = {}
    self._stop_tables: dict = {}

  def _stop_table(self, stop: Optional[StopStrings]):
    """The automaton table on device (replicated over the mesh), uploaded once per set."""
    if stop is None:
      return None
    if stop not in self._stop_tables:
      if stop.table.shape[1] != self.cfg.vocab_size:
        raise ValueError(f"stop strings compiled for a vocabulary of {stop.table.shape[1]} "
                         f"tokens, the model has {self.cfg.vocab_size}")
      if self.mesh is None:
        table = jnp.asarray(stop.table)
      else:
        from r1jax import sharding as shd
        table = jax.device_put(stop.table, shd.replicated(self.mesh))
      self._stop_tables[stop] = table
    return self._stop_tables[stop]

  def _sharded(self, batch: int) -> bool:
    from r1jax import sharding as shd
    return self.mesh is not None and batch % shd.batch_divisor(self.mesh, self.rules) == 0

  def _place(self, ids: np.ndarray, lengths: np.ndarray, process_local: bool = False):
    from r1jax import sharding as shd
    if self.mesh is None:
      return jnp.asarray(ids), jnp.asarray(lengths)
    B = ids.shape[0] * (jax.process_count() if process_local else 1)
    if self._sharded(B):
      return (shd.global_batch(ids, shd.batch_sharding(self.mesh, 2, self.rules),
                               process_local=process_local),
              shd.global_batch(lengths, shd.batch_sharding(self.mesh, 1, self.rules),
                               process_local=process_local))
    if process_local and jax.process_count() > 1:
      raise ValueError(f"a global batch of {B} prompts does not split over the mesh's "
                       f"{shd.batch_divisor(self.mesh, self.rules)} batch shards")
    if jax.process_count() == 1:
      return jnp.asarray(ids), jnp.asarray(lengths)
    rep = shd.replicated(self.mesh)  # every process holds the same whole batch
    return jax.device_put(ids, rep), jax.device_put(lengths, rep)

  def _cache_shardings(self, B: int):
    if self.mesh is None or not self._sharded(B):
      return None
    from r1jax import sharding as shd
    cfg = self.cfg
    L, K, Dh = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
    # Dims that only matter for divisibility: length / samples are never sharded here.
    spec = lambda axes, shape: jax.sharding.NamedSharding(
        self.mesh, shd.logical_to_spec(axes, shape, self.mesh, self.rules))
    prompt = spec(shd.KV_PROMPT_AXES, (L, B, 1, K, Dh))
    gen = spec(shd.KV_COMPLETION_AXES, (L, B, 1, 1, K, Dh))
    return decoder.KVCache(prompt, prompt, gen, gen, spec(("batch", "length"), (B, 1)))

  def pad_prompts(self, prompts: Sequence[Sequence[int]], *,
                  process_local: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token lists to a bucketed length: ([B, P] int32, [B] int32).

    process_local: the prompts are this process's share of a global batch; all processes
      then agree on P (the bucket of the global longest prompt; a collective).
    """
    if not prompts:
      raise ValueError("no prompts given")
    lengths = np.array([len(p) for p in prompts], np.int32)
    if lengths.min() < 1:
      raise ValueError(f"prompt {int(lengths.argmin())} is empty")
    P = bucket_length(int(lengths.max()), self.min_prompt_bucket)
    if process_local and jax.process_count() > 1:
      from r1jax import sharding as shd
      P = int(shd.process_allgather(np.asarray([P], np.int32)).max())
    ids = np.full((len(prompts), P), self.pad_id, np.int32)
    for i, p in enumerate(prompts):
      ids[i, :len(p)] = p
    return ids, lengths

  def __call__(self, params, prompts, key: jax.Array, *, num_samples: int = 1,
               sampling: SamplingParams = SamplingParams(),
               process_local: bool = False) -> SampleOutput:
    """Sample `num_samples` completions for each prompt.

    Args:
      params: model params.
      prompts: a list of token-id lists, or a pair (ids [B, P] int32 right-padded,
        lengths [B] int32).
      key: PRNG key.
      num_samples: G.
      sampling: SamplingParams.
      process_local: with several processes, `prompts` are this process's rows of a global
        batch (every process calls at once, with as many rows, padded by
        `pad_prompts(..., process_local=True)`) and the result holds this process's rows.
        False: every process passes the same whole batch and gets the whole result.

    Returns:
      SampleOutput as NumPy arrays, trimmed to N = max_new_tokens.

    Raises:
      ValueError: a prompt is empty, or prompt + max_new_tokens exceeds max_total_len.
    """
    if (isinstance(prompts, tuple) and len(prompts) == 2
        and isinstance(prompts[0], (np.ndarray, jax.Array))):
      ids, lengths = np.asarray(prompts[0]), prompts[1]
      P = bucket_length(ids.shape[1], self.min_prompt_bucket)
      if P != ids.shape[1]:
        ids = np.pad(ids, ((0, 0), (0, P - ids.shape[1])), constant_values=self.pad_id)
      lengths = np.asarray(lengths, np.int32)
    else:
      ids, lengths = self.pad_prompts(prompts, process_local=process_local)
    longest = int(lengths.max())
    if longest + sampling.max_new_tokens > self.max_total_len:
      raise ValueError(
          f"prompt of {longest} tokens + max_new_tokens={sampling.max_new_tokens} exceeds the "
          f"context limit of {self.max_total_len} tokens")
    N = bucket_length(sampling.max_new_tokens, self.min_completion_bucket)
    t0 = time.perf_counter()
    ids, lengths = self._place(ids, lengths, process_local)
    out = generate(params, ids, lengths, key,
                   jnp.int32(sampling.max_new_tokens), cfg=self.cfg, num_samples=num_samples,
                   cache_len=N, temperature=float(sampling.temperature),
                   top_p=float(sampling.top_p), top_k=int(sampling.top_k),
                   stop_ids=tuple(int(s) for s in sampling.stop_ids), pad_id=int(self.pad_id),
                   stop_table=self._stop_table(sampling.stop_sequences),
                   cache_shardings=self._cache_shardings(ids.shape[0]),
                   cache_block=self.cache_block)
    out = _to_host(out, process_local)
    n = sampling.max_new_tokens
    out = SampleOutput(out.tokens[:, :, :n], out.lengths, out.logprobs[:, :, :n], out.finished,
                       out.num_steps)
    seconds = time.perf_counter() - t0
    self.last_stats = {"seconds": seconds, "generated_tokens": int(out.lengths.sum()),
                       "tokens_per_second": float(out.lengths.sum()) / max(seconds, 1e-9)}
    return out
