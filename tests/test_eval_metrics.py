"""pass@k against brute-force enumeration; cons@N grouping, ties and normalisation."""
import itertools

import numpy as np
import pytest

from r1jax.eval import majority_vote, mean_interval, paired_test, pass_at_1, pass_at_k


def brute_force_pass_at_k(correct: list[int], k: int) -> float:
  subsets = list(itertools.combinations(range(len(correct)), k))
  return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_over_all_subsets():
  rng = np.random.RandomState(0)
  for n in range(1, 9):
    for c in range(n + 1):
      correct = [1] * c + [0] * (n - c)
      rng.shuffle(correct)
      for k in range(1, n + 1):
        got = pass_at_k(n, c, k)[0]
        assert got == pytest.approx(brute_force_pass_at_k(correct, k), abs=1e-12), (n, c, k)


def test_pass_at_k_vectorised_and_errors():
  n = np.array([4, 8, 8])
  c = np.array([0, 2, 8])
  np.testing.assert_allclose(pass_at_k(n, c, 1), c / n)
  np.testing.assert_allclose(pass_at_k(n, c, 4), [0.0, 1 - (6 * 5 * 4 * 3) / (8 * 7 * 6 * 5), 1.0])
  with pytest.raises(ValueError, match="at least 5 samples"):
    pass_at_k(n, c, 5)
  with pytest.raises(ValueError, match="k >= 1"):
    pass_at_k(n, c, 0)
  with pytest.raises(ValueError, match="num_correct"):
    pass_at_k([4], [5], 1)


def test_pass_at_1_is_mean_correctness():
  assert pass_at_1(np.array([[1, 0, 0, 1], [1, 1, 1, 1]])) == pytest.approx(0.75)


def test_majority_vote_groups_equivalent_answers():
  answer, count = majority_vote(["1/2", "3", "0.5", "\\frac{1}{2}", "3", None, None])
  assert answer == "1/2" and count == 3
  # Text answers fall back to normalised string equality.
  assert majority_vote(["Yes", "no", "yes.", " YES "]) == ("Yes", 3)


def test_majority_vote_ties_go_to_the_first_group_and_none_never_votes():
  assert majority_vote(["7", "8", "8", "7"]) == ("7", 2)
  assert majority_vote(["8", "7", "7", "8"]) == ("8", 2)
  assert majority_vote([None, None]) == (None, 0)
  assert majority_vote([]) == (None, 0)
  # A custom equivalence relation.
  same_parity = lambda a, b: int(a) % 2 == int(b) % 2
  assert majority_vote(["1", "2", "3", "4", "5"], same_parity) == ("1", 3)


def test_mean_interval_hand_computed():
  # values 0, 1, 1, 0.5: mean 0.625, sample sd sqrt(0.72917 / 3 * ... ) by hand below.
  v = [0.0, 1.0, 1.0, 0.5]
  m = 0.625
  sd = ((0.625 ** 2 + 0.375 ** 2 * 2 + 0.125 ** 2) / 3) ** 0.5
  half = 1.959964 * sd / 2
  got = mean_interval(v)
  np.testing.assert_allclose(got, (m, m - half, m + half), rtol=1e-6)
  assert mean_interval([0.3]) == (0.3, 0.3, 0.3)
  with pytest.raises(ValueError):
    mean_interval([])


def test_paired_test_exact_sign_flips_match_enumeration():
  rng = np.random.RandomState(0)
  a, b = rng.rand(9), rng.rand(9) * 0.6
  d = a - b
  # Naive enumeration of the 512 sign patterns.
  means = [abs(np.dot(s, d)) / 9 for s in itertools.product((-1, 1), repeat=9)]
  want = np.mean([x >= abs(d.mean()) - 1e-12 for x in means])
  r = paired_test(a, b)
  assert r["problems"] == 9 and 0 < r["p_value"] < 1
  np.testing.assert_allclose(r["p_value"], want)
  np.testing.assert_allclose(r["diff"], d.mean())
  assert r["diff_low"] < d.mean() < r["diff_high"]
  assert paired_test(a, a)["p_value"] == 1.0


def test_paired_test_monte_carlo_detects_a_shift_and_not_noise():
  rng = np.random.RandomState(1)
  before = rng.binomial(4, 0.3, 200) / 4
  after = np.clip(before + rng.binomial(1, 0.3, 200) * 0.25, 0, 1)  # a real gain
  assert paired_test(after, before)["p_value"] < 1e-3
  noise = rng.binomial(4, 0.3, 200) / 4
  assert paired_test(noise, before)["p_value"] > 0.01  # two draws of one policy
  with pytest.raises(ValueError):
    paired_test([1.0, 0.0], [1.0])


def test_length_gap_hand_computed_and_advantage_weighted_length():
  from r1jax.eval import length_gap
  from r1jax.losses.grpo import group_advantages
  lens = np.array([[10, 20, 30, 40],    # right: 30, 40 (35) vs wrong: 10, 20 (15) -> +20
                   [50, 10, 10, 10],    # right: 10, 10, 10 vs wrong 50 -> -40
                   [5, 6, 7, 8],        # all right: not mixed
                   [9, 9, 9, 9]])       # all wrong: not mixed
  ok = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
  got = length_gap(lens, ok)
  assert got["mixed_frac"] == 0.5
  assert got["len_gap"] == pytest.approx(-10.0)
  # Interval over the two mixed groups: mean -10, sample std of (20, -40) = 42.43, n = 2.
  half = 1.959964 * np.std([20.0, -40.0], ddof=1) / np.sqrt(2)
  assert got["len_gap_ci95"] == pytest.approx([-10 - half, -10 + half], rel=1e-5)
  # The same gap from GRPO's centred advantages: sum_i (r_i - p) len_i / (n p (1 - p)).
  a = group_advantages(ok[:2].astype(float), scaling="none")
  p = ok[:2].mean(1)
  ref = (a * lens[:2]).sum(1) / (4 * p * (1 - p))
  assert ref.mean() == pytest.approx(got["len_gap"])
  assert length_gap(lens[2:], ok[2:]) == {"mixed_frac": 0.0}
  with pytest.raises(ValueError, match=r"\[P, n\]"):
    length_gap(lens, ok[:, :2])
