"""Language-consistency reward (DeepSeek-R1, Guo et al. 2025, Sec. 2.3.2; docs/method.md,
"Rewards").

R1's stage-2 RL adds r_lang = the proportion of words of the chain of thought (CoT) that are in
the target language, weighted by alpha: r = r_task + alpha * r_lang (spec "accuracy:1.0,
language:0.1"). It discourages the language mixing seen in R1-Zero at a small accuracy cost.

The CoT is the text inside `<think> ... </think>` (to the end when the block is not closed, as
in a truncated generation); with no `<think>` tag, the text before `</think>` (the prompt
opened the block); with no tag at all, the whole completion. The target language is the
example's "language" field (top level or in "metadata"), else the `language` keyword
(default "en"); it is an ISO 639-1 code (see LANGUAGE_SCRIPTS).

How words are classified (method "script", the default): by Unicode script, per word, with the
standard library only (unicodedata). A word is a maximal run of letters (combining marks
included) of one script; Han, Hiragana and Katakana characters count one word each, because
Chinese and Japanese do not delimit words (the convention of word processors' word counts for
East Asian text). A word is in the target language when its script is one the language is
written in (zh: Han; ja: Han, Hiragana, Katakana; ko: Hangul, Han; ru: Cyrillic; en, fr, de,
...: Latin; ...). Language-neutral text is not counted: digits, punctuation, symbols, math
(`$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]`, LaTeX commands `\\frac`), code blocks in
triple backquotes, and one-letter Latin words (variables such as x or n; in English this also
drops "a" and "I", which does not change the proportion of an English text).

Why scripts: the case R1 targets is mixing between languages of different scripts (Chinese
and English). There a script decides each word exactly, including one-character words,
whereas language-identification models are unreliable on single words and short fragments.
It cannot tell languages that share a script apart (English vs French). For those, method
"langid" also runs py3langid (Lui & Baldwin 2012, langid.py; offline, ~20 us a call) on each
sentence of target-script words, restricted to `candidates`, and counts the words of a
sentence of at least `min_words` words identified as another language as off-target
(shorter sentences are too short to identify and count as on-target). py3langid is an
optional dependency (pip install py3langid), imported only by that method.

r_lang = on-target words / counted words, in [0, 1]; 0.0 when the CoT has no countable word
(an empty or purely numeric CoT earns no readability reward).
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from typing import Any, Optional, Sequence

from r1jax.rewards.registry import register

__all__ = ["LANGUAGE_SCRIPTS", "extract_cot", "char_script", "classify_words",
           "language_consistency", "language_reward"]

_LATIN_LANGS = ("en", "fr", "de", "es", "it", "pt", "nl", "sv", "da", "no", "nb", "fi", "pl",
                "cs", "sk", "sl", "hr", "ro", "hu", "tr", "id", "ms", "vi", "ca", "eu", "gl",
                "et", "lv", "lt", "sq", "af", "sw", "tl", "la", "eo", "is", "ga", "cy")
# Target language -> the scripts its words are written in.
LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    **{lang: frozenset({"Latin"}) for lang in _LATIN_LANGS},
    "zh": frozenset({"Han"}),
    "ja": frozenset({"Han", "Hiragana", "Katakana"}),
    "ko": frozenset({"Hangul", "Han"}),
    **{lang: frozenset({"Cyrillic"}) for lang in ("ru", "uk", "bg", "sr", "be", "mk", "kk")},
    "el": frozenset({"Greek"}),
    **{lang: frozenset({"Arabic"}) for lang in ("ar", "fa", "ur")},
    "he": frozenset({"Hebrew"}),
    **{lang: frozenset({"Devanagari"}) for lang in ("hi", "mr", "ne")},
    "th": frozenset({"Thai"}),
    "bn": frozenset({"Bengali"}), "ta": frozenset({"Tamil"}), "hy": frozenset({"Armenian"}),
    "ka": frozenset({"Georgian"}),
}
# Scripts whose characters are one word each (no word delimiters).
_PER_CHAR = frozenset({"Han", "Hiragana", "Katakana"})
_NAME_SCRIPTS = {"LATIN": "Latin", "CJK": "Han", "HIRAGANA": "Hiragana", "KATAKANA": "Katakana",
                 "HANGUL": "Hangul", "CYRILLIC": "Cyrillic", "GREEK": "Greek",
                 "ARABIC": "Arabic", "HEBREW": "Hebrew", "DEVANAGARI": "Devanagari",
                 "THAI": "Thai", "BENGALI": "Bengali", "TAMIL": "Tamil",
                 "ARMENIAN": "Armenian", "GEORGIAN": "Georgian", "IDEOGRAPHIC": "Han"}
# Math, LaTeX commands and code: language-neutral, removed before counting.
_NEUTRAL = re.compile(r"```.*?```|\$\$.*?\$\$|\$[^$\n]*\$|\\\(.*?\\\)|\\\[.*?\\\]|\\[A-Za-z]+",
                      re.DOTALL)
_SENTENCE_END = re.compile(r"[.!?;:\n。！？；：]")


@functools.lru_cache(maxsize=65536)
def char_script(ch: str) -> Optional[str]:
  """Script of a letter or combining mark ("Latin", "Han", "Cyrillic", ...; "Other" for
  scripts not listed), or None for anything else (digits, punctuation, symbols, spaces)."""
  cat = unicodedata.category(ch)
  if cat[0] not in "LM":
    return None
  name = unicodedata.name(ch, "")
  for word in re.split(r"[ \-]", name)[:2]:  # "FULLWIDTH LATIN ...", "KATAKANA-HIRAGANA ..."
    if word in _NAME_SCRIPTS:
      return _NAME_SCRIPTS[word]
  return "Other"


def extract_cot(completion: str) -> str:
  """The chain of thought of a completion (see the module docstring)."""
  start = completion.find("<think>")
  if start >= 0:
    body = completion[start + len("<think>"):]
    end = body.find("</think>")
    return body if end < 0 else body[:end]
  end = completion.find("</think>")
  return completion if end < 0 else completion[:end]


def classify_words(text: str) -> list[tuple[str, str, int]]:
  """Countable words of `text` as (word, script, start offset), in order.

  Language-neutral spans (math, LaTeX commands, code blocks) are skipped, as are one-letter
  Latin words; Han/Hiragana/Katakana characters are one word each.
  """
  words: list[tuple[str, str, int]] = []
  masked = _NEUTRAL.sub(lambda m: " " * len(m.group(0)), text)
  cur, cur_script, cur_start = [], None, 0

  def flush():
    letters = sum(unicodedata.category(c)[0] != "M" for c in cur)
    if cur and not (cur_script == "Latin" and letters == 1):
      words.append(("".join(cur), cur_script, cur_start))

  for i, ch in enumerate(masked):
    if unicodedata.category(ch)[0] == "M":
      if cur:  # a combining mark continues its word (Devanagari vowel signs, accents)
        cur.append(ch)
      continue
    s = char_script(ch)
    if s is None:
      flush()
      cur, cur_script = [], None
      continue
    if s != cur_script or s in _PER_CHAR:
      flush()
      cur, cur_script, cur_start = [], s, i
    cur.append(ch)
  flush()
  return words


@functools.lru_cache(maxsize=8)
def _langid(candidates: Optional[tuple[str, ...]]):
  try:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier
  except ImportError as e:
    raise ImportError("language reward method 'langid' needs py3langid: pip install py3langid"
                      ) from e
  ident = LanguageIdentifier.from_model_file(MODEL_FILE)
  if candidates:
    ident.set_languages(list(candidates))
  return ident


def language_consistency(text: str, language: str = "en", *, method: str = "script",
                         candidates: Optional[Sequence[str]] = None, min_words: int = 4
                         ) -> tuple[int, int]:
  """(on-target words, counted words) of `text` for target `language`.

  Args:
    text: the text to judge (the CoT).
    language: ISO 639-1 code in LANGUAGE_SCRIPTS.
    method: "script" or "langid" (module docstring).
    candidates: languages py3langid chooses from (method "langid"; None = all it knows).
    min_words: sentences with fewer target-script words are not identified (method "langid").
  Returns:
    (n_target, n_counted), ints.
  Raises:
    ValueError: unknown language or method.
    ImportError: method "langid" without py3langid.
  """
  lang = language.lower().split("-")[0].split("_")[0]
  if lang not in LANGUAGE_SCRIPTS:
    raise ValueError(f"unknown target language {language!r}; known: {sorted(LANGUAGE_SCRIPTS)}")
  if method not in ("script", "langid"):
    raise ValueError(f"method must be 'script' or 'langid', got {method!r}")
  scripts = LANGUAGE_SCRIPTS[lang]
  words = classify_words(text)
  on = [w[1] in scripts for w in words]
  if method == "langid" and words:
    ident = _langid(tuple(sorted(set(candidates) | {lang})) if candidates else None)
    # Sentences end at sentence punctuation or a newline; judge each one's target-script words.
    stops = [m.start() for m in _SENTENCE_END.finditer(text)]
    groups: dict[int, list[int]] = {}
    for k, (_, _, start) in enumerate(words):
      if on[k]:
        groups.setdefault(bisect.bisect_left(stops, start), []).append(k)
    for group in groups.values():
      if len(group) >= min_words:
        if ident.classify(" ".join(words[k][0] for k in group))[0] != lang:
          for k in group:
            on[k] = False
  return sum(on), len(words)


def language_reward(completion: str, example: Optional[dict[str, Any]] = None, *,
                    language: str = "en", method: str = "script",
                    candidates: Optional[Sequence[str]] = None, min_words: int = 4) -> float:
  """r_lang: proportion of the CoT's words in the target language (Guo et al. 2025, Sec. 2.3.2).

  Args:
    completion: response text (with the template's response prefix, e.g. "<think>").
    example: the data example; its "language" (or metadata["language"]) overrides `language`.
    language: default target language (ISO 639-1).
    method, candidates, min_words: see language_consistency.
  Returns:
    float in [0, 1]; 0.0 when the CoT has no countable word.
  Raises:
    ValueError / ImportError: as language_consistency.
  """
  target = language
  if example:
    target = example.get("language") or (example.get("metadata") or {}).get("language") or target
  n_on, n = language_consistency(extract_cot(completion), str(target), method=method,
                                 candidates=candidates, min_words=min_words)
  return n_on / n if n else 0.0


register("language")(language_reward)
