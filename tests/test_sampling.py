"""Sampler tests: greedy equals a naive no-cache loop, stop tokens, top-k/top-p, determinism,
and the growing completion cache equals one full-budget cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import models, sampling
from r1jax.models import decoder
from r1jax.models.config import tiny_config
from r1jax.sampling import SamplingParams

CFG = tiny_config()


@pytest.fixture(scope="module")
def params():
  return models.init_params(CFG, jax.random.key(0))


PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24], [30]]


_T = 64  # fixed padded length: one compile for the whole reference loop


@jax.jit
def _full_logits(params, tokens, n):
  seg = (jnp.arange(_T) < n).astype(jnp.int32)[None]
  return models.logits(params, CFG, models.forward(params, CFG, tokens[None], segment_ids=seg))[0]


def _pad(seq):
  return jnp.asarray(list(seq) + [0] * (_T - len(seq)), jnp.int32)


def naive_greedy(params, prompt, n):
  """No cache: a full forward over the whole sequence for every new token."""
  seq = list(prompt)
  for _ in range(n):
    seq.append(int(jnp.argmax(_full_logits(params, _pad(seq), len(seq))[len(seq) - 1])))
  return seq[len(prompt):]


def full_logprobs(params, prompt, completion, temperature):
  seq = list(prompt) + list(completion)
  lg = _full_logits(params, _pad(seq), len(seq))[:len(seq)] / temperature
  lp = jax.nn.log_softmax(lg, -1)[len(prompt) - 1:-1]
  return np.asarray(jnp.take_along_axis(lp, jnp.asarray(completion)[:, None], -1)[:, 0])


@pytest.mark.parametrize("cache_block", [128, 4])  # one cache; a cache grown 4 -> 8 -> 12
def test_greedy_matches_naive_loop(params, cache_block):
  s = sampling.Sampler(CFG, pad_id=0, cache_block=cache_block)
  out = s(params, PROMPTS, jax.random.key(0), num_samples=2,
          sampling=SamplingParams(temperature=0, max_new_tokens=12))
  assert out.tokens.shape == (3, 2, 12)
  for b, p in enumerate(PROMPTS):
    want = naive_greedy(params, p, 12)
    for g in range(2):
      assert out.tokens[b, g].tolist() == want
      np.testing.assert_allclose(out.logprobs[b, g], full_logprobs(params, p, want, 1.0),
                                 atol=1e-4)
  assert (out.lengths == 12).all() and not out.finished.any()


def test_stop_tokens_end_each_sample_and_the_loop(params):
  s = sampling.Sampler(CFG, pad_id=0)
  greedy = [naive_greedy(params, p, 12) for p in PROMPTS]
  # Stop ids: the 4th greedy token of prompt 0 and the 2nd of prompt 1; prompt 2 never stops
  # unless it happens to emit one of them.
  stops = (greedy[0][3], greedy[1][1])
  out = s(params, PROMPTS, jax.random.key(0), num_samples=1,
          sampling=SamplingParams(temperature=0, max_new_tokens=12, stop_ids=stops))
  for b, want in enumerate(greedy):
    first = next((i for i, t in enumerate(want) if t in stops), None)
    n = 12 if first is None else first + 1
    assert out.lengths[b, 0] == n
    assert out.finished[b, 0] == (first is not None)
    assert out.tokens[b, 0, :n].tolist() == want[:n]
    assert (out.tokens[b, 0, n:] == 0).all() and (out.logprobs[b, 0, n:] == 0).all()
  # All samples stopped early -> the loop ended early.
  out = s(params, PROMPTS[:2], jax.random.key(0), num_samples=1,
          sampling=SamplingParams(temperature=0, max_new_tokens=12, stop_ids=stops))
  assert int(out.num_steps) == max(out.lengths[:, 0]) < 12


def test_determinism_and_key_dependence(params):
  s = sampling.Sampler(CFG, pad_id=0)
  sp = SamplingParams(temperature=1.0, max_new_tokens=16)
  a = s(params, PROMPTS, jax.random.key(1), num_samples=4, sampling=sp)
  b = s(params, PROMPTS, jax.random.key(1), num_samples=4, sampling=sp)
  c = s(params, PROMPTS, jax.random.key(2), num_samples=4, sampling=sp)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)
  # The G samples of one prompt differ from each other.
  assert len({tuple(a.tokens[0, g]) for g in range(4)}) > 1


def test_sampled_logprobs_match_forward(params):
  s = sampling.Sampler(CFG, pad_id=0)
  out = s(params, PROMPTS, jax.random.key(3), num_samples=2,
          sampling=SamplingParams(temperature=0.7, max_new_tokens=10))
  for b, p in enumerate(PROMPTS):
    for g in range(2):
      comp = out.tokens[b, g].tolist()
      np.testing.assert_allclose(out.logprobs[b, g], full_logprobs(params, p, comp, 0.7),
                                 atol=1e-4)


def test_top_k_one_is_greedy(params):
  s = sampling.Sampler(CFG, pad_id=0)
  out = s(params, PROMPTS, jax.random.key(4), num_samples=2,
          sampling=SamplingParams(temperature=1.5, top_k=1, max_new_tokens=8))
  for b, p in enumerate(PROMPTS):
    assert out.tokens[b, 0].tolist() == naive_greedy(params, p, 8)


def _empirical(logits, n, **kw):
  toks, lps = jax.vmap(lambda k: sampling.sample_from_logits(logits, k, **kw))(
      jax.random.split(jax.random.key(0), n))
  return np.bincount(np.asarray(toks), minlength=logits.shape[-1]) / n, np.asarray(lps), toks


def test_top_k_and_top_p_distributions():
  probs = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  n = 20000
  # top-k = 3: renormalised over the 3 most likely.
  freq, _, _ = _empirical(logits, n, temperature=1.0, top_p=1.0, top_k=3)
  want = np.r_[probs[:3] / probs[:3].sum(), 0, 0, 0]
  np.testing.assert_allclose(freq, want, atol=0.015)
  # top-p = 0.7: the nucleus is {0.4, 0.25, 0.15} (mass before the 3rd is 0.65 < 0.7).
  freq, lps, toks = _empirical(logits, n, temperature=1.0, top_p=0.7, top_k=0)
  np.testing.assert_allclose(freq, want, atol=0.015)
  # Returned log-probs are the untruncated ones.
  np.testing.assert_allclose(lps, np.log(probs)[np.asarray(toks)], atol=1e-5)
  # Temperature 0.5 sharpens: p_i^2 / sum p^2.
  freq, _, _ = _empirical(logits, n, temperature=0.5, top_p=1.0, top_k=0)
  np.testing.assert_allclose(freq, probs ** 2 / (probs ** 2).sum(), atol=0.015)


def test_buckets_avoid_recompiles(params):
  s = sampling.Sampler(CFG, pad_id=0)
  sp = SamplingParams(temperature=1.0, max_new_tokens=9)
  s(params, [[1, 2, 3]], jax.random.key(0), num_samples=2, sampling=sp)
  before = sampling.generate._cache_size()
  # Other prompt lengths in the same bucket and another max_new_tokens in the same bucket.
  s(params, [[1, 2, 3, 4, 5, 6, 7]], jax.random.key(0), num_samples=2, sampling=sp)
  out = s(params, [[4] * 12], jax.random.key(0), num_samples=2,
          sampling=SamplingParams(temperature=1.0, max_new_tokens=13))
  assert sampling.generate._cache_size() == before
  assert out.tokens.shape == (1, 2, 13)


def test_errors(params):
  s = sampling.Sampler(CFG, pad_id=0, max_total_len=32)
  with pytest.raises(ValueError, match="context limit"):
    s(params, [[1] * 30], jax.random.key(0), sampling=SamplingParams(max_new_tokens=8))
  with pytest.raises(ValueError, match="empty"):
    s(params, [[1], []], jax.random.key(0))
  with pytest.raises(ValueError, match="top_p"):
    SamplingParams(top_p=0)
  with pytest.raises(ValueError, match="temperature"):
    SamplingParams(temperature=-1)


def _first_stop_naive(texts, ids, strings):
  """Reference: index of the first token after which the decoded text contains a stop string."""
  acc = ""
  for k, i in enumerate(ids):
    acc += texts[i]
    if any(st in acc for st in strings):
      return k
  return None


def _first_stop_table(stop, ids):
  s = 0
  for k, i in enumerate(ids):
    s = stop.table[s, i]
    if s == stop.final_state:
      return k
  return None


def test_stop_automaton_matches_decoded_text_under_any_tokenisation():
  """The [states, V] table stops exactly where the concatenated token texts first contain a
  stop string, against a naive string search, over random token sequences of a vocabulary
  whose tokens split and merge the stop strings in every way."""
  texts = ["a", "b", "<", "/", "</", "ans", "wer", ">", ">.", "</answer>", "x</answer>y", "</ans",
           "wer>", "answer", "User", ":", "\nUser:", "Us", "er:", "", "aab", "ab", " ", "\ufffd"]
  strings = ("</answer>", "User:", "aab")
  stop = sampling.StopStrings(strings, texts)
  assert stop.table.shape[1] == len(texts) and stop.table.dtype == np.int32
  # Hand-checked: "</", "answer", ">." completes "</answer>" inside the token ">.".
  idx = {t: i for i, t in enumerate(texts)}
  assert _first_stop_table(stop, [idx["</"], idx["answer"], idx[">."]]) == 2
  assert _first_stop_table(stop, [idx["Us"], idx[""], idx["er:"]]) == 2
  assert _first_stop_table(stop, [idx["a"], idx["ab"]]) == 1  # "aab" across tokens
  assert _first_stop_table(stop, [idx["ab"], idx["a"], idx["b"]]) is None
  rng = np.random.default_rng(0)
  for _ in range(3000):
    ids = rng.integers(0, len(texts), size=rng.integers(1, 12)).tolist()
    assert _first_stop_table(stop, ids) == _first_stop_naive(texts, ids, strings), \
        [texts[i] for i in ids]
  with pytest.raises(ValueError):
    sampling.StopStrings(["x", ""], texts)
  with pytest.raises(TypeError, match="StopStrings"):
    SamplingParams(stop_sequences=((1, 2),))


def test_truncate_at_stop():
  assert sampling.truncate_at_stop("<answer> 7 </answer>. more", ["</answer>"]) == \
      "<answer> 7 </answer>"
  # The earliest-ending occurrence of any string wins (where the automaton stops).
  assert sampling.truncate_at_stop("abcd", ["abcd", "bc"]) == "abc"
  assert sampling.truncate_at_stop("no stop", ["</answer>"]) == "no stop"


def test_sampler_stops_on_stop_strings_inside_tokens(params):
  """In the jitted decode loop: a stop string that ends inside a token (its text spans two
  tokens and the second carries trailing text) ends the sample at that token."""
  s = sampling.Sampler(CFG, pad_id=0)
  want = naive_greedy(params, PROMPTS[1], 12)
  texts = [f"<{i}>" for i in range(CFG.vocab_size)]
  texts[want[4]] = "zzA"
  texts[want[5]] = "Bq."  # "AB" ends inside this token
  first = _first_stop_naive(texts, want, ["AB"])
  assert first is not None and first <= 5
  stop = sampling.StopStrings(["AB"], texts)
  sp = SamplingParams(temperature=0, max_new_tokens=12, stop_sequences=stop)
  out = s(params, [PROMPTS[1]], jax.random.key(0), sampling=sp)
  assert int(out.lengths[0, 0]) == first + 1 and bool(out.finished[0, 0])
  assert out.tokens[0, 0, :first + 1].tolist() == want[:first + 1]

  class _Tok:  # decodes with the texts above
    def decode(self, ids):
      return "".join(texts[int(i)] for i in ids)

  text = sampling.decode_completions(_Tok(), out, sp, prefix="P")[0][0]
  assert text == "P" + _Tok().decode(want[:first + 1]).split("AB")[0] + "AB"
  # A string that never occurs changes nothing.
  never = SamplingParams(temperature=0, max_new_tokens=12,
                         stop_sequences=sampling.StopStrings(["never"], texts))
  out = s(params, [PROMPTS[1]], jax.random.key(0), sampling=never)
  assert out.tokens[0, 0].tolist() == want and not out.finished[0, 0]


def test_stop_strings_for_the_default_tokenizer():
  """SmolLM2's BPE merges ">." into one token, so "</answer>." never ends with the tokens of
  "</answer>"; the automaton stops there all the same, and the text is cut after it."""
  from r1jax.tokenizer import Tokenizer
  tok = Tokenizer.from_source("smollm2-135m-instruct")
  stop = sampling.stop_sequences_for(tok, ["</answer>"])
  assert sampling.stop_sequences_for(tok, ["</answer>"]) is stop  # cached
  assert sampling.stop_sequences_for(tok, []) is None
  for text, cut in [("<think> 1 </think> <answer> 2 </answer>.",
                     "<think> 1 </think> <answer> 2 </answer>"),
                    ("<answer>2</answer>\nUser: next", "<answer>2</answer>"),
                    ("<answer>2</answer>", "<answer>2</answer>")]:
    ids = tok.encode(text, add_bos=False)
    k = _first_stop_table(stop, ids)
    assert k is not None and tok.decode(ids[:k]).count("</answer>") == 0
    assert sampling.truncate_at_stop(tok.decode(ids[:k + 1]), stop.strings) == cut
  ids = tok.encode("<answer> 2 </answer>.", add_bos=False)
  enc = tok.encode("</answer>", add_bos=False)
  assert ids[-len(enc):] != enc  # the old token-exact match would not have stopped


@pytest.mark.parametrize("cache_block", [128, 4])  # one cache; a cache grown 4 -> 8 -> 10
def test_sharded_rollouts_equal_single_device(params, cache_block):
  from r1jax import sharding
  mesh = sharding.make_mesh({"data": 4, "fsdp": 1, "tensor": 2})
  tr_params = jax.device_put(params, sharding.tree_shardings(
      models.param_logical_axes(CFG), models.param_shapes(CFG), mesh))
  prompts = [[3 + i, 5, 7 + i] for i in range(8)]
  sp = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=10)
  single = sampling.Sampler(CFG, pad_id=0, cache_block=cache_block)(
      params, prompts, jax.random.key(5), num_samples=2, sampling=sp)
  sharded_sampler = sampling.Sampler(CFG, pad_id=0, mesh=mesh, cache_block=cache_block)
  ids, lengths = sharded_sampler._place(*sharded_sampler.pad_prompts(prompts))
  assert len(ids.sharding.device_set) == 8
  multi = sharded_sampler(tr_params, prompts, jax.random.key(5), num_samples=2, sampling=sp)
  np.testing.assert_array_equal(single.tokens, multi.tokens)
  np.testing.assert_allclose(single.logprobs, multi.logprobs, atol=1e-5)


def _sorted_top_p_cutoff(logits, top_p):
  """Reference: full sort of the vocabulary."""
  s = -np.sort(-logits, axis=-1)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  keep = (np.cumsum(p, -1) - p) < top_p
  return np.where(keep, s, np.inf).min(-1, keepdims=True)


@pytest.mark.parametrize("scale", [0.05, 1.0, 8.0])  # flat rows need the bisection path
@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99])
def test_top_p_cutoff_equals_full_sort(scale, top_p):
  rng = np.random.RandomState(int(scale * 100) + int(top_p * 100))
  logits = (rng.standard_normal((6, 3000)) * scale).astype(np.float32)
  logits[0, :5] += 20.0  # a peaked row next to flat ones
  got = np.asarray(sampling.top_p_cutoff(jnp.asarray(logits), top_p, candidates=64))
  want = _sorted_top_p_cutoff(logits.astype(np.float64), top_p)
  # Same kept set (compare the masks: cutoffs may differ inside a gap between logits).
  np.testing.assert_array_equal(logits >= got, logits >= want)


def test_categorical_matches_probabilities_and_never_draws_masked_tokens():
  probs = np.array([0.5, 0.0, 0.2, 0.3, 0.0])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  n = 100000
  for block in (2, 3, 256):  # several blocks, ragged last block, one block
    toks = jax.vmap(lambda k: sampling.categorical(k, logits, block=block))(
        jax.random.split(jax.random.key(block), n))
    freq = np.bincount(np.asarray(toks), minlength=5) / n
    np.testing.assert_allclose(freq, probs, atol=0.01)
    assert freq[1] == 0 and freq[4] == 0


# ------------------------------------------------------------ growing completion cache
def test_cache_schedule():
  assert sampling.cache_schedule(2048, 128) == (128, 256, 512, 1024, 2048)
  assert sampling.cache_schedule(3072, 128) == (128, 256, 512, 1024, 2048, 3072)
  assert sampling.cache_schedule(16, 128) == (16,)
  assert sampling.cache_schedule(12, 4) == (4, 8, 12)
  with pytest.raises(ValueError, match="cache_block"):
    sampling.cache_schedule(16, 0)


@jax.jit
def _full_logits_batch(params, tokens):
  return models.logits(params, CFG, models.forward(params, CFG, tokens))


def test_grown_cache_decode_equals_full_forward(params):
  """Prefill with 2 completion slots, grow to 4 then 7 while decoding: each step's logits
  equal a no-cache forward over prompt + completion (G = 2 samples share each prompt)."""
  B, G, P, N = 2, 2, 6, 7
  rng = np.random.RandomState(0)
  lengths = np.array([6, 3], np.int32)
  prompts = rng.randint(3, CFG.vocab_size, size=(B, P)).astype(np.int32)
  prompts[1, 3:] = 0
  conts = rng.randint(3, CFG.vocab_size, size=(B, G, N)).astype(np.int32)
  _, cache = models.prefill(params, CFG, jnp.asarray(prompts), jnp.asarray(lengths), G, 2)
  step = jax.jit(lambda p, tok, pos, c, t: models.decode_step(p, CFG, tok, pos, c, t))
  logits = []
  for t in range(N):
    if t == cache.gen_k.shape[3]:
      cache = decoder.grow_cache(cache, {2: 4, 4: 7}[t])
    pos = jnp.broadcast_to(jnp.asarray(lengths)[:, None] + t, (B, G))
    h, cache = step(params, jnp.asarray(conts[:, :, t]), pos, cache, jnp.int32(t))
    logits.append(np.asarray(models.logits(params, CFG, h)))
  assert cache.gen_k.shape[3] == N
  for b in range(B):
    seqs = np.concatenate([np.repeat(prompts[b:b + 1, :lengths[b]], G, 0), conts[b]], axis=1)
    full = np.asarray(_full_logits_batch(params, jnp.asarray(seqs)))
    for t in range(N):
      np.testing.assert_allclose(logits[t][b], full[:, lengths[b] + t], atol=1e-4)
  with pytest.raises(ValueError, match="smaller"):
    decoder.grow_cache(cache, 3)


def test_growing_cache_equals_full_budget_cache(params):
  """Attention over the grown cache (4 -> 8 -> 16 -> 24 slots) gives the samples of the
  previous sampler, whose cache held the whole budget from the start (cache_block >= N):
  prompts of 3, 17 and 1 tokens, G = 3 samples sharing each prompt's cache, stops at
  different steps; and the log-probs equal a no-cache forward."""
  N, top_p = 24, 0.9
  sp = lambda stops: SamplingParams(temperature=1.0, top_p=top_p, max_new_tokens=N,
                                    stop_ids=stops)
  run = lambda block, stops: sampling.Sampler(CFG, pad_id=0, cache_block=block)(
      params, PROMPTS, jax.random.key(7), num_samples=3, sampling=sp(stops))
  free = run(N, ())
  # Stop ids that end samples at different steps (some samples may never emit them).
  stops = (int(free.tokens[0, 0, 5]), int(free.tokens[1, 2, 13]))
  full, grown = run(N, stops), run(4, stops)
  assert len(set(full.lengths.ravel().tolist())) >= 2 and full.finished.any()
  np.testing.assert_array_equal(grown.tokens, full.tokens)
  np.testing.assert_array_equal(grown.lengths, full.lengths)
  np.testing.assert_array_equal(grown.finished, full.finished)
  assert int(grown.num_steps) == int(full.num_steps)
  # Same attention over fewer masked slots: equal up to fp32 summation order.
  np.testing.assert_allclose(grown.logprobs, full.logprobs, rtol=0, atol=1e-5)
  for b, p in enumerate(PROMPTS):
    n = int(grown.lengths[b, 1])
    np.testing.assert_allclose(grown.logprobs[b, 1, :n],
                               full_logprobs(params, p, grown.tokens[b, 1, :n].tolist(), 1.0),
                               atol=1e-4)


def test_growing_cache_loop_exits_when_all_samples_stop(params):
  greedy = [naive_greedy(params, p, 12) for p in PROMPTS[:2]]
  stops = (greedy[0][5], greedy[1][2])  # both samples stop by step 6 of a 64-token budget
  out = sampling.Sampler(CFG, pad_id=0, cache_block=4)(
      params, PROMPTS[:2], jax.random.key(0),
      sampling=SamplingParams(temperature=0, max_new_tokens=64, stop_ids=stops))
  assert out.finished.all()
  assert int(out.num_steps) == int(out.lengths.max()) <= 6
  for b, want in enumerate(greedy):
    assert out.tokens[b, 0, :out.lengths[b, 0]].tolist() == want[:out.lengths[b, 0]]


# ------------------------------------------------------------ top-k / top-p selection
@pytest.mark.parametrize("V,block,k", [(1000, 32, 1), (1000, 32, 7), (4096, 16, 200),
                                       (777, 8, 31)])
def test_top_k_values_equal_lax_top_k(V, block, k):
  rng = np.random.RandomState(V + k)
  x = rng.standard_normal((5, V)).astype(np.float32)
  x[0] = np.round(x[0] * 2) / 2  # many ties
  x[1, : V // 2] = -np.inf  # excluded tokens
  x[2, :] = 1.0  # all equal
  got = sampling.top_k_values(jnp.asarray(x), k, block)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jax.lax.top_k(jnp.asarray(x), k)[0]))


def _primitives(jaxpr) -> set:
  """Names of the primitives in a jaxpr and in the jaxprs nested in its equations."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for v in eqn.params.values():
      for sub in v if isinstance(v, (tuple, list)) else (v,):
        sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(sub, "eqns"):
          names |= _primitives(sub)
  return names


