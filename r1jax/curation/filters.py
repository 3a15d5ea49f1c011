"""Readability filters of R1's rejection sampling and cold-start data (DeepSeek-R1, sections
2.3.1 and 2.3.3; docs/method.md "Stages").

The R1 paper keeps, from the samples of its stage-2 RL checkpoint (and for its cold-start set),
only reader-friendly responses: it drops "mixed languages, long paragraphs and code blocks"
that are messy, and responses with no summary. It gives no thresholds; these are the rules
r1jax applies, each a pure function of the response text (str -> bool, True = keep):

  language   mixed languages: the proportion of the response's words in the target language
             (script-based, r1jax.rewards.language.language_consistency, over the whole
             response: reasoning and summary) is below `min_language_ratio` (default 0.95).
             Math, LaTeX commands, code blocks, digits and one-letter words are neutral. A
             response with no countable word passes (there is no language to mix).
  paragraph  over-long paragraphs: a paragraph (text between blank lines, fenced code blocks
             excluded) longer than `max_paragraph_chars` characters (default 2000; R1 CoTs
             are long, but a wall of text without a break is what the paper calls unreadable).
  code       messy code: (a) unbalanced ``` fences (an odd number of fence lines), or (b) code
             outside fences: at least `max_loose_code_lines` consecutive lines outside fences
             that look like code (default 2; see `looks_like_code`).
  summary    no summary: the text after the reasoning block's closing marker (default
             "</think>") is empty, or the closing marker is missing. Responses in the R1-Zero
             layout end with `<answer> ... </answer>`, which counts as the summary.

Duplicates are removed per prompt by `dedup_key` (Unicode NFKC, lower case, whitespace runs
collapsed, trailing whitespace and punctuation stripped): two samples that differ only in
spacing or case are one sample.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Optional, Sequence

from r1jax.rewards.language import language_consistency

__all__ = ["FILTER_NAMES", "FilterConfig", "language_ok", "paragraphs_ok", "code_ok",
           "summary_ok", "looks_like_code", "split_paragraphs", "readability_failures",
           "dedup_key", "dedup"]

FILTER_NAMES = ("language", "paragraph", "code", "summary")

_FENCE = re.compile(r"^\s*(```|~~~)")
_FENCED_BLOCK = re.compile(r"^[ \t]*```.*?^[ \t]*```[^\n]*$", re.DOTALL | re.MULTILINE)
_BLANK_LINES = re.compile(r"\n[ \t]*\n")
# Lines that are code in any common language, not prose: keywords at the start of the line with
# code punctuation after them, statements ending in ';' or a lone brace, #include, etc.
_CODE_LINE = re.compile(
    r"^\s*(?:"
    r"(?:def|class)\s+\w+\s*[(:]"                      # python def / class
    r"|(?:import\s+[\w.]+(?:\s+as\s+\w+)?|from\s+[\w.]+\s+import\s+[\w*, ]+)\s*$"
    r"|(?:for|while|if|elif)\s.*:\s*$"                 # python block header
    r"|(?:return|print|yield)\b.*[();]\s*$"
    r"|#include\s*[<\"]"
    r"|(?:public|private|static|int|void|const|let|var|function)\s+\w+.*[;{(]\s*$"
    r"|[\w.\[\]]+\s*(?:[+\-*/]?=)\s*[^=].*;\s*$"        # assignment ending in ';'
    r"|[{}]\s*;?\s*$"                                  # lone brace
    r"|\w+(?:\.\w+)*\([^()]*\)\s*;\s*$"                # call statement ending in ';'
    r")")
_SUMMARY_DEFAULT_END = "</think>"


@dataclasses.dataclass(frozen=True)
class FilterConfig:
  """Thresholds of the readability filters (module docstring).

  enabled: names from FILTER_NAMES to apply (others are skipped).
  language: target language (ISO 639-1 code of r1jax.rewards.language.LANGUAGE_SCRIPTS).
  min_language_ratio: the `language` rule's minimum on-target word proportion, in [0, 1].
  max_paragraph_chars: the `paragraph` rule's maximum paragraph length (characters, >= 1).
  max_loose_code_lines: the `code` rule fails at this many consecutive code-like lines
    outside fences (>= 1).
  reasoning_end: the marker closing the reasoning (the `summary` rule).
  """
  enabled: tuple[str, ...] = FILTER_NAMES
  language: str = "en"
  min_language_ratio: float = 0.95
  max_paragraph_chars: int = 2000
  max_loose_code_lines: int = 2
  reasoning_end: str = _SUMMARY_DEFAULT_END

  def __post_init__(self):
    unknown = [n for n in self.enabled if n not in FILTER_NAMES]
    if unknown:
      raise ValueError(f"unknown filter(s) {unknown}; known: {FILTER_NAMES}")
    if not 0.0 <= self.min_language_ratio <= 1.0:
      raise ValueError(f"min_language_ratio must be in [0, 1], got {self.min_language_ratio}")
    if self.max_paragraph_chars < 1:
      raise ValueError(f"max_paragraph_chars must be >= 1, got {self.max_paragraph_chars}")
    if self.max_loose_code_lines < 1:
      raise ValueError(f"max_loose_code_lines must be >= 1, got {self.max_loose_code_lines}")
    if "summary" in self.enabled and not self.reasoning_end:
      raise ValueError("reasoning_end must be non-empty when the summary filter is enabled")


def language_ok(text: str, language: str = "en", min_ratio: float = 0.95) -> bool:
  """`language` rule: True when at least `min_ratio` of the counted words are in `language`.

  Raises:
    ValueError: unknown language.
  """
  on, n = language_consistency(text, language)
  return n == 0 or on / n >= min_ratio


def split_paragraphs(text: str) -> list[str]:
  """Paragraphs of `text`: fenced code blocks removed, split at blank lines, stripped, empty
  ones dropped."""
  prose = _FENCED_BLOCK.sub("\n\n", text)
  return [p.strip() for p in _BLANK_LINES.split(prose) if p.strip()]


def paragraphs_ok(text: str, max_chars: int = 2000) -> bool:
  """`paragraph` rule: True when no paragraph (split_paragraphs) exceeds `max_chars`."""
  return all(len(p) <= max_chars for p in split_paragraphs(text))


def looks_like_code(line: str) -> bool:
  """True for a line that is code rather than prose: a Python def/class/import/block header,
  a return/print statement ending in code punctuation, #include, a C-family declaration, an
  assignment or call ending in ';', or a lone brace."""
  return bool(_CODE_LINE.match(line))


def code_ok(text: str, max_loose_code_lines: int = 2) -> bool:
  """`code` rule: True when ``` / ~~~ fences are balanced and no run of
  `max_loose_code_lines` consecutive code-like lines lies outside the fences."""
  inside, run = False, 0
  fences = 0
  for line in text.splitlines():
    if _FENCE.match(line):
      fences += 1
      inside = not inside
      run = 0
      continue
    if inside:
      continue
    run = run + 1 if looks_like_code(line) else (run if not line.strip() else 0)
    if run >= max_loose_code_lines:
      return False
  return fences % 2 == 0


def summary_ok(text: str, reasoning_end: str = _SUMMARY_DEFAULT_END) -> bool:
  """`summary` rule: True when `reasoning_end` occurs and non-blank text follows its last
  occurrence."""
  i = text.rfind(reasoning_end)
  return i >= 0 and bool(text[i + len(reasoning_end):].strip())


def readability_failures(text: str, config: Optional[FilterConfig] = None, *,
                         language: Optional[str] = None) -> list[str]:
  """Names of the enabled filters that `text` fails, in FILTER_NAMES order ([] = readable).

  Args:
    text: the whole response (reasoning and summary).
    config: thresholds (default FilterConfig()).
    language: target language overriding config.language (e.g. the example's own).
  Returns:
    list of filter names.
  Raises:
    ValueError: unknown language.
  """
  c = config or FilterConfig()
  checks = {
      "language": lambda: language_ok(text, language or c.language, c.min_language_ratio),
      "paragraph": lambda: paragraphs_ok(text, c.max_paragraph_chars),
      "code": lambda: code_ok(text, c.max_loose_code_lines),
      "summary": lambda: summary_ok(text, c.reasoning_end),
  }
  return [name for name in FILTER_NAMES if name in c.enabled and not checks[name]()]


_TRAILING = re.compile(r"[\s.!?。！？]+$")


def dedup_key(text: str) -> str:
  """Normalised text for de-duplication: NFKC, lower case, whitespace runs -> one space,
  trailing whitespace and sentence punctuation removed."""
  t = unicodedata.normalize("NFKC", text).lower()
  t = " ".join(t.split())
  return _TRAILING.sub("", t)


def dedup(texts: Sequence[str]) -> list[int]:
  """Indices of the first occurrence of each distinct `dedup_key` among `texts`, in order."""
  seen, keep = set(), []
  for i, t in enumerate(texts):
    k = dedup_key(t)
    if k not in seen:
      seen.add(k)
      keep.append(i)
  return keep
