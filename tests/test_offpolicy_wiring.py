"""Issue 16 items 2 and 4 wired into the GRPO stage: the mismatch metrics of the update
against a NumPy reference (the max is the batch's exact max, not a sum over micro-batches),
config keys reaching the loss and advantage settings, advantages from the estimator on the
shaped rewards, bf16 rollouts against the f32 trainer, dynamic sampling blocks, and
dynamic sampling on 2 processes against 1 process."""

import json

import jax
import numpy as np
import pytest

import reward_fixtures  # noqa: F401  registers the test_length reward
from r1jax import sampling, sharding
from r1jax.losses import grpo as G
from r1jax.rewards import RewardResult
from r1jax.stages import grpo as stage
from r1jax.stages import grpo_rollout as ro_lib
from r1jax.train import trainer as trainer_lib
from test_grpo import CFG, _tiny_config, _train_batch, _trainer, params  # noqa: F401


# ---------------------------------------------------------------------- the update's metrics
def test_mismatch_metrics_are_exact_over_micro_batches(params):
  cap = 1.03
  gcfg = G.GRPOConfig(beta=0.0, offpolicy_correction="tis", offpolicy_cap=cap)
  loss_fn = stage.make_loss_fn(CFG, gcfg, temperature=1.0, kernel=dict(chunk_size=4),
                               remat=False, num_iterations=1)
  batch, denom = _train_batch(5)
  del batch["ref_logp"]
  mask = (batch["weights"] > 0).astype(np.float32)
  batch["metric_weights"] = G.token_mean_weights(mask)
  # The trainer's log-probs of the whole batch, then a sampler that differs from them.
  trainer_logp = np.asarray(stage.completion_logprobs(
      jax.device_get(params), CFG, {k: batch[k] for k in ("prompt_tokens", "prompt_lengths",
                                                          "completion")},
      temperature=1.0, kernel=dict(chunk_size=4), remat=False)[0])
  rng = np.random.RandomState(0)
  batch["sampler_logp"] = (trainer_logp + rng.normal(0, 0.05, trainer_logp.shape)
                           ).astype(np.float32)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  M = 4
  tr = _trainer(mesh, M, loss_fn)
  _, m = tr.update(tr.init_state(jax.tree.map(np.asarray, params)), batch, denom)
  m = jax.device_get(m)

  live = mask > 0
  d = (trainer_logp - batch["sampler_logp"])[live]
  np.testing.assert_allclose(m["offpolicy/logp_diff_abs_max"], np.abs(d).max(), rtol=1e-4)
  np.testing.assert_allclose(m["offpolicy/logp_diff_abs"], np.abs(d).mean(), rtol=1e-4)
  np.testing.assert_allclose(m["offpolicy/logp_diff"], d.mean(), rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(m["offpolicy/capped_frac"], (d > np.log(cap)).mean(), atol=1e-6)
  np.testing.assert_allclose(m["offpolicy/is_weight"], np.minimum(np.exp(d), cap).mean(),
                             rtol=1e-4)
  # A sum of per-micro-batch maxima (Trainer.split_micro's rows i, i+M, ...) would differ.
  per_micro = [np.abs((trainer_logp - batch["sampler_logp"])[i::M][live[i::M]]).max()
               for i in range(M)]
  assert sum(per_micro) > 1.5 * np.abs(d).max()
  assert 0 < m["offpolicy/capped_frac"] < 1


# ---------------------------------------------------------------------- config and stage
def test_new_rl_keys_reach_the_loss_and_advantage_settings(tmp_path):
  s = stage.validate_config(_tiny_config(tmp_path, **{
      "rl.policy_loss": "gspo", "rl.entropy_coef": 0.01, "rl.offpolicy_correction": "mis",
      "rl.offpolicy_cap": 3.0, "rl.offpolicy_mis_low": 0.25, "rl.advantage_estimator": "rloo",
      "rl.overlong_buffer": 4, "rl.overlong_penalty": 0.5, "rl.async_rollouts": True,
      "rl.rollout_devices": 4, "rl.rollout_dtype": "bfloat16"}))
  g, a = s.grpo, s.advantages
  assert (g.policy_loss, g.entropy_coef, g.offpolicy_correction, g.offpolicy_cap,
          g.offpolicy_mis_low) == ("gspo", 0.01, "mis", 3.0, 0.25)
  assert (a.estimator, a.overlong_buffer, a.overlong_penalty, a.max_completion_len) == (
      "rloo", 4, 0.5, 8)
  assert (s.async_rollouts, s.rollout_devices, s.rollout_dtype) == (True, 4, "bfloat16")
  bad = {"rl.policy_loss": "ppo", "rl.entropy_coef": -1.0, "rl.offpolicy_correction": "is",
         "rl.offpolicy_cap": 0.0, "rl.advantage_estimator": "vtrace", "rl.overlong_buffer": 9,
         "rl.rollout_dtype": "float64", "rl.rollout_devices": -1,
         "rl.dynamic_sampling_blocks": 3}
  for key, value in bad.items():
    with pytest.raises(ValueError, match=key):
      stage.validate_config(_tiny_config(tmp_path, **{key: value}))


def _rows(run_dir):
  return [r for r in map(json.loads, open(f"{run_dir}/metrics.jsonl")) if "loss" in r]


def test_stage_advantages_from_the_estimator_on_shaped_rewards(tmp_path, monkeypatch):
  """RLOO + DAPO overlong shaping on the step's rewards, GSPO + entropy bonus in the loss;
  f32 rollouts: the mismatch metrics are at float rounding."""
  seen = {"adv": [], "batches": []}
  real_adv = stage.adv_lib.advantages_from_rewards

  def spy_adv(rewards, lengths, cfg):
    seen["adv"].append((np.array(rewards), np.array(lengths)))
    return real_adv(rewards, lengths, cfg)

  real_update = trainer_lib.Trainer.update

  def spy_update(self, state, batch, denominator, frozen=None):
    seen["batches"].append({k: np.asarray(v) for k, v in batch.items()
                            if not isinstance(v, jax.Array)})
    return real_update(self, state, batch, denominator, frozen)

  monkeypatch.setattr(stage.adv_lib, "advantages_from_rewards", spy_adv)
  monkeypatch.setattr(trainer_lib.Trainer, "update", spy_update)
  c = _tiny_config(tmp_path, steps=1, **{
      "rl.advantage_estimator": "rloo", "rl.overlong_buffer": 6, "rl.overlong_penalty": 0.5,
      "rl.policy_loss": "gspo", "rl.entropy_coef": 0.01, "rl.offpolicy_correction": "tis",
      "data.train_size": 40, "data.eval_size": 0, "checkpoint.every_steps": 0})
  stage.run(c)
  (rewards, lengths), = seen["adv"]
  batch, = seen["batches"]
  # NumPy reference: DAPO eq. 13 (L_max = 8, L_cache = 6), then leave-one-out baselines.
  L, buf = 8, 6
  pen = np.where(lengths <= L - buf, 0.0, np.where(lengths <= L, (L - buf - lengths) / buf, -1.0))
  shaped = rewards + 0.5 * pen
  Gn = shaped.shape[1]
  want = shaped - (shaped.sum(1, keepdims=True) - shaped) / (Gn - 1)
  np.testing.assert_allclose(batch["advantages"], want, rtol=1e-5, atol=1e-6)
  assert np.abs(want).max() > 0
  row, = _rows(c.run_dir)
  np.testing.assert_allclose(row["reward_shaped"], shaped.mean(), rtol=1e-6)
  assert row["reward_shaped"] < row["reward"]
  # The sampler's log-probs are in the batch; f32 sampler vs f32 trainer agree closely.
  assert batch["sampler_logp"].shape == batch["completion"].shape
  assert row["offpolicy/logp_diff_abs"] < 1e-5 and row["offpolicy/logp_diff_abs_max"] < 1e-4
  assert row["offpolicy/capped_frac"] == 0.0 and row["entropy"] > 0


def test_bf16_rollouts_show_a_mismatch(tmp_path):
  c = _tiny_config(tmp_path, steps=1, **{
      "rl.rollout_dtype": "bfloat16", "rl.offpolicy_correction": "tis", "rl.offpolicy_cap": 1.002,
      "data.train_size": 40, "data.eval_size": 0, "checkpoint.every_steps": 0})
  stage.run(c)
  row, = _rows(c.run_dir)
  assert row["offpolicy/logp_diff_abs"] > 2e-4  # f32 rollouts: < 1e-5
  assert row["offpolicy/logp_diff_abs_max"] > row["offpolicy/logp_diff_abs"]
  assert 0 < row["offpolicy/capped_frac"] < 1


# ---------------------------------------------------------------------- dynamic sampling
class _Sampler:
  def pad_prompts(self, prompts, process_local=False):
    return np.zeros((len(prompts), 4), np.int32), np.full(len(prompts), 4, np.int32)


def _scripted_rollout(rewards_by_round):
  """A stand-in for grpo_rollout.rollout returning the given [B, G] rewards per call."""
  calls = []

  def fake(params, sampler, sp, tok, rewards, examples, key, G, prefix):
    r = np.asarray(rewards_by_round[len(calls)], np.float32)
    tag = len(calls)
    calls.append(tag)
    B = r.shape[0]
    out = sampling.SampleOutput(np.full((B, G, 3), tag, np.int32), np.ones((B, G), np.int32),
                                np.zeros((B, G, 3), np.float32), np.ones((B, G), bool), 3)
    res = RewardResult(r.reshape(-1), {}, np.zeros(r.size, bool), np.zeros(r.size, bool))
    examples = [{"q": (tag, b), "prompt_ids": [1, 2]} for b in range(B)]
    return ro_lib.Rollout(examples, None, None, out,
                          [f"{tag}-{i}" for i in range(r.size)], res, 1.0, 0.5)
  return fake, calls


@pytest.mark.parametrize("blocks", [0, 1, 2])
def test_dynamic_sampling_keeps_a_quota_per_block(monkeypatch, blocks):
  # 4 prompts, G = 2; informative rows: round 0: 2, 3; round 1: 0, 3; round 2: none.
  rounds = [[[1, 1], [0, 0], [0, 1], [1, 0]], [[0, 1], [1, 1], [0, 0], [1, 0]],
            [[0, 0], [1, 1], [0, 0], [1, 1]]]
  fake, calls = _scripted_rollout(rounds)
  monkeypatch.setattr(ro_lib, "rollout", fake)
  rl = {"dynamic_sampling": True, "max_resample_rounds": 2, "dynamic_sampling_blocks": blocks}
  from ml_collections import ConfigDict
  ro = ro_lib.rollout_with_dynamic_sampling(None, _Sampler(), None, None, None,
                                            iter([[{}] * 4] * 4), jax.random.key(0), 4, 2,
                                            ConfigDict(rl), "")
  kept = [e["q"] for e in ro.examples]
  if blocks in (0, 1):  # one block (one process): the two informative ones of each round
    assert kept == [(0, 2), (0, 3), (1, 0), (1, 3)] and len(calls) == 2
  else:  # block 0 = rows 0-1 finds one informative group in 3 rounds, then fills with the
    # first uninformative one; block 1 = rows 2-3 is full after round 0.
    assert kept == [(1, 0), (0, 0), (0, 2), (0, 3)] and len(calls) == 3
  assert ro.rounds == len(calls)
  assert [tuple(x) for x in ro.selection] == kept
  np.testing.assert_array_equal(ro.out.tokens[:, 0, 0], [r for r, _ in kept])
  assert ro.stats["dynamic_sampling/rounds"] == len(calls)


@pytest.mark.slow  # three jax processes on a 2-core box: about 2-3 minutes
def test_dynamic_sampling_on_two_processes_equals_one_process(tmp_path):
  """DAPO dynamic sampling on 2 processes x 4 devices (each process keeps the quota of its
  block; the refill decision on the gathered rewards) against 1 process x 8 devices with
  the same 2 blocks: the same groups are kept, the same rounds taken, the same update."""
  from test_distributed import COMMON, _max_param_diff, _train_rows, _two_processes_and_one
  # optim.eps=1e-3: with mu = 1, Adam's first steps turn float32 rounding differences of the
  # gradient (8 shards summed in another order) into lr-sized param differences that change
  # later samples; a larger eps keeps them at the rounding level (as in test_distributed).
  common = [*COMMON, "--config.rl.dynamic_sampling=True", "--config.rl.max_resample_rounds=2",
            "--config.rl.dynamic_sampling_blocks=2", "--config.rl.num_iterations=1",
            "--config.optim.eps=1e-3"]
  single, multi, _, seconds = _two_processes_and_one(tmp_path, common)
  rs, rm = _train_rows(single), _train_rows(multi)
  assert [r["step"] for r in rs] == [r["step"] for r in rm] == [1, 2, 3]
  for a, b in zip(rs, rm):
    for k in ("reward", "reward_std_in_group", "response_len_mean", "dynamic_sampling/rounds",
              "dynamic_sampling/informative_frac",
              "dynamic_sampling/first_round_informative_frac"):
      assert a[k] == b[k], (a["step"], k, a[k], b[k])
    for k in ("loss", "grad_norm", "entropy", "offpolicy/logp_diff_abs"):
      np.testing.assert_allclose(b[k], a[k], rtol=1e-3, atol=1e-6, err_msg=k)
  # The refill really ran, and kept only informative groups where it could.
  assert max(r["dynamic_sampling/rounds"] for r in rs) > 1
  assert all(r["dynamic_sampling/first_round_informative_frac"] < 1 or
             r["dynamic_sampling/rounds"] == 1 for r in rs)
  assert _max_param_diff(single, multi) < 1e-5
  print("DYNAMIC_SAMPLING_TWO_PROCESS " + json.dumps(
      {"seconds_all_runs": round(seconds, 1),
       "rounds": [r["dynamic_sampling/rounds"] for r in rs],
       "informative_frac": [r["dynamic_sampling/informative_frac"] for r in rs]}))
