"""One-step-async GRPO rollouts (r1jax/stages/grpo_async.py): the device split, the pending
rollout's record round trip, the schedule's first step equal to the synchronous one and its
later rollouts one update stale, and resume mid-run equal to an uninterrupted async run."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import reward_fixtures  # noqa: F401  registers the test_length reward
from r1jax import sampling
from r1jax.rewards import RewardResult
from r1jax.stages import grpo as stage
from r1jax.stages import grpo_async
from r1jax.stages import grpo_rollout as ro_lib
from test_grpo import _restore_params, _tiny_config


def test_split_devices_takes_the_last_devices_of_each_process():
  devs = jax.devices()
  train, roll = grpo_async.split_devices(4)
  assert train == devs[:4] and roll == devs[4:]
  train, roll = grpo_async.split_devices(2)
  assert train == devs[:6] and roll == devs[6:]
  for bad in (0, 8, -1):
    with pytest.raises(ValueError, match="rl.rollout_devices"):
      grpo_async.split_devices(bad)


# ---------------------------------------------------------------------- the pending record
class _Data:
  """A prompt iterator stand-in: batch k holds examples k*10 .. k*10 + 3."""

  def __init__(self):
    self.k = 0

  def __next__(self):
    self.k += 1
    return [{"id": (self.k - 1) * 10 + i, "prompt_ids": [5] * (i + 1)} for i in range(4)]

  def get_state(self):
    return {"k": self.k}

  def set_state(self, s):
    self.k = s["k"]


class _Sampler:
  def pad_prompts(self, prompts, process_local=False):
    ids = np.zeros((len(prompts), 8), np.int32)
    for i, p in enumerate(prompts):
      ids[i, :len(p)] = p
    return ids, np.array([len(p) for p in prompts], np.int32)


class _Tok:
  def decode(self, ids):
    return " ".join(str(int(i)) for i in ids)


def _rollout(data, rounds, selection):
  draws = [next(data) for _ in range(rounds)]
  examples = [draws[r][row] for r, row in selection]
  rng = np.random.RandomState(1)
  B, Gn, N = len(examples), 2, 5
  out = sampling.SampleOutput(rng.randint(3, 50, (B, Gn, N)).astype(np.int32),
                              rng.randint(1, N + 1, (B, Gn)).astype(np.int32),
                              rng.normal(size=(B, Gn, N)).astype(np.float32),
                              rng.rand(B, Gn) > 0.5, np.int32(N))
  texts = [t for row in sampling.decode_completions(_Tok(), out, sampling.SamplingParams(), ">")
           for t in row]
  res = RewardResult(rng.rand(B * Gn).astype(np.float32),
                     {"a": rng.rand(B * Gn).astype(np.float32)},
                     np.zeros(B * Gn, bool), rng.rand(B * Gn) > 0.7)
  ids, lengths = _Sampler().pad_prompts([e["prompt_ids"] for e in examples])
  return ro_lib.Rollout(examples, ids, lengths, out, texts, res, 2.5, 0.5, rounds=rounds,
                        selection=np.asarray(selection), stats={"dynamic_sampling/rounds": rounds})


def test_pending_rollout_record_rebuilds_the_same_rollout():
  data = _Data()
  next(data)  # the run's position before the pending rollout
  before = data.get_state()
  ro = _rollout(data, 2, [(1, 2), (0, 0), (1, 3), (0, 1)])
  rec = json.loads(json.dumps(grpo_async.rollout_state(ro, 7, before)))  # a checkpoint's trip
  after = data.get_state()
  data.set_state({"k": 99})
  back = grpo_async.restore_rollout(rec, data, _Sampler(), _Tok(), sampling.SamplingParams(), ">")
  assert data.get_state() == after  # the iterator ends where the original run's did
  assert [e["id"] for e in back.examples] == [22, 10, 23, 11]
  for a, b in zip(ro.out, back.out):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(back.prompt_ids, ro.prompt_ids)
  assert back.texts == ro.texts
  np.testing.assert_array_equal(back.rewards.total, ro.rewards.total)
  np.testing.assert_array_equal(back.rewards.per_function["a"], ro.rewards.per_function["a"])
  np.testing.assert_array_equal(back.rewards.errors, ro.rewards.errors)
  assert back.rounds == 2 and back.stats == ro.stats
  assert (back.seconds_rollout, back.seconds_reward) == (2.5, 0.5)


def test_schedule_prefetches_and_restores_its_pending_rollout():
  made = []

  def produce(params, step):
    made.append((params, step))
    return _rollout(data, 1, [(0, i) for i in range(4)])

  data = _Data()
  kw = dict(async_rollouts=True, steps=3,
            restore=lambda rec: grpo_async.restore_rollout(rec, data, _Sampler(), _Tok(),
                                                           sampling.SamplingParams(), ">"))
  sched = grpo_async.RolloutSchedule(produce, lambda p, copy=False: f"r({p})", data, **kw)
  sched.take("p0", 0)
  assert made == [("r(p0)", 0)]  # step 0: sampled now with the current params
  assert sched.prefetches(0) and sched.prefetches(1) and not sched.prefetches(2)
  sched.prefetch("r(p0)", 1)  # sampled during step 0's update, with theta_0
  state = json.loads(json.dumps(sched.get_state()))
  pending = sched.pending[1]
  other = grpo_async.RolloutSchedule(produce, lambda p, copy=False: p, data, **kw)
  other.set_state(state)
  got = other.take("p1", 1)  # the pending rollout, not a new one with theta_1
  assert len(made) == 2 and [e["id"] for e in got.examples] == [e["id"] for e in pending.examples]
  np.testing.assert_array_equal(got.out.tokens, pending.out.tokens)
  assert sched.take("p1", 1) is pending
  sched.prefetch("x", 1)
  with pytest.raises(RuntimeError, match="step 1"):
    sched.take("p2", 2)
  sync = grpo_async.RolloutSchedule(produce, lambda p, copy=False: p, data,
                                    **dict(kw, async_rollouts=False))
  assert not sync.prefetches(0) and sync.get_state()["pending"] is None


# ---------------------------------------------------------------------- the stage
ASYNC = {"rl.async_rollouts": True, "rl.rollout_devices": 4, "rl.offpolicy_correction": "tis",
         "optim.learning_rate": 1e-3, "data.train_size": 40, "data.eval_size": 0}


def _rows(run_dir):
  return [r for r in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl"))) if "loss" in r]


@pytest.fixture(scope="module")
def async_run(tmp_path_factory):
  """3 async steps on 4 rollout + 4 train devices, a checkpoint after every step."""
  c = _tiny_config(tmp_path_factory.mktemp("async"), steps=3, **ASYNC)
  stage.run(c)
  return c


@pytest.mark.slow  # end-to-end stage runs on 8 devices (several minutes on 2 cores)
def test_async_first_step_is_the_synchronous_step_then_one_update_stale(tmp_path, async_run):
  sync = _tiny_config(tmp_path, steps=2, **dict(ASYNC, **{"rl.async_rollouts": False,
                                                          "rl.rollout_devices": 0}))
  stage.run(sync)
  a, s = _rows(async_run.run_dir), _rows(sync.run_dir)
  # Step 1: the same rollout (theta_0, same key and prompts) and the same update.
  for k in ("reward", "response_len_mean", "reward_std_in_group"):
    assert a[0][k] == s[0][k], k
  for k in ("loss", "grad_norm", "entropy"):
    np.testing.assert_allclose(a[0][k], s[0][k], rtol=1e-4, atol=1e-7, err_msg=k)
  # Later steps train on rollouts of the previous params: the sampler's log-probs lag the
  # trainer's by one update, well above the on-policy float rounding.
  on_policy = max(s[0]["offpolicy/logp_diff_abs"], s[1]["offpolicy/logp_diff_abs"],
                  a[0]["offpolicy/logp_diff_abs"])
  assert on_policy < 1e-5
  assert a[1]["offpolicy/logp_diff_abs"] > 100 * on_policy
  assert a[2]["offpolicy/logp_diff_abs"] > 100 * on_policy
  # The rollout of steps 2 and 3 was sampled during the update before it.
  assert a[0]["seconds/prefetch"] > 0 and a[1]["seconds/prefetch"] > 0
  assert a[2]["seconds/prefetch"] == 0.0  # the last step prefetches nothing
  assert a[1]["seconds/wait_rollout"] < a[0]["seconds/wait_rollout"]


@pytest.mark.slow  # end-to-end stage runs on 8 devices (several minutes on 2 cores)
def test_async_resume_mid_run_equals_the_uninterrupted_run(tmp_path, async_run):
  """A crash after step 2's checkpoint: the resumed run trains step 3 on the pending
  rollout from the checkpoint (sampled with theta_1), exactly as the uninterrupted run."""
  cut = tmp_path / "cut"
  shutil.copytree(async_run.run_dir, cut)
  shutil.rmtree(cut / "checkpoints" / "3")
  c = _tiny_config(tmp_path, steps=3, **ASYNC)
  c.run_dir, c.resume = str(cut), True
  stage.run(c)
  a, b = _rows(async_run.run_dir), _rows(cut)
  assert [r["step"] for r in b] == [1, 2, 3]
  for key in ("loss", "reward", "grad_norm", "kl", "entropy", "response_len_mean",
              "offpolicy/logp_diff_abs", "offpolicy/logp_diff_abs_max", "offpolicy/is_weight"):
    assert a[2][key] == b[2][key], key
  assert b[2]["offpolicy/logp_diff_abs"] > 1e-4  # really the stale rollout, not a fresh one
  for x, y in zip(jax.tree.leaves(_restore_params(async_run.run_dir)),
                  jax.tree.leaves(_restore_params(str(cut)))):
    np.testing.assert_array_equal(x, y)
