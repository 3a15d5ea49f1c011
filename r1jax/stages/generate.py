"""Stage `generate`: print chat completions of one prompt from any model source."""

from __future__ import annotations

import sys
import time

import jax
from absl import logging

from r1jax.train import settings as settings_lib


def run(config) -> list[str]:
  """Load model + tokenizer (r1jax.models.load), sample `config.num_samples` completions,
  print them.

  Returns the completions (decoded, special tokens removed).

  Raises:
    ValueError / FileNotFoundError: a bad model source, dtype or sampling value.
  """
  model = settings_lib.ModelSettings.from_config(config)
  parallel = settings_lib.ParallelSettings.from_config(config)
  sp = settings_lib.sampling_params(config.sampling)
  t0 = time.perf_counter()
  loaded = model.load()
  cfg, tok = loaded.config, loaded.tokenizer
  logging.info("loaded %s (%.1fM params) in %.1f s", config.model, cfg.num_params() / 1e6,
               time.perf_counter() - t0)
  if config.chat_template:
    messages = ([{"role": "system", "content": config.system}] if config.system else [])
    messages.append({"role": "user", "content": config.prompt})
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
  else:
    ids = tok.encode(config.prompt)
  sp = settings_lib.sampling_params(config.sampling, tok)
  sampler, params = settings_lib.make_sampler(parallel, cfg, loaded.params, pad_id=tok.pad_id)
  out = sampler(params, [ids], jax.random.key(config.seed), num_samples=config.num_samples,
                sampling=sp)
  texts = []
  for g in range(config.num_samples):
    n = int(out.lengths[0, g])
    text = tok.decode(out.tokens[0, g, :n], skip_special_tokens=True)
    texts.append(text)
    if config.num_samples > 1:
      print(f"--- sample {g + 1}/{config.num_samples}")
    print(text)
  st = sampler.last_stats
  print(f"[{st['generated_tokens']} tokens in {st['seconds']:.2f} s incl. compile, "
        f"{st['tokens_per_second']:.1f} tok/s]", file=sys.stderr)
  return texts
