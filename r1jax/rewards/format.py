"""Graded format reward (DeepSeek-R1, Guo et al. 2025, Sec. 2.2.2; docs/method.md, "Rewards").

R1-Zero asks the model to put its reasoning in `<think> ... </think>` and its answer in
`<answer> ... </answer>` (docs/method.md, "Templates"). The graded form used here:

    r_fmt_eff(o) = 0          unless the basic format holds,
                 = R_full     if o is fully conforming,
                 = R_partial  otherwise (basic format holds, but o is not fully conforming).

Definitions (the four tags are `<think>`, `</think>`, `<answer>`, `</answer>`, exact
lower-case spelling; "blank" means empty or whitespace only; "the end" means only
whitespace and end-of-text markers follow, see `parsing.strip_end`):

* basic format: o contains exactly one `<answer>` and one `</answer>` tag, the answer block
  `<answer>C</answer>` runs to the end, and a think block `<think>A</think>` ends at or
  before the answer block starts, where A and C are not blank and contain none of the four
  tags. Anything may precede or separate the two blocks. A second answer block, or text
  after `</answer>` (say a second `<think>` or an invented next "User:" turn), earns nothing:
  the format reward must not pay for what the accuracy reward rejects (parsing.py).
* fully conforming: o is exactly
      optional whitespace, `<think>A</think>`, optional whitespace, `<answer>C</answer>`,
      then the end,
  with A and C as above. Hence each tag occurs exactly once and nothing else is outside
  the two blocks. Fully conforming implies the basic format.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from r1jax.rewards.parsing import END_OF_TEXT_MARKERS, answer_block, strip_end

__all__ = ["END_OF_TEXT_MARKERS", "has_basic_format", "format_ok", "format_reward"]

# A tempered token: any character that does not start one of the four tags.
_NO_TAG = r"(?:(?!</?(?:think|answer)>).)"
_THINK_BLOCK = re.compile(rf"<think>({_NO_TAG}*)</think>", re.DOTALL)
_FULL = re.compile(rf"\s*<think>({_NO_TAG}*)</think>\s*<answer>({_NO_TAG}*)</answer>",
                   re.DOTALL)


def has_basic_format(completion: str) -> bool:
  """Whether the basic format holds (see module docstring): a non-blank think block, then
  the single, non-blank answer block at the end.

  Args:
    completion: generated text after the prompt (str).
  Returns:
    bool.
  """
  block = answer_block(completion)
  if block is None or not block.strip() or re.search(r"</?think>", block):
    return False
  start = completion.index("<answer>")
  return any(m.group(1).strip() for m in _THINK_BLOCK.finditer(completion, 0, start))


def format_ok(completion: str) -> bool:
  """Whether the completion is fully conforming (see module docstring); the "format rate".

  Args:
    completion: generated text after the prompt (str).
  Returns:
    bool.
  """
  m = _FULL.fullmatch(strip_end(completion))
  return bool(m and m.group(1).strip() and m.group(2).strip())


def format_reward(completion: str, example: Optional[dict[str, Any]] = None, *,
                  full: float = 1.0, partial: float = 0.5) -> float:
  """Graded format reward r_fmt_eff (module docstring).

  Args:
    completion: generated text after the prompt (str).
    example: the data example (unused; part of the reward-function signature).
    full: R_full, reward of a fully conforming completion.
    partial: R_partial, reward when only the basic format holds.
  Returns:
    `full` if `format_ok(completion)`, else `partial` if `has_basic_format(completion)`,
    else 0.0 (float).
  """
  del example
  if format_ok(completion):
    return float(full)
  if has_basic_format(completion):
    return float(partial)
  return 0.0
