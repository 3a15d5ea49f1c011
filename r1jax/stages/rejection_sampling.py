"""Stage `rejection_sampling`: R1 stage 3 (R1_SPEC sections 1 and 5).

From a checkpoint (a model source, or a training run's orbax checkpoint), for every prompt:
  1. sample K completions (`Sampler`, one prefill per prompt, num_samples = K);
  2. verify each: the rule verifier (a reward spec, default accuracy) must score at least
     `verifier.threshold`; prompts no rule can check (task in `judge.tasks`, or no reference
     answer) go to the generative judge `judge.fn` instead (score >= `judge.threshold`), and
     are rejected when no judge is configured;
  3. drop truncated samples (unless keep_truncated) and unreadable ones
     (r1jax.data.filters: mixed language, over-long paragraph, messy code, no summary);
  4. de-duplicate the survivors of the prompt (normalised text), keep at most M, best first.
Kept samples go to `reasoning.jsonl` as SFT records {"id", "prompt", "response", ...,
"provenance"} that r1jax.data.sft_data reads directly; one line per finished prompt goes to
`prompts.jsonl` (counts per filter; the resume ledger). At the end, `train.jsonl` holds the
reasoning records and non-reasoning SFT records (mix.non_reasoning_jsonl) making up
`mix.fraction` of it, shuffled; `summary.json` / `summary.md` give acceptance rates per task
and per filter, with record counts that match the files.

Judge hook: `judge.fn` = "package.module:function" (or "package.module.function") naming
  judge(prompt: str, reference: str, response: str) -> float
called in this process for each sample of a judged prompt (prompt = the question, reference
= the example's answer, "" if none; response = the whole response). R1 used DeepSeek-V3 as the
judge (the reference and the response in its prompt); any callable with this signature works.
Exceptions in the judge fail the run (a broken judge should not silently reject everything).
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import json
import os
import random
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from r1jax import models, sampling
from r1jax.data import filters as filters_lib
from r1jax.data.pipeline import split_list
from r1jax.data.templates import render_prompt, response_prefix
from r1jax.tokenizer import Tokenizer

DEFAULT_MODEL = "smollm2-135m-instruct"
REASONING_FILE = "reasoning.jsonl"
LEDGER_FILE = "prompts.jsonl"
TRAIN_FILE = "train.jsonl"
# Config fields that change the kept samples (resuming with other values would mix results).
_FINGERPRINT_FIELDS = ("model", "checkpoint", "checkpoint_step", "template", "num_samples",
                       "sampling", "seed", "verifier", "judge", "filters", "dedup",
                       "max_per_prompt", "keep_truncated")
COUNT_KEYS = ("prompts", "samples", "verified", "truncated", "readable", "duplicates",
              "capped", "kept", "prompts_with_kept", "judged_samples", "unverifiable_prompts")


# ---------------------------------------------------------------------- pieces
def load_judge(spec: str) -> Optional[Callable[[str, str, str], float]]:
  """The judge function named by `spec` ("pkg.mod:fn" or "pkg.mod.fn"), None for "".

  Raises:
    ValueError: a spec that names no callable (the message says what failed).
  """
  if not spec:
    return None
  mod_name, sep, fn_name = spec.partition(":")
  if not sep:
    mod_name, _, fn_name = spec.rpartition(".")
  if not mod_name or not fn_name:
    raise ValueError(f"judge.fn={spec!r}: expected 'module:function' or 'module.function'")
  try:
    fn = getattr(importlib.import_module(mod_name), fn_name)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"judge.fn={spec!r}: cannot import it ({e})") from e
  if not callable(fn):
    raise ValueError(f"judge.fn={spec!r} is not callable")
  return fn


def needs_judge(example: dict, judge_tasks: Sequence[str]) -> bool:
  """True when no rule checks `example`: its task is in `judge_tasks` ("*" = every task), or
  it has no reference answer and is not a code problem (code is checked by its tests)."""
  if "*" in judge_tasks or example.get("task") in judge_tasks:
    return True
  return not str(example.get("answer") or "").strip() and example.get("task") != "code"


def select_samples(texts: Sequence[str], scores: Sequence[float], finished: Sequence[bool], *,
                   threshold: float, filter_config: filters_lib.FilterConfig,
                   language: Optional[str] = None, keep_truncated: bool = False,
                   dedup: bool = True, max_per_prompt: int = 0
                   ) -> tuple[list[int], list[list[str]], dict[str, Any]]:
  """The rejection rule for the K samples of one prompt.

  Order: verified (score >= threshold) -> not truncated (unless keep_truncated) -> readable
  (every enabled filter passes; each failing filter is counted) -> first of its dedup_key
  -> the `max_per_prompt` best by score (ties: lower sample index), 0 = no cap.

  Args:
    texts: K responses; scores: K floats; finished: K bools (False = hit the token limit).
    threshold, filter_config, language, keep_truncated, dedup, max_per_prompt: as above.
  Returns:
    (kept sample indices in ascending order, failures per sample (filter names; only for
    verified, non-truncated samples), counts {"samples", "verified", "truncated",
    "failed": {filter: n}, "readable", "duplicates", "capped", "kept"}).
  Raises:
    ValueError: texts / scores / finished of different lengths, or max_per_prompt < 0.
  """
  K = len(texts)
  if len(scores) != K or len(finished) != K:
    raise ValueError(f"{K} texts but {len(scores)} scores and {len(finished)} finished flags")
  if max_per_prompt < 0:
    raise ValueError(f"max_per_prompt must be >= 0, got {max_per_prompt}")
  failed = {name: 0 for name in filter_config.enabled}
  failures: list[list[str]] = [[] for _ in range(K)]
  verified = [i for i in range(K) if scores[i] >= threshold]
  complete = [i for i in verified if keep_truncated or finished[i]]
  readable = []
  for i in complete:
    failures[i] = filters_lib.readability_failures(texts[i], filter_config, language=language)
    for name in failures[i]:
      failed[name] += 1
    if not failures[i]:
      readable.append(i)
  unique = [readable[j] for j in filters_lib.dedup([texts[i] for i in readable])] if dedup \
      else readable
  best = sorted(unique, key=lambda i: (-scores[i], i))
  kept = sorted(best[:max_per_prompt] if max_per_prompt else best)
  counts = {"samples": K, "verified": len(verified), "truncated": len(verified) - len(complete),
            "failed": failed, "readable": len(readable),
            "duplicates": len(readable) - len(unique), "capped": len(unique) - len(kept),
            "kept": len(kept)}
  return kept, failures, counts


def mix_records(reasoning: list[dict], non_reasoning: list[dict], fraction: float,
                seed: int) -> tuple[list[dict], int]:
  """Reasoning records plus non-reasoning ones making up `fraction` of the result, shuffled.

  n_non = round(len(reasoning) * fraction / (1 - fraction)), drawn without replacement
  (seeded); when the non-reasoning set is smaller, all of it is used (a warning is logged).

  Args:
    reasoning, non_reasoning: SFT records (dicts).
    fraction: in [0, 1).
    seed: shuffling / drawing seed.
  Returns:
    (the mixed, shuffled list, number of non-reasoning records in it).
  Raises:
    ValueError: fraction outside [0, 1).
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"mix.fraction must be in [0, 1), got {fraction}")
  want = int(round(len(reasoning) * fraction / (1.0 - fraction)))
  rng = random.Random(seed)
  if want > len(non_reasoning):
    logging.warning("mix: %d non-reasoning records wanted for fraction %.3f, only %d available",
                    want, fraction, len(non_reasoning))
  picked = rng.sample(non_reasoning, min(want, len(non_reasoning)))
  out = list(reasoning) + picked
  rng.shuffle(out)
  return out, len(picked)


