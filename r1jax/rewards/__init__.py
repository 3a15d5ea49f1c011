"""Rule-based rewards for GRPO / R1-Zero (DeepSeek-R1, Guo et al. 2025, Sec. 2.2.2;
docs/method.md, "Rewards").

- parsing: `extract_answer` (the single `<answer>` block, else one agreed `\\boxed{}`;
  several answers or text after `</answer>` state none).
- accuracy: `accuracy.accuracy` (binary unless `partial_credit=True`), `math_accuracy`
  (math_verify equivalence), `reasoning_gym_accuracy` (the task's own scorer, thresholded),
  `heldout_accuracy` (the one held-out scorer of training and evaluation). The dispatcher is
  reached through its module (or REWARD_FUNCTIONS["accuracy"]) so that the name `accuracy`
  keeps meaning the submodule.
- format: `format_reward` (graded: 0 / R_partial / R_full), `format_ok` (format rate).
- language: `language_reward` (R1 stage-2 language consistency, registered as "language").
- code: `code.code_reward` (registered as "code": the final ```python block run against the
  example's tests in `sandbox`), `code.run_tests` (per-test outcomes); code_tests: schema
  and comparison.
- sandbox / isolation / wire / sandbox_runner: isolated execution of untrusted code under
  nsjail, failing closed.
- registry: `REWARD_FUNCTIONS`, `register`, `parse_reward_spec("accuracy:1.0,format:0.2")`.
- pool / pool_worker: `RewardComputer` (weighted sum in worker processes with per-sample
  timeouts).
"""

from r1jax.rewards import accuracy, code, format, parsing, pool, registry, sandbox  # noqa: A004
from r1jax.rewards import language  # noqa: F401  (registers the "language" reward)
from r1jax.rewards.accuracy import (heldout_accuracy, is_reasoning_gym_task, math_accuracy,
                                    reasoning_gym_accuracy)
from r1jax.rewards.format import format_ok, format_reward, has_basic_format
from r1jax.rewards.parsing import extract_answer
from r1jax.rewards.pool import RewardComputer, RewardResult
from r1jax.rewards.registry import REWARD_FUNCTIONS, parse_reward_spec, register

__all__ = [
    "REWARD_FUNCTIONS", "RewardComputer", "RewardResult", "accuracy", "code", "extract_answer",
    "format", "format_ok", "format_reward", "language", "has_basic_format", "heldout_accuracy",
    "is_reasoning_gym_task", "math_accuracy", "parse_reward_spec", "parsing", "pool",
    "reasoning_gym_accuracy", "register", "registry", "sandbox",
]
