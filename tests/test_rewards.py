"""Rule-based rewards (DeepSeek-R1, Guo et al. 2025, Sec. 2.2.2): strict extraction, binary
accuracy (partial credit opt-in), graded format, spec parsing, the held-out scorer, and the
process pool (timeouts, errors, crashes, inline == pool)."""

import json
import os
import sys
import time

import numpy as np
import pytest

# Importable by module name in the test process and (via the sent sys.path) in the reward
# workers, whatever pytest's import mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reward_fixtures  # noqa: E402,F401  (registers test_hang / test_raise / test_crash)
from r1jax import rewards
from r1jax.rewards import accuracy as acc
from r1jax.rewards import format_ok, format_reward, has_basic_format
from r1jax.rewards.parsing import extract_answer

TIMEOUT_S = 2.0


def _think(answer, think="let me compute"):
  return f" <think> {think} </think> <answer> {answer} </answer>"


def _math(answer):
  return {"question": "q", "answer": answer, "task": "math", "metadata": {}}


def _rg_examples(name, n=4, seed=7):
  """Examples as the data pipeline builds them (metadata JSON round-tripped)."""
  import reasoning_gym
  out = []
  for entry in reasoning_gym.create_dataset(name, size=n, seed=seed):
    out.append({"question": entry["question"], "answer": entry["answer"], "task": name,
                "metadata": json.loads(json.dumps(entry["metadata"]))})
  return out


# ------------------------------------------------------------------ extraction

@pytest.mark.parametrize("text,expected", [
    (" <think> x </think> <answer> 42 </answer>", "42"),
    (" <think> x </think> <answer> 42 </answer> \n<|im_end|><|endoftext|>", "42"),
    ("<answer>\\boxed{7}</answer>", "7"),
    ("<answer>\\boxed{7} and 8</answer>", "\\boxed{7} and 8"),
    ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{2} so again \\boxed{ 2 }", "2"),  # the same answer twice is one answer
    ("\\boxed{3} then \\boxed{4", "3"),  # truncated last box is skipped
    # Several answers: listing candidates states no answer.
    ("<answer>1</answer> more <answer>2</answer>", None),
    ("<answer> a <answer> b </answer>", None),
    ("\\boxed{1} then \\boxed{ 2 }", None),
    # Text after </answer>: no answer (the stop string ends a completion there).
    ("<answer>x</answer> then \\boxed{9}", None),
    ("<think>a</think> <answer>7</answer>.", None),
    ("<think>a</think> <answer>7</answer> <think>no, 8</think>", None),
    ("<think>a</think> <answer>7</answer>\nUser: What is 2+2?\nAssistant: <think>", None),
    ("<answer></answer> \\boxed{3}", None),  # blank answer block: no fallback
    ("</answer> 3 <answer>", None),
    ("<answer>5", None),
    ("The answer is 42", None),  # no "last number" guessing
    ("", None),
])
def test_extract_answer(text, expected):
  assert extract_answer(text) == expected


# ------------------------------------------------------------------ math accuracy

@pytest.mark.parametrize("gold,pred,expected", [
    ("\\frac{1}{2}", "0.5", 1.0),
    ("0.5", "\\frac{1}{2}", 1.0),
    ("1/2", "\\dfrac12", 1.0),
    ("2", "2.0", 1.0),
    ("x+1", "1+x", 1.0),
    ("\\sqrt{2}", "2^{1/2}", 1.0),
    ("1000", "1,000", 1.0),
    ("18", "\\$18", 1.0),
    ("3", "4", 0.0),
    ("\\frac{1}{2}", "\\frac{1}{3}", 0.0),
    ("x+1", "x-1", 0.0),
    ("3", "2 or 3", 0.0),  # not "some number in the answer"
])
def test_math_accuracy(gold, pred, expected):
  assert acc.math_accuracy(_think(pred), _math(gold)) == expected
  assert acc.accuracy(_think(pred), _math(gold)) == expected


def test_math_accuracy_boxed_and_missing():
  assert acc.math_accuracy("so the result is \\boxed{\\frac{3}{4}}", _math("0.75")) == 1.0
  assert acc.math_accuracy("the result is 0.75", _math("0.75")) == 0.0


# ------------------------------------------------------------------ reasoning-gym accuracy

@pytest.mark.parametrize("name", ["basic_arithmetic", "chain_sum"])
def test_reasoning_gym_arithmetic(name):
  for ex in _rg_examples(name):
    assert acc.is_reasoning_gym_task(ex["task"])
    assert acc.accuracy(_think(ex["answer"]), ex) == 1.0
    wrong = str(int(float(ex["answer"])) + 1)
    assert ex["answer"] not in wrong  # else reasoning-gym gives substring partial credit
    assert acc.accuracy(_think(wrong), ex) == 0.0
    assert acc.accuracy("no tags, " + ex["answer"], ex) == 0.0