def test_top_p_one_and_top_k_zero_select_nothing():
  """top_p = 1 and top_k = 0 skip the nucleus and top-k work entirely (no selection op)."""
  logits = jnp.zeros((4, 1000))
  prims = lambda **kw: _primitives(jax.make_jaxpr(lambda x: sampling.sample_from_logits(
      x, jax.random.key(0), temperature=1.0, **kw))(logits).jaxpr)
  assert not prims(top_p=1.0, top_k=0) & {"top_k", "sort", "while", "cond"}
  assert "top_k" in prims(top_p=0.9, top_k=0) and "top_k" in prims(top_p=1.0, top_k=5)


@pytest.mark.parametrize("case", ["ties", "peaked", "masked", "wide"])
def test_top_p_cutoff_exact_in_hard_cases(case):
  """Bisection fallback (candidates=8) and candidate path against a full sort."""
  rng = np.random.RandomState(1)
  x = rng.standard_normal((6, 2000)).astype(np.float32)
  if case == "ties":
    x = np.round(x * 3) / 3
  elif case == "peaked":
    x[:, 0] += 30.0  # one token holds (nearly) all the mass
  elif case == "masked":
    x[:, ::3] = -np.inf
  elif case == "wide":
    x *= 0.01
  for top_p in (0.2, 0.5, 0.95):
    want = _sorted_top_p_cutoff(x.astype(np.float64), top_p)
    for candidates in (8, 256):
      got = np.asarray(sampling.top_p_cutoff(jnp.asarray(x), top_p, candidates=candidates))
      np.testing.assert_array_equal(x >= got, x >= want)
