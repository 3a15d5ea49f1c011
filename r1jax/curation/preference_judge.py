"""A rule judge of general-prompt responses, the labeller of synthetic preference pairs.

R1's all-scenario RL (Guo et al. 2025, section 2.3.4) scores general prompts with reward
models trained on human preference pairs, helpfulness judged on the final summary only.
With no preference data offline, r1jax labels pairs of the policy's own samples (on-policy,
as in RLAIF, Lee et al. 2023, with rules in place of an LLM labeller): of the n samples of a
prompt, the best and the worst by this judge become (chosen, rejected) when their scores
differ by at least `min_margin`. The reward model then learns the judge's preference from
the text alone, and the judge stays available as an independent check that a rising
reward-model score is a better answer, not an exploit of the reward model.

The judge reads the summary (the text after the last "</think>", the whole text when there
is none) and gives one point per criterion met (score 0..5):
  finished   the sample ended on its own (EOS or a stop string), not at the token limit
  words      the summary has at least `min_words` words of letters
  clean      the summary holds no markup tag (<answer>, <think>, ...): a general answer is prose
  on_topic   a word of the prompt's topic (first 5 letters, case-folded) occurs in the summary
  fluent     distinct word trigrams / all word trigrams >= `min_distinct` (no loops)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional, Sequence

__all__ = ["CRITERIA", "JudgeConfig", "judge_summary", "judge", "best_worst_pair"]

CRITERIA = ("finished", "words", "clean", "on_topic", "fluent")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_TAG = re.compile(r"</?\s*[A-Za-z_][\w-]*\s*/?>")


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  """Thresholds of the judge.

  Attributes:
    min_words: fewest words of letters a summary needs ("words").
    min_distinct: least distinct-trigram ratio ("fluent").
    min_margin: least score difference between chosen and rejected (best_worst_pair).
    summary_marker: the reasoning block's closing marker.
  """
  min_words: int = 6
  min_distinct: float = 0.8
  min_margin: float = 1.0
  summary_marker: str = "</think>"


def judge_summary(text: str, marker: str = "</think>") -> str:
  """The part of a response the judge and the helpfulness reward model read: the text after
  the last `marker`, stripped (the whole text when `marker` does not occur)."""
  i = text.rfind(marker) if marker else -1
  return (text[i + len(marker):] if i >= 0 else text).strip()


def judge(text: str, topic: str, finished: bool,
          config: JudgeConfig = JudgeConfig()) -> dict[str, float]:
  """Score one response.

  Args:
    text: the whole response (reasoning and summary).
    topic: the prompt's topic ("" = the on_topic criterion is not met by anything).
    finished: whether the sample ended before the token limit.
    config: thresholds.
  Returns:
    {criterion: 0.0 or 1.0 for each of CRITERIA, "score": their sum}.
  """
  summary = judge_summary(text, config.summary_marker)
  words = [w.lower() for w in _WORD.findall(summary)]
  stems = {w.lower()[:5] for w in _WORD.findall(topic) if len(w) >= 4}
  trigrams = list(zip(words, words[1:], words[2:]))
  out = {
      "finished": float(bool(finished)),
      "words": float(len(words) >= config.min_words),
      "clean": float(_TAG.search(summary) is None and bool(summary)),
      "on_topic": float(any(w[:5] in stems for w in words if len(w) >= 4)),
      "fluent": float(bool(words) and (not trigrams or
                                       len(set(trigrams)) / len(trigrams) >= config.min_distinct)),
  }
  out["score"] = sum(out[c] for c in CRITERIA)
  return out


def best_worst_pair(texts: Sequence[str], scores: Sequence[float],
                    min_margin: float = 1.0) -> Optional[tuple[int, int]]:
  """(index of the best, index of the worst) sample of a prompt by judge score, or None when
  they differ by less than `min_margin` (nothing to learn) or there are fewer than 2 distinct
  texts. Ties go to the earlier sample, so the choice is deterministic."""
  if len(texts) != len(scores):
    raise ValueError(f"{len(texts)} texts but {len(scores)} scores")
  if len(set(texts)) < 2:
    return None
  best = max(range(len(scores)), key=lambda i: (scores[i], -i))
  worst = min(range(len(scores)), key=lambda i: (scores[i], i))
  if scores[best] - scores[worst] < min_margin or texts[best] == texts[worst]:
    return None
  return best, worst