def test_reasoning_gym_countdown():
  for ex in _rg_examples("countdown"):
    assert acc.accuracy(_think(ex["answer"]), ex) == 1.0
    nums = ex["metadata"]["numbers"]
    wrong = " + ".join(str(v) for v in nums)  # right numbers, wrong value
    assert sum(nums) != ex["metadata"]["target"]
    # reasoning-gym's partial credit is dropped by default, kept with partial_credit=True.
    assert acc.accuracy(_think(wrong), ex) == 0.0
    assert acc.accuracy(_think(wrong), ex, partial_credit=True) == pytest.approx(0.05)
    assert acc.accuracy(_think("1 + 1"), ex) == 0.0
    assert acc.accuracy("no answer", ex) == 0.0  # reasoning-gym alone would give 0.01
    assert acc.accuracy("no answer", ex, partial_credit=True) == 0.0


# Gold "7" under reasoning-gym's default scorer (basic_arithmetic): hand-computed partial
# credit len(gold) / len(answer) when the gold is a substring of a wrong answer.
PARTIAL = [("7", 1.0, 1.0), ("77", 0.0, 1 / 2), ("07", 0.0, 1 / 2), ("7.0", 0.0, 1 / 3),
           ("1 2 3 4 5 6 7", 0.0, 1 / 13), ("8", 0.0, 0.0)]


@pytest.mark.parametrize("answer,binary,partial", PARTIAL)
def test_binary_by_default_partial_credit_opt_in(answer, binary, partial):
  ex = dict(_rg_examples("basic_arithmetic", 1)[0], answer="7")
  assert acc.accuracy(_think(answer), ex) == binary
  assert acc.accuracy(_think(answer), ex, partial_credit=True) == pytest.approx(partial)
  assert acc.heldout_accuracy(_think(answer), ex) == binary
  # Several answers, or text after </answer>, void even the right one.
  for bad in (_think(answer) + _think("7"), _think(answer) + " So the answer is 7.",
              _think(answer) + "\nUser: next question"):
    assert acc.accuracy(bad, ex) == 0.0 and acc.accuracy(bad, ex, partial_credit=True) == 0.0


# ------------------------------------------------------------------ format

# (completion, format_ok, basic format, reward with full=1.0, partial=0.5); hand-checked
# against the definition in r1jax/rewards/format.py.
FORMAT_TABLE = [
    (" <think> a </think> <answer> 4 </answer>", True, True, 1.0),
    ("<think>a</think><answer>4</answer>", True, True, 1.0),
    ("\n<think>a\nb</think>\n\n<answer>4</answer>\n<|endoftext|>", True, True, 1.0),
    ("<think>a</think> <answer>4</answer></s>\n", True, True, 1.0),
    ("Sure. <think>a</think> <answer>4</answer>", False, True, 0.5),
    ("<think>a</think> so: <answer>4</answer>", False, True, 0.5),
    ("<think>a <think>b</think><answer>4</answer>", False, True, 0.5),
    ("<think>a</think><answer>4</answer><|endoftext|><|endoftext|>", True, True, 1.0),
    # More than one answer block, or text after </answer>: no format credit at all.
    ("<think>a</think> <answer>4</answer> extra", False, False, 0.0),
    ("<think>a</think> <answer>4</answer>.", False, False, 0.0),
    ("<think>a</think><answer>4</answer><answer>5</answer>", False, False, 0.0),
    ("<think>a</think><answer>4</answer> <think>b</think>", False, False, 0.0),
    ("<think>a</think> <answer>4</answer>\nUser: 2+2?\nAssistant: <think>", False, False, 0.0),
    ("<think></think><answer>4</answer>", False, False, 0.0),
    ("<think>a</think><answer> </answer>", False, False, 0.0),
    ("<answer>4</answer><think>a</think>", False, False, 0.0),
    ("<think>a <answer>4</answer></think>", False, False, 0.0),
    ("<think>a</think>x<answer>4</answer>", False, True, 0.5),
    ("<think>a</think><answer>4", False, False, 0.0),
    ("<THINK>a</THINK><answer>4</answer>", False, False, 0.0),
    ("<think>a</think>", False, False, 0.0),
    ("4", False, False, 0.0),
]


