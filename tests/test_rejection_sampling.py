"""Rejection sampling (R1 stage 3): readability filters, the per-prompt rule, mixing, and the
stage end to end on the tiny random model (judge hook, summary vs files, resume)."""
import json
import os
import sys

import pytest

from r1jax import configs, plugins
from r1jax.curation import filters
from r1jax.curation import rejection as rej
from r1jax.data.sft_data import read_sft_jsonl
from r1jax.stages import rejection_sampling as rs




def test_max_prompts_takes_every_task_of_a_mixed_split():
  """A multi-task split lists its tasks in blocks: max_prompts must not take only the first
  task (a prefix did); the subset keeps the original order and depends only on the seed."""
  exs = [{"id": i, "task": "a" if i < 300 else "b"} for i in range(600)]
  sub = rs.subset_prompts(exs, 40, seed=0)
  assert len(sub) == 40 and {e["task"] for e in sub} == {"a", "b"}
  assert 10 <= sum(e["task"] == "a" for e in sub) <= 30
  assert [e["id"] for e in sub] == sorted(e["id"] for e in sub)
  assert sub == rs.subset_prompts(exs, 40, seed=0) != rs.subset_prompts(exs, 40, seed=1)
  assert rs.subset_prompts(exs, 0, seed=0) == exs == rs.subset_prompts(exs, 600, seed=3)


# ---------------------------------------------------------------------- filters
def test_language_filter_mixed_scripts():
  assert filters.language_ok("Let me add three and four, which gives seven.")
  mixed = "Let me add three and four. 所以答案是七，我们检查一下。 So seven."
  assert not filters.language_ok(mixed)
  assert filters.language_ok(mixed, min_ratio=0.3)
  assert filters.language_ok("所以答案是七", language="zh")
  # Math and code are neutral; no countable word passes.
  assert filters.language_ok("$x^2 + y^2$ 12 + 30 = 42")
  assert filters.readability_failures(mixed) == ["language", "summary"]  # no </think> either
  assert filters.readability_failures(f"<think> {mixed} </think> Seven.") == ["language"]


def test_paragraph_filter():
  short = "First step.\n\nSecond step."
  wall = "word " * 500  # 2500 characters without a break
  assert filters.paragraphs_ok(short, 2000)
  assert not filters.paragraphs_ok(f"Intro.\n\n{wall}\n\nEnd.", 2000)
  # The same text broken into paragraphs passes; a long fenced code block is not a paragraph.
  assert filters.paragraphs_ok("\n\n".join(["word " * 100] * 5), 2000)
  assert filters.paragraphs_ok("Code:\n```python\n" + "x = 1\n" * 500 + "```\nDone.", 2000)
  assert filters.split_paragraphs("a\n \nb\n\n\nc") == ["a", "b", "c"]


def test_code_filter():
  fenced = "Here is the code:\n```python\ndef f(x):\n    return x + 1\n```\nIt adds one."
  assert filters.code_ok(fenced)
  assert not filters.code_ok("Here is the code:\n```python\ndef f(x):\n    return x + 1\n")
  loose = "Here is the code:\ndef f(x):\n    return x + 1;\nIt adds one."
  assert not filters.code_ok(loose)
  assert not filters.code_ok("We write:\n#include <stdio.h>\nint main() {\n")
  # Prose with colons, 'for' and 'if' is not code; one loose line is tolerated.
  prose = "For each case: we count the ways.\nIf n is even, the answer is 3.\nimport math"
  assert filters.code_ok(prose)
  assert filters.readability_failures(loose, filters.FilterConfig(enabled=("code",))) == ["code"]


def test_summary_filter_and_config_validation():
  assert filters.summary_ok("<think> r </think> <answer> 5 </answer>")
  assert not filters.summary_ok("<think> r </think>  ")
  assert not filters.summary_ok("<think> r, cut off")
  with pytest.raises(ValueError, match="unknown filter"):
    filters.FilterConfig(enabled=("language", "typo"))
  with pytest.raises(ValueError, match="min_language_ratio"):
    filters.FilterConfig(min_language_ratio=1.5)


def test_dedup_normalised():
  texts = ["The answer is 5.", "the  answer is 5", "THE ANSWER IS 5!\n", "The answer is 6."]
  assert filters.dedup(texts) == [0, 3]
  assert filters.dedup_key("A\u00a0 B.") == "a b"  # NFKC turns the no-break space into a space


