"""Host-side pieces of the RL objectives against NumPy/loop references written here:
advantage estimators (GRPO scalings, RLOO, REINFORCE++), DAPO's overlong shaping (Eq. 13),
and the multi-process dynamic-sampling refill plan."""

import numpy as np
import pytest

from r1jax.losses import advantages as adv_lib
from r1jax.losses import dynamic_sampling as ds
from r1jax.losses import grpo as G
from r1jax.losses import shaping


def _rewards(seed, B=5, G_=4):
  rng = np.random.RandomState(seed)
  r = rng.randint(0, 3, (B, G_)).astype(np.float64) / 2
  r[0] = 1.0  # one group with all-equal rewards
  return r


# ---------------------------------------------------------------------- advantages
def test_rloo_is_the_leave_one_out_baseline():
  r = _rewards(0)
  B, Gn = r.shape
  want = np.zeros_like(r)
  for b in range(B):
    for i in range(Gn):
      others = [r[b, j] for j in range(Gn) if j != i]
      want[b, i] = r[b, i] - sum(others) / len(others)
  got = adv_lib.compute_advantages(r, "rloo")
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(got[0], 0)
  # Hand value: rewards (1, 0, 0, 0): 1 - 0 = 1 and 0 - 1/3.
  np.testing.assert_allclose(adv_lib.compute_advantages(np.array([[1., 0, 0, 0]]), "rloo"),
                             [[1, -1 / 3, -1 / 3, -1 / 3]], rtol=1e-6)


def test_reinforce_pp_is_group_centred_then_batch_normalised():
  r = _rewards(1, B=6)
  B, Gn = r.shape
  centred = [r[b, i] - sum(r[b]) / Gn for b in range(B) for i in range(Gn)]
  mu = sum(centred) / len(centred)
  sd = (sum((x - mu) ** 2 for x in centred) / (len(centred) - 1)) ** 0.5
  want = np.array([(x - mu) / (sd + 1e-4) for x in centred]).reshape(B, Gn)
  got = adv_lib.compute_advantages(r, "reinforce_pp")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Differs from GRPO's "batch" scaling, which divides by the std of the raw rewards.
  assert np.abs(got - adv_lib.compute_advantages(r, "grpo", "batch")).max() > 1e-3


@pytest.mark.parametrize("scaling", G.ADVANTAGE_SCALINGS)
def test_grpo_estimator_is_the_existing_group_advantages(scaling):
  r = _rewards(2)
  np.testing.assert_array_equal(adv_lib.compute_advantages(r, "grpo", scaling),
                                G.group_advantages(r, scaling))


def test_advantage_input_errors():
  with pytest.raises(ValueError, match="G >= 2"):
    adv_lib.compute_advantages(np.ones((3, 1)), "rloo")
  with pytest.raises(ValueError, match="finite"):
    adv_lib.compute_advantages(np.array([[1.0, np.nan]]), "reinforce_pp")
  with pytest.raises(ValueError, match="rl.advantage_estimator"):
    adv_lib.compute_advantages(np.ones((2, 2)), "ppo")


# ---------------------------------------------------------------------- overlong shaping
def np_dapo_eq13(n, l_max, l_cache):
  if n <= l_max - l_cache:
    return 0.0
  if n <= l_max:
    return ((l_max - l_cache) - n) / l_cache
  return -1.0


def test_overlong_penalty_is_dapo_eq13():
  lengths = np.arange(0, 22).reshape(2, 11)
  got = shaping.overlong_penalty(lengths, 16, 4)
  want = np.vectorize(lambda n: np_dapo_eq13(n, 16, 4))(lengths)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  # Hand values: 12 -> 0, 13 -> -1/4, 16 (cut at the limit) -> -1, 20 -> -1.
  np.testing.assert_allclose(shaping.overlong_penalty(np.array([12, 13, 16, 20]), 16, 4, 0.5),
                             [0, -0.125, -0.5, -0.5], rtol=1e-6)
  np.testing.assert_array_equal(shaping.overlong_penalty(lengths, 16, 0), 0)


@pytest.mark.parametrize("args,key", [((16, 17, 1.0), "rl.overlong_buffer"),
                                      ((16, -1, 1.0), "rl.overlong_buffer"),
                                      ((16, 4, -1.0), "rl.overlong_penalty"),
                                      ((0, 0, 1.0), "rl.max_new_tokens")])