@pytest.mark.parametrize("text,ok,basic,reward", FORMAT_TABLE)
def test_format_table(text, ok, basic, reward):
  assert format_ok(text) is ok
  assert has_basic_format(text) is basic
  assert format_reward(text, {}) == reward
  assert format_reward(text, {}, full=2.0, partial=0.25) == {1.0: 2.0, 0.5: 0.25, 0.0: 0.0}[reward]


# ------------------------------------------------------------------ spec / registry

def test_parse_reward_spec():
  assert rewards.parse_reward_spec("accuracy:1.0,format:0.2") == [("accuracy", 1.0),
                                                                   ("format", 0.2)]
  assert rewards.parse_reward_spec(" accuracy : 2 , format ") == [("accuracy", 2.0),
                                                                  ("format", 1.0)]
  assert rewards.parse_reward_spec("format:-0.5") == [("format", -0.5)]
  for bad in ["", "accuracy:abc", "nope:1", "accuracy:inf", "accuracy:nan",
              "accuracy:1,accuracy:2", "accuracy:1,,format:1", "accuracy:"]:
    with pytest.raises(ValueError):
      rewards.parse_reward_spec(bad)


def test_register_conflict():
  assert "accuracy" in rewards.REWARD_FUNCTIONS and "format" in rewards.REWARD_FUNCTIONS
  with pytest.raises(ValueError):
    rewards.register("format")(reward_fixtures.raise_reward)
  with pytest.raises(ValueError):
    rewards.register("a:b")


def test_computer_argument_errors():
  with pytest.raises(ValueError):
    rewards.RewardComputer("accuracy:1", num_workers=0, fn_kwargs={"format": {}})
  with pytest.raises(ValueError):
    rewards.RewardComputer("format:1", num_workers=0, fn_kwargs={"format": {"ful": 1.0}})
  rewards.register("test_lambda")(lambda c, e: 1.0)
  with pytest.raises(ValueError):  # cannot be sent to a worker process
    rewards.RewardComputer("test_lambda:1", num_workers=1)
  with pytest.raises(ValueError):
    rewards.RewardComputer("format:1", num_workers=0)(["a"], [])


# ------------------------------------------------------------------ weighted totals (inline)

