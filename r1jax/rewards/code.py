"""Code-execution accuracy reward: run the model's final Python code block against tests.

DeepSeek-R1 (Guo et al. 2025, Sec. 2.2.2): for programming prompts the accuracy reward
runs the code against test cases. Every execution goes through r1jax.rewards.sandbox
(nsjail: namespaces, trusted init, seccomp, cgroup, rlimits, minimal read-only root; see
r1jax.rewards.isolation for the modes), which fails closed: a machine that cannot give the
configured isolation raises `SandboxUnavailable` at start-up (`startup_check`) instead of
running code with less. Test schema and comparison: r1jax/rewards/code_tests.py and
docs/code_reward.md.

Binary by default, like the other accuracy rewards (1.0 only when every test passes);
`binary=False` opts in to the fraction of tests passed. The code is the last ```python
block of the single answer block (or of the whole completion when it has no answer tags);
a completion that breaks the answer-tag rules of r1jax.rewards.parsing (several answer
blocks, text after `</answer>`) scores 0.

Hiding the answers. Expected outputs and assertions never enter the sandboxed process:
stdin/stdout outputs are compared in this (parent) process; for function tests the child
loads the submission and answers calls (name, literal arguments) with the value as JSON,
which the parent parses with bounds (r1jax.rewards.wire) and compares. Assert statements and
test_code run in the parent with each free name (the entry point, helpers) bound to a proxy
that forwards the call to the child, so the submission sees the arguments of the current
call and nothing else: it cannot read, patch or skip the asserts, a fake "PASS" on stdout
counts for nothing, and os._exit / sys.exit inside a call is an error for that call.

Time. Each stdin/stdout test gets its own sandbox with limit `timeout_s`; function tests
share one sandbox (re-started after a timeout or crash). The whole sample has a budget
`total_timeout_s`: a test never gets more than what is left, and tests left when it runs
out are "skipped" (as are those after a timeout, by default: `stop_on_timeout`). Keep
`total_timeout_s` + about 1 s below the reward pool's per-sample `timeout_s`
(RewardComputer), so that a slow sample ends as a clean 0 here instead of a worker kill
there; the defaults (2 s per test, 4 s per sample) fit the pool's default 5 s.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib
import re
import sys
import time
from typing import Any, Optional

from r1jax.rewards import sandbox
from r1jax.rewards.code_tests import (Test, apps_tests, has_tests,  # noqa: F401
                                      livecodebench_tests, parse_tests, stdout_matches,
                                      values_equal)
from r1jax.rewards.parsing import answer_block, has_answer_tags

__all__ = ["TestOutcome", "CodeResult", "extract_code", "parse_tests", "run_tests",
           "code_reward", "apps_tests", "livecodebench_tests", "stdout_matches",
           "values_equal", "is_code_example", "startup_check", "warmup", "CODE_TASK"]

# Task name of code examples (JSONL "task" field).
CODE_TASK = "code"
# Defaults: per-test wall limit and per-sample budget (see the module docstring).
TIMEOUT_S = 2.0
TOTAL_TIMEOUT_S = 4.0

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


@dataclasses.dataclass
class TestOutcome:
  """One test's outcome.

  status: "pass", "fail" (wrong output / assertion), "error" (exception, crash, non-zero
    exit, unparseable result), "timeout" (wall or CPU limit), "output_limit" (too much
    output), or "skipped" (not run: budget exhausted or stop_on_failure).
  seconds: wall time spent on it.
  detail: short reason (never the expected output).
  """
  status: str
  seconds: float = 0.0
  detail: str = ""


@dataclasses.dataclass
class CodeResult:
  """Outcomes of one submission.

  outcomes: one TestOutcome per test, in order (empty when no code was found).
  isolation: the sandbox mode and layers used (`sandbox.isolation()`).
  error: why nothing ran ("no code block", "load error: ..."), else None.
  """
  outcomes: list
  isolation: dict
  error: Optional[str] = None

  @property
  def passed(self) -> int:
    return sum(o.status == "pass" for o in self.outcomes)

  @property
  def total(self) -> int:
    return len(self.outcomes)

  @property
  def fraction(self) -> float:
    return self.passed / self.total if self.total else 0.0

  @property
  def all_passed(self) -> bool:
    return self.total > 0 and self.passed == self.total

  def score(self, binary: bool = True) -> float:
    """1.0 only if all tests passed (binary), else the fraction of tests passed."""
    return float(self.all_passed) if binary else self.fraction

  def statuses(self) -> list[str]:
    return [o.status for o in self.outcomes]

  def to_dict(self) -> dict:
    return {"passed": self.passed, "total": self.total, "error": self.error,
            "outcomes": [dataclasses.asdict(o) for o in self.outcomes],
            "isolation": self.isolation}


def extract_code(completion: str) -> Optional[str]:
  """The final Python code block of a completion, or None.

  With answer tags, looks only inside the single answer block (None when the answer-tag
  rules of r1jax.rewards.parsing fail); without, in the whole completion. Returns the
  content of the last closed ```python / ```py / ```python3 fence; without such a fence,
  the last closed fence with no language tag. An unclosed fence (cut off by the token
  budget) is ignored.

  Args:
    completion: generated text.
  Returns:
    The code (str) or None.
  """
  text = completion
  if has_answer_tags(completion):
    text = answer_block(completion)
    if text is None:
      return None
  tagged, bare = None, None
  for m in _FENCE.finditer(text):
    lang = m.group(1).lower()
    if lang in ("python", "py", "python3"):
      tagged = m.group(2)
    elif not lang:
      bare = m.group(2)
  code = tagged if tagged is not None else bare
  return code if code is not None and code.strip() else None


def is_code_example(example: dict) -> bool:
  """Whether the example is a code problem (task "code", or any test field)."""
  return example.get("task") == CODE_TASK or has_tests(example)


# --------------------------------------------------------------------------- running

class _Budget(Exception):
  """The sample's time budget is exhausted."""


class _Calls:
  """Function calls into the sandboxed submission, with a restart after a timeout/crash and
  a total time budget."""

  def __init__(self, code: str, limits: sandbox.Limits, deadline: float, mode):
    self.code, self.limits, self.deadline, self.mode = code, limits, deadline, mode
    self.session: Optional[sandbox.FunctionSession] = None
    self.isolation: dict = {}
    self.load_error: Optional[sandbox.CallError] = None  # deterministic: not retried

  def _left(self) -> float:
    left = self.deadline - time.monotonic()
    if left <= 0.05:
      raise _Budget()
    return left

  def call(self, name: str, args: tuple, kwargs: Optional[dict]) -> Any:
    if self.session is None or not self.session.alive:
      if self.session is not None:
        self.session.close()
      left = self._left()
      if self.load_error is not None:
        raise self.load_error
      lim = dataclasses.replace(self.limits, wall_s=min(self.limits.wall_s, left))
      try:
        self.session = sandbox.FunctionSession(self.code, lim, budget_s=left, mode=self.mode)
      except sandbox.CallError as e:
        if str(e).startswith("load error"):
          self.load_error = e
        raise
      self.isolation = self.session.isolation
    timeout = min(self.limits.wall_s, self._left())
    return self.session.call(name, args, kwargs, timeout_s=timeout)

  def close(self) -> None:
    if self.session is not None:
      self.session.close()


class _Proxy:
  """Stands for a submission function in parent-side test code; calls go to the child."""

  def __init__(self, calls: _Calls, name: str):
    self._calls, self._name = calls, name

  def __call__(self, *args, **kwargs):
    return self._calls.call(self._name, args, kwargs)

  def __getattr__(self, attr):
    if attr.startswith("__"):
      raise AttributeError(attr)
    return _Proxy(self._calls, f"{self._name}.{attr}")


def _free_names(tree: ast.AST) -> set[str]:
  """Names a test program loads but never binds and that are not builtins: the
  submission's functions, to be proxied."""
  loaded, bound = set(), set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Name):
      (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      bound.add(node.name)
    elif isinstance(node, ast.alias):
      bound.add((node.asname or node.name).split(".")[0])
    elif isinstance(node, ast.arg):
      bound.add(node.arg)
    elif isinstance(node, ast.ExceptHandler) and node.name:
      bound.add(node.name)
  return loaded - bound - set(dir(builtins))


def _outcome_of_exc(e: BaseException, t0: float) -> TestOutcome:
  dt = time.monotonic() - t0
  if isinstance(e, _Budget):
    return TestOutcome("skipped", dt, "time budget exhausted")
  if isinstance(e, sandbox.CallTimeout):
    return TestOutcome("timeout", dt, str(e)[:200])
  if isinstance(e, AssertionError):
    return TestOutcome("fail", dt, "assertion failed")
  msg = str(e)[:200]
  if isinstance(e, sandbox.CallError) and msg.startswith("output_limit"):
    return TestOutcome("output_limit", dt, msg)
  return TestOutcome("error", dt, f"{type(e).__name__}: {msg}")


def _run_stdio(code: str, t: Test, limits: sandbox.Limits, deadline: float, mode
               ) -> tuple[TestOutcome, dict]:
  t0 = time.monotonic()
  left = deadline - t0
  if left <= 0.05:
    return TestOutcome("skipped", 0.0, "time budget exhausted"), {}
  cap = max(limits.max_output_bytes, 2 * len(t.output.encode()) + 1024)
  lim = dataclasses.replace(limits, wall_s=min(limits.wall_s, left), max_output_bytes=cap)
  res = sandbox.run_program(code, t.input.encode(), lim, mode=mode)
  dt = time.monotonic() - t0
  if res.status == "ok":
    ok = stdout_matches(res.stdout.decode("utf-8", "replace"), t.output)
    return TestOutcome("pass" if ok else "fail", dt, "" if ok else "wrong output"), \
        res.isolation
  detail = res.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
  return TestOutcome(res.status, dt, f"exit {res.returncode}: {detail[0][:200]}"), \
      res.isolation


def run_tests(code: str, example: dict, *, timeout_s: float = TIMEOUT_S,
              total_timeout_s: float = TOTAL_TIMEOUT_S, stop_on_failure: bool = False,
              stop_on_timeout: bool = True, limits: Optional[sandbox.Limits] = None,
              mode: Optional[str] = None) -> CodeResult:
  """Run `code` against the tests of `example` in the sandbox; per-test outcomes.

  Args:
    code: the submission (Python source).
    example: an example with tests in the schema of the module docstring.
    timeout_s: wall limit of each test (each stdin/stdout run, each function call).
    total_timeout_s: budget of the whole sample (tests beyond it are "skipped").
    stop_on_failure: skip the remaining tests after the first non-pass (all-or-nothing
      scoring needs no more).
    stop_on_timeout: skip the remaining tests after the first timeout (a program that loops
      on one test usually loops on all: this bounds the cost of a looping sample by one
      per-test limit instead of the whole budget).
    limits: other sandbox limits (memory, output, ...); wall_s is replaced by timeout_s.
    mode: force a sandbox mode (see sandbox.isolation).
  Returns:
    CodeResult with one outcome per test.
  Raises:
    ValueError: the example has no tests or malformed ones (a data error).
    sandbox.SandboxError: no sandbox mode works on this machine.
  """
  tests, entry, setup = parse_tests(example)
  limits = dataclasses.replace(limits or sandbox.Limits(), wall_s=timeout_s)
  deadline = time.monotonic() + total_timeout_s
  outcomes: list[TestOutcome] = []
  info: dict = {}
  calls = _Calls(code, limits, deadline, mode)
  error = None
  try:
    for t in tests:
      if outcomes and ((stop_on_failure and outcomes[-1].status != "pass") or
                       (stop_on_timeout and outcomes[-1].status in ("timeout", "skipped"))):
        outcomes.append(TestOutcome("skipped", 0.0, f"stopped after a {outcomes[-1].status}"))
        continue
      if t.kind == "stdio":
        out, info = _run_stdio(code, t, limits, deadline, mode)
        outcomes.append(out)
        continue
      t0 = time.monotonic()
      try:
        if t.kind == "call":
          got = calls.call(entry, t.input, t.kwargs)
          ok = any(values_equal(got, e) for e in (t.output,) + t.alts)
          outcomes.append(TestOutcome("pass" if ok else "fail", time.monotonic() - t0,
                                      "" if ok else "wrong return value"))
        else:
          _run_parent_side(t, entry, setup, calls)
          outcomes.append(TestOutcome("pass", time.monotonic() - t0))
      except (sandbox.SandboxError, sandbox.SandboxUnavailable):
        raise
      except Exception as e:  # pylint: disable=broad-except
        out = _outcome_of_exc(e, t0)
        if out.detail.startswith("CallError: load error") and error is None:
          error = out.detail[len("CallError: "):]
        outcomes.append(out)
    info = info or calls.isolation or sandbox.isolation(mode)
  finally:
    calls.close()
  return CodeResult(outcomes, info, error)


def _run_parent_side(t: Test, entry: Optional[str], setup: str, calls: _Calls) -> None:
  """An assert statement or a check() program, run here with proxies for the submission."""
  tree = ast.parse(setup + "\n" + t.input)
  ns: dict[str, Any] = {"__name__": "__test__", "__builtins__": builtins}
  for name in _free_names(tree) | ({entry} if entry else set()):
    if name in sys.stdlib_module_names and name != entry:
      # e.g. `math.isclose(f(x), y)` without an import: the parent's math, not one the
      # submission could define.
      ns[name] = importlib.import_module(name)
    else:
      ns[name] = _Proxy(calls, name)
  exec(compile(tree, "<test>", "exec"), ns)  # trusted test data; never in the child
  if t.kind == "check":
    check = ns.get("check")
    if not callable(check) or not entry:
      raise ValueError("test_code must define check(candidate) and the example must name "
                       "its entry_point")
    check(_Proxy(calls, entry))


# --------------------------------------------------------------------------- reward

def code_reward(completion: str, example: dict[str, Any], *, binary: bool = True,
                timeout_s: float = TIMEOUT_S, total_timeout_s: float = TOTAL_TIMEOUT_S,
                stop_on_timeout: bool = True, memory_mb: int = 512,
                sandbox_mode: Optional[str] = None) -> float:
  """Code accuracy reward (registered as "code"): the final code block against the tests.

  Args:
    completion: generated text; the code is `extract_code(completion)`.
    example: example with tests (schema in r1jax/rewards/code_tests.py).
    binary: 1.0 only when every test passes (stopping at the first failure), else 0.0;
      False opts in to partial credit, the fraction of tests passed.
    timeout_s: per-test wall limit; total_timeout_s: per-sample budget (keep it about 1 s
      under the reward pool's timeout_s).
    stop_on_timeout: the remaining tests are skipped after a timeout (see run_tests).
    memory_mb: memory limit of the sandbox (cgroup, and RLIMIT_AS per process).
    sandbox_mode: isolation mode (r1jax.rewards.isolation.MODES); default
      $R1JAX_SANDBOX_MODE, else "nsjail+cgroup".
  Returns:
    float in [0, 1]; 0.0 when no code block is found, and for examples that are not code
    problems (so that it mixes with other accuracy rewards over mixed data).
  Raises:
    ValueError: a "code" example without (valid) tests, or an unknown sandbox mode.
    sandbox.SandboxUnavailable: the sandbox mode does not work on this machine.
  """
  if not is_code_example(example):
    return 0.0  # not a code problem (mixed data with e.g. "accuracy:1,code:1")
  code = extract_code(completion)
  if code is None:
    parse_tests(example)  # a data error should surface even for answers without code
    return 0.0
  res = run_tests(code, example, timeout_s=timeout_s, total_timeout_s=total_timeout_s,
                  stop_on_failure=binary, stop_on_timeout=stop_on_timeout,
                  limits=sandbox.Limits(memory_mb=memory_mb), mode=sandbox_mode)
  return res.score(binary)


def startup_check(kwargs: dict) -> dict[str, float]:
  """Resolve and probe the sandbox mode of the code reward with these reward kwargs, in the
  calling process (the trainer, when the reward pool starts), and log it.

  Returns:
    {"sandbox_level": 2 / 1 / 0} (r1jax.rewards.isolation.LEVELS), for metrics.
  Raises:
    ValueError: unknown mode name. sandbox.SandboxUnavailable: the mode does not work here.
  """
  return {"sandbox_level": float(sandbox.isolation(kwargs.get("sandbox_mode"))["level"])}


def warmup() -> None:
  """Probe the sandbox mode once per reward worker (so that the first sample does not pay
  for it inside its timeout). Errors surface on the first sample (scored 0)."""
  try:
    sandbox.isolation()
  except (ValueError, sandbox.SandboxUnavailable):
    pass


if __name__ == "__main__":  # the CodeI/O builder moved to r1jax.data.codeio
  from r1jax.data import codeio
  codeio.main()
