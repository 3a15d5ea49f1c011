"""Evaluation metrics as the R1 paper reports them (DeepSeek-R1, section 3;
docs/method.md "Evaluation").

- pass@1 from k samples: mean over problems of (correct samples / k).
- Unbiased pass@k from n samples with c correct (Chen et al. 2021, "Evaluating Large
  Language Models Trained on Code", eq. 1): 1 - C(n-c, k) / C(n, k), computed in the
  numerically stable product form 1 - prod_{i=0}^{k-1} (n-c-i) / (n-i).
- cons@N: majority vote over the N extracted answers, equivalent answers voting together
  ("1/2", "0.5" and "\\frac{1}{2}" are one vote), accuracy of the voted answer.
- Intervals and paired tests over problems (`mean_interval`, `paired_test`): the problem,
  not the sample, is the independent unit.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import numpy as np


def pass_at_k(num_samples, num_correct, k: int) -> np.ndarray:
  """Unbiased pass@k per problem.

  Args:
    num_samples: n per problem, int array [P] (or scalar).
    num_correct: c per problem, int array [P] with 0 <= c <= n.
    k: samples drawn (1 <= k <= n for every problem).

  Returns:
    [P] float64: probability that at least one of k samples drawn without replacement from
    the n is correct. Exactly 1 when n - c < k.

  Raises:
    ValueError: k < 1, k > n for some problem, or c outside [0, n].
  """
  n = np.atleast_1d(np.asarray(num_samples, np.int64))
  c = np.atleast_1d(np.asarray(num_correct, np.int64))
  n, c = np.broadcast_arrays(n, c)
  if k < 1:
    raise ValueError(f"pass@k needs k >= 1, got k={k}")
  if np.any(k > n):
    raise ValueError(f"pass@{k} needs at least {k} samples per problem; the smallest n is "
                     f"{int(n.min())}")
  if np.any(c < 0) or np.any(c > n):
    raise ValueError("num_correct must lie in [0, num_samples]")
  i = np.arange(k)[None, :]
  # Factors (n-c-i)/(n-i); once n-c-i <= 0 the product is 0 (a correct sample is certain).
  factors = np.clip((n[:, None] - c[:, None] - i) / (n[:, None] - i), 0.0, None)
  return 1.0 - np.prod(factors, axis=1)


def pass_at_1(correct: np.ndarray) -> float:
  """Mean over problems of the fraction of correct samples. correct: [P, n] {0,1} or float
  scores (partial credit averages in)."""
  correct = np.asarray(correct, np.float64)
  return float(correct.mean(axis=1).mean())


def _math_equivalent(a: str, b: str) -> bool:
  from r1jax.rewards.accuracy import math_accuracy
  try:
    return math_accuracy(f"<answer>{b}</answer>", {"answer": a}) == 1.0
  except ValueError:  # `a` does not parse as math: fall back to normalised text
    return normalize_answer(a) == normalize_answer(b)


def normalize_answer(answer: str) -> str:
  """Whitespace-, case- and trailing-period-insensitive text form of an answer."""
  return " ".join(answer.strip().rstrip(".").split()).lower()


def majority_vote(answers: Sequence[Optional[str]],
                  equivalent: Optional[Callable[[str, str], bool]] = None
                  ) -> tuple[Optional[str], int]:
  """Most frequent answer up to equivalence.

  Answers are grouped greedily: each joins the first group whose representative (its first
  member) it is equivalent to. The largest group wins; a tie goes to the group whose first
  member came first (deterministic, independent of hashing). None (no extractable answer)
  never votes.

  Args:
    answers: N extracted answers (str) or None.
    equivalent: (a, b) -> bool; default: math equivalence (math_verify), falling back to
      `normalize_answer` equality for answers that do not parse as math.

  Returns:
    (representative answer of the winning group, its vote count); (None, 0) if no answer.
  """
  eq = equivalent or _cached_math_equivalent
  groups: list[list[str]] = []
  for a in answers:
    if a is None:
      continue
    for g in groups:
      if normalize_answer(g[0]) == normalize_answer(a) or eq(g[0], a):
        g.append(a)
        break
    else:
      groups.append([a])
  if not groups:
    return None, 0
  best = max(range(len(groups)), key=lambda i: (len(groups[i]), -i))
  return groups[best][0], len(groups[best])


@functools.lru_cache(maxsize=65536)
def _cached_math_equivalent(a: str, b: str) -> bool:
  return _math_equivalent(a, b)


def mean_interval(values, level: float = 0.95) -> tuple[float, float, float]:
  """Mean over problems with its normal-approximation interval (central limit theorem).

  Pass the per-problem scores (e.g. each problem's fraction of correct samples): the n
  samples of a problem are correlated, so the problem is the independent unit.

  Args:
    values: [P] float per-problem scores (P >= 1).
    level: two-sided confidence level in (0, 1).

  Returns:
    (mean, low, high) floats; low = high = mean when P < 2.

  Raises:
    ValueError: no values, or level outside (0, 1).
  """
  import statistics
  v = np.asarray(values, np.float64).reshape(-1)
  if v.size == 0 or not 0 < level < 1:
    raise ValueError(f"mean_interval needs values and 0 < level < 1 (got {v.size}, {level})")
  m = float(v.mean())
  if v.size < 2:
    return m, m, m
  half = statistics.NormalDist().inv_cdf(0.5 + level / 2) * v.std(ddof=1) / np.sqrt(v.size)
  return m, m - float(half), m + float(half)


def paired_test(after, before, level: float = 0.95, num_flips: int = 20000,
                seed: int = 0) -> dict:
  """Paired comparison of two evaluations of the same problems (e.g. two recipe stages).

  d_p = after_p - before_p per problem; reports its mean with a normal-approximation
  interval and the two-sided p-value of the sign-flip permutation test of mean(d) = 0
  (under the null each d_p is as likely to have the other sign; Fisher 1935): exact over
  all 2^P sign patterns when P <= 16, else Monte Carlo with `num_flips` random patterns
  (p = (1 + #{|mean| >= observed}) / (1 + num_flips)).

  Args:
    after, before: [P] per-problem scores, aligned (same problem at each index).
    level: confidence level of the interval; num_flips, seed: the Monte Carlo test.

  Returns:
    {"problems", "diff", "diff_low", "diff_high", "p_value"} (floats, problems int).

  Raises:
    ValueError: shapes that differ or no problems.
  """
  a = np.asarray(after, np.float64).reshape(-1)
  b = np.asarray(before, np.float64).reshape(-1)
  if a.shape != b.shape or a.size == 0:
    raise ValueError(f"paired_test needs two equal-length score lists, got {a.size} and "
                     f"{b.size}")
  d = a - b
  mean, low, high = mean_interval(d, level)
  obs = abs(d.mean()) - 1e-12  # ties count as "at least as extreme"
  if d.size <= 16:
    signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
    p = float(np.mean(np.abs(signs @ d / d.size) >= obs))
  else:
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(num_flips, d.size))
    p = float((1 + np.sum(np.abs(signs @ d / d.size) >= obs)) / (1 + num_flips))
  return {"problems": int(d.size), "diff": mean, "diff_low": low, "diff_high": high,
          "p_value": p}


def length_gap(lengths, correct, level: float = 0.95) -> dict:
  """Within-group length gap: how much longer a problem's correct samples are than its wrong
  ones, the length signal GRPO's group-relative advantage acts on.

  GRPO compares the samples of one prompt with each other ([DeepSeekMath] eq. 3; [R1]
  eq. 1-3), so response length grows under it only when, within a group, the right samples
  are the longer ones: R1-Zero's signature ([R1] §2.2.4, figure 3) needs a positive gap at
  the start. The gap over all samples pooled mixes in problem difficulty (hard problems get
  long, wrong answers), hence the per-group difference here. For a binary reward r with
  group mean p, a group's gap is sum_i (r_i - p) len_i / (n p (1 - p)): the advantage-weighted
  length, so it has the sign of the policy gradient's first-order push on length.

  Args:
    lengths: [P, n] completion lengths in tokens (n samples of each of P problems).
    correct: [P, n] correctness in {0, 1} (accuracy reward >= 1).
    level: confidence level of the interval, in (0, 1).

  Returns:
    {"len_gap": mean over mixed groups (some right, some wrong) of mean length of the right
     minus mean length of the wrong samples (tokens), "len_gap_ci95": [low, high] over those
     groups, "mixed_frac": fraction of groups that are mixed}; len_gap and len_gap_ci95 are
    left out when no group is mixed.

  Raises:
    ValueError: shapes that differ or are not 2-D.

  [DeepSeekMath]: Shao et al., arXiv:2402.03300, 2024. [R1]: DeepSeek-AI, arXiv:2501.12948.
  """
  lens = np.asarray(lengths, np.float64)
  ok = np.asarray(correct, np.float64) >= 1.0
  if lens.ndim != 2 or lens.shape != ok.shape:
    raise ValueError(f"length_gap needs two [P, n] arrays, got {lens.shape} and {ok.shape}")
  k = ok.sum(axis=1)
  mixed = (k > 0) & (k < ok.shape[1])
  out = {"mixed_frac": float(mixed.mean()) if mixed.size else 0.0}
  if mixed.any():
    l, o = lens[mixed], ok[mixed]
    gaps = (l * o).sum(1) / o.sum(1) - (l * ~o).sum(1) / (~o).sum(1)
    mean, low, high = mean_interval(gaps, level)
    out.update(len_gap=mean, len_gap_ci95=[low, high])
  return out
