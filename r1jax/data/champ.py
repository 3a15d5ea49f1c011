"""CHAMP competition math problems (PyPI `champ-dataset`) as evaluation examples.

CHAMP (Mao et al. 2024, "CHAMP: A Competition-level Dataset for Fine-Grained Analyses of LLMs'
Mathematical Reasoning Capabilities") has 270 problems in 5 categories (Combinatorics 40,
Inequality 50, Number-Theory 80, Polynomial 50, Sequence 50). The package ships them, with
solutions, hints and recorded model conversations, in one JSON file,
`champ_dataset/dataset_files/v0.json` (~73 MB). It is read directly here, without importing
the package (whose only dependency is `natsort`) and without network access.

  from r1jax.data.champ import champ_examples
  examples = champ_examples()                          # verifiable problems only
  every = champ_examples(only_verifiable=False)        # all 270

Example dict: {"id": "champ/P_Combinatorics_1", "question", "answer", "task": "math",
"metadata": {"source": "champ", "category", "verifiable", "answer_type", "raw_answer",
"unverifiable_reason", "solution", "problem_id"}}.

CHAMP answers are often sentences; `normalize_champ_answer` turns them into short answers
that `math_verify` can check, by these rules (applied in order):
  - "@@" math markers, `$`, "The answer is" and trailing periods are removed;
  - problems that ask to factorise are NOT verifiable: an equivalence check also accepts
    the unfactored polynomial;
  - "Yes"/"No" stay plain words and ARE verifiable (answer_type "yes_no"): math_verify
    compares them as products of letters, so "yes", "\\text{Yes}", "NO" match, "Yes." and
    "Yes, because ..." do not. Guessing scores 50% on these: filter on answer_type if needed.
    A negative statement ("The limit does not exist", "It is not possible", "There are no
    prime numbers ...") answering a yes/no question ("Is/Does/Can ... ?") becomes "No";
  - "X, or equivalently Y" / "X, or an equivalent form such as Y" -> Y (the closed form:
    "C(10, 5), or equivalently 252" -> 252); "X, or approximately Y" -> X;
  - lead-ins "The limit exists and is equal to X", "The only possible value for the limit
    is X", "The function is periodic, with a period of X" -> X; "X is the only possible
    value" -> X; remarks "(i.e., ...)", "(none ...)", "(no ...)" are dropped;
  - for "how many"/"how often" questions: "At most 0 integer-valued zeros" -> 0, "Exactly
    one sequence" -> 1, "2 inequalities", "98 values", "n times" -> the count;
  - several solutions ("376 and 625", "1, 4 and 9", "f(x)=0 or f(x)=1") -> a comma list
    ("376, 625"), which math_verify reads as a set (order-free);
  - assignments "x=6, y=5" -> the tuple "(6, 5)" (variables in the order written),
    "x=16" -> "16", "x=y=0" -> "(0, 0)"; "±" is expanded ("x=±1" -> "1, -1");
  - ASCII math -> LaTeX: C(a, b) -> \\binom{a}{b}, sqrt(x) -> \\sqrt{x}, floor(x) ->
    \\lfloor x \\rfloor, ^(e) -> ^{e}, * -> \\cdot;
  - NOT verifiable: free text left after these rules (a relation "x(n)<y(n-1) for all n≥3",
    "No integer solutions", "Infinitely many solutions", "Monotonically increasing"),
    answers with "..." and answers in sum notation (sum_(k=1)^n 1/k: math_verify does not
    identify sums with another index name, H_n or 1+1/2+...+1/n).
Of the 270 problems, 246 come out verifiable: 138 integers, 47 expressions, 15 sets of
solutions, 5 tuples, 1 interval and 40 yes/no; 24 are not (answer_type "free_text").
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import NamedTuple, Optional

__all__ = ["champ_examples", "champ_data_path", "normalize_champ_answer", "NormalizedAnswer"]

_PACKAGE = "champ_dataset"
_DATA_FILE = ("dataset_files", "v0.json")
_INSTALL_HINT = "pip install champ-dataset"
SOURCE = "champ"

# -- answer normalisation ------------------------------------------------------------------------

_FACTORIZE_Q = re.compile(r"^\s*factori[sz]e\b", re.I)
# A sentence of the question that starts with an auxiliary verb: a yes/no question.
_YES_NO_Q = re.compile(r"(?:^|[.?!]\s+)(?:is|are|does|do|can|could|must)\b", re.I)
_HOW_MANY_Q = re.compile(r"\bhow (?:many|often)\b", re.I)
_NEGATIVE = re.compile(
  r"(?:\b(?:does not exist|is not possible|is not periodic)$|^there (?:is|are) no\b)", re.I)
_EQUIVALENT = re.compile(r",\s*or (?:equivalently|an equivalent form such as)\s+", re.I)
_APPROX = re.compile(r",\s*or approximately\b.*$", re.I)
_LEAD_IN = re.compile(r"^(?:the answer is:?|the limit exists and is equal to|the only possible "
                      r"value for the limit is|the function is periodic, with a period of)\s+",
                      re.I)
_REMARK = re.compile(r"\s+\((?:i\.e\.|none\b|no\b).*$", re.I)
_ONLY_VALUE = re.compile(r"^(.+?)\s+is the only possible value$", re.I)
_BOUND = re.compile(r"^(?:at most|at least|exactly)\s+(\S+)(?:\s+[^\s].*)?$", re.I)
_COUNT = re.compile(r"^(\S+)\s+[A-Za-z][A-Za-z\s-]*$")
_NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3"}
_CONNECTOR = re.compile(r"\s+(?:and|or)\s+")
_INTEGER = re.compile(r"^-?\d+$")
_ASSIGN_VAR = re.compile(r"^\s*([A-Za-z](?:_\w+)?(?:\([A-Za-z]\))?)\s*$")
_FUNC_CALL = re.compile(r"(sqrt|floor|C)\(")
_EXP_TOKEN = re.compile(r"\d+|[A-Za-z]")
_LATEX_CMD = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{2,}")


class NormalizedAnswer(NamedTuple):
  """Result of `normalize_champ_answer`.

  answer: the short answer for math_verify, or None when not verifiable.
  answer_type: "integer", "expression", "interval", "tuple", "set", "yes_no", or "free_text".
  reason: why the answer is not verifiable (None when it is).
  """
  answer: Optional[str]
  answer_type: str
  reason: Optional[str] = None


class _Unverifiable(Exception):
  """Internal: the answer cannot be turned into a checkable math answer."""


def _closing(text: str, open_idx: int) -> int:
  """Index of the bracket closing the one at text[open_idx] ((, [ or {).

  Raises:
    _Unverifiable: unbalanced brackets.
  """
  depth = 0
  for j in range(open_idx, len(text)):
    if text[j] in "([{":
      depth += 1
    elif text[j] in ")]}":
      depth -= 1
      if depth == 0:
        return j
  raise _Unverifiable(f"unbalanced brackets in {text!r}")


def _split_top(text: str, sep: str = ",") -> list[str]:
  """`text` split on `sep` outside brackets, items stripped."""
  items, depth, start = [], 0, 0
  for j, ch in enumerate(text):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == sep and depth == 0:
      items.append(text[start:j].strip())
      start = j + 1
  items.append(text[start:].strip())
  return items


def _call_latex(name: str, arg: str) -> str:
  """LaTeX of the ASCII call name(arg) (name in sqrt, floor, C)."""
  if name == "sqrt":
    return f"\\sqrt{{{_to_latex(arg)}}}"
  if name == "floor":
    return f"\\lfloor {_to_latex(arg)} \\rfloor"
  parts = _split_top(arg)
  if len(parts) != 2:
    raise _Unverifiable(f"C() needs 2 arguments: {arg!r}")
  return f"\\binom{{{_to_latex(parts[0])}}}{{{_to_latex(parts[1])}}}"


def _match_call(expr: str, i: int) -> Optional[tuple[str, int]]:
  """(LaTeX, end index) of a sqrt/floor/C call starting at expr[i], else None."""
  m = _FUNC_CALL.match(expr, i)
  if not m or (i > 0 and expr[i - 1].isalpha()):
    return None
  close = _closing(expr, m.end() - 1)
  return _call_latex(m.group(1), expr[m.end():close]), close + 1


def _to_latex(expr: str) -> str:
  """CHAMP's ASCII math ("2^floor(n/2)*floor(n/2)!", "C(n+1, 2m+1)") as LaTeX.

  Raises:
    _Unverifiable: unbalanced brackets or a malformed C(a, b).
  """
  out, i = [], 0
  while i < len(expr):
    call = _match_call(expr, i)
    if call:
      out.append(call[0])
      i = call[1]
      continue
    ch = expr[i]
    if ch == "^" and i + 1 < len(expr):
      # Exponents always get braces: ^(n-1) -> ^{n-1}, ^floor(x) -> ^{\lfloor x \rfloor}.
      k = i + 1
      if expr[k] == "(":
        close = _closing(expr, k)
        out.append(f"^{{{_to_latex(expr[k + 1:close])}}}")
        i = close + 1
        continue
      call = _match_call(expr, k)
      if call:
        out.append(f"^{{{call[0]}}}")
        i = call[1]
        continue
      m = _EXP_TOKEN.match(expr, k)
      if m:
        out.append(f"^{{{m.group()}}}")
        i = m.end()
        continue
    out.append(" \\cdot " if ch == "*" else ch)
    i += 1
  return "".join(out)


def _expand_pm(value: str) -> list[str]:
  """`value` with every "±" expanded: "±1/2" -> ["1/2", "-1/2"], "a(1±sqrt(2))" -> 2 values."""
  if "±" not in value:
    return [value]
  plus, minus = value.replace("±", "+", 1), value.replace("±", "-", 1)
  plus = plus[1:] if plus.startswith("+") else plus
  return _expand_pm(plus) + _expand_pm(minus)


def _solution(part: str) -> list[str]:
  """Solutions (ASCII) stated by one part of an answer: values, or "(a, b)" tuples.

  "x=6, y=5" -> ["(6, 5)"]; "(x=8, y=2), (x=2, y=8)" -> two tuples; "x=±1, ±2" ->
  ["1", "-1", "2", "-2"]; "x=y=0" -> ["(0, 0)"]; "f(x)=0" -> ["0"]; "1, 4" -> ["1", "4"].

  Raises:
    _Unverifiable: assignments in a form not understood.
  """
  items = _split_top(part)
  # Parenthesised assignment groups "(x=8, y=2), (x=2, y=8)": one tuple each.
  if all(it.startswith("(") and "=" in it and _closing(it, 0) == len(it) - 1 for it in items):
    return [s for it in items for s in _solution(it[1:-1])]
  if not any("=" in it for it in items):
    return [v for it in items for v in _expand_pm(it)]
  # Assignments: "x=6, y=5", "x=y=0", or one variable with several values "x=±1, ±2".
  values, names = [], []
  for it in items:
    sides = [s.strip() for s in it.split("=")]
    if len(sides) == 1:
      if len(names) != 1:
        raise _Unverifiable(f"cannot read assignments in {part!r}")
      values.append(sides[0])
      continue
    lhs, rhs = sides[:-1], sides[-1]
    if not all(_ASSIGN_VAR.match(v) for v in lhs):
      raise _Unverifiable(f"cannot read assignments in {part!r}")
    names.extend(lhs)
    values.extend([rhs] * len(lhs))
  if len(set(names)) == 1:
    return [v for val in values for v in _expand_pm(val)]
  if len(set(names)) != len(names) or any("±" in v for v in values):
    raise _Unverifiable(f"cannot read assignments in {part!r}")
  return ["(" + ", ".join(values) + ")"]


def _clean(raw: str) -> str:
  """Answer text without "@@" markers, `$`, unicode minus and trailing periods."""
  text = raw.replace("@@", "").replace("$", "").replace("\u2212", "-").strip()
  return text.rstrip(".").strip()


def _normalize(text: str, question: str) -> NormalizedAnswer:
  """`normalize_champ_answer` on a cleaned answer.

  Raises:
    _Unverifiable: the answer is not checkable by rules.
  """
  if _FACTORIZE_Q.search(question):
    raise _Unverifiable("factorisation: an equivalence check also accepts the unfactored form")
  text = _LEAD_IN.sub("", text)
  if text.lower() in ("yes", "no"):
    return NormalizedAnswer(text.capitalize(), "yes_no")
  if _NEGATIVE.search(text) and _YES_NO_Q.search(question):
    return NormalizedAnswer("No", "yes_no")
  text = _EQUIVALENT.split(text)[-1]
  text = _APPROX.sub("", text)
  text = _REMARK.sub("", text).strip()
  m = _ONLY_VALUE.match(text)
  if m:
    text = m.group(1)
  if _HOW_MANY_Q.search(question):
    m = _BOUND.match(text) or _COUNT.match(text)
    if m:
      count = _NUMBER_WORDS.get(m.group(1).lower(), m.group(1))
      if not _WORD.search(count):
        text = count
  if "..." in text or "sum_" in text:
    raise _Unverifiable("ellipsis or sum notation: equivalent forms are not recognised")
  solutions = [s for part in _CONNECTOR.split(text) for s in _solution(part)]
  latex = [_to_latex(s) for s in solutions]
  for s in latex:
    if _WORD.search(_LATEX_CMD.sub(" ", s)):
      raise _Unverifiable("free text")
  if len(latex) > 1:
    kind = "set"
  elif _INTEGER.match(latex[0]):
    kind = "integer"
  elif latex[0].startswith("[") or latex[0].endswith("]"):
    kind = "interval"
  elif solutions[0].startswith("(") and _closing(solutions[0], 0) == len(solutions[0]) - 1 \
      and len(_split_top(solutions[0][1:-1])) > 1:
    kind = "tuple"
  else:
    kind = "expression"
  return NormalizedAnswer(", ".join(latex), kind)


def normalize_champ_answer(raw_answer: str, question: str = "") -> NormalizedAnswer:
  """A CHAMP answer as a short math answer for math_verify (rules in the module docstring).

  Args:
    raw_answer: the package's answer text (with or without "@@" math markers).
    question: the problem text; some rules depend on it (yes/no and "how many" questions,
      factorisation problems).
  Returns:
    NormalizedAnswer(answer, answer_type, reason): answer is None and answer_type is
    "free_text" when the answer cannot be checked by rules (reason says why).
  Raises:
    TypeError: raw_answer or question is not a string.
  """
  if not isinstance(raw_answer, str) or not isinstance(question, str):
    raise TypeError("raw_answer and question must be strings")
  text = _clean(raw_answer)
  if not text:
    return NormalizedAnswer(None, "free_text", "empty answer")
  try:
    return _normalize(text, question.replace("@@", ""))
  except _Unverifiable as e:
    return NormalizedAnswer(None, "free_text", str(e))


# -- loading -------------------------------------------------------------------------------------

def champ_data_path() -> Path:
  """Path of the problems JSON shipped by `champ-dataset`, found without importing it.

  Returns:
    the path of `champ_dataset/dataset_files/v0.json`.
  Raises:
    ImportError: the package is not installed.
    FileNotFoundError: the package is installed but its data file is missing.
  """
  spec = importlib.util.find_spec(_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(f"CHAMP needs the package champ-dataset: {_INSTALL_HINT}")
  for folder in spec.submodule_search_locations:
    path = Path(folder).joinpath(*_DATA_FILE)
    if path.is_file():
      return path
  raise FileNotFoundError(f"champ-dataset is installed but {'/'.join(_DATA_FILE)} is missing in "
                          f"{list(spec.submodule_search_locations)}; reinstall it: "
                          f"pip install --force-reinstall champ-dataset")


def _solution_text(problem: dict) -> str:
  """The reference solution as one string (steps on separate lines, "@@" removed)."""
  steps = (problem.get("solution") or {}).get("steps") or []
  return "\n".join(str(s.get("_raw_text", "")).replace("@@", "") for s in steps)


@functools.lru_cache(maxsize=4)
def _load(path: str) -> tuple[dict, ...]:
  """All examples of the JSON at `path` (cached: the file is ~73 MB).

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not the CHAMP JSON layout.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"CHAMP data file not found: {path} ({_INSTALL_HINT})")
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  problems = data.get("problems") if isinstance(data, dict) else None
  if not isinstance(problems, dict) or not problems:
    raise ValueError(f"{path}: expected a JSON object with a non-empty 'problems' mapping")
  examples = []
  for key, p in problems.items():
    try:
      pid, question = p.get("identifier") or key, p["_raw_text"].replace("@@", "")
      raw_answer, category = p["_raw_answer"].replace("@@", ""), p["category"]
    except (KeyError, AttributeError, TypeError) as e:
      raise ValueError(f"{path}: problem {key!r} lacks text/answer/category ({e!r})") from None
    norm = normalize_champ_answer(p["_raw_answer"], question)
    examples.append({
      "id": f"{SOURCE}/{pid}",
      "question": question,
      "answer": norm.answer if norm.answer is not None else raw_answer,
      "task": "math",
      "metadata": {
        "source": SOURCE,
        "category": category,
        "verifiable": norm.answer is not None,
        "answer_type": norm.answer_type,
        "raw_answer": raw_answer,
        "unverifiable_reason": norm.reason,
        "solution": _solution_text(p),
        "problem_id": pid,
      },
    })
  return tuple(examples)


def champ_examples(*, only_verifiable: bool = True,
                   path: Optional[str | os.PathLike] = None) -> list[dict]:
  """CHAMP problems as example dicts, in the package's order.

  Args:
    only_verifiable: return only the problems whose answer was normalised into something
      math_verify can check (metadata["verifiable"]); False returns all 270, the others with
      the package's answer text as "answer".
    path: the CHAMP JSON file; None finds the one installed with `champ-dataset`.
  Returns:
    list of {"id": "champ/<problem id>", "question", "answer", "task": "math", "metadata":
    {"source": "champ", "category", "verifiable", "answer_type", "raw_answer",
    "unverifiable_reason", "solution", "problem_id"}} (fresh copies, safe to modify).
  Raises:
    ImportError: champ-dataset is not installed (and no path given).
    FileNotFoundError: the data file is missing.
    ValueError: the file does not have the CHAMP layout.
  """
  file = Path(path) if path is not None else champ_data_path()
  examples = _load(str(file.resolve()))
  return [copy.deepcopy(e) for e in examples if e["metadata"]["verifiable"] or not only_verifiable]
