"""What the supervised datasets (SFT examples, preference pairs) share: the config checks,
reading the train files, the seeded held-out split, the data fingerprint, and the
(epoch, index) state of their batch iterators."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from ml_collections import ConfigDict

FORMATS = ("chat", "raw")


def resolve_data_config(defaults: ConfigDict, config: Any, what: str, sources: Sequence[str],
                        overlong: Sequence[str]) -> dict:
  """`config` over `defaults` as a dict, with the checks every supervised loader shares.

  Args:
    defaults: the loader's default config; config: ConfigDict / dict / None.
    what: name in error messages ("SFT", "preference").
    sources, overlong: the allowed `source` and `overlong` values.

  Raises:
    ValueError: unknown keys, or source / format / overlong / seq_len / eval_size out of range.
  """
  d = defaults.to_dict()
  given = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
  unknown = set(given) - set(d)
  if unknown:
    raise ValueError(f"unknown {what} data config keys: {sorted(unknown)}")
  d.update(given)
  for key, allowed in (("source", sources), ("format", FORMATS), ("overlong", overlong)):
    if d[key] not in allowed:
      raise ValueError(f"data.{key} must be one of {tuple(allowed)}, got {d[key]!r}")
  if int(d["seq_len"]) < 2:
    raise ValueError(f"data.seq_len must be >= 2, got {d['seq_len']}")
  if int(d["eval_size"]) < 0:
    raise ValueError(f"data.eval_size must be >= 0, got {d['eval_size']}")
  return d


def read_train_files(c: dict, read: Callable, counts: dict, what: str) -> list[dict]:
  """Records of the comma-separated data.train_jsonl files; `read(path)` -> (records,
  skipped line numbers); skipped lines are added to counts["malformed"].

  Raises:
    ValueError: data.train_jsonl is empty (`what` describes the records wanted).
  """
  files = [p.strip() for p in str(c["train_jsonl"]).split(",") if p.strip()]
  if not files:
    raise ValueError(f"data.train_jsonl is empty: give one or more JSONL files of {what}")
  records = []
  for path in files:
    recs, skipped = read(path)
    counts["malformed"] += len(skipped)
    records += recs
  return records


def split_eval(records: list, c: dict, read: Callable, counts: dict) -> tuple[list, list]:
  """(train, eval) records: the whole data.eval_jsonl file (read with `read`), or a seeded
  choice of data.eval_size records (at most half), the same for any run of the config."""
  if c["eval_jsonl"]:
    eval_records, skipped = read(c["eval_jsonl"])
    counts["malformed"] += len(skipped)
  else:
    k = min(int(c["eval_size"]), len(records) // 2)
    pick = set(np.random.RandomState(int(c["seed"]) + 7).permutation(len(records))[:k].tolist())
    eval_records = [r for i, r in enumerate(records) if i in pick]
    records = [r for i, r in enumerate(records) if i not in pick]
  counts["train_records"], counts["eval_records"] = len(records), len(eval_records)
  return records, eval_records


def check_not_empty(train: list, c: dict, counts: dict, what: str) -> None:
  """Raise ValueError naming the train files when no example is left."""
  if not train:
    where = c["train_jsonl"] if c["source"] == "jsonl" else f"source {c['source']}"
    raise ValueError(f"no {what} in {where} (data.train_jsonl): {counts['train_records']} "
                     f"records, {counts}")


def fingerprint(c: dict, tokenizer, lengths: list) -> str:
  """Hash of the config, vocabulary size and example lengths (iterator states check it)."""
  blob = json.dumps({"config": c, "vocab": getattr(tokenizer, "vocab_size", None),
                     "n": lengths}, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


class EpochState:
  """get_state / set_state of an iterator whose position is (epoch, index): subclasses set
  STATE_FORMAT, WHAT and the attributes epoch, index and fingerprint."""
  STATE_FORMAT = ""
  WHAT = ""

  def get_state(self) -> dict:
    """{"format", "fingerprint", "epoch", "index"} (JSON-serialisable)."""
    return {"format": self.STATE_FORMAT, "fingerprint": self.fingerprint, "epoch": self.epoch,
            "index": self.index}

  def set_state(self, state: Mapping) -> None:
    """Restore a get_state().

    Raises:
      ValueError: not such a state, or saved with other data / tokenizer / batch size.
    """
    if not isinstance(state, Mapping) or state.get("format") != self.STATE_FORMAT:
      raise ValueError(f"not a {self.STATE_FORMAT} state: {state!r:.200}")
    if state.get("fingerprint") != self.fingerprint:
      raise ValueError(f"{self.WHAT} data state was saved with other data, tokenizer, seq_len "
                       f"or batch size ({state.get('fingerprint')} != {self.fingerprint})")
    self.epoch, self.index = int(state["epoch"]), int(state["index"])
