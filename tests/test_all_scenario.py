"""All-scenario RL (R1 stage 4): per-example reward routing (rules for reasoning prompts,
reward models for general ones: helpfulness on the summary, harmlessness on the whole
response), the batched RM scorer, JSONL `kind`, and a tiny GRPO run with reward models."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import models
from r1jax.data import sources
from r1jax.data.preference_data import encode_scoring_input
from r1jax.models import reward_model as rm
from r1jax.rewards import RewardComputer
from r1jax.rewards import routing

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def tok():
  from r1jax.tokenizer import Tokenizer
  return Tokenizer.from_source("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def rm_dirs(tmp_path_factory, tok):
  """Two tiny reward models saved from random init (different seeds)."""
  out = {}
  cfg = models.tiny_config(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id,
                           eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
  init = jax.jit(rm.init_reward_params, static_argnums=0)  # eager Flax init is slow
  for seed, name in ((1, "helpful"), (2, "harmless")):
    d = tmp_path_factory.mktemp(name)
    rm.save_reward_model(d, cfg, init(cfg, jax.random.key(seed)), tok,
                         fmt="raw", max_len=64)
    out[name] = str(d)
  return out


@pytest.fixture(scope="module")
def scorers(rm_dirs):
  return {k: routing.RewardModelScorer(v, encode_fn=encode_scoring_input, batch_size=8)
          for k, v in rm_dirs.items()}


def test_final_summary():
  assert routing.final_summary("<think> a </think> b </think>\n The end. ") == "The end."
  assert routing.final_summary("no marker here ") == "no marker here"
  assert routing.final_summary("x <sum> y", ["</think>", "<sum>"]) == "y"


def test_scorer_matches_unpadded_direct_scores(rm_dirs, scorers, tok):
  s = scorers["helpful"]
  prompts = [f"question {i}" for i in range(11)]
  responses = ["ok", "a much longer response " * 3, "mid length text", "x"] * 2 + ["y"] * 3
  got = s.score_texts(prompts, responses)  # 11 inputs: two jitted batches of 8 rows
  assert got.shape == (11,) and got.dtype == np.float32
  cfg, params, _, meta = rm.load_reward_model(rm_dirs["helpful"])
  direct = jax.jit(lambda p, t, n: rm.score(p, cfg, t, n))
  for i in (0, 1):
    ids, _ = encode_scoring_input(tok, prompts[i], responses[i], meta["input_format"])
    want = direct(params, jnp.asarray(ids[None]), jnp.asarray([len(ids)]))
    np.testing.assert_allclose(got[i], float(want[0]), rtol=1e-5, atol=1e-5)
  # Over-long inputs keep their end (the score is read there) and are counted.
  n0 = s.stats["truncated"]
  assert len(s.encode("p " * 100, "r " * 100)) == 64
  assert s.stats["truncated"] == n0 + 1


def test_routed_rewards_route_per_example(scorers):
  rules = RewardComputer("accuracy:1.0,format:0.5", num_workers=0)
  routed = routing.RoutedRewards(rules, helpfulness=scorers["helpful"],
                                 harmlessness=scorers["harmless"], helpfulness_weight=0.7,
                                 harmlessness_weight=2.0)
  examples = [
      {"id": "r1", "question": "What is 2+2?", "answer": "4", "task": "math", "metadata": {}},
      {"id": "g1", "question": "Write a poem.", "answer": "", "task": "general",
       "metadata": {"kind": "general"}},
      {"id": "r2", "question": "What is 3+3?", "answer": "6", "task": "math",
       "metadata": {"kind": "reasoning"}},
      {"id": "g2", "question": "Say hi.", "answer": "", "task": "general", "metadata": {},
       "kind": "general"},
  ]
  completions = ["<think> 2 and 2 </think> <answer> 4 </answer>",
                 "<think> rhymes, rhythm </think>\nRoses are red.",
                 "<think> hmm </think> <answer> 7 </answer>",
                 "<think> greet </think> Hi!"]
  res = routed(completions, examples)
  direct = rules([completions[0], completions[2]], [examples[0], examples[2]])
  np.testing.assert_allclose(res.total[[0, 2]], direct.total)
  assert res.per_function["accuracy"].tolist() == [1.0, 0.0, 0.0, 0.0]
  for name in ("accuracy", "format"):
    np.testing.assert_allclose(res.per_function[name][[0, 2]], direct.per_function[name])
    assert (res.per_function[name][[1, 3]] == 0).all()
  help_ = scorers["helpful"].score_texts(["Write a poem.", "Say hi."], ["Roses are red.", "Hi!"])
  harm = scorers["harmless"].score_texts(["Write a poem.", "Say hi."],
                                         [completions[1], completions[3]])
  np.testing.assert_allclose(res.per_function["helpfulness"][[1, 3]], help_, rtol=1e-6)
  np.testing.assert_allclose(res.per_function["harmlessness"][[1, 3]], harm, rtol=1e-6)
  np.testing.assert_allclose(res.total[[1, 3]], 0.7 * help_ + 2.0 * harm, rtol=1e-5)
  assert (res.per_function["helpfulness"][[0, 2]] == 0).all()
  assert not res.timed_out.any() and not res.errors.any()
  # Helpfulness sees the summary only; harmlessness the whole response.
  other = routed(["<think> totally different reasoning </think>\nRoses are red."], examples[1:2])
  np.testing.assert_allclose(other.per_function["helpfulness"], help_[:1], rtol=1e-6)
  assert abs(other.per_function["harmlessness"][0] - harm[0]) > 1e-6
  # All-reasoning and all-general batches keep every key.
  assert set(routed(completions[:1], examples[:1]).per_function) == set(res.per_function)
  only_help = routing.RoutedRewards(rules, helpfulness=scorers["helpful"])
  r = only_help(completions[1:2], examples[1:2])
  np.testing.assert_allclose(r.total, help_[:1], rtol=1e-6)
  assert "harmlessness" not in r.per_function
  with pytest.raises(ValueError, match="kind"):
    routed(["x"], [{"id": "b", "question": "q", "metadata": {}, "kind": "chitchat"}])
  # An unrelated metadata "kind" (e.g. from a reasoning-gym task) means the default.
  assert routing.example_kind({"metadata": {"kind": "puzzle"}}) == "reasoning"
  pool = _Closable()
  with pytest.raises(FileNotFoundError, match="not a reward model directory"):
    routing.routed_rewards_from_config({"helpfulness_rm": "/nonexistent"}, pool,
                                       encode_fn=encode_scoring_input)
  assert pool.closed  # the rule pool is not leaked
  with pytest.raises(ValueError, match="reward model"):
    routing.RoutedRewards(rules)
  rules.close()  # (routed.close() would also release the module-scoped scorers)


class _Closable:
  closed = False

  def close(self):
    self.closed = True


def test_jsonl_kind_general_needs_no_answer(tmp_path):
  p = tmp_path / "prompts.jsonl"
  p.write_text('{"prompt": "Write a poem.", "kind": "general"}\n'
               '{"prompt": "2+2?", "answer": "4"}\n')
  exs = sources.jsonl_examples(p)
  assert exs[0]["metadata"]["kind"] == "general" and exs[0]["answer"] == ""
  assert exs[0]["task"] == "general" and exs[1]["task"] == "math"
  assert routing.example_kind(exs[0]) == "general" and routing.example_kind(exs[1]) == "reasoning"
  p.write_text('{"prompt": "2+2?", "answer": "4"}\n{"prompt": "Hi", "kind": "reasoning"}\n')
  with pytest.raises(ValueError, match='line 2: missing "answer"'):
    sources.jsonl_examples(p)
  p.write_text('{"prompt": "Hi", "kind": "chat"}\n')
  with pytest.raises(ValueError, match='line 1: "kind" must be'):
    sources.jsonl_examples(p)


def _load(name):
  from r1jax import configs
  return configs.load(name)


def test_configs():
  from r1jax.stages import grpo as stage
  base = _load("grpo")
  assert base.rewards.helpfulness_rm == "" and base.rewards.harmlessness_rm == ""
  c = _load("all_scenario_rl")
  assert c.stage == "grpo" and c.rewards.helpfulness_rm
  stage.validate_config(c)


def test_tiny_grpo_with_reward_models_runs_end_to_end(tmp_path, rm_dirs):
  from r1jax.stages import grpo as stage
  general = tmp_path / "general.jsonl"
  general.write_text("".join(json.dumps({"prompt": f"Write a line about topic {i}.",
                                         "kind": "general"}) + "\n" for i in range(16)))
  c = _load("grpo:tiny")
  c.run_dir = str(tmp_path / "run")
  c.data.tasks = "basic_arithmetic"
  c.data.jsonl = str(general)
  c.rewards.spec = "format:1.0"
  c.rewards.helpfulness_rm = rm_dirs["helpful"]
  c.rewards.harmlessness_rm = rm_dirs["harmless"]
  c.rewards.rm_batch_size = 8
  c.eval.at_start = False
  # The end-of-run held-out eval: 2 arithmetic problems (accuracy) and 3 general prompts
  # (no answer: reward-model scores; accuracy on them would be an error).
  heldout = tmp_path / "general_heldout.jsonl"
  heldout.write_text("".join(json.dumps({"prompt": f"Describe colour {i}.", "kind": "general"})
                             + "\n" for i in range(3)))
  c.data.eval_jsonl = str(heldout)
  c.data.eval_size = 2
  c.eval.batch_size = 4
  c.checkpoint.every_steps = 0
  stage.run(c)
  ms = [json.loads(l) for l in open(os.path.join(c.run_dir, "metrics.jsonl"))]
  (ev,) = [m for m in ms if "eval/num_general_examples" in m]
  assert ev["eval/num_examples"] == 2 and ev["eval/num_general_examples"] == 3
  assert 0 <= ev["eval/accuracy_greedy"] <= 1
  for mode in ("greedy", "sampled"):
    want = ev[f"eval/reward_general/helpfulness_{mode}"] + ev[f"eval/reward_general/harmlessness_{mode}"]
    assert ev[f"eval/reward_general_{mode}"] == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert ev[f"eval/reward_general/helpfulness_{mode}"] != 0
  train = [m for m in ms if "loss" in m]
  assert [m["step"] for m in train] == [1, 2]
  mixed_steps = 0
  for m in train:
    assert m["reward/helpfulness"] != 0 and m["reward/harmlessness"] != 0
    if 0 < m.get("general_fraction", 0) < 1:
      mixed_steps += 1
      f = m["general_fraction"]  # the all-row mean averages zeros in on reasoning rows
      assert m["reward/helpfulness"] == pytest.approx(f * m["reward_general/helpfulness"],
                                                      rel=1e-4, abs=1e-6)
    assert np.isfinite(m["loss"]) and np.isfinite(m["reward"])
  assert mixed_steps > 0


def test_kind_breakdown_hand_computed():
  """Per-kind step metrics of a mixed rollout: rule rewards over reasoning rows only, reward
  models over general rows only (the all-row means dilute both)."""
  from types import SimpleNamespace
  from r1jax.rewards.pool import RewardResult
  from r1jax.stages.grpo_rollout import kind_breakdown
  G = 2
  exs = [{"kind": "general"}, {"metadata": {}}, {"metadata": {"kind": "general"}}]
  acc = np.array([0, 0, 1, 0, 0, 0], np.float32)
  helpful = np.array([2.0, 4.0, 0, 0, -1.0, 1.0], np.float32)
  res = RewardResult(acc + helpful, {"accuracy": acc, "helpfulness": helpful},
                     np.zeros(6, bool), np.zeros(6, bool))
  m = kind_breakdown(SimpleNamespace(examples=exs, rewards=res), G)
  assert m["general_fraction"] == pytest.approx(4 / 6)
  assert m["accuracy_reasoning"] == pytest.approx(0.5)
  assert m["reward_reasoning/accuracy"] == pytest.approx(0.5)
  assert m["reward_general/helpfulness"] == pytest.approx(1.5)
  assert m["reward_general"] == pytest.approx(1.5) and m["reward_reasoning"] == pytest.approx(0.5)
  # One kind only, or a global view without examples: nothing to split.
  assert kind_breakdown(SimpleNamespace(examples=exs[1:2], rewards=RewardResult(
      acc[:2], {"accuracy": acc[:2]}, np.zeros(2, bool), np.zeros(2, bool))), G) == {}
  assert kind_breakdown(SimpleNamespace(examples=[], rewards=res), G) == {}
  # A multi-process global view carries no examples but the gathered kinds.
  from r1jax.stages.grpo_rollout import Rollout, global_view
  from r1jax.sampling import SampleOutput
  out = SampleOutput(np.zeros((3, G, 1), np.int32), np.ones((3, G), np.int32), None,
                     np.ones((3, G), bool), 1)
  ro = Rollout(exs, None, None, out, ["x"] * 6, res, 0.0, 0.0)
  gv = global_view(ro)
  assert gv.examples == [] and gv.general_flags.tolist() == [1, 1, 0, 0, 1, 1]
  assert kind_breakdown(gv, G) == m
