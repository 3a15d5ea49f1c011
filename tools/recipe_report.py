"""Per-stage table of a pipeline run (DeepSeek-R1 recipe): the wall time of every stage (its
DONE marker), the samples kept by rejection sampling (summary.json), and for every
evaluation stage (eval_*) pass@1 from n samples with its 95% interval over problems,
cons@n, format rate (R1-Zero tags), R1 format rate (a closed reasoning block, then a
non-empty summary), mean response length, the language consistency of the reasoning
(DeepSeek-R1 section 2.3.2: the share of its words in the target language,
r1jax.rewards.language) and a paired sign-flip test against the previous evaluation on the
same problems (r1jax.eval.paired_test). Evaluations of general prompts (all-scenario RL,
records of kind "general") get their own table: the helpfulness reward-model score and the
rule judge's score (r1jax.curation.preference_judge) with 95% intervals and paired tests
against the previous general evaluation.

  python tools/recipe_report.py runs/r1_small [--language en]
  python tools/recipe_report.py runs/r1_reasoning \
      --pairs eval_sft:eval_reasoning_rl,eval_sft:eval_base_chat   # chosen paired tests too

Prints a markdown table, then one JSON object (the last line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from r1jax.curation.filters import summary_ok  # noqa: E402
from r1jax.eval import mean_interval, paired_test  # noqa: E402
from r1jax.rewards.language import extract_cot, language_consistency  # noqa: E402


def _stage_dirs(run_dir):
  out = []
  for name in sorted(os.listdir(run_dir)):
    done = os.path.join(run_dir, name, "DONE")
    if os.path.isfile(done):
      with open(done) as f:
        out.append((name, json.load(f)))
  return sorted(out, key=lambda x: x[1].get("finished_at", ""))


def _wall(row) -> str:
  """A stage's wall time; a resumed stage's DONE times only its last attempt."""
  n = row.get("attempts", 1)
  return f"{row['wall_s']:.0f} s" + (f" (last of {n} attempts)" if n > 1 else "")


def _eval_figures(stage_dir, language):
  """Figures of an evaluation stage from its records.jsonl, and per-problem pass@1 by
  (dataset, id) for the paired tests (None when the stage has no records)."""
  path = os.path.join(stage_dir, "records.jsonl")
  if not os.path.isfile(path):
    return None, None
  records = [json.loads(l) for l in open(path) if l.strip()]
  if not records:
    return None, None
  if all(r.get("kind") == "general" for r in records):
    return _general_figures(records)
  per_problem = {(r["dataset"], r["id"]): float(np.mean(r["correct"])) for r in records}
  comps = [c for r in records for c in r["completions"]]
  # Share of target-language words per completion, over completions with any countable
  # word (pure "12 + 3 = 15" reasoning has none; that share is reported separately).
  counts = [language_consistency(extract_cot(c), language) for c in comps]
  lang = [on / n for on, n in counts if n]
  p1, lo, hi = mean_interval(list(per_problem.values()))
  n = len(records[0]["correct"])
  return {"problems": len(records), "samples_per_problem": n, "pass_at_1": p1,
          "pass_at_1_ci95": [lo, hi],
          "cons_at_n": float(np.mean([r["cons_correct"] for r in records])),
          "format_rate": float(np.mean([f for r in records for f in r["format_ok"]])),
          # R1's output format: a closed reasoning block, then a non-empty summary.
          "r1_format_rate": float(np.mean([summary_ok(c) for c in comps])),
          "response_len": float(np.mean([x for r in records for x in r["lengths"]])),
          # Responses that stopped (not cut at the budget): the reasoning, without rambling.
          "response_len_finished": _finished_len(records),
          "language_consistency": float(np.mean(lang)) if lang else None,
          "no_words_fraction": float(np.mean([k == 0 for _, k in counts]))}, per_problem


def _general_figures(records):
  """Figures of a general-prompt evaluation, and per-prompt (rm score, judge score) by
  (dataset, id)."""
  judge = {(r["dataset"], r["id"]): float(np.mean([j["score"] for j in r["judge"]]))
           for r in records}
  rm = ({(r["dataset"], r["id"]): float(np.mean(r["rm_score"])) for r in records}
        if all("rm_score" in r for r in records) else None)
  out = {"general": True, "prompts": len(records),
         "samples_per_problem": len(records[0]["judge"]),
         "response_len": float(np.mean([x for r in records for x in r["lengths"]])),
         "response_len_finished": _finished_len(records)}
  for name, vals in (("judge_score", judge), ("rm_score", rm)):
    if vals is not None:
      m, lo, hi = mean_interval(list(vals.values()))
      out[name], out[name + "_ci95"] = m, [lo, hi]
  for c in ("finished", "words", "clean", "on_topic", "fluent"):
    out[f"judge_{c}"] = float(np.mean([j[c] for r in records for j in r["judge"]]))
  return out, {"judge": judge, "rm": rm}


def _finished_len(records):
  lens = [x for r in records if "finished" in r
          for x, f in zip(r["lengths"], r["finished"]) if f]
  return float(np.mean(lens)) if lens else None


def _kept(stage_dir):
  """Samples kept by a rejection-sampling stage (its summary.json), else None."""
  path = os.path.join(stage_dir, "summary.json")
  if not os.path.isfile(path):
    return None
  summary = json.load(open(path))
  if "pairs" in summary:  # a preference_pairs stage
    return summary["pairs"]
  return summary.get("records", {}).get("reasoning")


def _vs(cur, prev, prev_name):
  """Paired test of an evaluation against an earlier one on their shared problems (pass@1),
  or for general prompts on the reward-model score (and the judge score); None when they
  share none."""
  if "judge" in cur:
    if "judge" not in prev:
      return None
    common = sorted(set(cur["judge"]) & set(prev["judge"]))
    if not common:
      return None
    out = {"stage": prev_name, "problems": len(common), "metric": "judge_score",
           "judge": paired_test([cur["judge"][k] for k in common],
                                [prev["judge"][k] for k in common])}
    if cur["rm"] is not None and prev["rm"] is not None:
      out["rm"] = paired_test([cur["rm"][k] for k in common], [prev["rm"][k] for k in common])
    return out
  if "judge" in prev:
    return None
  common = sorted(set(cur) & set(prev))
  if not common:
    return None
  return dict(paired_test([cur[k] for k in common], [prev[k] for k in common]),
              stage=prev_name, problems=len(common))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("run_dir")
  ap.add_argument("--language", default="en")
  ap.add_argument("--pairs", default="", metavar="A:B,...",
                  help="extra paired tests of evaluation stage A against stage B")
  a = ap.parse_args()
  pairs = [tuple(x.split(":", 1)) for x in a.pairs.split(",") if x.strip()]
  if any(len(p) != 2 or not all(p) for p in pairs):
    sys.exit(f"recipe_report: error: --pairs must be A:B[,C:D...], got {a.pairs!r}")
  if not os.path.isdir(a.run_dir):
    sys.exit(f"recipe_report: error: {a.run_dir} is not a directory")
  rows, previous, per_stage = [], {}, {}
  for name, done in _stage_dirs(a.run_dir):
    stage_dir = os.path.join(a.run_dir, name)
    row = {"stage": name, "kind": done.get("kind"), "wall_s": round(done.get("wall_s", 0), 1),
           "attempts": done.get("attempts", 1), "samples_kept": _kept(stage_dir)}
    figures, per_problem = _eval_figures(stage_dir, a.language)
    if figures is not None:
      row.update(figures)
      per_stage[name] = per_problem
      kind = "general" if figures.get("general") else "reasoning"
      if kind in previous:
        prev_name, prev = previous[kind]
        row["vs_previous"] = _vs(per_problem, prev, prev_name)
      previous[kind] = (name, per_problem)
    rows.append(row)

  tests = []
  for x, y in pairs:
    missing = [n for n in (x, y) if n not in per_stage]
    if missing:
      sys.exit(f"recipe_report: error: --pairs: no finished evaluation stage "
               f"{', '.join(missing)} in {a.run_dir}")
    if isinstance(per_stage[x], dict) and "judge" in per_stage[x]:
      if not (isinstance(per_stage[y], dict) and "judge" in per_stage[y]):
        sys.exit(f"recipe_report: error: --pairs: {x} evaluates general prompts, {y} not")
    t = _vs(per_stage[x], per_stage[y], y)
    if t is None:
      sys.exit(f"recipe_report: error: --pairs: {x} and {y} share no problem")
    tests.append(dict(t, stage=x, baseline=y))

  pct = lambda v: "-" if v is None else f"{100 * v:.1f}"
  print("| stage | kind | wall | pass@1 % [95% CI] | cons@n % | vs previous eval (pp, p) "
        "| format % | R1 format % | length (finished) | language % | kept |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    if r.get("general"):
      continue
    p1 = "-"
    if r.get("pass_at_1") is not None:
      lo, hi = r["pass_at_1_ci95"]
      p1 = f"{pct(r['pass_at_1'])} [{pct(lo)}, {pct(hi)}] (n={r['samples_per_problem']}, " \
           f"{r['problems']} problems)"
    vs = r.get("vs_previous")
    vs = "-" if vs is None else (f"{100 * vs['diff']:+.1f} [{100 * vs['diff_low']:+.1f}, "
                                 f"{100 * vs['diff_high']:+.1f}], p={vs['p_value']:.3g} vs "
                                 f"{vs['stage']}")
    length = "-" if r.get("response_len") is None else f"{r['response_len']:.1f}"
    if r.get("response_len_finished") is not None:
      length += f" ({r['response_len_finished']:.1f})"
    kept = "-" if r.get("samples_kept") is None else str(r["samples_kept"])
    print(f"| {r['stage']} | {r['kind']} | {_wall(r)} | {p1} | "
          f"{pct(r.get('cons_at_n'))} | {vs} | {pct(r.get('format_rate'))} | "
          f"{pct(r.get('r1_format_rate'))} | {length} | "
          f"{pct(r.get('language_consistency'))} | {kept} |")
  general = [r for r in rows if r.get("general")]
  if general:
    ci = lambda r, k: (f"{r[k]:.2f} [{r[k + '_ci95'][0]:.2f}, {r[k + '_ci95'][1]:.2f}]"
                       if r.get(k) is not None else "-")
    print()
    print("| general evaluation | wall | prompts x n | reward-model score [95% CI] | judge score "
          "(0-5) [95% CI] | vs previous (RM diff, p; judge diff, p) | finished % | words % "
          "| clean % | on topic % | fluent % | length (finished) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in general:
      vs = r.get("vs_previous")
      vs = "-" if vs is None else _general_diff(vs)
      length = f"{r['response_len']:.1f}" + (
          f" ({r['response_len_finished']:.1f})" if r.get("response_len_finished") else "")
      print(f"| {r['stage']} | {_wall(r)} | {r['prompts']} x "
            f"{r['samples_per_problem']} | {ci(r, 'rm_score')} | {ci(r, 'judge_score')} | {vs} | "
            + " | ".join(pct(r[f"judge_{c}"]) for c in ("finished", "words", "clean",
                                                        "on_topic", "fluent"))
            + f" | {length} |")
  if tests:
    print()
    print("| stage | against | difference [95% CI] | p (paired) | problems |")
    print("|---|---|---|---|---|")
    for t in tests:
      if "judge" in t:
        print(f"| {t['stage']} | {t['baseline']} | {_general_diff(t, against=False)} | | "
              f"{t['problems']} |")
        continue
      print(f"| {t['stage']} | {t['baseline']} | pass@1 {100 * t['diff']:+.1f} pp "
            f"[{100 * t['diff_low']:+.1f}, {100 * t['diff_high']:+.1f}] | "
            f"{t['p_value']:.3g} | {t['problems']} |")
  print(json.dumps({"run_dir": a.run_dir, "stages": rows, "paired_tests": tests}))


def _general_diff(t, against=True):
  parts = []
  for key, name in (("rm", "RM"), ("judge", "judge")):
    if t.get(key):
      d = t[key]
      parts.append(f"{name} {d['diff']:+.2f} [{d['diff_low']:+.2f}, {d['diff_high']:+.2f}], "
                   f"p={d['p_value']:.3g}")
  return "; ".join(parts) + (f" vs {t['stage']}" if against else "")


if __name__ == "__main__":
  main()
