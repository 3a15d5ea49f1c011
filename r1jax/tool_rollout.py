"""Multi-turn rollouts with a Python tool: samples pause at a tool call, the code runs in
the sandbox, its output is prefilled into the KV cache, and decoding resumes.

`ToolSampler` has the call signature of `r1jax.sampling.Sampler` and returns a
`ToolSampleOutput` (a superset of `SampleOutput`: the same first five fields, plus the tool
mask and per-sample call counts). The plain sampler is untouched: without tools the stages
keep its single jitted program (and its exact outputs).

How a batch proceeds (B prompts x G samples, completion cache per sample):
  1. prefill: each prompt once (`decoder.prefill`), the first token of its G samples.
  2. decode segment (one jitted `lax.while_loop`): every sample that is neither finished
     nor paused decodes one token per step into its own cache slot (per-sample lengths:
     `decoder.extend` with T = 1 and a scatter at each sample's slot). A sample pauses at
     the token that closes a tool call (`r1jax.tool_calls.call_table`, an automaton carried
     per sample next to the stop-string automaton). The loop returns to the host when a
     pause has waited `pause_wait_steps` steps, when every sample is finished or paused, or
     when a sample reaches the end of the (growing) completion cache.
  3. tool calls: the host extracts the code of every paused sample, runs all of them at
     once through the executor (the code sandbox: one isolated process per call, each with
     its wall limit, so a batch costs at most about one limit), and tokenises each output
     (sanitised, truncated to `max_output_tokens`) inside the format's tool message.
  4. resume (one jitted forward per resume): the paused samples' last model token and
     their tool messages are run as one chunk per sample against the cache
     (`decoder.extend`, gathered rows; the chunk's keys/values are scattered at each
     sample's own offset), the next model token is sampled from the chunk's last position,
     and decoding goes on (step 2).
  A sample ends at a stop token / stop string, at the total budget `max_new_tokens` (model
  and tool tokens together), or when it opens a call past `max_calls` or without room for
  the tool message (then it counts as truncated, `finished` False).

Randomness is per sample: token j of sample (b, g) is drawn with
fold_in(fold_in(key, b * G + g), j), so a sample's tokens do not depend on when other
samples pause or resume. Log-probs are those of `sampling.sample_from_logits` (the policy at
the sampling temperature, before top-k/top-p), 0 at tool tokens; `tool_mask` marks the tool
tokens, which the GRPO stage removes from the loss, the KL and the entropy (only the model's
own tokens are actions).

The tool-integrated reasoning format follows ToRA (Gou et al. 2024) and Qwen2.5-Math; the
multi-turn GRPO masking of tool tokens follows ReTool (Feng et al. 2025) and the multi-turn
rollouts of verl / SkyRL.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import sampling
from r1jax.models.config import ModelConfig
from r1jax.stop_strings import token_texts
from r1jax import tool_rollout_ops as ops
from r1jax.tool_calls import ToolFormat, call_table, get_format, sanitize_output

__all__ = ["ToolSettings", "ToolSampleOutput", "ToolSampler", "tool_metrics",
           "settings_from_config"]

# Executor protocol: executor(codes: list[str]) -> list of results with `.status` ("ok",
# "error", "timeout", "output_limit") and `.output` (str), one per code, within about the
# executor's wall limit (r1jax.rewards.tool_exec.SandboxToolExecutor).
Executor = Callable[[Sequence[str]], Sequence[Any]]


@dataclasses.dataclass(frozen=True)
class ToolSettings:
  """Tool rollouts.

  format: the ToolFormat of calls and tool messages (r1jax.tool_calls).
  max_calls: K, the most calls a sample may make; a sample that opens call K + 1 ends.
  max_output_tokens: tool output tokens kept per call (the wrapper comes on top).
  pause_wait_steps: decode steps a paused sample may wait for other samples to pause too
    (their calls then run, and resume, together); 0 returns to the host at once.
  """
  format: ToolFormat
  max_calls: int = 2
  max_output_tokens: int = 32
  pause_wait_steps: int = 0

  def __post_init__(self):
    if self.max_calls < 0:
      raise ValueError(f"tools.max_calls must be >= 0, got {self.max_calls}")
    if self.max_output_tokens < 1:
      raise ValueError(f"tools.max_output_tokens must be >= 1, got {self.max_output_tokens}")
    if self.pause_wait_steps < 0:
      raise ValueError(f"tools.pause_wait_steps must be >= 0, got {self.pause_wait_steps}")


def settings_from_config(tc) -> ToolSettings:
  """ToolSettings from a `tools` config block (configs/common.py `add_tools`).

  Raises:
    ValueError: an unknown format or a bad value (naming the tools.* key).
  """
  return ToolSettings(get_format(tc.format, start=tc.get("call_start", ""),
                                 end=tc.get("call_end", "")),
                      max_calls=int(tc.max_calls), max_output_tokens=int(tc.max_output_tokens),
                      pause_wait_steps=int(tc.pause_wait_steps))


class ToolSampleOutput(NamedTuple):
  """Tool rollouts of B prompts x G samples (N = max_new_tokens; host NumPy arrays).

  tokens: [B, G, N] int32, model and tool tokens in order; pad id from `lengths` on.
  lengths: [B, G] int32, tokens per sample (tool tokens included).
  logprobs: [B, G, N] float32, log-prob of each model token (0 at tool tokens and padding).
  finished: [B, G] bool, ended on a stop token / stop string.
  num_steps: int, decode steps run (all segments) plus resumes.
  tool_mask: [B, G, N] bool, True at tool-message tokens (not trained on).
  num_calls: [B, G] int32, tool calls run.
  tool_errors: [B, G] int32, calls whose program failed (exception, crash, bad call body,
    output over the sandbox's cap).
  tool_timeouts: [B, G] int32, calls stopped at the wall limit.
  call_limit_hit: [B, G] bool, the sample ended at a call past max_calls or without room
    for the tool message.
  """
  tokens: np.ndarray
  lengths: np.ndarray
  logprobs: np.ndarray
  finished: np.ndarray
  num_steps: int
  tool_mask: np.ndarray
  num_calls: np.ndarray
  tool_errors: np.ndarray
  tool_timeouts: np.ndarray
  call_limit_hit: np.ndarray


# --------------------------------------------------------------------------- the sampler
class ToolSampler:
  """Group rollouts with tool calls (module docstring); called like sampling.Sampler.

  Example:
    from r1jax.rewards.tool_exec import SandboxToolExecutor
    ts = ToolSampler(cfg, tok, ToolSettings(get_format("fenced")), SandboxToolExecutor())
    out = ts(params, prompts, key, num_samples=4, sampling=SamplingParams(...))

  Args:
    cfg: model config.
    tokenizer: encodes tool messages and decodes calls (`encode`, `decode`, `vocab_size`).
    settings: ToolSettings.
    executor: runs a batch of programs (see `Executor`).
    pad_id, min_prompt_bucket, min_completion_bucket, max_total_len, cache_block: as for
      sampling.Sampler (prompt / completion length buckets, first completion-cache size).

  Single-process only (NotImplementedError otherwise); the batch is laid out by XLA from
  the params' sharding.
  """

  def __init__(self, cfg: ModelConfig, tokenizer, settings: ToolSettings, executor: Executor,
               *, pad_id: int = 0, min_prompt_bucket: int = 16, min_completion_bucket: int = 16,
               max_total_len: Optional[int] = None, cache_block: int = 128):
    self.cfg = cfg
    self.tokenizer = tokenizer
    self.settings = settings
    self.executor = executor
    self.pad_id = pad_id
    self.cache_block = cache_block
    self.min_prompt_bucket = min_prompt_bucket
    self.min_completion_bucket = min_completion_bucket
    self.max_total_len = max_total_len or cfg.max_position_embeddings
    self._padder = sampling.Sampler(cfg, pad_id=pad_id, min_prompt_bucket=min_prompt_bucket)
    texts = token_texts(tokenizer)
    if len(texts) != cfg.vocab_size:
      raise ValueError(f"the tokenizer has {len(texts)} tokens, the model {cfg.vocab_size}")
    self.call_table = call_table(settings.format, texts)
    specials = [tokenizer.decode([i], skip_special_tokens=False)
                for i in sorted(getattr(tokenizer, "special_ids", ()))]
    self._reserved = settings.format.reserved + tuple(s for s in specials if s)
    self.last_stats: dict[str, float] = {}

  def close(self) -> None:
    """Release the executor (if it has a `close`)."""
    if hasattr(self.executor, "close"):
      self.executor.close()

  def pad_prompts(self, prompts, *, process_local: bool = False):
    """As sampling.Sampler.pad_prompts."""
    return self._padder.pad_prompts(prompts, process_local=process_local)

  def _encode(self, text: str) -> list[int]:
    ids = self.tokenizer.encode(text, add_bos=False)
    suffix = list(getattr(self.tokenizer, "suffix_ids", ()) or ())
    return ids[:-len(suffix)] if suffix and ids[-len(suffix):] == suffix else ids

  def __call__(self, params, prompts, key: jax.Array, *, num_samples: int = 1,
               sampling: sampling.SamplingParams = sampling.SamplingParams(),
               process_local: bool = False) -> ToolSampleOutput:
    """Sample `num_samples` completions with tool calls for each prompt.

    Args: as sampling.Sampler.__call__.

    Returns:
      ToolSampleOutput (NumPy), trimmed to N = sampling.max_new_tokens.

    Raises:
      ValueError: an empty prompt, or prompt + max_new_tokens over max_total_len.
      NotImplementedError: several processes.
    """
    if jax.process_count() > 1:
      raise NotImplementedError("tool rollouts run in a single process (tools.enabled with "
                                f"{jax.process_count()} processes)")
    sp = sampling
    if (isinstance(prompts, tuple) and len(prompts) == 2
        and isinstance(prompts[0], (np.ndarray, jax.Array))):
      ids, plen = np.asarray(prompts[0]), np.asarray(prompts[1], np.int32)
      P = sampling_bucket(ids.shape[1], self.min_prompt_bucket)
      ids = np.pad(ids, ((0, 0), (0, P - ids.shape[1])), constant_values=self.pad_id)
    else:
      ids, plen = self.pad_prompts(prompts)
    if int(plen.max()) + sp.max_new_tokens > self.max_total_len:
      raise ValueError(f"prompt of {int(plen.max())} tokens + max_new_tokens="
                       f"{sp.max_new_tokens} exceeds the context limit of "
                       f"{self.max_total_len} tokens")
    t0 = time.perf_counter()
    run = _Run(self, params, ids, plen, key, num_samples, sp)
    out = run.loop()
    seconds = time.perf_counter() - t0
    model_tokens = int(out.lengths.sum() - out.tool_mask.sum())
    self.last_stats = {"seconds": seconds, "generated_tokens": model_tokens,
                       "tool_tokens": int(out.tool_mask.sum()),
                       "tokens_per_second": model_tokens / max(seconds, 1e-9),
                       "resumes": run.resumes, "segments": run.segments,
                       "tool_seconds": run.tool_seconds}
    return out


def sampling_bucket(n: int, minimum: int) -> int:
  """sampling.bucket_length (the prompt / completion length ladder)."""
  return sampling.bucket_length(n, minimum)


class _Run:
  """The host loop of one ToolSampler call (decode segments, tool calls, resumes)."""

  def __init__(self, ts: ToolSampler, params, ids, plen, key, G: int,
               sp: sampling.SamplingParams):
    self.ts, self.params, self.sp, self.G = ts, params, sp, G
    B = ids.shape[0]
    self.B = B
    self.limit = sp.max_new_tokens
    N = sampling_bucket(sp.max_new_tokens, ts.min_completion_bucket)
    self.N = N
    self.sizes = sampling.cache_schedule(N, ts.cache_block)
    self.kw = dict(temperature=float(sp.temperature), top_p=float(sp.top_p),
                   top_k=int(sp.top_k))
    V = ts.cfg.vocab_size
    stop = sp.stop_sequences
    self.stop_np = stop.table if stop is not None else np.zeros((2, V), np.int32)
    self.stop_ids = tuple(int(s) for s in sp.stop_ids)
    self.stop_strings = stop.strings if stop is not None else ()
    self.stop_dev, self.call_dev = jnp.asarray(self.stop_np), jnp.asarray(ts.call_table)
    self.plen = jnp.asarray(plen)
    self.row_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(
        jnp.arange(B * G)).reshape(B, G)
    self.resumes = self.segments = 0
    self.tool_seconds = 0.0
    self.steps = 0
    cache, tok0, lp0 = ops.prefill(params, jnp.asarray(ids), self.plen, self.row_keys,
                                cfg=ts.cfg, num_samples=G, cache_len=self.sizes[0], **self.kw)
    self.cache = cache
    tok0, lp0 = np.asarray(tok0), np.asarray(lp0)
    self.tokens = np.full((B, G, N), ts.pad_id, np.int32)
    self.tokens[:, :, 0] = tok0
    self.logprobs = np.zeros((B, G, N), np.float32)
    self.logprobs[:, :, 0] = lp0
    self.tool_mask = np.zeros((B, G, N), bool)
    self.n = np.ones((B, G), np.int32)
    self.seg_start = np.zeros((B, G), np.int32)
    self.sstate = self.stop_np[0, tok0]
    self.cstate = ts.call_table[0, tok0]
    self.done = np.zeros((B, G), bool)
    self.paused = np.zeros((B, G), bool)
    self.finished = np.zeros((B, G), bool)
    self.calls = np.zeros((B, G), np.int32)
    self.errors = np.zeros((B, G), np.int32)
    self.timeouts = np.zeros((B, G), np.int32)
    self.limit_hit = np.zeros((B, G), bool)
    self._after_token(np.ones((B, G), bool), tok0)

  def _after_token(self, rows: np.ndarray, tok: np.ndarray) -> None:
    """Stop / pause flags of the samples `rows` (bool [B, G]) that just sampled `tok`."""
    sfinal, cfinal = self.stop_np.shape[0] - 1, self.ts.call_table.shape[0] - 1
    stopped = np.isin(tok, self.stop_ids) | (self.sstate == sfinal)
    ends = stopped | (self.n >= self.limit)
    self.finished |= rows & stopped
    self.done |= rows & ends
    self.paused = np.where(rows, ~ends & (self.cstate == cfinal), self.paused)

  def _grow(self, need: int) -> None:
    """Grow the completion cache to the first scheduled size >= need slots."""
    size = self.cache.gen_k.shape[3]
    target = next(s for s in self.sizes if s >= need)
    if target > size:
      self.cache = ops.grow(self.cache, target)

  def loop(self) -> ToolSampleOutput:
    while True:
      if self.paused.any():
        self._tool_calls()
        continue
      active = ~self.done & ~self.paused
      if not active.any():
        break
      self._grow(int(self.n[active].max()))
      self._segment()
    lim = self.limit
    return ToolSampleOutput(self.tokens[:, :, :lim], self.n.copy(), self.logprobs[:, :, :lim],
                            self.finished.copy(), self.steps + self.resumes,
                            self.tool_mask[:, :, :lim], self.calls, self.errors, self.timeouts,
                            self.limit_hit)

  def _segment(self) -> None:
    ts = self.ts
    steps, self.cache, state = ops.decode_segment(
        self.params, self.cache, self.plen, self.row_keys, jnp.asarray(self.tokens),
        jnp.asarray(self.logprobs), jnp.asarray(self.n), jnp.asarray(self.done),
        jnp.asarray(self.paused), jnp.asarray(self.sstate), jnp.asarray(self.cstate),
        jnp.int32(self.limit), jnp.int32(ts.settings.pause_wait_steps), self.stop_dev,
        self.call_dev, cfg=ts.cfg, stop_ids=self.stop_ids, pad_id=int(ts.pad_id), **self.kw)
    (tokens, logprobs, n, done, paused, sstate, cstate) = jax.device_get(state)
    self.tokens, self.logprobs = np.array(tokens), np.array(logprobs)
    newly = done & ~self.done
    self.finished |= newly & (np.isin(self._last_tokens(n), self.stop_ids)
                              | (sstate == self.stop_np.shape[0] - 1))
    self.n, self.done, self.paused = np.array(n), np.array(done), np.array(paused)
    self.sstate, self.cstate = np.array(sstate), np.array(cstate)
    self.steps += int(steps)
    self.segments += 1

  def _last_tokens(self, n: np.ndarray) -> np.ndarray:
    return np.take_along_axis(self.tokens, (n - 1)[..., None], axis=2)[..., 0]

  def _tool_calls(self) -> None:
    """Run the calls of all paused samples, then prefill their tool messages and resume."""
    ts, st, tok = self.ts, self.ts.settings, self.ts.tokenizer
    rows, codes, plans = [], [], []
    for b, g in zip(*np.nonzero(self.paused)):
      self.paused[b, g] = False
      n = int(self.n[b, g])
      text = tok.decode(self.tokens[b, g, self.seg_start[b, g]:n])
      head, tail = st.format.response("", after=text)
      head_ids, tail_ids = ts._encode(head), ts._encode(tail)
      room = self.limit - n - 1 - len(head_ids) - len(tail_ids)
      if self.calls[b, g] >= st.max_calls or room < 0:
        self.done[b, g] = self.limit_hit[b, g] = True
        continue
      rows.append((b, g))
      codes.append(st.format.extract_code(text))
      plans.append((head_ids, tail_ids, min(room, st.max_output_tokens)))
    if not rows:
      return
    t0 = time.perf_counter()
    runnable = [i for i, c in enumerate(codes) if c is not None]
    results = dict(zip(runnable, ts.executor([codes[i] for i in runnable]))) if runnable else {}
    self.tool_seconds += time.perf_counter() - t0
    chunks = []
    for i, ((b, g), (head_ids, tail_ids, room)) in enumerate(zip(rows, plans)):
      res = results.get(i)
      status = res.status if res is not None else "error"
      output = res.output if res is not None else "Error: the tool call holds no code"
      self.calls[b, g] += 1
      self.errors[b, g] += status in ("error", "output_limit")
      self.timeouts[b, g] += status == "timeout"
      out_ids = ts._encode(sanitize_output(output, ts._reserved).strip("\n"))[:room]
      chunks.append(head_ids + out_ids + tail_ids)
    self._resume(rows, chunks)

  def _resume(self, rows, chunks) -> None:
    ts, G = self.ts, self.G
    R = ops.bucket_rows(len(rows), self.B * G)
    T = sampling_bucket(1 + max(len(c) for c in chunks), 16)
    flat = np.zeros(R, np.int32)
    chunk = np.full((R, T), ts.pad_id, np.int32)
    counts = np.zeros(R, np.int32)
    n = np.ones(R, np.int32)
    for i, ((b, g), c) in enumerate(zip(rows, chunks)):
      flat[i], n[i], counts[i] = b * G + g, self.n[b, g], 1 + len(c)
      chunk[i, 0] = self.tokens[b, g, self.n[b, g] - 1]
      chunk[i, 1:1 + len(c)] = c
    self._grow(int((n - 1 + counts).max()))
    self.cache, nxt, lp = ops.resume(self.params, self.cache, self.plen, self.row_keys,
                                  jnp.asarray(flat), jnp.asarray(chunk), jnp.asarray(counts),
                                  jnp.asarray(n), cfg=ts.cfg, num_samples=G, **self.kw)
    nxt, lp = np.asarray(nxt), np.asarray(lp)
    touched = np.zeros((self.B, G), bool)
    tok_new = np.zeros((self.B, G), np.int32)
    for i, ((b, g), c) in enumerate(zip(rows, chunks)):
      s, m = self.n[b, g], len(c)
      self.tokens[b, g, s:s + m] = c
      self.tool_mask[b, g, s:s + m] = True
      self.tokens[b, g, s + m] = nxt[i]
      self.logprobs[b, g, s + m] = lp[i]
      self.n[b, g] = s + m + 1
      self.seg_start[b, g] = s + m
      self.sstate[b, g] = self.stop_np[self.sstate[b, g], nxt[i]]
      self.cstate[b, g] = ts.call_table[0, nxt[i]]
      touched[b, g], tok_new[b, g] = True, nxt[i]
    self._after_token(touched, tok_new)
    self.resumes += 1


# --------------------------------------------------------------------------- metrics
def tool_metrics(out: ToolSampleOutput, accuracy: Optional[np.ndarray] = None, *,
                 prefix: str = "tool/", suffix: str = "") -> dict[str, float]:
  """Per-step tool metrics of a rollout.

  Args:
    out: the rollout (ToolSampleOutput; B x G samples).
    accuracy: [B * G] per-sample accuracy (the `accuracy` reward), or None.
    prefix, suffix: around each metric name.

  Returns:
    calls_per_sample (mean calls), call_rate (fraction of samples with >= 1 call),
    errors / timeouts (calls that failed / hit the wall limit, per step), error_rate,
    limit_hits (samples ended by max_calls or the budget), tool_tokens_per_sample; with
    `accuracy`, accuracy_with_call / accuracy_without_call (only when such samples exist).
  """
  calls = np.asarray(out.num_calls).reshape(-1)
  total = max(int(calls.sum()), 1)
  m = {"calls_per_sample": float(calls.mean()), "call_rate": float((calls > 0).mean()),
       "errors": int(np.sum(out.tool_errors)), "timeouts": int(np.sum(out.tool_timeouts)),
       "error_rate": float(np.sum(out.tool_errors) + np.sum(out.tool_timeouts)) / total,
       "limit_hits": int(np.sum(out.call_limit_hit)),
       "tool_tokens_per_sample": float(np.asarray(out.tool_mask).sum() / calls.size)}
  if accuracy is not None:
    acc = np.asarray(accuracy, np.float64).reshape(-1)
    if (calls > 0).any():
      m["accuracy_with_call"] = float(acc[calls > 0].mean())
    if (calls == 0).any():
      m["accuracy_without_call"] = float(acc[calls == 0].mean())
  return {f"{prefix}{k}{suffix}": v for k, v in m.items()}
