"""tools/recipe_report.py on a hand-made pipeline directory: per-stage figures, the 95%
interval, cons@n, the paired test against the previous evaluation, samples kept."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _stage(run, name, kind, finished, wall, records=None, summary=None, attempts=None):
  d = run / name
  d.mkdir(parents=True)
  done = {"kind": kind, "finished_at": finished, "wall_s": wall}
  if attempts is not None:
    done["attempts"] = attempts
  (d / "DONE").write_text(json.dumps(done))
  if records is not None:
    with open(d / "records.jsonl", "w") as f:
      for r in records:
        f.write(json.dumps(r) + "\n")
  if summary is not None:
    (d / "summary.json").write_text(json.dumps(summary))


def _records(correct, text="<think> the sum is found step by step </think> <answer> 3 </answer>"):
  return [{"dataset": "d", "id": i, "correct": c, "cons_correct": float(np.mean(c) > 0.5),
           "completions": [text] * len(c), "format_ok": [True] * len(c),
           "lengths": [10] * len(c)} for i, c in enumerate(correct)]


def test_recipe_report_table_and_paired_test(tmp_path):
  run = tmp_path / "run"
  before = [[0, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]] * 5  # 20 problems
  after = [[1, 1, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0], [0, 1, 0, 0]] * 5
  _stage(run, "cold_start", "sft", "2026-01-01T00:00:01", 60.0, attempts=3)
  _stage(run, "eval_cold_start", "eval", "2026-01-01T00:00:02", 30.0, _records(before))
  _stage(run, "rejection", "rejection_sampling", "2026-01-01T00:00:03", 90.0,
         summary={"records": {"reasoning": 321, "non_reasoning": 5}})
  _stage(run, "eval_rl", "eval", "2026-01-01T00:00:04", 30.0, _records(after))
  r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "recipe_report.py"), str(run)],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout.strip().splitlines()[-1])
  rows = {s["stage"]: s for s in out["stages"]}
  assert [s["stage"] for s in out["stages"]] == ["cold_start", "eval_cold_start", "rejection",
                                                "eval_rl"]
  assert rows["rejection"]["samples_kept"] == 321
  b, a = rows["eval_cold_start"], rows["eval_rl"]
  assert b["pass_at_1"] == 0.1875 and a["pass_at_1"] == 0.5 and a["problems"] == 20
  assert b["pass_at_1_ci95"][0] < 0.1875 < b["pass_at_1_ci95"][1]
  assert a["cons_at_n"] == 0.5 and a["language_consistency"] == 1.0
  assert a["r1_format_rate"] == 1.0
  vs = a["vs_previous"]
  assert vs["stage"] == "eval_cold_start" and abs(vs["diff"] - 0.3125) < 1e-12
  assert vs["p_value"] < 1e-3  # every problem's difference is >= 0, most > 0
  assert "| eval_rl | eval | 30 s | 50.0 [" in r.stdout and "p=" in r.stdout
  assert "| cold_start | sft | 60 s (last of 3 attempts) |" in r.stdout
  assert rows["cold_start"]["attempts"] == 3 and rows["eval_rl"]["attempts"] == 1


def test_recipe_report_chosen_pairs_and_finished_length(tmp_path):
  """--pairs adds paired tests of chosen stages (not only against the previous one); the
  length of finished responses leaves out those cut at the budget; a bad pair is a
  one-line error."""
  run = tmp_path / "run"
  base = [[0, 0, 0, 0]] * 8
  rl = [[1, 1, 0, 1]] * 8
  sft = [[1, 1, 1, 1]] * 8
  recs = _records(sft)
  for r in recs:
    r["lengths"], r["finished"] = [10, 20, 96, 30], [True, True, False, True]
  _stage(run, "eval_base", "eval", "2026-01-01T00:00:01", 1.0, _records(base))
  _stage(run, "eval_rl", "eval", "2026-01-01T00:00:02", 1.0, _records(rl))
  for r in recs:  # no summary after the reasoning block: not the R1 format
    r["completions"][0] = "<think> 1 + 2 = 3 </think>  "
  _stage(run, "eval_sft", "eval", "2026-01-01T00:00:03", 1.0, recs)
  tool = os.path.join(ROOT, "tools", "recipe_report.py")
  r = subprocess.run([sys.executable, tool, str(run), "--pairs", "eval_sft:eval_base"],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout.strip().splitlines()[-1])
  (t,) = out["paired_tests"]
  assert (t["stage"], t["baseline"], t["problems"]) == ("eval_sft", "eval_base", 8)
  assert t["diff"] == 1.0 and t["p_value"] < 0.01  # 8 of 8 problems up: exact p = 2 / 2^8
  rows = {s["stage"]: s for s in out["stages"]}
  assert rows["eval_sft"]["response_len_finished"] == 20.0
  assert rows["eval_sft"]["response_len"] == 39.0
  assert rows["eval_sft"]["r1_format_rate"] == 0.75
  assert rows["eval_sft"]["vs_previous"]["stage"] == "eval_rl"
  assert "| eval_sft | eval_base | pass@1 +100.0 pp [" in r.stdout
  bad = subprocess.run([sys.executable, tool, str(run), "--pairs", "eval_sft:nope"],
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 1 and "no finished evaluation stage nope" in bad.stderr


def _general(judge_scores, rm):
  crit = ("finished", "words", "clean", "on_topic", "fluent")
  return [{"dataset": "g", "id": i, "kind": "general", "lengths": [5] * len(js),
           "finished": [True] * len(js), "rm_score": r,
           "judge": [dict({c: float(k < s) for k, c in enumerate(crit)}, score=float(s))
                     for s in js]}
          for i, (js, r) in enumerate(zip(judge_scores, rm))]


def test_recipe_report_general_evaluations(tmp_path):
  """General-prompt evaluations (all-scenario RL): reward-model and judge scores with
  intervals, paired against the previous general evaluation only; the reasoning chain and
  the pairs count of a preference_pairs stage are unaffected."""
  run = tmp_path / "run"
  _stage(run, "eval_sft", "eval", "2026-01-01T00:00:01", 1.0, _records([[1, 0]] * 6))
  _stage(run, "preference_pairs", "preference_pairs", "2026-01-01T00:00:02", 5.0,
         summary={"pairs": 123, "prompts": 256})
  _stage(run, "eval_sft_general", "eval", "2026-01-01T00:00:03", 2.0,
         _general([[1, 2]] * 6, [[-1.0, 0.0]] * 6))
  _stage(run, "eval_asr", "eval", "2026-01-01T00:00:04", 3.0, _records([[1, 1]] * 6))
  _stage(run, "eval_asr_general", "eval", "2026-01-01T00:00:05", 4.0,
         _general([[4, 5]] * 6, [[1.0, 2.0]] * 6))
  tool = os.path.join(ROOT, "tools", "recipe_report.py")
  r = subprocess.run([sys.executable, tool, str(run), "--pairs",
                      "eval_asr_general:eval_sft_general"],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout.strip().splitlines()[-1])
  rows = {s["stage"]: s for s in out["stages"]}
  assert rows["preference_pairs"]["samples_kept"] == 123
  g0, g1 = rows["eval_sft_general"], rows["eval_asr_general"]
  assert g0["rm_score"] == -0.5 and g1["rm_score"] == 1.5 and g1["judge_score"] == 4.5
  assert g0["judge_finished"] == 1.0 and g0["judge_words"] == 0.5 and g0["judge_clean"] == 0.0
  assert "vs_previous" not in g0  # no earlier general evaluation; never against pass@1
  vs = g1["vs_previous"]
  assert vs["stage"] == "eval_sft_general" and vs["problems"] == 6
  assert vs["rm"]["diff"] == 2.0 and vs["judge"]["diff"] == 3.0 and vs["rm"]["p_value"] < 0.05
  assert rows["eval_asr"]["vs_previous"]["stage"] == "eval_sft"
  (t,) = out["paired_tests"]
  assert t["rm"]["diff"] == 2.0 and t["baseline"] == "eval_sft_general"
  assert "| eval_asr_general | 4 s | 6 x 2 | 1.50 [" in r.stdout
  assert "| eval_asr_general | eval_sft_general | RM +2.00 [" in r.stdout
  assert "vs eval_asr_general" not in r.stdout
  bad = subprocess.run([sys.executable, tool, str(run), "--pairs", "eval_asr_general:eval_sft"],
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 1 and "general prompts" in bad.stderr
