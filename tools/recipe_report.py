"""Per-stage figures of a pipeline run: wall time of each stage (its DONE marker), and for
each evaluation stage (eval_*) pass@1, format rate, mean response length and the mean
language consistency of the completions (DeepSeek-R1, section 2.3.2: share of
chain-of-thought words in the target language, r1jax.rewards.language).

  python tools/recipe_report.py runs/r1_small [--language en]

Prints a markdown table, then one JSON object (the last line).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from r1jax.rewards.language import extract_cot, language_consistency


def _stage_dirs(run_dir):
  out = []
  for name in sorted(os.listdir(run_dir)):
    done = os.path.join(run_dir, name, "DONE")
    if os.path.isfile(done):
      with open(done) as f:
        out.append((name, json.load(f)))
  return sorted(out, key=lambda x: x[1].get("finished_at", ""))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("run_dir")
  ap.add_argument("--language", default="en")
  a = ap.parse_args()
  rows = []
  for name, done in _stage_dirs(a.run_dir):
    row = {"stage": name, "kind": done.get("kind"), "wall_s": round(done.get("wall_s", 0), 1)}
    records = os.path.join(a.run_dir, name, "records.jsonl")
    report = os.path.join(a.run_dir, name, "report.json")
    if os.path.isfile(records) and os.path.isfile(report):
      with open(report) as f:
        rep = json.load(f)
      overall = rep.get("overall", rep)
      comps, fmt, lens = [], [], []
      with open(records) as f:
        for line in f:
          r = json.loads(line)
          comps += r["completions"]
          fmt += r.get("format_ok", [])
          lens += r.get("lengths", [])
      # Share of target-language words per completion, over completions with any countable
      # word (pure "12 + 3 = 15" answers have none; their share is reported separately).
      counts = [language_consistency(extract_cot(c), a.language) for c in comps]
      lang = [on / n for on, n in counts if n]
      row["no_words_fraction"] = float(np.mean([n == 0 for _, n in counts])) if counts else None
      row.update(problems=len(comps), pass_at_1=overall.get("pass@1"),
                 format_rate=float(np.mean(fmt)) if fmt else None,
                 response_len=float(np.mean(lens)) if lens else None,
                 language_consistency=float(np.mean(lang)) if lang else None)
    rows.append(row)
  print("| stage | kind | wall | pass@1 | format | length | language consistency | no words |")
  print("|---|---|---|---|---|---|---|---|")
  fmt = lambda v, p=False: "-" if v is None else (f"{100 * v:.1f} %" if p else f"{v:.1f}")
  for r in rows:
    print(f"| {r['stage']} | {r['kind']} | {r['wall_s']:.0f} s | {fmt(r.get('pass_at_1'), True)} "
          f"| {fmt(r.get('format_rate'), True)} | {fmt(r.get('response_len'))} "
          f"| {fmt(r.get('language_consistency'), True)} "
          f"| {fmt(r.get('no_words_fraction'), True)} |")
  print(json.dumps({"run_dir": a.run_dir, "stages": rows}))


if __name__ == "__main__":
  main()
