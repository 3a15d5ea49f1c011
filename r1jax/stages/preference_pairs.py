"""Stage `preference_pairs`: on-policy preference pairs for the helpfulness reward model of
R1's all-scenario RL (DeepSeek-R1, section 2.3.4; docs/method.md "Stages").

For every general prompt: n samples of the model (the policy the all-scenario RL will start
from), each judged by the rule judge r1jax.curation.preference_judge on its summary; the best
and the worst sample become {"prompt", "chosen", "rejected"} (the summaries: the text the
helpfulness reward model scores in RL) when their judge scores differ by at least the margin.

Prompts: `prompts = "builtin"` (r1jax.data.general_prompts, written to run_dir as
general_train.jsonl / general_heldout.jsonl for the next stages) or a JSONL of
{"prompt", "topic"?} records. Per-prompt samples and judge scores go to samples.jsonl as they
are produced (a killed run resumes from them); pairs.jsonl and summary.json at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from r1jax import sampling
from r1jax.curation.preference_judge import (CRITERIA, JudgeConfig, best_worst_pair, judge,
                                             judge_summary)
from r1jax.data import general_prompts
from r1jax.data.sft_records import read_jsonl_records
from r1jax.data.templates import render_prompt, response_prefix
from r1jax.train import loop
from r1jax.train import settings as settings_lib

SAMPLES_FILE, PAIRS_FILE = "samples.jsonl", "pairs.jsonl"
TRAIN_PROMPTS, HELDOUT_PROMPTS = "general_train.jsonl", "general_heldout.jsonl"


def load_prompts(config) -> tuple[list[dict], dict[str, str]]:
  """(prompt records to sample, {output name: path} of prompt files written to run_dir).

  Raises:
    ValueError / FileNotFoundError: a malformed or missing prompts JSONL (file and line).
  """
  files = {}
  if config.prompts == "builtin":
    records = general_prompts.general_prompt_records("train")
    files["general_train"] = general_prompts.write_jsonl(
        records, os.path.join(config.run_dir, TRAIN_PROMPTS))
    files["general_heldout"] = general_prompts.write_jsonl(
        general_prompts.general_prompt_records("heldout"),
        os.path.join(config.run_dir, HELDOUT_PROMPTS))
  else:
    def parse(rec, default_id):
      if not isinstance(rec, dict) or not str(rec.get("prompt") or "").strip():
        raise ValueError('a record needs a non-empty "prompt"')
      return {**rec, "id": str(rec.get("id", default_id))}
    records, _ = read_jsonl_records(config.prompts, parse, what="general prompts")
  if config.max_prompts and config.max_prompts < len(records):
    records = random.Random(config.seed).sample(records, int(config.max_prompts))
  return records, files


def run(config) -> dict[str, Any]:
  """Sample, judge and pair as configured; returns {"data": pairs.jsonl, "summary": ...,
  plus general_train / general_heldout with the builtin prompts}.

  Raises:
    ValueError: num_samples < 2, a prompt longer than the context, bad prompts.
  """
  t0 = time.perf_counter()
  n = int(config.num_samples)
  if n < 2:
    raise ValueError(f"num_samples must be >= 2 to form a pair, got {n}")
  jc = JudgeConfig(min_words=config.judge.min_words, min_distinct=config.judge.min_distinct,
                   min_margin=config.judge.min_margin)
  loop.prepare_run_dir(config.run_dir, resume="auto")
  records, files = load_prompts(config)
  model = settings_lib.ModelSettings.from_config(config)
  parallel = settings_lib.ParallelSettings.from_config(config)
  loaded = model.load()
  cfg, tok = loaded.config, loaded.tokenizer
  sp = settings_lib.sampling_params(config.sampling, tok)
  sampler, params = settings_lib.make_sampler(parallel, cfg, loaded.params, pad_id=tok.pad_id,
                                              min_prompt_bucket=32)
  prefix = response_prefix(config.template)
  sample_path = os.path.join(config.run_dir, SAMPLES_FILE)
  done: dict[str, dict] = {}
  if os.path.exists(sample_path):
    for line in open(sample_path):
      try:
        r = json.loads(line)
        done[r["id"]] = r
      except (json.JSONDecodeError, KeyError):
        continue  # a line cut by a kill: that prompt is redone
  todo = [r for r in records if r["id"] not in done]
  base_key = jax.random.key(config.seed)
  bar = tqdm(total=len(records), initial=len(records) - len(todo), desc="preference pairs",
             unit="prompt", mininterval=5)
  try:
    with open(sample_path, "a") as f:
      for i in range(0, len(todo), config.batch_size):
        chunk = todo[i:i + config.batch_size]
        ids = [tok.encode(render_prompt(r["prompt"], config.template, tok)) for r in chunk]
        for r, p in zip(chunk, ids):
          if len(p) + sp.max_new_tokens > sampler.max_total_len:
            raise ValueError(f"prompt {r['id']}: {len(p)} tokens + max_new_tokens exceed the "
                             f"context of {sampler.max_total_len}")
        # Same batch shape every call (short last chunk padded); key from the prompts.
        padded = ids + [ids[-1]] * (config.batch_size - len(ids))
        key = jax.random.fold_in(base_key, int(hashlib.sha1(chunk[0]["id"].encode())
                                               .hexdigest()[:7], 16))
        out = sampler(params, padded, key, num_samples=n, sampling=sp)
        texts = sampling.decode_completions(tok, out, sp, prefix)[:len(chunk)]
        for b, r in enumerate(chunk):
          fin = [bool(x) for x in np.asarray(out.finished[b])]
          judged = [judge(t, str(r.get("topic", "")), fi, jc) for t, fi in zip(texts[b], fin)]
          row = {"id": r["id"], "prompt": r["prompt"], "topic": r.get("topic", ""),
                 "completions": texts[b], "finished": fin, "judge": judged}
          f.write(json.dumps(row) + "\n")
          done[r["id"]] = row
        f.flush()
        bar.update(len(chunk))
  finally:
    bar.close()

  pairs, scores = [], []
  for r in records:
    row = done[r["id"]]
    s = [j["score"] for j in row["judge"]]
    scores.append(s)
    summaries = [judge_summary(t, jc.summary_marker) for t in row["completions"]]
    bw = best_worst_pair(summaries, s, jc.min_margin)
    if bw is not None and summaries[bw[0]]:  # an empty "rejected" is fine, "chosen" not
      pairs.append({"id": row["id"], "prompt": row["prompt"], "chosen": summaries[bw[0]],
                    "rejected": summaries[bw[1]], "judge_chosen": s[bw[0]],
                    "judge_rejected": s[bw[1]]})
  files["data"] = general_prompts.write_jsonl(pairs, os.path.join(config.run_dir, PAIRS_FILE))
  judged = [j for r in records for j in done[r["id"]]["judge"]]
  summary = {"model": loaded.info["description"], "prompts": len(records),
             "samples_per_prompt": n, "pairs": len(pairs),
             "judge_mean": {c: float(np.mean([j[c] for j in judged]))
                            for c in CRITERIA + ("score",)},
             "mean_margin": float(np.mean([p["judge_chosen"] - p["judge_rejected"]
                                           for p in pairs])) if pairs else 0.0,
             "judge": config.judge.to_dict(), "sampling": config.sampling.to_dict(),
             "wall_s": time.perf_counter() - t0}
  files["summary"] = os.path.join(config.run_dir, "summary.json")
  json.dump(summary, open(files["summary"], "w"), indent=2)
  logging.info("preference pairs: %d of %d prompts paired; judge means %s", len(pairs),
               len(records), summary["judge_mean"])
  return files
