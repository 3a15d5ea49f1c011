"""Sampler throughput: r1jax group rollouts vs a no-cache baseline (and optionally HF generate).

python tools/bench_sampler.py [--model smollm2-135m-instruct] [--prompts 8] [--samples 4]
                              [--new-tokens 128] [--baseline-tokens 16] [--hf]
python tools/bench_sampler.py --early-stop [--budgets 128,2048] [--stop-at 100]
                              [--old-ref COMMIT] [--top-p 1.0] [--hf]

Work: B prompts (chat template) x G samples x N new tokens at temperature 1, no stop
tokens, so every sample generates exactly N tokens. The r1jax sampler prefills each prompt
once and decodes all B*G samples from a KV cache.

Baseline ("naive"): the same B*G sequences (prompts repeated G times), a jitted full
forward over the whole padded sequence at every step, no cache. Its cost per token grows
with the length, so it is run for the first --baseline-tokens tokens only (use
--baseline-tokens N for the full work): its tok/s is then an upper bound, and the
reported speedup a lower bound.

--hf also times transformers' `generate` (KV cache, sampling) on the same model and prompts.

--early-stop: decode cost against the completion budget. The same prompts and keys are
sampled (temperature 1) with each budget in --budgets as the sampler's cache_len, with the
tokenizer's stop ids and every sample cut at --stop-at tokens (generate's traced
max_new_tokens), so every budget generates the same tokens and only what the budget costs
differs. --old-ref COMMIT also runs that commit's r1jax/sampling.py and
r1jax/models/decoder.py (read with `git show`, loaded as temporary modules) in the same
process on the same work. Reported: tokens/s per (sampler, budget), the time ratio of the
largest to the smallest budget, whether the tokens agree, and with --hf transformers'
`generate` (dynamic cache: no budget) on the same batch and stop ids.

Prints a JSON object on its last line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import models, sampling
from r1jax.tokenizer import Tokenizer

QUESTIONS = [
    "What is 17 * 23?",
    "Write a short poem about autumn leaves.",
    "Explain why the sky is blue in two sentences.",
    "If a train travels 60 km in 45 minutes, what is its average speed in km/h?",
    "List three prime numbers greater than 50.",
    "Translate 'good morning' into French and Spanish.",
    "What is the derivative of x^3 + 2x?",
    "Give me a tip for learning to play the guitar.",
]


def naive_generate(params, cfg, ids, lengths, key, num_new, total_len, temperature):
  """No-cache baseline: full forward over [B*G, total_len] for every new token."""

  @jax.jit
  def run(params, ids, lengths, key):
    toks = jnp.zeros((ids.shape[0], total_len), jnp.int32).at[:, :ids.shape[1]].set(ids)

    def step(t, toks):
      cur = lengths + t  # tokens already in each row
      seg = (jnp.arange(total_len)[None] < cur[:, None]).astype(jnp.int32)
      hidden = models.forward(params, cfg, toks, segment_ids=seg)
      last = jnp.take_along_axis(hidden, (cur - 1)[:, None, None], axis=1)[:, 0]
      nxt, _ = sampling.sample_from_logits(models.logits(params, cfg, last),
                                           jax.random.fold_in(key, t), temperature, 1.0, 0)
      return toks.at[jnp.arange(toks.shape[0]), cur].set(nxt)

    return jax.lax.fori_loop(0, num_new, step, toks)

  return run(params, ids, lengths, key)


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def load_reference(ref: str):
  """The sampling module of commit `ref` (with that commit's decoder), as temporary modules."""
  root = subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip()
  tmp = tempfile.mkdtemp(prefix="bench_sampler_ref_")
  tag = "ref_" + "".join(c for c in ref if c.isalnum())
  modules = {}
  for name, path in (("decoder", "r1jax/models/decoder.py"), ("sampling", "r1jax/sampling.py")):
    src = subprocess.check_output(["git", "-C", root, "show", f"{ref}:{path}"], text=True)
    src = src.replace("from r1jax.models import decoder", f"import {tag}_decoder as decoder")
    file = os.path.join(tmp, f"{tag}_{name}.py")
    with open(file, "w") as f:
      f.write(src)
    spec = importlib.util.spec_from_file_location(f"{tag}_{name}", file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # before exec: dataclasses and the import above need it
    spec.loader.exec_module(mod)
    modules[name] = mod
  return modules["sampling"]


def hf_generate_tps(model_path, prompts, pad_id, samples, new_tokens, top_p, stop_ids=None):
  """transformers generate on all prompts in one left-padded batch, `samples` sequences each.

  Returns (tokens/s, generated tokens): with stop_ids, a sequence's tokens count up to and
  including its first stop id (what it generated before finishing); else all new tokens.
  """
  import torch
  import transformers
  from r1jax.models import loading
  path = loading.default_model_path(model_path) if not os.path.exists(model_path) else model_path
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(str(path)), gguf_file=os.path.basename(str(path)), dtype=torch.float32)
  torch.set_num_threads(os.cpu_count())
  P = max(len(p) for p in prompts)
  x = torch.tensor([[pad_id] * (P - len(p)) + p for p in prompts])
  mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
  kw = dict(attention_mask=mask, do_sample=True, temperature=1.0, top_p=top_p, top_k=0,
            num_return_sequences=samples, pad_token_id=pad_id)
  if stop_ids:
    kw["eos_token_id"] = list(stop_ids)
  out = None
  for n_new in (8, new_tokens):  # warm-up, then timed
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
      y = hf.generate(x, max_new_tokens=n_new, min_new_tokens=1 if stop_ids else n_new, **kw)
    seconds = time.perf_counter() - t0
    gen = y[:, P:].numpy()
    if stop_ids:
      is_stop = np.isin(gen, list(stop_ids))
      first = np.where(is_stop.any(1), is_stop.argmax(1) + 1, gen.shape[1])
      n = int(first.sum())
    else:
      n = gen.size
    out = (n / seconds, n)
  return out


def early_stop(args, cfg, params, tok, prompts):
  """Budgets x samplers on the same prompts, keys and stops (see the module docstring)."""
  B, G = args.prompts, args.samples
  budgets = [int(b) for b in args.budgets.split(",")]
  impls = {"new": sampling}
  if args.old_ref:
    impls["old"] = load_reference(args.old_ref)
  ids, lengths = sampling.Sampler(cfg, pad_id=tok.pad_id).pad_prompts(prompts)
  ids, lengths = jnp.asarray(ids), jnp.asarray(lengths)
  stop_ids = tuple(int(i) for i in tok.stop_ids)
  result = {"model": args.model, "mode": "early_stop", "prompts": B, "samples_per_prompt": G,
            "stop_at": args.stop_at, "stop_ids": list(stop_ids), "top_p": args.top_p,
            "old_ref": args.old_ref, "repeats": args.repeats}
  configs = [(name, budget) for budget in budgets for name in impls]

  def run(name, budget, key):
    out = impls[name].generate(params, ids, lengths, key, jnp.int32(min(args.stop_at, budget)),
                               cfg=cfg, num_samples=G, cache_len=budget, temperature=1.0,
                               top_p=args.top_p, top_k=0, stop_ids=stop_ids, pad_id=tok.pad_id)
    return jax.device_get(out)

  first = {}
  for c in configs:  # compile + warm up
    t0 = time.perf_counter()
    run(*c, jax.random.key(0))
    first[c] = time.perf_counter() - t0
  # Repeats interleaved over the configurations, so that load on the shared machine
  # falls on all of them alike; each configuration's best time is reported.
  times = {c: [] for c in configs}
  runs = {c: [] for c in configs}
  for r in range(args.repeats):
    for c in configs:
      t0 = time.perf_counter()
      runs[c].append(run(*c, jax.random.key(r + 1)))
      times[c].append(time.perf_counter() - t0)
  for (name, budget) in configs:
    outs = runs[(name, budget)]
    n = int(outs[0].lengths.sum())
    sec = min(times[(name, budget)])
    result[f"{name}_{budget}_tokens_per_s"] = round(n / sec, 1)
    result[f"{name}_{budget}_seconds"] = round(sec, 3)
    result[f"{name}_{budget}_first_call_s"] = round(first[(name, budget)], 1)
    result[f"{name}_{budget}_steps"] = int(outs[0].num_steps)
    result[f"{name}_{budget}_generated_tokens"] = n
    print(f"{name} budget {budget}: {n} tokens ({int(outs[0].num_steps)} steps) in {sec:.2f} s "
          f"-> {n / sec:.1f} tok/s (first call incl. compile {first[(name, budget)]:.1f} s)",
          flush=True)
  lo, hi = min(budgets), max(budgets)
  for name in impls:
    result[f"{name}_time_ratio_{hi}_vs_{lo}"] = round(
        result[f"{name}_{hi}_seconds"] / result[f"{name}_{lo}_seconds"], 2)
  if "old" in impls:
    for b in budgets:
      result[f"speedup_new_vs_old_{b}"] = round(
          result[f"old_{b}_seconds"] / result[f"new_{b}_seconds"], 2)
  ref = runs[("new", lo)]  # same keys in every configuration
  same, diff = {}, 0.0
  for (name, budget), outs in runs.items():
    k = min(args.stop_at, lo)  # every output is pad / 0 past stop_at
    same[f"{name}_{budget}"] = all(np.array_equal(o.tokens[..., :k], r.tokens[..., :k])
                                   for o, r in zip(outs, ref))
    if same[f"{name}_{budget}"]:
      diff = max([diff] + [float(np.abs(o.logprobs[..., :k] - r.logprobs[..., :k]).max())
                           for o, r in zip(outs, ref)])
  result[f"same_tokens_as_new_{lo}"] = same
  result["max_abs_logprob_diff_where_same_tokens"] = diff
  if args.hf:
    tps, n = hf_generate_tps(args.model, prompts, tok.pad_id, G, args.stop_at, args.top_p,
                             stop_ids)
    result["hf_generate_tokens_per_s"] = round(tps, 1)
    result["hf_generate_tokens"] = n
    result["hf_note"] = ("transformers generate, same batch and stop ids, its own samples "
                         "(torch RNG): tokens counted up to each sequence's first stop id")
    for b in budgets:
      result[f"speedup_new_{b}_vs_hf_generate"] = round(
          result[f"new_{b}_tokens_per_s"] / tps, 2)
    print(f"transformers generate: {n} tokens, {tps:.1f} tok/s", flush=True)
  result.update({"peak_rss_gb": round(peak_rss_gb(), 2),
                 "devices": str(jax.devices()[0].platform), "cpu_count": os.cpu_count()})
  print(json.dumps(result))


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--model", default="smollm2-135m-instruct")
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--samples", type=int, default=4)
  ap.add_argument("--new-tokens", type=int, default=128)
  ap.add_argument("--baseline-tokens", type=int, default=16)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--hf", action="store_true", help="also time transformers generate")
  ap.add_argument("--early-stop", action="store_true",
                  help="budgets x samplers with early stops (see above)")
  ap.add_argument("--budgets", default="128,2048", help="--early-stop: completion budgets")
  ap.add_argument("--stop-at", type=int, default=100, help="--early-stop: longest sample")
  ap.add_argument("--old-ref", default=None,
                  help="--early-stop: also run this commit's sampler (e.g. the parent of the "
                       "growing-cache change)")
  ap.add_argument("--top-p", type=float, default=1.0, help="--early-stop: nucleus mass")
  args = ap.parse_args()
  B, G, N = args.prompts, args.samples, args.new_tokens

  cfg, params = models.from_pretrained(args.model)
  tok = Tokenizer.from_source(args.model)
  prompts = [tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                     add_generation_prompt=True, tokenize=True) for i in range(B)]
  if args.early_stop:
    return early_stop(args, cfg, params, tok, prompts)
  sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=N, stop_ids=())
  sampler = sampling.Sampler(cfg, pad_id=tok.pad_id)

  t0 = time.perf_counter()
  out = sampler(params, prompts, jax.random.key(0), num_samples=G, sampling=sp)
  first_call = time.perf_counter() - t0
  assert int(out.lengths.sum()) == B * G * N
  times = []
  for r in range(args.repeats):
    t0 = time.perf_counter()
    out = sampler(params, prompts, jax.random.key(r + 1), num_samples=G, sampling=sp)
    times.append(time.perf_counter() - t0)
  r1_time = min(times)
  r1_tps = B * G * N / r1_time
  print(f"r1jax sampler: {B}x{G}x{N} tokens in {r1_time:.2f} s -> {r1_tps:.1f} tok/s "
        f"(first call incl. compile {first_call:.1f} s)", flush=True)
  sample_text = tok.decode(out.tokens[0, 0], skip_special_tokens=True)

  # Naive baseline on the same B*G sequences.
  ids, lengths = sampler.pad_prompts(prompts)
  ids = np.repeat(ids, G, axis=0)
  lengths = np.repeat(lengths, G)
  nb = min(args.baseline_tokens, N)
  total_len = ids.shape[1] + N  # same padded length the full work would need
  run = lambda k: jax.block_until_ready(
      naive_generate(params, cfg, jnp.asarray(ids), jnp.asarray(lengths), k, nb, total_len, 1.0))
  t0 = time.perf_counter()
  run(jax.random.key(0))
  base_first = time.perf_counter() - t0
  t0 = time.perf_counter()
  run(jax.random.key(1))
  base_time = time.perf_counter() - t0
  base_tps = B * G * nb / base_time
  print(f"naive no-cache baseline: {B}x{G}x{nb} tokens in {base_time:.2f} s -> "
        f"{base_tps:.1f} tok/s (first call {base_first:.1f} s)", flush=True)

  result = {
      "model": args.model, "prompts": B, "samples_per_prompt": G, "new_tokens": N,
      "r1jax_tokens_per_s": round(r1_tps, 1), "r1jax_seconds": round(r1_time, 3),
      "r1jax_first_call_s": round(first_call, 1),
      "baseline_tokens": nb, "baseline_tokens_per_s": round(base_tps, 1),
      "speedup_vs_baseline": round(r1_tps / base_tps, 2),
      "baseline_note": "no-cache baseline timed on the first baseline_tokens tokens only: "
                       "its tok/s is an upper bound and the speedup a lower bound"
                       if nb < N else "same work",
      "peak_rss_gb": round(peak_rss_gb(), 2), "devices": str(jax.devices()[0].platform),
      "cpu_count": os.cpu_count(),
  }

  if args.hf:
    hf_tps, _ = hf_generate_tps(args.model, prompts, tok.pad_id, G, N, 1.0)
    result["hf_generate_tokens_per_s"] = round(hf_tps, 1)
    result["speedup_vs_hf_generate"] = round(r1_tps / hf_tps, 2)
    print(f"transformers generate: {hf_tps:.1f} tok/s", flush=True)

  print(f"sample completion: {sample_text[:200]!r}")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