def summarize(ledger: Sequence[dict]) -> dict[str, Any]:
  """Totals and rates per task and overall from prompt ledger entries.

  Rates: verified_rate = verified / samples; fail_rate[f] = failed[f] / (verified -
  truncated) (the samples the filters saw); kept_rate = kept / samples; prompt_yield =
  prompts with >= 1 kept sample / prompts. unverifiable_prompts: prompts no rule checks and no
  judge saw (all their samples rejected).
  """
  def agg(entries):
    c = {k: 0 for k in COUNT_KEYS}
    failed = collections.Counter()
    for e in entries:
      c["prompts"] += 1
      for k in COUNT_KEYS[1:8]:
        c[k] += e[k]
      c["prompts_with_kept"] += e["kept"] > 0
      c["judged_samples"] += e["samples"] if e.get("judged") else 0
      c["unverifiable_prompts"] += bool(e.get("unverifiable"))
      failed.update(e["failed"])
    seen = c["verified"] - c["truncated"]
    c["failed"] = dict(failed)
    c["verified_rate"] = c["verified"] / c["samples"] if c["samples"] else 0.0
    c["fail_rate"] = {k: v / seen if seen else 0.0 for k, v in failed.items()}
    c["kept_rate"] = c["kept"] / c["samples"] if c["samples"] else 0.0
    c["prompt_yield"] = c["prompts_with_kept"] / c["prompts"] if c["prompts"] else 0.0
    return c
  tasks = sorted({e["task"] for e in ledger})
  return {"per_task": {t: agg([e for e in ledger if e["task"] == t]) for t in tasks},
          "overall": agg(ledger)}


