"""Answer extraction for rule-based rewards (R1_SPEC section 3; arXiv:2501.12948 section 2.2.2).

The R1 accuracy reward checks the final answer *where the format says it is*: inside
`<answer> ... </answer>` (the R1-Zero template, R1_SPEC section 4), or in `\\boxed{...}`
(the usual math convention). Extraction is deliberately strict: there is no "last number
in the text" fallback, because such a guess would reward completions that never state an
answer in the agreed place (and invites reward hacking by listing many numbers).
"""

from __future__ import annotations

from typing import Optional

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
_BOXED = "\\boxed"


def _last_answer_block(text: str) -> Optional[str]:
  """Raw content of the last `<answer>...</answer>` block, or None when there is none."""
  close = text.rfind(ANSWER_CLOSE)
  while close != -1:
    # The block that ends last: the nearest opening tag before the last closing tag.
    open_ = text.rfind(ANSWER_OPEN, 0, close)
    if open_ != -1:
      return text[open_ + len(ANSWER_OPEN):close]
    close = text.rfind(ANSWER_CLOSE, 0, close)
  return None


def _braced(text: str, start: int) -> Optional[tuple[str, int]]:
  """Content of the balanced `{...}` group opening at text[start] and the index after it."""
  if start >= len(text) or text[start] != "{":
    return None
  depth = 0
  for j in range(start, len(text)):
    ch = text[j]
    if ch == "{":
      depth += 1
    elif ch == "}":
      depth -= 1
      if depth == 0:
        return text[start + 1:j], j + 1
  return None  # unbalanced (e.g. a truncated generation)


def last_boxed(text: str) -> Optional[str]:
  """Content of the last balanced `\\boxed{...}` in `text` (stripped), or None.

  Unbalanced occurrences (cut off by the token budget) are skipped in favour of the
  previous balanced one. `\\boxed 5` (no braces) is not recognised.
  """
  pos = text.rfind(_BOXED)
  while pos != -1:
    j = pos + len(_BOXED)
    while j < len(text) and text[j] == " ":
      j += 1
    got = _braced(text, j)
    if got is not None:
      return got[0].strip()
    pos = text.rfind(_BOXED, 0, pos)
  return None


def _unwrap_boxed(answer: str) -> str:
  """`\\boxed{X}` -> `X` when the boxed group is the whole answer (models often box inside tags)."""
  if answer.startswith(_BOXED):
    j = len(_BOXED)
    while j < len(answer) and answer[j] == " ":
      j += 1
    got = _braced(answer, j)
    if got is not None and got[1] == len(answer):
      return got[0].strip()
  return answer


def extract_answer(completion: str) -> Optional[str]:
  """The final answer stated in a completion, or None.

  Rules (in order), R1_SPEC section 3:
    1. the content of the LAST `<answer>...</answer>` block, stripped; if that content is
       exactly one `\\boxed{X}`, X is returned; an empty/blank block gives None (the format
       put the answer there and it is missing; we do not look elsewhere);
    2. otherwise the content of the last balanced `\\boxed{...}`, stripped (None if blank);
    3. otherwise None. No "last number" guessing (see module docstring).

  Args:
    completion: generated text after the prompt (str).
  Returns:
    The answer string, or None when no answer is stated in the agreed place.
  """
  block = _last_answer_block(completion)
  if block is not None:
    answer = _unwrap_boxed(block.strip())
    return answer or None
  boxed = last_boxed(completion)
  return boxed or None
