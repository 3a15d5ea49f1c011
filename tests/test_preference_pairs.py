"""R1 stage 4's reward data: the general prompts, the rule judge (hand-checked and adversarial
cases), best-vs-worst pairing, and a tiny pipeline preference_pairs -> reward_model -> eval
of general prompts with the reward model (wiring, files, resume)."""

import json
import os

import numpy as np
import pytest

from ml_collections import ConfigDict

from r1jax import configs
from r1jax.configs.pipeline import stage
from r1jax.curation.preference_judge import (CRITERIA, JudgeConfig, best_worst_pair, judge,
                                             judge_summary)
from r1jax.data import general_prompts as gp
from r1jax.stages import eval as eval_stage
from r1jax.stages import pipeline
from r1jax.stages import preference_pairs as pp


def test_general_prompts_splits_are_disjoint_by_topic_and_sized():
  train, held = gp.general_prompt_records("train"), gp.general_prompt_records("heldout")
  assert len(train) == len(gp.TEMPLATES) * len(gp.TRAIN_TOPICS) == 576
  assert len(held) == len(gp.TEMPLATES) * len(gp.HELDOUT_TOPICS) == 144
  assert not {r["topic"] for r in train} & {r["topic"] for r in held}
  assert len({r["id"] for r in train + held}) == 720
  assert all(r["kind"] == "general" and r["topic"] in r["prompt"] for r in train + held)
  with pytest.raises(ValueError, match="split"):
    gp.general_prompt_records("test")


def test_judge_hand_checked():
  good = "<think> hmm </think> Gardening is relaxing: water early, mulch beds, pull weeds."
  j = judge(good, "gardening", True)
  assert [j[c] for c in CRITERIA] == [1, 1, 1, 1, 1] and j["score"] == 5
  # The summary is what counts: a clean reasoning block does not save tag junk after it.
  junk = "<think> Gardening is fun and healthy for you. </think> <answer> 3 </answer>"
  j = judge(junk, "gardening", True)
  assert (j["finished"], j["words"], j["clean"], j["on_topic"]) == (1, 0, 0, 0)
  assert judge_summary(junk) == "<answer> 3 </answer>"
  # Not finished (cut at the token limit) costs exactly that point.
  assert judge(good, "gardening", False)["score"] == 4
  # Topic stems: "volcanoes" matches "volcanic"; a 3-letter word never matches.
  assert judge("Volcanic rock forms when lava cools down fast.", "volcanoes", True)["on_topic"]
  assert not judge("The cat sat on a mat in the sun today.", "cat", True)["on_topic"]


def test_judge_adversarial_cases():
  # Loops: repeating an on-topic phrase is not fluent.
  loop = "bees make honey " * 10
  assert judge(loop, "honey bees", True)["fluent"] == 0
  # Tag soup and empty summaries score nothing for content.
  for text in ("<think> long reasoning about tea </think>", "<answer></answer>", "", "   "):
    j = judge(text, "tea", True)
    assert j["words"] == 0 and j["on_topic"] == 0 and j["clean"] == 0
  # Digits and punctuation are not words.
  assert judge("1 2 3 4 5 6 7 8 9 10 !!!", "chess", True)["words"] == 0
  # An unclosed tag-like token still counts as markup.
  assert judge("Tea is nice <b>really</b> warm and calm today.", "tea", True)["clean"] == 0
  # Thresholds come from the config.
  assert judge("Tea is warm.", "tea", True, JudgeConfig(min_words=3))["words"] == 1


def test_best_worst_pair():
  assert best_worst_pair(["a", "b", "c"], [1, 3, 0]) == (1, 2)
  assert best_worst_pair(["a", "b", "c"], [2, 2, 2]) is None       # no margin
  assert best_worst_pair(["a", "b"], [1, 1.5]) is None               # margin 0.5 < 1
  assert best_worst_pair(["a", "b"], [1, 1.5], min_margin=0.5) == (1, 0)
  assert best_worst_pair(["same", "same"], [5, 0]) is None           # identical texts
  assert best_worst_pair(["a", "b", "c", "d"], [3, 0, 3, 0]) == (0, 1)  # ties: first
  with pytest.raises(ValueError):
    best_worst_pair(["a"], [1, 2])


def _tiny_pipeline(tmp_path):
  c = configs.load("pipeline")
  c.run_dir = str(tmp_path / "run")
  c.model = "tiny-random"
  c.order = "preference_pairs,reward_model,eval_general"
  c.final_from = ""
  st = stage
  s = ConfigDict()
  s.preference_pairs = st("preference_pairs.py", model_from="base", max_prompts=6,
                          num_samples=3, batch_size=4, judge=dict(min_margin=0.0),
                          sampling=dict(max_new_tokens=6))
  s.reward_model = st("reward_model.py:tiny", model_from="base", data_from="preference_pairs",
                      model_output="reward_model", steps=2,
                      data=dict(eval_size=0, format="chat", seq_len=96),
                      eval=dict(at_start=False), checkpoint=dict(every_steps=0))
  s.eval_general = st("eval.py", model_from="base",
                      inputs="datasets=preference_pairs:general_heldout,"
                             "reward_model=reward_model",
                      num_samples=2, pass_k="1", template="chat", batch_size=48,
                      reward_workers=0, sampling=dict(max_new_tokens=6))
  c.stages = s
  return c


