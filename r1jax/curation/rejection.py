"""Rejection-sampling selection (DeepSeek-R1, section 2.3.3; docs/method.md "Stages"): which
of a prompt's K samples to keep, how to mix in non-reasoning SFT data, and the acceptance
summary of a run. Pure functions of texts, scores and counts; the stage that samples and
scores is r1jax.stages.rejection_sampling.
"""

from __future__ import annotations

import collections
import random
from typing import Any, Optional, Sequence

from absl import logging

from r1jax.curation import filters as filters_lib

REASONING_FILE = "reasoning.jsonl"
LEDGER_FILE = "prompts.jsonl"
TRAIN_FILE = "train.jsonl"
COUNT_KEYS = ("prompts", "samples", "verified", "truncated", "readable", "duplicates",
              "capped", "kept", "prompts_with_kept", "judged_samples", "unverifiable_prompts")


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


def markdown(summary: dict) -> str:
  """The summary.md table of a run's summary."""
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
