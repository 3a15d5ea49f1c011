"""Test cases of code problems: the schema, converters from APPS / LiveCodeBench, and output
comparison (used by the code reward, r1jax/rewards/code.py; schema in docs/code_reward.md).

Example fields (top level, or in "metadata", where `r1jax.data.sources.jsonl_examples` puts
unknown JSONL fields):

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
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Optional

__all__ = ["Test", "field", "apps_tests", "livecodebench_tests", "has_tests", "parse_tests",
           "stdout_matches", "values_equal", "FLOAT_TOL"]

# Relative/absolute tolerance for expected non-integer numbers (stdout tokens and values).
FLOAT_TOL = 1e-6


@dataclasses.dataclass
class Test:
  """One test: kind "stdio" | "call" | "assert" | "check"; input/output per kind (see the
  module docstring); kwargs of a call; alternative accepted outputs."""
  kind: str  # "stdio" | "call" | "assert" | "check"
  input: Any = None
  output: Any = None
  kwargs: Optional[dict] = None
  alts: tuple = ()


def field(example: dict, name: str) -> Any:
  """example[name], else example["metadata"][name], else None."""
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


def has_tests(example: dict) -> bool:
  """Whether the example carries any test field."""
  return any(field(example, k) for k in ("tests", "input_output", "asserts", "test_list",
                                          "test_code"))


def parse_tests(example: dict) -> tuple[list[Test], Optional[str], str]:
  """The tests of an example in the schema of the module docstring.

  Returns:
    (tests, entry_point, setup code for asserts).
  Raises:
    ValueError: no tests, or malformed ones.
  """
  entry = field(example, "entry_point") or field(example, "fn_name")
  tests_raw = field(example, "tests")
  if tests_raw is None and field(example, "input_output") is not None:
    tests_raw, fn = apps_tests(field(example, "input_output"))
    entry = entry or fn
  if isinstance(tests_raw, str):
    tests_raw = json.loads(tests_raw)
  tests: list[Test] = []
  for t in tests_raw or []:
    if not isinstance(t, dict) or "input" not in t or "output" not in t:
      raise ValueError(f"a test must be an object with input and output, got {t!r:.80}")
    if entry:
      inp, kwargs = t["input"], None
      if isinstance(inp, dict):
        inp, kwargs = inp.get("args", []), inp.get("kwargs")
      tests.append(Test("call", tuple(inp), t["output"], kwargs,
                         tuple(t.get("alt_outputs") or ())))
    else:
      if not isinstance(t["input"], str) or not isinstance(t["output"], str):
        raise ValueError("stdin/stdout tests need string input and output (or set "
                         "entry_point for function tests)")
      tests.append(Test("stdio", t["input"], t["output"]))
  for a in field(example, "asserts") or field(example, "test_list") or []:
    tests.append(Test("assert", str(a)))
  if field(example, "test_code"):
    tests.append(Test("check", str(field(example, "test_code"))))
  if not tests:
    raise ValueError("example has no code tests (tests / input_output / asserts / "
                     "test_code)")
  setup = field(example, "test_setup") or field(example, "test_setup_code") or ""
  return tests, entry, str(setup)


# --------------------------------------------------------------------------- comparison

_INT = re.compile(r"[+-]?[0-9]+")


def _num(tok: str) -> Optional[float]:
  try:
    return float(tok)
  except ValueError:
    return None


def _int_tokens_equal(got: str, expected: str) -> bool:
  if not _INT.fullmatch(got):
    return False
  try:
    return int(got) == int(expected)
  except ValueError:  # beyond Python's int-string limit: equal only as identical text
    return False


def stdout_matches(got: str, expected: str, tol: float = FLOAT_TOL) -> bool:
  """Whether program output matches the expected output.

  Lines are compared after stripping trailing whitespace and trailing blank lines; failing
  that, whitespace-separated tokens: an expected integer token needs the same integer (no
  tolerance: printing `answer + 999` for a 13-digit answer is wrong), an expected
  non-integer number a number within `tol` (relative or absolute), anything else the same
  text.
  """
  def lines(s):
    out = [line.rstrip() for line in s.replace("\r\n", "\n").split("\n")]
    while out and not out[-1]:
      out.pop()
    return out
  if lines(got) == lines(expected):
    return True
  gt, et = got.split(), expected.split()
  if len(gt) != len(et):
    return False
  for a, b in zip(gt, et):
    if a == b:
      continue
    if _INT.fullmatch(b):
      if not _int_tokens_equal(a, b):
        return False
      continue
    x, y = _num(a), _num(b)
    if x is None or y is None or not math.isclose(x, y, rel_tol=tol, abs_tol=tol):
      return False
  return True


def values_equal(got: Any, expected: Any, tol: float = FLOAT_TOL) -> bool:
  """Equality of a returned value and the expected one, recursively through lists, tuples
  (equal to lists) and dicts: an expected float accepts a number within `tol`; an expected
  int only an equal number (no tolerance); bools only bools; anything else `==`."""
  if isinstance(got, tuple):
    got = list(got)
  if isinstance(expected, tuple):
    expected = list(expected)
  if isinstance(got, bool) or isinstance(expected, bool):
    return type(got) is bool and type(expected) is bool and got == expected
  if isinstance(expected, float):
    return (type(got) in (int, float) and
            math.isclose(got, expected, rel_tol=tol, abs_tol=tol))
  if isinstance(expected, int):
    return type(got) in (int, float) and got == expected
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
