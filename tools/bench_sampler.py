"""Sampler throughput: r1jax group rollouts vs a no-cache baseline (and optionally HF generate).

python tools/bench_sampler.py [--model smollm2-135m-instruct] [--prompts 8] [--samples 4]
                              [--new-tokens 128] [--baseline-tokens 16] [--hf]

Work: B prompts (chat template) x G samples x N new tokens at temperature 1, no stop
tokens, so every sample generates exactly N tokens. The r1jax sampler prefills each prompt
once and decodes all B*G samples from a KV cache.

Baseline ("naive"): the same B*G sequences (prompts repeated G times), a jitted full
forward over the whole padded sequence at every step, no cache. Its cost per token grows
with the length, so it is run for the first --baseline-tokens tokens only (use
--baseline-tokens N for the full work): its tok/s is then an upper bound, and the
reported speedup a lower bound.

--hf also times transformers' `generate` (KV cache, sampling) on the same model and prompts.

Prints a JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--model", default="smollm2-135m-instruct")
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--samples", type=int, default=4)
  ap.add_argument("--new-tokens", type=int, default=128)
  ap.add_argument("--baseline-tokens", type=int, default=16)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--hf", action="store_true", help="also time transformers generate")
  args = ap.parse_args()
  B, G, N = args.prompts, args.samples, args.new_tokens

  cfg, params = models.from_pretrained(args.model)
  tok = Tokenizer.from_source(args.model)
  prompts = [tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                     add_generation_prompt=True, tokenize=True) for i in range(B)]
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
    import torch
    import transformers
    from r1jax.models import loading
    path = loading.default_model_path(args.model) if not os.path.exists(args.model) else args.model
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(str(path)), gguf_file=os.path.basename(str(path)), dtype=torch.float32)
    torch.set_num_threads(os.cpu_count())
    # All B prompts in one batch (left-padded, with an attention mask), G return sequences each.
    P = max(len(p) for p in prompts)
    x = torch.tensor([[tok.pad_id] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    hf_tps = []
    for n_new in (8, N):  # warm-up, then timed
      t0 = time.perf_counter()
      with torch.no_grad():
        y = hf.generate(x, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                        top_k=0, max_new_tokens=n_new, min_new_tokens=n_new,
                        num_return_sequences=G, pad_token_id=tok.pad_id)
      hf_tps.append((y.shape[1] - P) * y.shape[0] / (time.perf_counter() - t0))
    result["hf_generate_tokens_per_s"] = round(hf_tps[-1], 1)
    result["speedup_vs_hf_generate"] = round(r1_tps / hf_tps[-1], 2)
    print(f"transformers generate: {hf_tps[-1]:.1f} tok/s", flush=True)

  print(f"sample completion: {sample_text[:200]!r}")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