# ---------------------------------------------------------------------- the per-prompt rule
def test_select_samples_counts():
  ok = "<think> add </think> <answer> 5 </answer>"
  texts = [ok, ok.replace(" add ", "   Add\n"), "<think> 加法 加法 加法 </think> <answer> 5 </answer>",
           "<think> add again </think> <answer> 5 </answer>", ok + " extra", "wrong",
           "<think> cut"]
  scores = [1.0, 1.0, 1.0, 0.9, 1.0, 0.0, 1.0]
  finished = [True, True, True, True, True, True, False]
  kept, failures, c = rej.select_samples(texts, scores, finished, threshold=0.9,
                                        filter_config=filters.FilterConfig(), max_per_prompt=2)
  assert c["samples"] == 7 and c["verified"] == 6 and c["truncated"] == 1
  assert failures[2] == ["language"] and c["failed"]["language"] == 1
  assert c["readable"] == 4  # 0, 1, 3, 4
  assert c["duplicates"] == 1  # 1 is 0 up to case and spacing
  assert c["capped"] == 1 and c["kept"] == 2
  assert kept == [0, 4]  # best scores first (1.0 beats 0.9), then sample order
  assert c["kept"] == c["readable"] - c["duplicates"] - c["capped"]
  kept, _, c = rej.select_samples(texts, scores, finished, threshold=0.9, keep_truncated=True,
                                 dedup=False, filter_config=filters.FilterConfig(enabled=()))
  assert c["truncated"] == 0 and c["duplicates"] == 0 and kept == [0, 1, 2, 3, 4, 6]
  with pytest.raises(ValueError, match="scores"):
    rej.select_samples(texts, scores[:2], finished, threshold=1.0,
                      filter_config=filters.FilterConfig())


def test_mix_records_ratio():
  reasoning = [{"id": f"r{i}"} for i in range(30)]
  other = [{"id": f"n{i}"} for i in range(100)]
  mixed, n = rej.mix_records(reasoning, other, 0.25, seed=0)
  assert n == 10 and len(mixed) == 40
  assert sum(r["id"].startswith("n") for r in mixed) / len(mixed) == 0.25
  assert [r["id"] for r in mixed[:30]] != [r["id"] for r in reasoning]  # shuffled
  assert rej.mix_records(reasoning, other, 0.25, seed=0)[0] == mixed  # seeded
  _, n_small = rej.mix_records(reasoning, other[:4], 0.5, seed=0)
  assert n_small == 4  # fewer available than wanted: all of them
  assert rej.mix_records(reasoning, other, 0.0, seed=0)[1] == 0
  with pytest.raises(ValueError, match="fraction"):
    rej.mix_records(reasoning, other, 1.0, seed=0)


def test_judge_loading_and_routing():
  assert plugins.import_object("", key="judge.fn") is None
  assert plugins.import_object("os.path:join", key="judge.fn") is os.path.join
  assert plugins.import_object("os.path.join", key="judge.fn") is os.path.join
  with pytest.raises(ValueError, match="cannot import"):
    plugins.import_object("no_such_module_xyz:judge", key="judge.fn")
  with pytest.raises(ValueError, match="cannot import"):
    plugins.import_object("os.path:no_such_fn", key="judge.fn")
  assert rej.needs_judge({"task": "open", "answer": "x"}, ["open"])
  assert rej.needs_judge({"task": "math", "answer": "x"}, ["*"])
  assert not rej.needs_judge({"task": "math", "answer": "x"}, [])
  assert rej.needs_judge({"task": "math", "answer": ""}, [])  # nothing for a rule to check
  assert not rej.needs_judge({"task": "code", "answer": ""}, [])  # code: its tests


# ---------------------------------------------------------------------- end to end
JUDGE_SRC = '''
CALLS = []

def judge(prompt, reference, response):
  CALLS.append((prompt, reference, response))
  return 1.0 if reference == "ref-ok" else 0.0
'''


@pytest.fixture
def stage_config(tmp_path, monkeypatch):
  (tmp_path / "toy_rs_judge.py").write_text(JUDGE_SRC)
  monkeypatch.syspath_prepend(str(tmp_path))
  sys.modules.pop("toy_rs_judge", None)
  open_prompts = tmp_path / "open.jsonl"
  with open(open_prompts, "w") as f:
    for i in range(4):
      f.write(json.dumps({"id": f"open{i}", "prompt": f"Write a line about the number {i}.",
                          "answer": "ref-bad" if i == 3 else "ref-ok", "task": "open"}) + "\n")
  non_reasoning = tmp_path / "general.jsonl"
  with open(non_reasoning, "w") as f:
    for i in range(20):
      f.write(json.dumps({"id": f"gen{i}", "prompt": f"Say hi {i}.", "response": "Hi!"}) + "\n")
  c = configs.load("rejection_sampling:tiny")
  c.prompts = f"train,{open_prompts}"
  c.max_prompts = 4
  c.batch_size = 4
  c.judge.fn = "toy_rs_judge:judge"
  c.judge.tasks = "open"
  c.filters.enabled = "language,paragraph,code"
  c.filters.min_language_ratio = 0.5
  c.mix.non_reasoning_jsonl = str(non_reasoning)
  c.mix.fraction = 0.5
  c.run_dir = str(tmp_path / "rs")
  return c


