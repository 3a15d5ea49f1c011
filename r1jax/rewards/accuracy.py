"""Accuracy rewards: the final answer checked against the reference by rules.

DeepSeek-R1 (Guo et al. 2025, Sec. 2.2.2; docs/method.md, "Rewards"): the answer stated in
`<answer>` (or `\\boxed{}`) is compared with the reference answer by math equivalence
(math_verify) or, for reasoning-gym tasks, by the task's own scorer. No neural reward model
is involved, and the reward is binary (1 for a correct answer, else 0): R1's rule reward
pays for correctness only, and a graded one pays wrong answers that resemble the reference
(reasoning-gym's default scorer gives "77" 0.5 against the reference "7"), which RL then
optimises. Partial credit is an explicit opt-in (`partial_credit=True`, the stage config's
`rewards.partial_credit`). Answers are extracted strictly (r1jax.rewards.parsing): several
answers, or text after `</answer>`, score 0.

`heldout_accuracy` is the one scorer of held-out accuracy, used by the GRPO stage's in-loop
evaluation and by the eval stage (pass@k, cons@N), so that their numbers agree.

`math_verify` and `reasoning_gym` are imported lazily (inside the functions) so that
importing r1jax.rewards stays cheap in the trainer and the reward workers pay for them only
when used (or in `warmup`, run when a worker starts).
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any, Optional

from r1jax.rewards.parsing import extract_answer

# Task name of free-form math examples (JSONL math sets); never looked up in reasoning-gym.
MATH_TASK = "math"
# Default internal math_verify timeout (integer seconds; signal.alarm granularity). Kept
# below RewardComputer's default per-sample timeout so that a slow sympy call usually ends
# as a clean 0 inside the worker instead of costing a worker kill and respawn.
MATH_VERIFY_TIMEOUT_S = 2

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")

_rg_datasets: dict[str, Any] = {}


def _signal_timeout(timeout_s: Optional[float]) -> Optional[int]:
  """math_verify's timeouts use SIGALRM, which only works in the main thread: None elsewhere."""
  if not timeout_s or threading.current_thread() is not threading.main_thread():
    return None
  return max(1, int(round(timeout_s)))


def _as_latex(text: str) -> str:
  """Wrap a bare answer in `$...$` so math_verify reads the whole string as one LaTeX
  expression (`\\frac{1}{2}`, `x+1`, `(1,2)`, `\\$18`); strings with their own math
  delimiters (an unescaped `$`, `\\(`, `\\[`, `\\boxed`) are kept as they are."""
  if _UNESCAPED_DOLLAR.search(text) or any(d in text for d in ("\\(", "\\[", "\\boxed")):
    return text
  return f"${text}$"


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout: Optional[int]) -> tuple:
  """Parsed reference answer; cached because each reference is scored G times per group."""
  import math_verify
  parsed = math_verify.parse(_as_latex(gold), parsing_timeout=timeout)
  if not parsed:
    # References are trusted, so the lenient default extraction is fine as a fallback.
    parsed = math_verify.parse(gold, parsing_timeout=timeout)
  return tuple(parsed)


def math_accuracy(completion: str, example: dict[str, Any], *,
                  timeout_s: Optional[float] = MATH_VERIFY_TIMEOUT_S) -> float:
  """1.0 if the extracted answer is mathematically equivalent to `example["answer"]`, else 0.0.

  Uses `math_verify.parse` on both sides (bare answers wrapped in `$...$`, so `0.5` equals
  `\\frac{1}{2}` and `1/2`, `2` equals `2.0`, `x+1` equals `1+x`) and
  `math_verify.verify(gold, pred)`. The prediction is never parsed with math_verify's
  "find a number anywhere" fallback (see parsing.py).

  Args:
    completion: generated text after the prompt (str).
    example: dict with at least "answer" (str, the reference).
    timeout_s: math_verify's own per-step timeout in seconds (rounded to an int >= 1;
      None/0 disables; ignored outside the main thread, where SIGALRM cannot be used). The
      process pool enforces its own per-sample timeout on top of this.
  Returns:
    1.0 or 0.0 (0.0 when no answer can be extracted or parsed).
  Raises:
    ValueError: the reference answer cannot be parsed (a data error, worth surfacing).
  """
  pred_text = extract_answer(completion)
  if pred_text is None:
    return 0.0
  import math_verify
  timeout = _signal_timeout(timeout_s)
  gold = _parse_gold(str(example["answer"]), timeout)
  if not gold:
    raise ValueError(f"math_verify cannot parse the reference answer {example['answer']!r}")
  pred = math_verify.parse(_as_latex(pred_text), parsing_timeout=timeout)
  if not pred:
    return 0.0
  return 1.0 if math_verify.verify(list(gold), pred, timeout_seconds=timeout) else 0.0


def _rg_dataset(task: str):
  """reasoning-gym dataset object of `task`, built once per process (only its scorer is used)."""
  ds = _rg_datasets.get(task)
  if ds is None:
    import reasoning_gym
    from reasoning_gym.factory import DATASETS
    try:
      ds = reasoning_gym.create_dataset(task, size=1, seed=0)
    except Exception:  # pylint: disable=broad-except
      # Some configs refuse size=1 or need arguments ("composite"); the scorer does not care.
      dataset_cls, config_cls = DATASETS[task]
      ds = dataset_cls(config=config_cls())
    _rg_datasets[task] = ds
  return ds