def test_overlong_penalty_errors(args, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    shaping.overlong_penalty(np.array([3]), *args)


def test_advantages_from_rewards_shapes_then_estimates():
  rng = np.random.RandomState(3)
  r = rng.randint(0, 2, (4, 4)).astype(np.float32)
  lengths = rng.randint(20, 33, (4, 4))
  cfg = adv_lib.AdvantageConfig(estimator="rloo", overlong_buffer=8, overlong_penalty=0.5,
                                max_completion_len=32)
  a, shaped = adv_lib.advantages_from_rewards(r, lengths, cfg)
  want_shaped = r + 0.5 * np.vectorize(lambda n: np_dapo_eq13(n, 32, 8))(lengths)
  np.testing.assert_allclose(shaped, want_shaped, rtol=1e-6)
  np.testing.assert_allclose(a, adv_lib.compute_advantages(want_shaped, "rloo"), rtol=1e-5,
                             atol=1e-6)
  plain, same = adv_lib.advantages_from_rewards(r, lengths, adv_lib.AdvantageConfig())
  np.testing.assert_array_equal(same, r)
  np.testing.assert_array_equal(plain, G.group_advantages(r, "group"))
  with pytest.raises(ValueError, match="one shape"):
    adv_lib.advantages_from_rewards(r, lengths[:2], cfg)


@pytest.mark.parametrize("kwargs,key", [(dict(estimator="ppo"), "rl.advantage_estimator"),
                                        (dict(scaling="std"), "rl.advantage_scaling"),
                                        (dict(overlong_buffer=200), "rl.overlong_buffer"),
                                        (dict(overlong_penalty=-1.0), "rl.overlong_penalty"),
                                        (dict(max_completion_len=0), "rl.max_new_tokens")])
def test_advantage_config_errors_name_the_key_in_one_line(kwargs, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")) as e:
    adv_lib.AdvantageConfig(**kwargs)
  assert "\n" not in str(e.value)


# ---------------------------------------------------------------------- dynamic sampling
def single_process_reference(rounds, B):
  """The single-process DAPO refill of the GRPO stage, as loops over (round, group)."""
  kept = [(p, b) for p, r in enumerate(rounds) for b in range(B) if np.ptp(r[b]) > 0]
  used = set(kept)
  kept += [(p, b) for p in range(len(rounds)) for b in range(B) if (p, b) not in used]
  return kept[:B]


def test_single_process_plan_matches_the_stage_refill():
  rng = np.random.RandomState(4)
  for trial in range(20):
    B, R = 5, 1 + trial % 3
    rounds = [rng.randint(0, 2, (B, 3)).astype(float) for _ in range(R)]
    plan = ds.plan_refill(np.stack(rounds))
    assert [tuple(x) for x in plan.selection[0]] == single_process_reference(rounds, B)
    n_inf = sum(int(np.ptp(r[b]) > 0) for r in rounds for b in range(B))
    assert plan.num_needed == max(0, B - n_inf) and plan.refill == (n_inf < B)


def test_plan_is_the_same_on_every_process_and_refills_for_the_shortest():
  P, b, Gn = 4, 3, 4
  rng = np.random.RandomState(5)
  local = [rng.randint(0, 2, (b, Gn)).astype(float) for _ in range(P)]
  local[0][:] = [[0, 1, 1, 1]] * b  # process 0: all informative
  local[2][:] = 1.0  # process 2: none informative
  gathered = np.concatenate(local)  # process_allgather order
  plans = [ds.plan_refill(gathered.copy(), P) for _ in range(P)]  # one call per process
  for p in plans[1:]:
    for f in ("informative", "needed", "selection"):
      np.testing.assert_array_equal(getattr(p, f), getattr(plans[0], f))
  plan = plans[0]
  want_needed = [b - sum(int(np.ptp(local[p][i]) > 0) for i in range(b)) for p in range(P)]
  assert plan.needed.tolist() == want_needed and want_needed[0] == 0 and want_needed[2] == b
  assert plan.refill and plan.num_needed == sum(want_needed)
  # A second round where process 2 is informative everywhere closes its gap.
  second = np.concatenate([np.tile([[0.0, 1, 0, 1]], (b, 1))] * P)
  plan2 = ds.plan_refill(np.stack([gathered, second]), P)
  for p in range(P):
    assert [tuple(x) for x in plan2.selection[p]] == single_process_reference(
        [gathered[p * b:(p + 1) * b], second[p * b:(p + 1) * b]], b)
  assert not plan2.refill and plan2.selection[2].tolist() == [[1, 0], [1, 1], [1, 2]]


def test_plan_errors():
  with pytest.raises(ValueError, match="split over 2 processes"):
    ds.plan_refill(np.ones((3, 2)), 2)
  with pytest.raises(ValueError, match="finite"):
    ds.plan_refill(np.array([[0.0, np.inf]]))
  with pytest.raises(ValueError, match="G >= 2"):
    ds.plan_refill(np.ones((3, 1)))
