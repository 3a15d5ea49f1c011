"""Code-execution accuracy reward: run the model's final Python code block against tests.

R1_SPEC section 3: for programming prompts the accuracy reward compiles and runs the code
against test cases. Every execution goes through r1jax.rewards.sandbox (namespaces, a
dedicated uid, rlimits, output cap, minimal root; see its docstring for the threat model).

Example schema (top-level fields of the example dict, or of its "metadata", which is where
`r1jax.data.sources.jsonl_examples` puts unknown JSONL fields; see docs/code_reward.md):

  stdin/stdout tests (APPS / LiveCodeBench "stdin"):
    {"tests": [{"input": "1 2\\n", "output": "3\\n"}, ...]}
  function-call tests (APPS call-based, LiveCodeBench "functional"):
    {"entry_point": "add", "tests": [{"input": [1, 2], "output": 3}, ...]}
    "input" is the list of positional arguments (or {"args": [...], "kwargs": {...}});
    "entry_point" may be "Class.method" (the class is instantiated first, LeetCode-style).
  assert statements (MBPP "test_list"), optional set-up code ("test_setup"):
    {"asserts": ["assert add(1, 2) == 3", ...]}
  a HumanEval-style test program defining check(candidate):
    {"entry_point": "add", "test_code": "def check(candidate):\\n    assert candidate(1, 2) == 3"}
  APPS raw field (JSON string or object), converted on the fly:
    {"input_output": "{\\"inputs\\": [...], \\"outputs\\": [...], \\"fn_name\\": \\"f\\"}"}

Hiding the answers. Expected outputs and assertions never enter the sandboxed process:
stdin/stdout outputs are compared in this (parent) process; for function tests the child
loads the submission and answers calls (name, literal arguments) with the `repr` of the
result, which the parent parses with ast.literal_eval and compares. Assert statements and
test_code run in the parent with each free name (the entry point, helpers) bound to a proxy
that forwards the call to the child, so the submission sees the arguments of the current
call and nothing else: it cannot read, patch or skip the asserts, a fake "PASS" on stdout
counts for nothing, and os._exit / sys.exit inside a call is an error for that call (a
result is only what the child answers to a request). Test data is trusted: assert/test code
runs in the reward worker, which the pool's per-sample timeout bounds.

Time. Each stdin/stdout test gets its own process with limit `timeout_s`; function tests
share one process (re-started after a timeout or crash). The whole sample has a budget
`total_timeout_s`: a test never gets more than what is left, and tests left when it runs
out are "skipped" (as are those after a timeout, by default: `stop_on_timeout`). Keep
`total_timeout_s` + about 1 s below the reward pool's per-sample
`timeout_s` (RewardComputer), so that a slow sample ends as a clean 0 here instead of a
worker kill there; the defaults (2 s per test, 4 s per sample) fit the pool's default 5 s.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib
import json
import math
import re
import sys
import time
from typing import Any, Optional

from r1jax.rewards import sandbox
from r1jax.rewards.parsing import _last_answer_block

__all__ = ["TestOutcome", "CodeResult", "extract_code", "parse_tests", "run_tests",
           "code_reward", "apps_tests", "livecodebench_tests", "codeio_examples",
           "write_jsonl", "warmup"]

# Task name of code examples (JSONL "task" field).
CODE_TASK = "code"
# Defaults: per-test wall limit and per-sample budget (see the module docstring).
TIMEOUT_S = 2.0
TOTAL_TIMEOUT_S = 4.0
# Relative/absolute tolerance for floats (stdout tokens and returned values).
FLOAT_TOL = 1e-6

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

  def score(self, binary: bool = False) -> float:
    """Fraction of tests passed, or (binary) 1.0 only if all passed."""
    return float(self.all_passed) if binary else self.fraction

  def statuses(self) -> list[str]:
    return [o.status for o in self.outcomes]

  def to_dict(self) -> dict:
    return {"passed": self.passed, "total": self.total, "error": self.error,
            "outcomes": [dataclasses.asdict(o) for o in self.outcomes],
            "isolation": self.isolation}


# --------------------------------------------------------------------------- extraction

def extract_code(completion: str) -> Optional[str]:
  """The final Python code block of a completion, or None.

  Looks inside the last `<answer>...</answer>` block when there is one and it holds a
  fence, else in the whole completion. Returns the content of the last closed ```python /
  ```py / ```python3 fence; without such a fence, the last closed fence with no language
  tag. An unclosed fence (cut off by the token budget) is ignored.

  Args:
    completion: generated text.
  Returns:
    The code (str, may be empty-ish) or None.
  """
  block = _last_answer_block(completion)
  for text in ([block] if block is not None else []) + [completion]:
    tagged, bare = None, None
    for m in _FENCE.finditer(text):
      lang = m.group(1).lower()
      if lang in ("python", "py", "python3"):
        tagged = m.group(2)
      elif not lang:
        bare = m.group(2)
    code = tagged if tagged is not None else bare
    if code is not None and code.strip():
      return code
  return None


# --------------------------------------------------------------------------- test schema

@dataclasses.dataclass
class _Test:
  kind: str  # "stdio" | "call" | "assert" | "check"
  input: Any = None
  output: Any = None
  kwargs: Optional[dict] = None
  alts: tuple = ()


def _field(example: dict, name: str) -> Any:
  if name in example and example[name] is not None:
    return example[name]
  meta = example.get("metadata") or {}
  return meta.get(name) if isinstance(meta, dict) else None


def apps_tests(input_output: Any) -> tuple[list[dict], Optional[str]]:
  """APPS `input_output` -> (tests in our schema, entry point or None).

  APPS stores {"inputs": [...], "outputs": [...], "fn_name": optional} as a JSON string.
  With fn_name, inputs[i] is the argument list and outputs[i] the return value (APPS often
  wraps it in a one-element list; both forms are accepted, as APPS's own checker does).

  Args:
    input_output: the JSON string or the parsed dict.
  Returns:
    (tests, entry_point).
  Raises:
    ValueError: malformed field (not JSON, lists of different lengths).
  """
  io = json.loads(input_output) if isinstance(input_output, str) else dict(input_output)
  inputs, outputs = io.get("inputs") or [], io.get("outputs") or []
  if len(inputs) != len(outputs):
    raise ValueError(f"input_output has {len(inputs)} inputs but {len(outputs)} outputs")
  fn = io.get("fn_name")
  tests = []
  for i, o in zip(inputs, outputs):
    if fn:
      t = {"input": i if isinstance(i, list) else [i], "output": o}
      if isinstance(o, list) and len(o) == 1:
        t["alt_outputs"] = [o[0]]
      tests.append(t)
    else:
      tests.append({"input": i if isinstance(i, str) else "\n".join(map(str, i)),
                    "output": o if isinstance(o, str) else "\n".join(map(str, o))})
  return tests, fn or None


def livecodebench_tests(test_cases: Any, func_name: Optional[str] = None
                        ) -> tuple[list[dict], Optional[str]]:
  """LiveCodeBench test cases -> (tests in our schema, entry point or None).

  LiveCodeBench's public/private test cases are lists (or JSON strings of lists) of
  {"input", "output", "testtype": "stdin" | "functional"}; functional inputs are one JSON
  value per line (the arguments) and outputs one JSON value. `func_name` comes from the
  record's metadata; pass "Solution.<name>" for LeetCode-style class solutions.

  Returns:
    (tests, entry_point).
  Raises:
    ValueError: functional tests without func_name, or malformed JSON.
  """
  cases = json.loads(test_cases) if isinstance(test_cases, str) else list(test_cases)
  tests, entry = [], None
  for c in cases:
    if c.get("testtype", "stdin") == "functional":
      if not func_name:
        raise ValueError("functional LiveCodeBench tests need func_name")
      args = [json.loads(line) for line in c["input"].split("\n") if line.strip()]
      tests.append({"input": args, "output": json.loads(c["output"])})
      entry = func_name
    else:
      tests.append({"input": c["input"], "output": c["output"]})
  return tests, entry


def _has_tests(example: dict) -> bool:
  return any(_field(example, k) for k in ("tests", "input_output", "asserts", "test_list",
                                          "test_code"))


def parse_tests(example: dict) -> tuple[list[_Test], Optional[str], str]:
  """The tests of an example in the schema of the module docstring.

  Returns:
    (tests, entry_point, setup code for asserts).
  Raises:
    ValueError: no tests, or malformed ones.
  """
  entry = _field(example, "entry_point") or _field(example, "fn_name")
  tests_raw = _field(example, "tests")
  if tests_raw is None and _field(example, "input_output") is not None:
    tests_raw, fn = apps_tests(_field(example, "input_output"))
    entry = entry or fn
  if isinstance(tests_raw, str):
    tests_raw = json.loads(tests_raw)
  tests: list[_Test] = []
  for t in tests_raw or []:
    if not isinstance(t, dict) or "input" not in t or "output" not in t:
      raise ValueError(f"a test must be an object with input and output, got {t!r:.80}")
    if entry:
      inp, kwargs = t["input"], None
      if isinstance(inp, dict):
        inp, kwargs = inp.get("args", []), inp.get("kwargs")
      tests.append(_Test("call", tuple(inp), t["output"], kwargs,
                         tuple(t.get("alt_outputs") or ())))
    else:
      if not isinstance(t["input"], str) or not isinstance(t["output"], str):
        raise ValueError("stdin/stdout tests need string input and output (or set "
                         "entry_point for function tests)")
      tests.append(_Test("stdio", t["input"], t["output"]))
  for a in _field(example, "asserts") or _field(example, "test_list") or []:
    tests.append(_Test("assert", str(a)))
  if _field(example, "test_code"):
    tests.append(_Test("check", str(_field(example, "test_code"))))
  if not tests:
    raise ValueError("example has no code tests (tests / input_output / asserts / "
                     "test_code)")
  setup = _field(example, "test_setup") or _field(example, "test_setup_code") or ""
  return tests, entry, str(setup)


# --------------------------------------------------------------------------- comparison

def _num(tok: str) -> Optional[float]:
  try:
    return float(tok)
  except ValueError:
    return None


def stdout_matches(got: str, expected: str, tol: float = FLOAT_TOL) -> bool:
  """Whether program output matches the expected output.

  Lines are compared after stripping trailing whitespace and trailing blank lines; failing
  that, whitespace-separated tokens, numbers equal within `tol` (relative or absolute).
  """
  def lines(s):
    out = [line.rstrip() for line in s.replace("\r\n", "\n").split("\n")]
    while out and not out[-1]:
      out.pop()
    return out
  g, e = lines(got), lines(expected)
  if g == e:
    return True
  gt, et = got.split(), expected.split()
  if len(gt) != len(et):
    return False
  for a, b in zip(gt, et):
    if a == b:
      continue
    x, y = _num(a), _num(b)
    if x is None or y is None or not math.isclose(x, y, rel_tol=tol, abs_tol=tol):
      return False
  return True


def values_equal(got: Any, expected: Any, tol: float = FLOAT_TOL) -> bool:
  """Equality of a returned value and the expected one: tuples compare as lists, floats
  within `tol`, recursively through lists and dicts."""
  if isinstance(got, tuple):
    got = list(got)
  if isinstance(expected, tuple):
    expected = list(expected)
  if isinstance(got, float) or isinstance(expected, float):
    if isinstance(got, (int, float)) and isinstance(expected, (int, float)) and not (
        isinstance(got, bool) or isinstance(expected, bool)):
      return math.isclose(got, expected, rel_tol=tol, abs_tol=tol)
    return False
  if isinstance(got, list) and isinstance(expected, list):
    return len(got) == len(expected) and all(values_equal(a, b, tol)
                                             for a, b in zip(got, expected))
  if isinstance(got, dict) and isinstance(expected, dict):
    return got.keys() == expected.keys() and all(values_equal(got[k], expected[k], tol)
                                                 for k in got)
  try:
    return bool(got == expected)
  except Exception:  # pylint: disable=broad-except
    return False


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


def _run_stdio(code: str, t: _Test, limits: sandbox.Limits, deadline: float, mode
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
      except sandbox.SandboxError:
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


def _run_parent_side(t: _Test, entry: Optional[str], setup: str, calls: _Calls) -> None:
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

def code_reward(completion: str, example: dict[str, Any], *, binary: bool = False,
                timeout_s: float = TIMEOUT_S, total_timeout_s: float = TOTAL_TIMEOUT_S,
                stop_on_timeout: bool = True, memory_mb: int = 512) -> float:
  """Code accuracy reward (registered as "code"): the final code block against the tests.

  Args:
    completion: generated text; the code is `extract_code(completion)`.
    example: example with tests (module docstring schema).
    binary: 1.0 only when every test passes (and stop at the first failure), else 0.0;
      default: the fraction of tests passed.
    timeout_s: per-test wall limit; total_timeout_s: per-sample budget (keep it about 1 s
      under the reward pool's timeout_s).
    stop_on_timeout: the remaining tests are skipped after a timeout (see run_tests).
    memory_mb: address-space limit of the child.
  Returns:
    float in [0, 1]; 0.0 when no code block is found, and for examples that are not code
    problems (task other than "code" and no test fields), so that it mixes with other
    accuracy rewards over mixed data.
  Raises:
    ValueError: a "code" example without (valid) tests. sandbox.SandboxError: no sandbox
      works on this machine.
  """
  if example.get("task") != CODE_TASK and not _has_tests(example):
    return 0.0  # not a code problem (mixed data with e.g. "accuracy:1,code:1")
  code = extract_code(completion)
  if code is None:
    parse_tests(example)  # a data error should surface even for answers without code
    return 0.0
  res = run_tests(code, example, timeout_s=timeout_s, total_timeout_s=total_timeout_s,
                  stop_on_failure=binary, stop_on_timeout=stop_on_timeout,
                  limits=sandbox.Limits(memory_mb=memory_mb))
  return res.score(binary)


# --------------------------------------------------------------------------- real data

CODEIO_PROMPT = """{description}

{spec}

Write a Python function `main_solution` with exactly these input parameters (keyword
arguments) that returns the output described above. Use only the Python standard library.
Give the complete code in one ```python code block."""

_CODEIO_DRIVER = """
from random import Random as _R
import json as _j
_out = []
for _k in range({k}):
    _inp = generate_inputs(_R({seed} * 1000003 + _k))
    _out.append([_inp, main_solution(**_inp)])
