"""Stage `rejection_sampling`: R1 stage 3 (DeepSeek-R1, section 2.3.3; docs/method.md "Stages").

From any model source of r1jax.models.load (e.g. a training run directory: its latest
checkpoint, or `checkpoint_step`), for every prompt:
  1. sample K completions (`Sampler`, one prefill per prompt, num_samples = K);
  2. verify each: the rule verifier (a reward spec, default accuracy) must score at least
     `verifier.threshold`; prompts no rule can check (task in `judge.tasks`, or no reference
     answer) go to the generative judge `judge.fn` instead (score >= `judge.threshold`), and
     are rejected when no judge is configured;
  3. drop truncated samples (unless keep_truncated) and unreadable ones
     (r1jax.curation.filters: mixed language, over-long paragraph, messy code, no summary);
  4. de-duplicate the survivors of the prompt (normalised text), keep at most M, best first
     (r1jax.curation.rejection.select_samples).
Kept samples go to `reasoning.jsonl` as SFT records {"id", "prompt", "response", ...,
"provenance"} that r1jax.data.sft_data reads directly; one line per finished prompt goes to
`prompts.jsonl` (counts per filter; the resume ledger). At the end, `train.jsonl` holds the
reasoning records and non-reasoning SFT records (mix.non_reasoning_jsonl) making up
`mix.fraction` of it, shuffled; `summary.json` / `summary.md` give acceptance rates per task
and per filter, with record counts that match the files. Everything goes to `run_dir`.

Judge hook: `judge.fn` = "package.module:function" (or "package.module.function") naming
  judge(prompt: str, reference: str, response: str) -> float
called in this process for each sample of a judged prompt (prompt = the question, reference
= the example's answer, "" if none; response = the whole response). R1 used DeepSeek-V3 as the
judge (the reference and the response in its prompt); any callable with this signature works.
Exceptions in the judge fail the run (a broken judge should not silently reject everything).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from r1jax import plugins, sampling
from r1jax.curation import filters as filters_lib
from r1jax.curation.rejection import (LEDGER_FILE, REASONING_FILE, TRAIN_FILE, markdown,
                                      mix_records, needs_judge, select_samples, summarize)
from r1jax.data.pipeline import split_list
from r1jax.data.templates import render_prompt, response_prefix
from r1jax.tokenizer import Tokenizer
from r1jax.train import loop
from r1jax.train import settings as settings_lib

# Config fields that change the kept samples (resuming with other values would mix results).
_FINGERPRINT_FIELDS = ("model", "checkpoint_step", "template", "num_samples", "sampling",
                       "seed", "verifier", "judge", "filters", "dedup", "max_per_prompt",
                       "keep_truncated")


def subset_prompts(examples: list, n: int, seed: int) -> list:
  """At most `n` of `examples` (n <= 0: all): a seeded random subset kept in the original
  order. A prefix would not do: a multi-task train split lists its tasks one after another,
  so its first n prompts are all of the first task."""
  if n <= 0 or len(examples) <= n:
    return list(examples)
  keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:n])
  return [examples[i] for i in keep]


def load_prompt_sets(config, tok: Tokenizer) -> dict[str, list[dict]]:
  """name -> examples {id, question, answer, task, metadata}: "train" / "heldout" (splits of
  config.data), "champ", or .jsonl paths; at most config.max_prompts each (0 = all; a
  seeded random subset, `subset_prompts`).

  Raises:
    ValueError: an unknown set name, or malformed JSONL (with file and line).
  """
  out, data = {}, None
  for name in split_list(config.prompts):
    if name in ("train", "heldout"):
      if data is None:
        from r1jax.data import PromptData
        data = PromptData(config.data, tok)
      exs = data.train_examples() if name == "train" else data.eval_examples()
    elif name == "champ":
      from r1jax.data.champ import champ_examples
      exs, name = champ_examples(), "champ"
    elif name.endswith((".jsonl", ".jsonl.gz")):
      from r1jax.data.sources import jsonl_examples
      exs = jsonl_examples(name)
      name = os.path.basename(name)
    else:
      raise ValueError(f"unknown prompt set {name!r}: use train, heldout, champ or a .jsonl path")
    if name in out:
      raise ValueError(f"prompt set {name!r} listed twice")
    out[name] = subset_prompts(exs, config.max_prompts, config.get("seed", 0))
  if not out:
    raise ValueError("no prompt sets: set --config.prompts")
  return out


def _filter_config(config) -> filters_lib.FilterConfig:
  f = config.filters
  return filters_lib.FilterConfig(
      enabled=tuple(split_list(f.enabled)), language=f.language,
      min_language_ratio=f.min_language_ratio, max_paragraph_chars=f.max_paragraph_chars,
      max_loose_code_lines=f.max_loose_code_lines, reasoning_end=f.reasoning_end)


@dataclasses.dataclass(frozen=True)
class Settings:
  """The validated settings of a rejection-sampling run (built once by validate_config)."""
  model: settings_lib.ModelSettings
  parallel: settings_lib.ParallelSettings
  filters: filters_lib.FilterConfig
  judge: Any
  resume: Any


def validate_config(config) -> Settings:
  """Check every value and build the typed settings, before any compute.

  Raises:
    ValueError: with the offending key and value.
    FileNotFoundError: mix.non_reasoning_jsonl does not exist.
  """
  settings_lib.check_positive(config, "num_samples", "batch_size")
  settings_lib.check_positive(config, "max_per_prompt", minimum=0)
  if not 0.0 <= config.mix.fraction < 1.0:
    raise ValueError(f"mix.fraction must be in [0, 1), got {config.mix.fraction}")
  if config.mix.non_reasoning_jsonl and not os.path.isfile(config.mix.non_reasoning_jsonl):
    raise FileNotFoundError(f"mix.non_reasoning_jsonl not found: {config.mix.non_reasoning_jsonl}")
  from r1jax.rewards.registry import parse_reward_spec
  parse_reward_spec(config.verifier.spec)
  settings_lib.sampling_params(config.sampling)
  response_prefix(config.template)
  return Settings(settings_lib.ModelSettings.from_config(config),
                  settings_lib.ParallelSettings.from_config(config), _filter_config(config),
                  plugins.import_object(config.judge.fn, key="judge.fn"),
                  loop.parse_resume(config.resume))


# ---------------------------------------------------------------------- resume
def _read_jsonl_lenient(path: str) -> list[dict]:
  """Records of a file this stage wrote; a line cut by a kill is dropped (logged)."""
  out = []
  if not os.path.exists(path):
    return out
  for lineno, line in enumerate(open(path, encoding="utf-8"), 1):
    if not line.strip():
      continue
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      logging.warning("%s: line %d is cut (interrupted write): dropped", path, lineno)
  return out


def _write_jsonl_atomic(path: str, records: Sequence[dict]) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(path + ".tmp", path)


def _prepare_out_dir(config, resume) -> tuple[dict[tuple[str, str], dict], list[dict]]:
  """Checks resume/fingerprint; returns (ledger by (set, id), kept reasoning records).

  Raises:
    ValueError: results there and resume=False, or results of other settings.
    FileNotFoundError: resume=True and no results there.
  """
  out_dir = config.run_dir
  loop.prepare_run_dir(out_dir, resume="auto")  # creates it; checks it is writable
  fingerprint = {k: (config[k].to_dict() if hasattr(config[k], "to_dict") else config[k])
                 for k in _FINGERPRINT_FIELDS}
  fp_path = os.path.join(out_dir, "rejection_sampling_config.json")
  ledger_path = os.path.join(out_dir, LEDGER_FILE)
  rec_path = os.path.join(out_dir, REASONING_FILE)
  has_ledger = os.path.exists(ledger_path) and os.path.getsize(ledger_path) > 0
  if has_ledger and not resume:
    raise ValueError(f"{out_dir} already holds rejection-sampling results: pass "
                     f"--config.resume=True to continue, or choose another --config.run_dir")
  if resume is True and not has_ledger:
    raise FileNotFoundError(f"resume=True but {out_dir} has no rejection-sampling results "
                            f"(use --config.resume=auto to start fresh when there are none)")
  if resume and os.path.exists(fp_path) and json.load(open(fp_path)) != fingerprint:
    raise ValueError(f"{out_dir} was made with other settings ({fp_path}); resuming "
                     f"would mix results: choose another --config.run_dir")
  json.dump(fingerprint, open(fp_path, "w"), indent=2)
  if not resume:
    for p in (ledger_path, rec_path):
      if os.path.exists(p):
        os.remove(p)
    return {}, []
  ledger = {(e["set"], e["id"]): e for e in _read_jsonl_lenient(ledger_path)}
  # Samples of a prompt are written before its ledger line: drop samples of unfinished prompts.
  records = [r for r in _read_jsonl_lenient(rec_path)
             if (r["provenance"]["prompt_set"], r["provenance"]["prompt_id"]) in ledger]
  _write_jsonl_atomic(ledger_path, list(ledger.values()))
  _write_jsonl_atomic(rec_path, records)
  logging.info("resuming: %d prompts done, %d samples kept so far", len(ledger), len(records))
  return ledger, records


# ---------------------------------------------------------------------- the stage
def run(config) -> dict[str, Any]:
  """Run rejection sampling as configured; returns the summary (also in summary.json).

  Raises:
    ValueError / FileNotFoundError: bad config values, a run_dir holding other results,
      malformed prompt or non-reasoning JSONL (file and line named).
  """
  t0 = time.perf_counter()
  s = validate_config(config)
  ledger, kept_records = _prepare_out_dir(config, s.resume)
  loaded = s.model.load()
  cfg, tok = loaded.config, loaded.tokenizer
  prov = {"model": loaded.info["source"], "checkpoint": loaded.info["checkpoint"],
          "checkpoint_step": loaded.info["step"]}
  prompt_sets = load_prompt_sets(config, tok)
  K = config.num_samples
  prefix = response_prefix(config.template)
  sp = settings_lib.sampling_params(config.sampling, tok)
  sampler, params = settings_lib.make_sampler(s.parallel, cfg, loaded.params, pad_id=tok.pad_id,
                                              min_prompt_bucket=32)
  del loaded
  from r1jax.rewards import RewardComputer
  from r1jax.rewards.registry import parse_reward_spec
  in_spec = {n for n, _ in parse_reward_spec(config.verifier.spec)}
  rewards = RewardComputer(config.verifier.spec, num_workers=config.verifier.workers,
                           timeout_s=config.verifier.timeout_s,
                           fn_kwargs={"accuracy": {"partial_credit": False}}
                           if "accuracy" in in_spec else {})
  judge = s.judge
  judge_tasks = split_list(config.judge.tasks)
  fcfg = s.filters
  base_key = jax.random.key(config.seed)
  total = sum(len(v) for v in prompt_sets.values())
  skipped_long = 0
  ledger_path = os.path.join(config.run_dir, LEDGER_FILE)
  rec_path = os.path.join(config.run_dir, REASONING_FILE)
  bar = tqdm(total=total, initial=sum(1 for k in ledger if k[0] in prompt_sets),
             desc="rejection sampling", unit="prompt", mininterval=5)
  try:
    with open(rec_path, "a", encoding="utf-8") as rec_f, \
        open(ledger_path, "a", encoding="utf-8") as led_f:
      for set_name, examples in prompt_sets.items():
        todo = []
        for ex in examples:
          if (set_name, ex["id"]) in ledger:
            continue
          ids = tok.encode(render_prompt(ex["question"], config.template, tok))
          if len(ids) + sp.max_new_tokens > sampler.max_total_len:
            skipped_long += 1
            logging.warning("%s prompt %s: %d tokens + max_new_tokens exceed the context of "
                            "%d: skipped", set_name, ex["id"], len(ids), sampler.max_total_len)
            continue
          todo.append((ex, ids))
        for i in range(0, len(todo), config.batch_size):
          chunk = todo[i:i + config.batch_size]
          # The key depends on the prompts, not on the batch index: a resumed run samples alike.
          key = jax.random.fold_in(base_key, int(hashlib.sha1(
              f"{set_name}/{chunk[0][0]['id']}".encode()).hexdigest()[:7], 16))
          # A short last chunk is padded with copies of its last prompt (results dropped): one
          # compiled shape per prompt bucket instead of one more per distinct chunk size.
          padded = [p for _, p in chunk] + [chunk[-1][1]] * (config.batch_size - len(chunk))
          out = sampler(params, padded, key, num_samples=K, sampling=sp)
          texts = sampling.decode_completions(tok, out, sp, prefix)[:len(chunk)]
          judged = [judge is not None and needs_judge(ex, judge_tasks) for ex, _ in chunk]
          scores = np.zeros((len(chunk), K), np.float64)
          ruled = [b for b, (ex, _) in enumerate(chunk)
                   if not judged[b] and not needs_judge(ex, judge_tasks)]
          if ruled:
            res = rewards([t for b in ruled for t in texts[b]],
                          [chunk[b][0] for b in ruled for _ in range(K)])
            scores[ruled] = res.total.reshape(len(ruled), K)
          for b, (ex, _) in enumerate(chunk):
            if judged[b]:
              scores[b] = [float(judge(ex["question"], str(ex.get("answer") or ""), t))
                           for t in texts[b]]
          for b, (ex, _) in enumerate(chunk):
            thr = config.judge.threshold if judged[b] else config.verifier.threshold
            # Prompts no rule checks and no judge sees are rejected (score stays below thr).
            if not judged[b] and b not in ruled:
              scores[b] = -np.inf
            lang = ex.get("language") or (ex.get("metadata") or {}).get("language")
            kept, _, counts = select_samples(
                texts[b], scores[b].tolist(), out.finished[b].tolist(), threshold=thr,
                filter_config=fcfg, language=lang, keep_truncated=config.keep_truncated,
                dedup=config.dedup, max_per_prompt=config.max_per_prompt)
            for g in kept:
              r = {"id": f"{ex['id']}#s{g}", "prompt": ex["question"], "response": texts[b][g],
                   "task": ex["task"], "answer": ex.get("answer", ""),
                   "source": "rejection_sampling",
                   "provenance": {**prov, "prompt_set": set_name, "prompt_id": ex["id"],
                                  "sample_index": g, "reward": float(scores[b][g]),
                                  "verifier": "judge" if judged[b] else config.verifier.spec,
                                  "filters_passed": list(fcfg.enabled),
                                  "template": config.template,
                                  "temperature": config.sampling.temperature,
                                  "finished": bool(out.finished[b][g])}}
              rec_f.write(json.dumps(r, ensure_ascii=False) + "\n")
              kept_records.append(r)
            entry = {"set": set_name, "id": ex["id"], "task": ex["task"],
                     "judged": bool(judged[b]), "unverifiable": not judged[b] and b not in ruled,
                     **counts}
            rec_f.flush()
            led_f.write(json.dumps(entry) + "\n")
            led_f.flush()
            ledger[(set_name, ex["id"])] = entry
          bar.update(len(chunk))
          done = [e for e in ledger.values()]
          n_s = sum(e["samples"] for e in done)
          bar.set_postfix({"verified": f"{sum(e['verified'] for e in done) / max(n_s, 1):.3f}",
                           "kept": sum(e["kept"] for e in done)})
  finally:
    bar.close()
    rewards.close()

  non_reasoning = []
  if config.mix.non_reasoning_jsonl:
    from r1jax.data.sft_data import read_sft_jsonl
    recs, _ = read_sft_jsonl(config.mix.non_reasoning_jsonl)
    non_reasoning = [{"id": r["id"], "messages": r["messages"], **r["metadata"],
                      "source": "non_reasoning",
                      "provenance": {"file": os.path.abspath(config.mix.non_reasoning_jsonl)}}
                     for r in recs]
  mixed, n_non = mix_records(kept_records, non_reasoning, config.mix.fraction, config.seed)
  _write_jsonl_atomic(os.path.join(config.run_dir, TRAIN_FILE), mixed)

  entries = [e for e in ledger.values() if e["set"] in prompt_sets]
  summary = {"model": prov["model"] if not prov["checkpoint"] else
             f"{prov['checkpoint']} @ step {prov['checkpoint_step']}", "provenance": prov,
             "num_samples": K, "template": config.template,
             "sampling": config.sampling.to_dict(), "verifier": config.verifier.to_dict(),
             "judge": config.judge.to_dict(), "filters": config.filters.to_dict(),
             "max_per_prompt": config.max_per_prompt, "dedup": config.dedup,
             "acceptance": summarize(entries),
             "prompts_skipped_too_long": skipped_long,
             "records": {"reasoning": len(kept_records), "non_reasoning": n_non,
                         "train": len(mixed),
                         "non_reasoning_fraction": n_non / len(mixed) if mixed else 0.0},
             "files": {"reasoning": REASONING_FILE, "prompts": LEDGER_FILE, "train": TRAIN_FILE},
             "wall_s": time.perf_counter() - t0}
  json.dump(summary, open(os.path.join(config.run_dir, "summary.json"), "w"), indent=2)
  md = markdown(summary)
  open(os.path.join(config.run_dir, "summary.md"), "w").write(md)
  for line in md.splitlines():
    logging.info("%s", line)
  print(md)
  return summary
