"""General (non-reasoning) prompts for R1's all-scenario RL on a machine with no data hub.

DeepSeek-R1 (Guo et al. 2025, section 2.3.4) mixes reasoning prompts with general ones
(writing, factual QA, advice) judged by preference reward models. This module builds a
small, deterministic set of such prompts from instruction templates x topics, so the
all-scenario stage can run offline; users with real prompts pass a JSONL of
{"prompt", "kind": "general"} records instead.

The held-out split has its own topics (never in the train split), so a reward-model score
measured on it is a score on unseen prompts, not on memorised ones.

Record layout (one JSON object per JSONL line, read by r1jax.data.sources):
  {"id": str, "prompt": str, "kind": "general", "task": "general", "topic": str}
"""

from __future__ import annotations

import json
import os
from typing import Iterable

__all__ = ["TEMPLATES", "TRAIN_TOPICS", "HELDOUT_TOPICS", "general_prompt_records",
           "write_jsonl"]

# Instruction kinds of everyday assistant use; "{t}" is the topic.
TEMPLATES = (
    "Explain what {t} is to a ten-year-old.",
    "Give three practical tips about {t}.",
    "Write a short paragraph describing {t}.",
    "What are the main benefits of {t}?",
    "Describe a common mistake people make with {t} and how to avoid it.",
    "Write a four-line poem about {t}.",
    "Summarize why {t} matters in two sentences.",
    "How would you introduce {t} to a friend who has never heard of it?",
    "List two advantages and two disadvantages of {t}.",
    "Write a friendly note recommending {t} to a colleague.",
    "What should a beginner know before getting into {t}?",
    "Compare {t} with something similar and explain the difference.",
)

TRAIN_TOPICS = (
    "gardening", "cycling", "baking bread", "recycling", "swimming", "learning a language",
    "photography", "camping", "chess", "public libraries", "rainforests", "volcanoes",
    "the moon", "honey bees", "solar panels", "electric cars", "museums", "journaling",
    "yoga", "running", "birdwatching", "knitting", "coffee", "tea", "board games",
    "saving money", "public transport", "composting", "hiking", "painting", "music lessons",
    "bicycles", "rivers", "deserts", "penguins", "lighthouses", "trains", "bridges",
    "email etiquette", "time management", "healthy breakfasts", "sleep", "drinking water",
    "houseplants", "first aid", "kites", "maps", "weather forecasts",
)

HELDOUT_TOPICS = (
    "pottery", "sailing", "astronomy", "beekeeping", "rock climbing", "origami",
    "dolphins", "windmills", "farmers markets", "podcasts", "snow", "volunteering",
)


def general_prompt_records(split: str = "train") -> list[dict]:
  """The prompts of one split, every template x every topic of that split, in a fixed
  order (topic-major).

  Args:
    split: "train" (48 topics, 576 prompts) or "heldout" (12 unseen topics, 144 prompts).
  Returns:
    list of record dicts (layout in the module docstring).
  Raises:
    ValueError: an unknown split.
  """
  topics = {"train": TRAIN_TOPICS, "heldout": HELDOUT_TOPICS}.get(split)
  if topics is None:
    raise ValueError(f'split must be "train" or "heldout", got {split!r}')
  return [{"id": f"general:{split}:{t.replace(' ', '_')}:{i}", "prompt": tpl.format(t=t),
           "kind": "general", "task": "general", "topic": t}
          for t in topics for i, tpl in enumerate(TEMPLATES)]


def write_jsonl(records: Iterable[dict], path: str) -> str:
  """Write records as JSONL (atomically: a temp file, then rename); returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  os.replace(tmp, path)
  return path