def test_tiny_pipeline_pairs_reward_model_and_general_eval(tmp_path):
  c = _tiny_pipeline(tmp_path)
  out = pipeline.run(c)
  assert out["stages"] == {k: "ran" for k in c.order.split(",")}
  d = os.path.join(c.run_dir, "preference_pairs")
  samples = [json.loads(l) for l in open(os.path.join(d, pp.SAMPLES_FILE))]
  assert len(samples) == 6 and all(len(r["completions"]) == 3 for r in samples)
  pairs = [json.loads(l) for l in open(os.path.join(d, pp.PAIRS_FILE))]
  by_id = {r["id"]: r for r in samples}
  for p in pairs:  # chosen is the best summary by the judge, rejected the worst
    r = by_id[p["id"]]
    scores = [j["score"] for j in r["judge"]]
    assert p["judge_chosen"] == max(scores) and p["judge_rejected"] == min(scores)
    assert p["chosen"] != p["rejected"]
  summary = json.load(open(os.path.join(d, "summary.json")))
  assert summary["pairs"] == len(pairs) and summary["prompts"] == 6
  assert os.path.isfile(os.path.join(d, pp.HELDOUT_PROMPTS))
  rep = json.load(open(os.path.join(c.run_dir, "eval_general", "report.json")))
  row = rep["datasets"][pp.HELDOUT_PROMPTS]
  assert row["prompts"] == 144 and "pass@1" not in row
  recs = [json.loads(l) for l in open(os.path.join(c.run_dir, "eval_general", "records.jsonl"))]
  rm = np.array([r["rm_score"] for r in recs])
  assert rm.shape == (144, 2) and np.isfinite(rm).all() and rm.std() > 0
  assert row["rm_score"] == pytest.approx(rm.mean())
  js = np.array([[j["score"] for j in r["judge"]] for r in recs])
  assert row["judge_score"] == pytest.approx(js.mean())
  lo, hi = row["rm_ci95"]
  assert lo <= row["rm_score"] <= hi
  # A re-run skips every stage; the pairs stage alone resumes from its samples.
  assert set(pipeline.run(c)["stages"].values()) == {"skipped"}
  pc = pipeline.stage_config(c, "preference_pairs", {})
  again = pp.run(pc)
  assert [json.loads(l) for l in open(again["data"])] == pairs


def test_summarize_general_hand_computed():
  def rec(scores, rm):
    return {"kind": "general", "judge": [dict({c: 1.0 for c in CRITERIA}, score=s)
                                         for s in scores],
            "rm_score": rm, "lengths": [4, 6], "finished": [True, False]}
  s = eval_stage.summarize([rec([5, 3], [1.0, 0.0]), rec([1, 1], [-1.0, -2.0])], [1])
  assert s["prompts"] == 2 and s["judge_score"] == pytest.approx(2.5)
  assert s["rm_score"] == pytest.approx(-0.5)
  assert s["truncation_rate"] == pytest.approx(0.5) and "pass@1" not in s


def test_all_scenario_recipe_config_wiring(tmp_path):
  c = configs.load("r1_all_scenario")
  pipeline.validate_config(c)
  c.run_dir = str(tmp_path)
  outs = {"sft": {"model": "/x/sft/hf"}, "reward_model": {"model": "/x/rm"},
          "preference_pairs": {"data": "/x/pp/pairs.jsonl", "general_train": "/x/pp/tr.jsonl",
                               "general_heldout": "/x/pp/ho.jsonl"}}
  rm = pipeline.stage_config(c, "reward_model", outs)
  assert rm.model == "/x/sft/hf" and rm.data.train_jsonl == "/x/pp/pairs.jsonl"
  asr = pipeline.stage_config(c, "all_scenario_rl", outs)
  assert asr.model == "/x/sft/hf" and asr.rewards.helpfulness_rm == "/x/rm"
  assert asr.data.jsonl == "/x/pp/tr.jsonl" and asr.data.eval_jsonl == "/x/pp/ho.jsonl"
  ev = pipeline.stage_config(c, "eval_sft_general", outs)
  assert ev.datasets == "/x/pp/ho.jsonl" and ev.reward_model == "/x/rm"
  # The reasoning evaluation after stage 4 is the one of stage 3 (paired test).
  a = pipeline.stage_config(c, "eval_all_scenario_rl", dict(outs, all_scenario_rl={"model": "/m"}))
  b = pipeline.stage_config(c, "eval_sft", outs)
  for k in ("datasets", "num_samples", "template", "sampling", "data", "seed"):
    assert a[k] == b[k], k
  # Stage 2 (reasoning RL, language reward) from the SFT'd base, evaluated as eval_sft.
  rl = pipeline.stage_config(c, "reasoning_rl_after_sft", outs)
  assert rl.model == "/x/sft/hf" and "language" in rl.rewards.spec and rl.data.template == "chat"
  assert rl.rl.dynamic_sampling  # a sharp cold start: most groups are uniform without it
  e = pipeline.stage_config(c, "eval_reasoning_rl_after_sft",
                            dict(outs, reasoning_rl_after_sft={"model": "/m"}))
  assert e.model == "/m" and e.sampling == b.sampling and e.datasets == b.datasets