def _lines(path):
  return [json.loads(l) for l in open(path)]


def test_stage_end_to_end_judge_mix_and_resume(stage_config):
  from r1jax import stages
  c = stage_config
  stages.run(c)  # through the stage registry, as `python -m r1jax.main` does
  judge_mod = sys.modules["toy_rs_judge"]
  out = c.run_dir
  summary = json.load(open(os.path.join(out, "summary.json")))
  reasoning = _lines(os.path.join(out, "reasoning.jsonl"))
  ledger = _lines(os.path.join(out, "prompts.jsonl"))
  train = _lines(os.path.join(out, "train.jsonl"))
  K = c.num_samples

  # The judge saw the open prompts only, with their reference and every sample.
  assert {p for p, _, _ in judge_mod.CALLS} == {f"Write a line about the number {i}."
                                                 for i in range(4)}
  assert len(judge_mod.CALLS) == 4 * K
  # Rule-verified arithmetic: a random model is never right, so nothing kept from it.
  assert all(r["task"] == "open" for r in reasoning)
  assert not any(r["provenance"]["prompt_id"] == "open3" for r in reasoning)  # judge said 0
  assert len(reasoning) >= 1

  # Summary counts match the files.
  acc = summary["acceptance"]
  assert acc["overall"]["prompts"] == len(ledger) == 8
  assert acc["overall"]["samples"] == 8 * K
  assert acc["overall"]["kept"] == len(reasoning) == summary["records"]["reasoning"]
  assert acc["per_task"]["open"]["kept"] == len(reasoning)
  assert acc["per_task"]["basic_arithmetic"]["verified"] == 0
  assert acc["per_task"]["open"]["judged_samples"] == 4 * K
  assert acc["overall"]["unverifiable_prompts"] == 0
  assert acc["overall"]["verified"] == sum(e["verified"] for e in ledger) >= 3 * K
  for e in ledger:
    assert e["kept"] <= c.max_per_prompt
    assert e["kept"] == e["readable"] - e["duplicates"] - e["capped"]
  by_prompt = {}
  for r in reasoning:
    by_prompt[r["provenance"]["prompt_id"]] = by_prompt.get(r["provenance"]["prompt_id"], 0) + 1
  assert by_prompt == {e["id"]: e["kept"] for e in ledger if e["kept"]}

  # Provenance and the SFT format.
  r = reasoning[0]
  p = r["provenance"]
  assert p["model"] == "tiny-random" and p["prompt_set"] == "open.jsonl"
  assert 0 <= p["sample_index"] < K and p["reward"] == 1.0 and p["verifier"] == "judge"
  assert p["filters_passed"] == ["language", "paragraph", "code"]
  assert r["response"].startswith("<think>")  # the template's response prefix is kept
  assert r["id"] == f"{p['prompt_id']}#s{p['sample_index']}"
  sft, skipped = read_sft_jsonl(os.path.join(out, "train.jsonl"))
  assert not skipped and len(sft) == len(train)

  # Mixing: fraction 0.5 -> as many non-reasoning records as reasoning ones.
  n_non = sum(t["source"] == "non_reasoning" for t in train)
  assert n_non == summary["records"]["non_reasoning"] == len(reasoning)
  assert len(train) == summary["records"]["train"] == 2 * len(reasoning)
  assert os.path.exists(os.path.join(out, "summary.md"))

  # A second run without resume refuses to mix results.
  with pytest.raises(ValueError, match="resume"):
    rs.run(c)

  # Interrupted after 5 prompts (one ledger line cut): resume redoes only the rest.
  ledger_path = os.path.join(out, "prompts.jsonl")
  lines = open(ledger_path).read().splitlines()
  with open(ledger_path, "w") as f:
    f.write("\n".join(lines[:5]) + "\n" + lines[5][:20])
  done = {e["id"] for e in ledger[:5]}
  kept_before = [x for x in reasoning if x["provenance"]["prompt_id"] in done]
  judge_mod.CALLS.clear()
  c.resume = True
  summary2 = rs.run(c)
  redone = {p for p, _, _ in judge_mod.CALLS}
  assert redone == {f"Write a line about the number {e['id'][-1]}." for e in ledger[5:]}
  ledger2 = _lines(ledger_path)
  assert [e["id"] for e in ledger2] == [e["id"] for e in ledger]
  reasoning2 = _lines(os.path.join(out, "reasoning.jsonl"))
  assert reasoning2[:len(kept_before)] == kept_before  # finished prompts' samples untouched
  assert summary2["acceptance"]["overall"]["prompts"] == 8
  assert summary2["records"]["reasoning"] == len(reasoning2)
  assert len(_lines(os.path.join(out, "train.jsonl"))) == summary2["records"]["train"]

  # Resuming with other settings is refused.
  c.num_samples = K + 1
  with pytest.raises(ValueError, match="other settings"):
    rs.run(c)