def _markdown(summary: dict) -> str:
  rows = list(summary["acceptance"]["per_task"].items()) + [("overall",
                                                            summary["acceptance"]["overall"])]
  names = sorted({f for _, r in rows for f in r["failed"]})
  head = (["task", "prompts", "samples", "verified"] + [f"fail {n}" for n in names]
          + ["duplicates", "kept", "prompt yield"])
  lines = [f"# Rejection sampling from {summary['model']}", "",
           f"{summary['num_samples']} samples per prompt; {summary['records']['reasoning']} "
           f"reasoning + {summary['records']['non_reasoning']} non-reasoning records in "
           f"{TRAIN_FILE}.", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  pct = lambda x: f"{100 * x:.1f} %"
  for name, r in rows:
    cells = [name, str(r["prompts"]), str(r["samples"]),
             f"{r['verified']} ({pct(r['verified_rate'])})"]
    cells += [f"{r['failed'].get(n, 0)} ({pct(r['fail_rate'].get(n, 0.0))})" for n in names]
    cells += [str(r["duplicates"]), f"{r['kept']} ({pct(r['kept_rate'])})",
              pct(r["prompt_yield"])]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- model + prompts
def _run_config(checkpoint: str) -> dict:
  for d in (checkpoint, os.path.dirname(os.path.normpath(checkpoint))):
    p = os.path.join(d, "config.json")
    if os.path.exists(p):
      return json.load(open(p))
  return {}


def load_model(config) -> tuple[Any, Any, Tokenizer, dict]:
  """(ModelConfig, params, tokenizer, provenance) for config.model / config.checkpoint.

  With `checkpoint`, the model source (and tokenizer, tiny_model) default to the run's
  config.json; the params are the run's policy (trainer.load_run_params).

  Raises:
    ValueError: a checkpoint without a known model source, or mismatching params.
    FileNotFoundError: no checkpoint / model files.
  """
  model, tok_source = config.model, config.tokenizer
  tiny = config.tiny_model.to_dict()
  if config.checkpoint:
    run_cfg = _run_config(config.checkpoint)
    model = model or run_cfg.get("model", "")
    if not model:
      raise ValueError("rejection sampling from a checkpoint needs --config.model (the run's "
                       "model source) when the run directory has no config.json")
    tok_source = tok_source or run_cfg.get("tokenizer", "")
    tiny = run_cfg.get("tiny_model") or tiny
  if model == "tiny-random":
    tok = Tokenizer.from_source(tok_source or DEFAULT_MODEL)
    cfg = models.tiny_config(vocab_size=tok.vocab_size, dtype=config.dtype,
                             param_dtype=config.param_dtype, bos_token_id=tok.bos_id,
                             eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, **tiny)
    # Jitted: one compile instead of an eager init (2x faster on CPU; the draws differ from
    # the GRPO stage's eager tiny-random init, which nothing compares against).
    params = None if config.checkpoint else jax.jit(models.init_params, static_argnums=0)(
        cfg, jax.random.key(config.seed))
  else:
    tok = Tokenizer.from_source(tok_source or model)
    if config.checkpoint:
      cfg, params = models.load_config(model, dtype=config.dtype,
                                       param_dtype=config.param_dtype), None
    else:
      cfg, params = models.from_pretrained(model, dtype=config.dtype,
                                           param_dtype=config.param_dtype)
  step = None
  if config.checkpoint:
    from r1jax.train.trainer import load_run_params
    params, step = load_run_params(config.checkpoint, cfg,
                                   None if config.checkpoint_step < 0 else config.checkpoint_step)
  if tok.vocab_size > cfg.vocab_size:
    raise ValueError(f"tokenizer has {tok.vocab_size} ids, more than the model's vocab_size="
                     f"{cfg.vocab_size}")
  prov = {"model": str(model), "checkpoint": config.checkpoint or None,
          "checkpoint_step": None if step is None else int(step)}
  return cfg, params, tok, prov


def load_prompt_sets(config, tok: Tokenizer) -> dict[str, list[dict]]:
  """name -> examples {id, question, answer, task, metadata}: "train" / "heldout" (splits of
  config.data), "champ", or .jsonl paths; at most config.max_prompts each (0 = all).

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
    out[name] = exs[:config.max_prompts] if config.max_prompts > 0 else exs
  if not out:
    raise ValueError("no prompt sets: set --config.prompts")
  return out


def _filter_config(config) -> filters_lib.FilterConfig:
  f = config.filters
  return filters_lib.FilterConfig(
      enabled=tuple(split_list(f.enabled)), language=f.language,
      min_language_ratio=f.min_language_ratio, max_paragraph_chars=f.max_paragraph_chars,
      max_loose_code_lines=f.max_loose_code_lines, reasoning_end=f.reasoning_end)


def validate_config(config) -> None:
  """Reject bad values before any compute.

  Raises:
    ValueError: with the offending key and value.
  """
  if config.num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {config.num_samples}")
  if config.batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
  if config.max_per_prompt < 0:
    raise ValueError(f"max_per_prompt must be >= 0, got {config.max_per_prompt}")
  if not 0.0 <= config.mix.fraction < 1.0:
    raise ValueError(f"mix.fraction must be in [0, 1), got {config.mix.fraction}")
  if config.mix.non_reasoning_jsonl and not os.path.isfile(config.mix.non_reasoning_jsonl):
    raise FileNotFoundError(f"mix.non_reasoning_jsonl not found: {config.mix.non_reasoning_jsonl}")
  from r1jax.rewards.registry import parse_reward_spec
  parse_reward_spec(config.verifier.spec)
  _filter_config(config)
  load_judge(config.judge.fn)
  sampling.SamplingParams(temperature=config.sampling.temperature, top_p=config.sampling.top_p,
                          top_k=config.sampling.top_k,
                          max_new_tokens=config.sampling.max_new_tokens)
  response_prefix(config.template)


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


def _prepare_out_dir(config) -> tuple[dict[tuple[str, str], dict], list[dict]]:
  """Checks resume/fingerprint; returns (ledger by (set, id), kept reasoning records)."""
  os.makedirs(config.out_dir, exist_ok=True)
  fingerprint = {k: (config[k].to_dict() if hasattr(config[k], "to_dict") else config[k])
                 for k in _FINGERPRINT_FIELDS}
  fp_path = os.path.join(config.out_dir, "rejection_sampling_config.json")
  ledger_path = os.path.join(config.out_dir, LEDGER_FILE)
  rec_path = os.path.join(config.out_dir, REASONING_FILE)
  has_ledger = os.path.exists(ledger_path) and os.path.getsize(ledger_path) > 0
  if has_ledger and not config.resume:
    raise ValueError(f"{config.out_dir} already holds rejection-sampling results: pass "
                     f"--config.resume=True to continue, or choose another --config.out_dir")
  if config.resume and os.path.exists(fp_path) and json.load(open(fp_path)) != fingerprint:
    raise ValueError(f"{config.out_dir} was made with other settings ({fp_path}); resuming "
                     f"would mix results: choose another --config.out_dir")
  json.dump(fingerprint, open(fp_path, "w"), indent=2)
  if not config.resume:
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
    ValueError / FileNotFoundError: bad config values, an out_dir holding other results,
      malformed prompt or non-reasoning JSONL (file and line named).
  """
  t0 = time.perf_counter()
  validate_config(config)
  ledger, kept_records = _prepare_out_dir(config)
  cfg, params, tok, prov = load_model(config)
  prompt_sets = load_prompt_sets(config, tok)
  K = config.num_samples
  prefix = response_prefix(config.template)
  sp = sampling.SamplingParams(
      temperature=config.sampling.temperature, top_p=config.sampling.top_p,
      top_k=config.sampling.top_k, max_new_tokens=config.sampling.max_new_tokens,
      stop_ids=tok.stop_ids,
      stop_sequences=sampling.stop_sequences_for(tok, split_list(config.sampling.stop_strings)))
  sampler = sampling.Sampler(cfg, pad_id=tok.pad_id, min_prompt_bucket=32)
  from r1jax.rewards import RewardComputer
  from r1jax.rewards.registry import parse_reward_spec
  in_spec = {n for n, _ in parse_reward_spec(config.verifier.spec)}
  rewards = RewardComputer(config.verifier.spec, num_workers=config.verifier.workers,
                           timeout_s=config.verifier.timeout_s,
                           fn_kwargs={"accuracy": {"partial_credit": False}}
                           if "accuracy" in in_spec else {})
  judge = load_judge(config.judge.fn)
  judge_tasks = split_list(config.judge.tasks)
  fcfg = _filter_config(config)
  base_key = jax.random.key(config.seed)
  total = sum(len(v) for v in prompt_sets.values())
  skipped_long = 0
  ledger_path = os.path.join(config.out_dir, LEDGER_FILE)
  rec_path = os.path.join(config.out_dir, REASONING_FILE)
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
  _write_jsonl_atomic(os.path.join(config.out_dir, TRAIN_FILE), mixed)

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
  json.dump(summary, open(os.path.join(config.out_dir, "summary.json"), "w"), indent=2)
  md = _markdown(summary)
  open(os.path.join(config.out_dir, "summary.md"), "w").write(md)
  for line in md.splitlines():
    logging.info("%s", line)
  print(md)
  return summary