def test_weighted_totals_inline():
  rc = rewards.RewardComputer("accuracy:1.0,format:0.2", num_workers=0,
                              fn_kwargs={"format": {"full": 1.0, "partial": 0.25}})
  completions = [
      _think("0.5"),                               # right, full format: 1 + 0.2*1
      "Hi <think>a</think> <answer>1/2</answer>",  # right, partial: 1 + 0.2*0.25
      _think("7"),                                 # wrong, full: 0.2
      "so \\boxed{\\frac{1}{2}}",                  # right, no format: 1
      "no idea",                                   # 0
  ]
  res = rc(completions, [_math("\\frac{1}{2}")] * 5)
  np.testing.assert_allclose(res.total, [1.2, 1.05, 0.2, 1.0, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(res.per_function["accuracy"], [1, 1, 0, 1, 0])
  np.testing.assert_allclose(res.per_function["format"], [1, 0.25, 1, 0, 0])
  assert res.total.dtype == np.float32 and res.per_function["format"].dtype == np.float32
  assert not res.timed_out.any() and not res.errors.any()
  empty = rc([], [])
  assert empty.total.shape == (0,) and empty.per_function["accuracy"].shape == (0,)


def test_heldout_accuracy_is_one_scorer_whatever_the_training_options():
  """Training (any reward options) and evaluation report held-out accuracy through the same
  binary scorer (accuracy.heldout_accuracy)."""
  ex = dict(_rg_examples("basic_arithmetic", 1)[0], answer="7")
  comps = [_think("7"), _think("77"), _think("7") + _think("7"), "no"]
  train = rewards.RewardComputer("accuracy:1.0", num_workers=0,
                                 fn_kwargs={"accuracy": {"partial_credit": True}})
  np.testing.assert_allclose(train(comps, [ex] * 4).per_function["accuracy"], [1, 0.5, 0, 0])
  np.testing.assert_array_equal(train.heldout_accuracy(comps, [ex] * 4), [1, 0, 0, 0])
  evaluation = rewards.RewardComputer("accuracy:1.0", num_workers=0)
  np.testing.assert_array_equal(evaluation.heldout_accuracy(comps, [ex] * 4), [1, 0, 0, 0])


# ------------------------------------------------------------------ process pool

SPEC = [("accuracy", 1.0), ("format", 0.2), ("test_hang", 0.5), ("test_raise", 2.0),
        ("test_crash", 1.0)]


@pytest.fixture(scope="module")
def pool():
  # chunk_size=3 so that a hang/crash in mid-chunk exercises the re-queueing of the rest.
  rc = rewards.RewardComputer(SPEC, num_workers=2, timeout_s=TIMEOUT_S, chunk_size=3)
  assert rc.wait_ready(60.0)
  yield rc
  rc.close()


def _mixed_batch():
  exs = _rg_examples("basic_arithmetic", 3) + _rg_examples("countdown", 3) + [
      _math("\\frac{1}{2}"), _math("x+1")]
  comps = []
  for k, ex in enumerate(exs):
    if k % 3 == 0:
      comps.append(_think(ex["answer"]))
    elif k % 3 == 1:
      comps.append("Answer: <think>hm</think> <answer>" + ex["answer"] + "</answer>")
    else:
      comps.append(_think("1 + 1"))
  return comps, exs


def _hand_total(res, i):
  return sum(w * res.per_function[n][i] for n, w in SPEC)


def test_pool_equals_inline(pool):
  comps, exs = _mixed_batch()
  inline = rewards.RewardComputer(SPEC, num_workers=0)
  a, b = pool(comps, exs), inline(comps, exs)
  np.testing.assert_array_equal(a.total, b.total)
  for name, _ in SPEC:
    np.testing.assert_array_equal(a.per_function[name], b.per_function[name])
  np.testing.assert_array_equal(a.timed_out, b.timed_out)
  np.testing.assert_array_equal(a.errors, b.errors)
  assert not a.timed_out.any() and not a.errors.any()
  np.testing.assert_array_equal(pool.heldout_accuracy(comps, exs),
                                inline.heldout_accuracy(comps, exs))
  for i in range(len(comps)):
    assert a.total[i] == pytest.approx(_hand_total(a, i), rel=1e-6)
  # right answer + full format: 1 + 0.2 + 0.5 (hang fn) + 2*0.5 (raise fn) + 0.25 (crash fn)
  assert a.total[0] == pytest.approx(2.95, rel=1e-6)


def test_pool_timeout_kills_and_recovers(pool):
  comps, exs = _mixed_batch()
  comps[4] = comps[4] + " HANG"
  restarts = pool.restarts
  t0 = time.monotonic()
  res = pool(comps, exs)
  elapsed = time.monotonic() - t0
  assert elapsed < TIMEOUT_S + 4.0, elapsed
  assert res.timed_out.tolist() == [i == 4 for i in range(len(comps))]
  assert not res.errors.any()
  assert res.per_function["test_hang"][4] == 0.0
  # The other functions of the hung sample and the rest of its chunk were still scored.
  no_hang = [(n, w) for n, w in SPEC if n != "test_hang"]
  ref = rewards.RewardComputer(no_hang, num_workers=0)(comps, exs)
  for name, _ in no_hang:
    np.testing.assert_array_equal(res.per_function[name], ref.per_function[name])
  np.testing.assert_array_equal(res.per_function["test_hang"], [i != 4 for i in range(8)])
  assert pool.restarts == restarts + 1 and pool.timeout_counts["test_hang"] >= 1
  # The pool still works, and the replacement worker is used.
  comps2, exs2 = _mixed_batch()
  res2 = pool(comps2, exs2)
  assert not res2.timed_out.any() and not res2.errors.any()
  assert res2.total[0] == pytest.approx(2.95, rel=1e-6)
  assert pool.wait_ready(30.0)


def test_pool_exception_and_crash(pool):
  comps, exs = _mixed_batch()
  comps[1] += " RAISE"
  comps[5] += " CRASH"
  res = pool(comps, exs)
  assert res.errors.tolist() == [i in (1, 5) for i in range(len(comps))]
  assert not res.timed_out.any()
  assert res.per_function["test_raise"][1] == 0.0
  assert res.per_function["test_crash"][5] == 0.0
  assert res.per_function["test_raise"][5] == 0.5  # other functions of a crash sample run
  assert pool.error_counts[("test_raise", "RuntimeError")] >= 1
  assert pool.error_counts[("test_crash", "WorkerDied")] >= 1
  for i in range(len(comps)):
    assert res.total[i] == pytest.approx(_hand_total(res, i), rel=1e-6)
  res2 = pool(*_mixed_batch())
  assert not res2.errors.any() and res2.total[0] == pytest.approx(2.95, rel=1e-6)


def test_pool_close():
  with rewards.RewardComputer("format:1.0", num_workers=1) as rc:
    res = rc([_think("1")], [_math("1")])
    assert res.total.tolist() == [1.0]
    procs = [w.proc for w in rc._workers]  # pylint: disable=protected-access
  assert all(p.poll() is not None for p in procs)
  with pytest.raises(RuntimeError):
    rc([_think("1")], [_math("1")])