def is_reasoning_gym_task(task: Optional[str]) -> bool:
  """Whether `task` names a registered reasoning-gym dataset (reasoning_gym.factory.DATASETS)."""
  if not task or task == MATH_TASK:
    return False
  from reasoning_gym.factory import DATASETS
  return task in DATASETS


def reasoning_gym_accuracy(completion: str, example: dict[str, Any], *,
                           partial_credit: bool = False) -> float:
  """The extracted answer scored by the task's own reasoning-gym `score_answer`, binary.

  reasoning-gym's scorers give partial credit: e.g. its default scorer gives
  len(reference)/len(answer) when the reference is a substring of the answer (gold 7:
  "77" 0.5, "7.0" 0.33), and countdown gives 0.05 for a wrong expression over the right
  numbers and 0.01 for an unparseable one. By default every score below 1 maps to 0 (the
  binary rule reward of the module docstring); `partial_credit=True` keeps the score.

  Args:
    completion: generated text after the prompt (str).
    example: dict with "task" (a reasoning-gym dataset name), "question", "answer" and
      "metadata" (the dataset entry's metadata).
    partial_credit: return the scorer's own value instead of 1.0 for a full score, else 0.0.
  Returns:
    1.0 or 0.0 (partial_credit: the scorer's float in [0, 1]); 0.0 when no answer is
    extracted (reasoning-gym itself gives some tasks 0.01 for a missing answer; we do not).
  Raises:
    ValueError: unknown task. Whatever the task's scorer raises is propagated.
  """
  answer = extract_answer(completion)
  if answer is None:
    return 0.0
  task = example["task"]
  if not is_reasoning_gym_task(task):
    raise ValueError(f"{task!r} is not a reasoning-gym dataset")
  entry = {"question": example.get("question", ""), "answer": example["answer"],
           "metadata": example.get("metadata") or {}}
  score = float(_rg_dataset(task).score_answer(answer, entry))
  if partial_credit:
    return score
  return 1.0 if score >= 1.0 - 1e-9 else 0.0


def accuracy(completion: str, example: dict[str, Any], *,
             timeout_s: Optional[float] = MATH_VERIFY_TIMEOUT_S,
             partial_credit: bool = False) -> float:
  """Accuracy reward r_acc (module docstring): dispatch on `example["task"]`.

  reasoning-gym dataset names -> `reasoning_gym_accuracy` (with `partial_credit`); code
  problems (task "code" or test fields: the "code" reward scores them) -> 0.0, so that the
  two mix over mixed data ("accuracy:1,code:1"); anything else ("math", other strings,
  missing) -> `math_accuracy` (with `timeout_s`; always binary). No single extracted answer
  (none, several, or text after `</answer>`) -> 0.0.

  Args:
    completion: generated text after the prompt (str).
    example: data example dict ("question", "answer", "task", "metadata").
    timeout_s: math_verify's internal timeout for math answers (see `math_accuracy`).
    partial_credit: keep reasoning-gym's partial credit (see `reasoning_gym_accuracy`).
  Returns:
    1.0 or 0.0 (partial_credit: a float in [0, 1]).
  Raises:
    Whatever the selected scorer raises (the reward pool turns it into 0 + an error flag).
  """
  if is_reasoning_gym_task(example.get("task")):
    return reasoning_gym_accuracy(completion, example, partial_credit=partial_credit)
  from r1jax.rewards import code  # lazy, as in heldout_accuracy
  if code.is_code_example(example):
    return 0.0  # scored by the "code" reward, as that one gives 0 to non-code problems
  return math_accuracy(completion, example, timeout_s=timeout_s)


def heldout_accuracy(completion: str, example: dict[str, Any]) -> float:
  """Held-out correctness of one completion, 1.0 or 0.0: THE scorer of held-out accuracy
  (the GRPO stage's in-loop evaluation and the eval stage's pass@k / cons@N), so that
  training and evaluation report the same number whatever the training reward's options.

  Code problems (task "code", or examples with tests) pass when every test passes
  (r1jax.rewards.code, default limits and sandbox mode); everything else is `accuracy`
  without partial credit.

  Args:
    completion: generated text after the prompt (str).
    example: data example dict.
  Returns:
    1.0 or 0.0.
  Raises:
    As `accuracy` / `code.code_reward` (the reward pool turns errors into 0).
  """
  from r1jax.rewards import code  # lazy: the sandbox is only needed for code problems
  if code.is_code_example(example):
    return code.code_reward(completion, example, binary=True)
  return accuracy(completion, example, partial_credit=False)


def warmup() -> None:
  """Import math_verify/reasoning_gym and exercise the LaTeX parser once (worker start-up),
  so that the first scored sample does not pay the import inside its timeout."""
  import math_verify
  import reasoning_gym.factory  # noqa: F401  (registers every dataset)
  timeout = _signal_timeout(5)
  math_verify.verify(math_verify.parse("$\\frac{1}{2}$", parsing_timeout=timeout),
                     math_verify.parse("$0.5$", parsing_timeout=timeout), timeout_seconds=timeout)
