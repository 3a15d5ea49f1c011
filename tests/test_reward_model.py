"""Reward model stage: Bradley-Terry loss, last-token scalar head, exact micro-batch
accumulation, preference JSONL errors and truncation, and a tiny stage run that learns a
separable toy set and saves a loadable reward model. (Resume uses the same Checkpointer /
data-state path as the SFT stage, whose test covers exactness; it is not re-run here to keep
this file fast.)"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import configs, models
from r1jax.configs.common import set_path
from r1jax import sharding as shd
from r1jax.data import preference_data as pd
from r1jax.losses import preference as pref
from r1jax.models import reward_model as rm
from r1jax.train import trainer as trainer_lib

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def tok():
  from r1jax.tokenizer import Tokenizer
  return Tokenizer.from_source("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def cfg():
  return models.tiny_config(vocab_size=300, num_layers=1)


@pytest.fixture(scope="module")
def params(cfg):
  return jax.jit(rm.init_reward_params, static_argnums=0)(cfg, jax.random.key(0))


@pytest.fixture(scope="module")
def score_fn(cfg):
  return jax.jit(lambda p, t, n: rm.score(p, cfg, t, n))


def test_bradley_terry_loss_matches_hand_computed_value():
  rc = jnp.array([2.0, 0.5, 100.0])
  rr = jnp.array([1.0, 1.5, -100.0])
  w = jnp.array([1.0, 1.0, 0.0])  # the third row is padding
  loss, m = pref.bradley_terry_loss(rc, rr, w, 2.0)
  # -log sigmoid(1) = log(1 + e^-1) = 0.3132617; -log sigmoid(-1) = log(1 + e) = 1.3132617
  want = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)
  np.testing.assert_allclose(float(loss), 0.8132617, rtol=1e-6)
  assert float(m["accuracy"]) == 0.5
  np.testing.assert_allclose(float(m["margin"]), 0.0, atol=1e-6)
  # Stable for huge margins (no inf / nan).
  big, _ = pref.bradley_terry_loss(jnp.array([-1e4]), jnp.array([1e4]), jnp.ones(1), 1.0)
  np.testing.assert_allclose(float(big), 2e4, rtol=1e-6)
  # Centering term adds coef * (rc + rr)^2 per pair.
  c, _ = pref.bradley_terry_loss(rc, rr, w, 2.0, center_coef=0.1)
  np.testing.assert_allclose(float(c), want + 0.1 * (9.0 + 4.0) / 2, rtol=1e-6)


def test_score_reads_the_last_real_token_whatever_the_padding(cfg, params, score_fn):
  rng = np.random.RandomState(0)
  seqs = [rng.randint(3, 300, n).astype(np.int32) for n in (5, 9, 1)]

  def scores(T, pad):
    toks = np.full((len(seqs), T), pad, np.int32)
    for i, s in enumerate(seqs):
      toks[i, :len(s)] = s
    return np.asarray(score_fn(params, jnp.asarray(toks),
                               jnp.asarray([len(s) for s in seqs], jnp.int32)))

  a, b, c = scores(9, 0), scores(16, 0), scores(32, 77)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
  # Equal to scoring each sequence alone, unpadded, and to w . h[last] + b by hand.
  for i, s in enumerate(seqs):
    alone = score_fn(params, jnp.asarray(s[None]), jnp.asarray([len(s)]))
    np.testing.assert_allclose(a[i], float(alone[0]), rtol=1e-5, atol=1e-6)
    h = jax.jit(lambda p, t: models.forward(p, cfg, t))(params["decoder"], jnp.asarray(s[None]))[0, -1]
    hand = float(h @ params["score_head"]["kernel"] + params["score_head"]["bias"])
    np.testing.assert_allclose(a[i], hand, rtol=1e-5, atol=1e-6)
  # The last real token matters.
  s2 = seqs[0].copy()
  s2[-1] = (s2[-1] + 1) % 300
  other = score_fn(params, jnp.asarray(s2[None]), jnp.asarray([len(s2)]))
  assert abs(float(other[0]) - a[0]) > 1e-6


def _pair_batch(n, T=12, seed=0):
  rng = np.random.RandomState(seed)
  pairs = [pd.PreferencePair(str(i), rng.randint(3, 300, rng.randint(2, T + 1)).astype(np.int32),
                             rng.randint(3, 300, rng.randint(2, T + 1)).astype(np.int32))
           for i in range(n - 3)]
  return pd.build_pair_batch(pairs, T, 0, n)  # three padding rows


def test_micro_batch_accumulation_is_exact(cfg, params):
  import optax
  mesh = shd.make_mesh({"data": 1}, jax.devices()[:1])
  batch = _pair_batch(16)
  denom = pref.loss_denominator(batch)
  assert denom == 13.0
  # Plain SGD: Adam would turn the bias's exactly-zero gradient (it cancels in r_c - r_r)
  # into +-lr from rounding noise.
  opt = optax.sgd(0.1)
  results = []
  for micro in (1, 4):
    tr = trainer_lib.Trainer(mesh, rm.reward_logical_axes(cfg), pref.make_loss_fn(cfg), opt, micro)
    state = tr.init_state(jax.tree.map(jnp.array, params))
    state, m = tr.update(state, batch, denom)
    results.append((jax.device_get(m), jax.device_get(state.params)))
  (m1, p1), (m4, p4) = results
  for k in ("loss", "accuracy", "grad_norm", "margin"):
    np.testing.assert_allclose(m1[k], m4[k], rtol=1e-5, atol=1e-7, err_msg=k)
  for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  # The loss is the mean over the 13 real pairs.
  rc, rr = jax.jit(lambda p, b: pref.pair_scores(p, cfg, b))(params, batch)
  w = batch["weight"]
  want = float(np.sum(w * np.logaddexp(0.0, -(np.asarray(rc) - np.asarray(rr)))) / 13)
  np.testing.assert_allclose(m1["loss"], want, rtol=1e-5)


@pytest.mark.parametrize("bad,match", [
    ('{"prompt": "p", "rejected": "r"}', 'line 2: missing "chosen"'),
    ('{"prompt": "p", "chosen": "c"}', 'line 2: missing "rejected"'),
    ('{"chosen": "c", "rejected": "r"}', 'line 2: missing "prompt"'),
    ('{"prompt": "p", "chosen": 3, "rejected": "r"}', 'line 2: "chosen" must be a string'),
    ('{"prompt": "p", "chosen": "  ", "rejected": "r"}', 'line 2: empty "chosen"'),
    ('{"prompt": "p", "chosen": "c"', "line 2: invalid JSON"),
    ('["p", "c", "r"]', "line 2: expected a JSON object"),
])
def test_malformed_jsonl_names_the_line(tmp_path, bad, match):
  p = tmp_path / "prefs.jsonl"
  p.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n' + bad + "\n\n")
  with pytest.raises(ValueError, match=match):
    pd.read_preference_jsonl(str(p))
  recs, skipped = pd.read_preference_jsonl(str(p), on_error="skip")
  assert len(recs) == 1 and skipped == [2]
  with pytest.raises(FileNotFoundError):
    pd.read_preference_jsonl(str(tmp_path / "nope.jsonl"))


def test_empty_rejected_is_scored_as_rl_scores_an_empty_summary(tmp_path, tok):
  """An empty "rejected" (a policy's empty summary) is a valid pair, tokenised exactly as the
  RL scorer encodes an empty response; an empty "chosen" is an error."""
  p = tmp_path / "prefs.jsonl"
  p.write_text('{"prompt": "Tell me about tea.", "chosen": "Tea is a drink.", "rejected": ""}\n')
  data = pd.PreferenceData(dict(train_jsonl=str(p), eval_size=0, format="chat", seq_len=128),
                           tok)
  (pair,) = data.train
  want, _ = pd.encode_scoring_input(tok, "Tell me about tea.", "", "chat")
  assert np.array_equal(pair.rejected, want) and len(pair.rejected) < len(pair.chosen)


def test_overlong_pairs_truncate_the_prompt_from_the_left_or_are_skipped(tmp_path, tok):
  p = tmp_path / "prefs.jsonl"
  long_prompt = " ".join(["word"] * 40)
  rows = [{"prompt": "short", "chosen": "good", "rejected": "bad", "extra": 1},
          {"prompt": long_prompt, "chosen": "good answer", "rejected": "bad answer"},
          {"prompt": "x", "chosen": " ".join(["long"] * 40), "rejected": "no"}]
  p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  conf = dict(train_jsonl=str(p), eval_size=0, format="raw", seq_len=16)
  data = pd.PreferenceData(conf, tok)
  assert data.counts["truncated"] == 1 and data.counts["overlong_skipped"] == 1
  assert len(data.train) == 2
  full, n_prompt = pd.encode_scoring_input(tok, long_prompt, "good answer", "raw")
  cut = data.train[1].chosen
  assert len(cut) == 16 and np.array_equal(cut, full[-16:]) and len(full) - n_prompt < 16
  skip = pd.PreferenceData(dict(conf, overlong="skip"), tok)
  assert skip.counts["overlong_skipped"] == 2 and len(skip.train) == 1
  b = next(data.train_iterator(4))
  assert b["chosen_tokens"].shape == (4, 16) and b["weight"].tolist() == [1, 1, 0, 0]


def _tiny_config(run_dir, **overrides):
  c = configs.load("reward_model:tiny")
  c.run_dir = str(run_dir)
  for k, v in overrides.items():
    set_path(c, k, v)
  return c


def test_stage_learns_the_toy_set_and_saves(tmp_path, tok):
  from r1jax.stages import reward_model as stage
  c = _tiny_config(tmp_path / "rm", steps=16, **{"checkpoint.every_steps": 0})
  out = stage.run(c)
  ms = [json.loads(l) for l in open(os.path.join(c.run_dir, "metrics.jsonl"))]
  train = [m for m in ms if "loss" in m and "eval/loss" not in m]
  evals = [m for m in ms if "eval/accuracy" in m]
  assert [m["step"] for m in train] == list(range(1, 17))
  assert [m["step"] for m in evals] == [0, 8, 16]
  assert out["eval/accuracy"] >= 0.95, evals
  assert out["eval/loss"] < 0.5 * evals[0]["eval/loss"]
  # The saved reward model is the final checkpoint and ranks held-out toy pairs.
  cfg, params, rm_tok, meta = rm.load_reward_model(out["rm_dir"])
  assert meta["input_format"] == "raw" and meta["max_len"] == 24
  from r1jax.train.trainer import Checkpointer
  ck = Checkpointer(os.path.join(c.run_dir, "checkpoints"))
  assert ck.latest_step() == 16
  ck.close()
  recs = pd.toy_preference_records(20, seed=123)
  toks = [pd.encode_scoring_input(rm_tok, r["prompt"], r[s], "raw")[0]
          for r in recs for s in ("chosen", "rejected")]
  T = max(len(t) for t in toks)
  arr = np.zeros((len(toks), T), np.int32)
  for i, t in enumerate(toks):
    arr[i, :len(t)] = t
  r = np.asarray(rm.score(params, cfg, jnp.asarray(arr), jnp.asarray([len(t) for t in toks])))
  assert (r[0::2] > r[1::2]).mean() >= 0.95
  with pytest.raises(ValueError, match="resume"):
    stage.run(_tiny_config(tmp_path / "rm"))


def test_config_errors_and_registration(tmp_path):
  from r1jax.stages import STAGES
  from r1jax.stages import reward_model as stage
  assert STAGES["reward_model"] == "r1jax.stages.reward_model"
  with pytest.raises(ValueError, match="micro_batch_size"):
    stage.validate_config(_tiny_config(tmp_path, **{"train.micro_batch_size": 3}))
  with pytest.raises(ValueError, match="num_epochs"):
    stage.validate_config(_tiny_config(tmp_path, steps=0, num_epochs=0.0))
  stage.validate_config(configs.load("reward_model"))
  with pytest.raises(FileNotFoundError, match="not a reward model directory"):
    rm.load_reward_model(tmp_path)
