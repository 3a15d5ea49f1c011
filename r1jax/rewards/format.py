"""Graded format reward (R1_SPEC section 3; arXiv:2501.12948 section 2.2.2).

R1-Zero asks the model to put its reasoning in `<think> ... </think>` and its answer in
`<answer> ... </answer>` (template in R1_SPEC section 4). The graded form used here:

    r_fmt_eff(o) = 0          unless the basic format holds,
                 = R_full     if o is fully conforming,
                 = R_partial  otherwise (basic format holds, but o is not fully conforming).

Definitions (the four tags are `<think>`, `</think>`, `<answer>`, `</answer>`, exact
lower-case spelling; "blank" means empty or whitespace only):

* basic format: o contains a think block `<think>A</think>` and, starting at or after the
  end of that block, an answer block `<answer>C</answer>`, where A and C are not blank and
  contain none of the four tags. Anything may surround or separate the two blocks.
* fully conforming: after removing trailing whitespace and at most one trailing
  end-of-text marker (`END_OF_TEXT_MARKERS`), o is exactly
      optional whitespace, `<think>A</think>`, optional whitespace, `<answer>C</answer>`,
      optional whitespace
  with A and C as above. Hence each tag occurs exactly once and nothing else is outside
  the two blocks. Fully conforming implies the basic format.
"""

from __future__ import annotations

import re
from typing import Any, Optional

# A tempered token: any character that does not start one of the four tags.
_NO_TAG = r"(?:(?!</?(?:think|answer)>).)"
_THINK_BLOCK = re.compile(rf"<think>({_NO_TAG}*)</think>", re.DOTALL)
_ANSWER_BLOCK = re.compile(rf"<answer>({_NO_TAG}*)</answer>", re.DOTALL)
_FULL = re.compile(rf"\s*<think>({_NO_TAG}*)</think>\s*<answer>({_NO_TAG}*)</answer>\s*",
                   re.DOTALL)

# End-of-text strings a detokenizer may leave at the end of a completion (the sampler keeps
# the stop token): GPT-2/Qwen base, ChatML, Llama 3, SentencePiece, DeepSeek.
END_OF_TEXT_MARKERS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_end|>", "<|end_of_text|>", "<|eot_id|>", "</s>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
)


def _strip_end(completion: str) -> str:
  """Drop trailing whitespace and at most one trailing end-of-text marker."""
  text = completion.rstrip()
  for marker in END_OF_TEXT_MARKERS:
    if text.endswith(marker):
      return text[:-len(marker)]
  return text


def has_basic_format(completion: str) -> bool:
  """Whether the basic format holds (see module docstring): a non-blank think block, then a
  non-blank answer block.

  Args:
    completion: generated text after the prompt (str).
  Returns:
    bool.
  """
  think_end: Optional[int] = None
  for m in _THINK_BLOCK.finditer(completion):
    if m.group(1).strip():
      think_end = m.end()
      break  # the earliest qualifying think block leaves the most room for an answer
  if think_end is None:
    return False
  return any(m.group(1).strip() for m in _ANSWER_BLOCK.finditer(completion, think_end))


def format_ok(completion: str) -> bool:
  """Whether the completion is fully conforming (see module docstring); the "format rate".

  Args:
    completion: generated text after the prompt (str).
  Returns:
    bool.
  """
  m = _FULL.fullmatch(_strip_end(completion))
  return bool(m and m.group(1).strip() and m.group(2).strip())


def format_reward(completion: str, example: Optional[dict[str, Any]] = None, *,
                  full: float = 1.0, partial: float = 0.5) -> float:
  """Graded format reward r_fmt_eff (R1_SPEC section 3).

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
