"""Answer extraction for rule-based rewards (DeepSeek-R1, Guo et al. 2025, Sec. 2.2.2).

The R1 accuracy reward checks the final answer *where the format says it is*: inside
`<answer> ... </answer>` (the R1-Zero template; docs/method.md, "Templates"), or in
`\\boxed{...}` (the usual math convention). Extraction is strict, because a rule reward pays
for whatever it lets through (docs/method.md, "Rewards"):

* one answer, stated once: a completion with more than one `<answer>` or `</answer>` tag,
  or with several different `\\boxed{}` answers, states no answer (else listing candidates
  would be rewarded);
* the answer ends the completion: any text after `</answer>` other than whitespace and
  end-of-text markers (a second `<think>`, an invented next "User:" turn) voids it;
* no "last number in the text" fallback (it would reward completions that never state an
  answer in the agreed place).

The sampler stops at `</answer>` on decoded text and the stage cuts the text right after
the stop string (r1jax.sampling.decode_completions), so a well-formed completion ends there.
"""

from __future__ import annotations

from typing import Optional

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
_BOXED = "\\boxed"

# End-of-text strings a detokenizer may leave at the end of a completion (the sampler keeps
# the stop token): GPT-2/Qwen base, ChatML, Llama 3, SentencePiece, DeepSeek.
END_OF_TEXT_MARKERS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_end|>", "<|end_of_text|>", "<|eot_id|>", "</s>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
)


def strip_end(text: str) -> str:
  """`text` without trailing whitespace and end-of-text markers (any number of them)."""
  while True:
    text = text.rstrip()
    for marker in END_OF_TEXT_MARKERS:
      if text.endswith(marker):
        text = text[:-len(marker)]
        break
    else:
      return text


def has_answer_tags(completion: str) -> bool:
  """Whether `<answer>` or `</answer>` occurs anywhere in the completion."""
  return ANSWER_OPEN in completion or ANSWER_CLOSE in completion


def answer_block(completion: str) -> Optional[str]:
  """Raw content of the completion's answer block, or None when the answer-tag rules fail.

  The rules (module docstring): exactly one `<answer>` and one `</answer>`, in that order,
  and nothing after `</answer>` but whitespace and end-of-text markers.

  Args:
    completion: generated text after the prompt (str).
  Returns:
    The text between the tags (unstripped; may be blank), or None.
  """
  if completion.count(ANSWER_OPEN) != 1 or completion.count(ANSWER_CLOSE) != 1:
    return None
  open_, close = completion.index(ANSWER_OPEN), completion.index(ANSWER_CLOSE)
  if close < open_ or strip_end(completion[close + len(ANSWER_CLOSE):]):
    return None
  return completion[open_ + len(ANSWER_OPEN):close]


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


def boxed_answers(text: str) -> list[str]:
  """Contents (stripped) of every balanced `\\boxed{...}` in `text`, in order.

  Unbalanced occurrences (cut off by the token budget) are skipped; `\\boxed 5` (no
  braces) is not recognised.
  """
  out = []
  pos = text.find(_BOXED)
  while pos != -1:
    j = pos + len(_BOXED)
    while j < len(text) and text[j] == " ":
      j += 1
    got = _braced(text, j)
    if got is not None:
      out.append(got[0].strip())
    pos = text.find(_BOXED, pos + len(_BOXED))
  return out


def last_boxed(text: str) -> Optional[str]:
  """Content of the last balanced `\\boxed{...}` in `text` (stripped), or None."""
  boxes = boxed_answers(text)
  return boxes[-1] if boxes else None


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

  Rules (module docstring; DeepSeek-R1, Guo et al. 2025, Sec. 2.2.2):
    1. a completion with answer tags: the content of its single answer block, stripped (and
       unwrapped when it is exactly one `\\boxed{X}`); None when the answer-tag rules fail
       (several blocks, text after `</answer>`, unclosed) or the block is blank; no
       fallback to `\\boxed{}` elsewhere;
    2. otherwise the `\\boxed{...}` answer when every balanced box in the completion holds
       the same answer; None when they disagree;
    3. otherwise None. No "last number" guessing.

  Args:
    completion: generated text after the prompt (str).
  Returns:
    The answer string, or None when no single answer is stated in the agreed place.
  """
  if has_answer_tags(completion):
    block = answer_block(completion)
    if block is None:
      return None
    return _unwrap_boxed(block.strip()) or None
  boxes = [b for b in boxed_answers(completion) if b]
  if not boxes or any(b != boxes[0] for b in boxes):
    return None
  return boxes[0]