print(_j.dumps(_out, allow_nan=False))
"""


def _stdlib_only(*sources: str) -> bool:
  mods = set()
  for src in sources:
    for node in ast.walk(ast.parse(src)):
      if isinstance(node, ast.Import):
        mods |= {a.name.split(".")[0] for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        mods.add(node.module.split(".")[0])
  return mods <= set(sys.stdlib_module_names)


def codeio_examples(size: int, seed: int = 0, *, tests_per_problem: int = 5,
                    timeout_s: float = 10.0) -> list[dict]:
  """Program-synthesis problems with tests from reasoning-gym's CodeI/O data (PyPI).

  `reasoning-gym` ships data/codeio.jsonl.gz: 3002 problems, each with a task description,
  an input/output spec, a reference `main_solution` and an input generator. Its own
  `codeio` task asks to predict outputs; here each problem becomes "write main_solution":
  tests are generated by running the reference and the generator in the sandbox (the
  dataset's code is not trusted either), keyword-argument inputs, JSON outputs compared
  with float tolerance, and a problem is kept only if its reference passes its own tests.
  Only problems whose code imports nothing outside the stdlib are used (about 2200), since
  the sandbox runs `python -I -S`.

  Args:
    size: number of problems (drawn without replacement by `seed`).
    seed: selection and input-generation seed.
    tests_per_problem: generated test cases per problem.
    timeout_s: wall limit for generating one problem's tests (problems whose generation
      fails, times out or gives non-JSON / NaN outputs are skipped, and replaced).
  Returns:
    raw examples {id, question, answer "", task "code", metadata {entry_point, tests,
    source_dataset, source_index}}, as `r1jax.data.sources` produces them.
  Raises:
    ImportError: reasoning-gym is not installed. ValueError: fewer usable problems than
      `size`.
  """
  import gzip
  import random
  from reasoning_gym.data import get_data_file_path
  with gzip.open(get_data_file_path("codeio.jsonl.gz"), "rt", encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  order = list(range(len(records)))
  random.Random(seed).shuffle(order)
  out: list[dict] = []
  lim = sandbox.Limits(wall_s=timeout_s, max_output_bytes=1 << 22)
  for idx in order:
    if len(out) == size:
      break
    r = records[idx]
    try:
      if not _stdlib_only(r["code_sample"], r["input_generator"]):
        continue
    except SyntaxError:
      continue
    driver = _CODEIO_DRIVER.format(k=tests_per_problem, seed=seed)
    # reasoning-gym runs the generator with `Random` in scope (its annotations use it).
    prog = f"{r['code_sample']}\n\nfrom random import Random\n{r['input_generator']}\n{driver}"
    res = sandbox.run_program(prog, b"", lim)
    if res.status != "ok":
      continue
    try:
      pairs = json.loads(res.stdout)
    except ValueError:
      continue
    if not pairs or any(not isinstance(i, dict) for i, _ in pairs):
      continue
    tests = [{"input": {"args": [], "kwargs": i}, "output": o} for i, o in pairs]
    # Self-check: the reference must pass its own tests after the JSON round trip (drops
    # non-deterministic references and outputs that JSON changes, e.g. int dict keys).
    check = {"entry_point": "main_solution", "tests": tests}
    if not run_tests(r["code_sample"], check, timeout_s=timeout_s,
                     total_timeout_s=2 * timeout_s).all_passed:
      continue
    prompt = CODEIO_PROMPT.format(description=r["task_description"].strip(),
                                  spec=r["input_output_spec"].strip())
    out.append({"id": f"codeio_code/{seed}/{idx}", "question": prompt, "answer": "",
                "task": CODE_TASK,
                "metadata": {"entry_point": "main_solution", "tests": tests,
                             "source_dataset": "codeio", "source_index": idx}})
  if len(out) < size:
    raise ValueError(f"only {len(out)} usable CodeI/O problems, {size} requested")
  return out


def write_jsonl(examples: list[dict], path: str) -> None:
  """Write raw code examples as JSONL records that `r1jax.data.sources.jsonl_examples`
  reads back into the same examples (prompt, task, id, metadata)."""
  with open(path, "w", encoding="utf-8") as f:
    for ex in examples:
      f.write(json.dumps({"id": ex["id"], "prompt": ex["question"], "task": ex["task"],
                          "metadata": ex["metadata"]}) + "\n")


def warmup() -> None:
  """Probe the sandbox mode once per reward worker (so that the first sample does not pay
  for it inside its timeout)."""
  sandbox.isolation()


def _main(argv=None) -> None:
  """`python -m r1jax.rewards.code codeio OUT.jsonl [--size N] [--seed S] [--tests K]`."""
  import argparse
  ap = argparse.ArgumentParser(description="Write code problems with tests as JSONL.")
  ap.add_argument("source", choices=["codeio"])
  ap.add_argument("out")
  ap.add_argument("--size", type=int, default=200)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--tests", type=int, default=5)
  a = ap.parse_args(argv)
  exs = codeio_examples(a.size, a.seed, tests_per_problem=a.tests)
  write_jsonl(exs, a.out)
  print(f"wrote {len(exs)} problems to {a.out}")


if __name__ == "__main__":
  _main()
