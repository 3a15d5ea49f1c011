"""Raw example sources: reasoning-gym generators and JSONL files.

Every function here returns "raw" examples, dicts with
  id (str), question (str), answer (str), task (str), metadata (dict)
in a fixed order. `r1jax.data.pipeline` adds the rendered `prompt` and its `prompt_ids`.

For reasoning-gym examples `task` is the dataset name and `metadata` is the entry's own metadata,
so the reward side can call `reasoning_gym.create_dataset(task, ...).score_answer(answer,
{"question": ..., "answer": ..., "metadata": ...})` (or `reasoning_gym.get_score_answer_fn(task)`).

CHAMP (PyPI `champ-dataset`, 270 competition problems) is an evaluation source in
`r1jax.data.champ`: its free-text answers are normalised for math-verify there, and the 24
that a rule-based verifier cannot check are marked unverifiable.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any, Mapping

__all__ = ["reasoning_gym_dataset", "reasoning_gym_examples", "reasoning_gym_task_names",
           "jsonl_examples", "read_jsonl"]

log = logging.getLogger(__name__)

# Fields of a JSONL record with a meaning of their own; anything else goes into metadata.
_JSONL_FIELDS = ("prompt", "answer", "task", "id", "metadata")
# How many malformed line numbers the skip warning lists.
_SHOW_LINES = 5


def reasoning_gym_task_names() -> list[str]:
  """Sorted names of all registered reasoning-gym datasets."""
  from reasoning_gym.factory import DATASETS
  return sorted(DATASETS)


def _plain(config: Any) -> dict:
  """A ConfigDict / mapping / None as a plain dict."""
  if config is None:
    return {}
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  if not isinstance(config, Mapping):
    raise TypeError(f"task config must be a dict or ConfigDict, got {type(config).__name__}")
  return dict(config)


def reasoning_gym_dataset(task: str, size: int, seed: int, config: Any = None):
  """Builds a reasoning-gym procedural dataset, with clear errors.

  Args:
    task: registered dataset name, e.g. "basic_arithmetic".
    size: number of items (the generator is indexed 0..size-1).
    seed: generator seed.
    config: generator keyword arguments (dict or ConfigDict; None = defaults). Must not contain
      "size" or "seed".

  Returns:
    the `reasoning_gym.dataset.ProceduralDataset`.
  Raises:
    ValueError: unknown task (close matches and some known names listed), unknown or reserved
      config keys (valid keys listed), or values rejected by the config's validate().
  """
  from reasoning_gym.factory import DATASETS
  import reasoning_gym
  if task not in DATASETS:
    names = sorted(DATASETS)
    close = difflib.get_close_matches(task, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown reasoning-gym task {task!r}{hint} ({len(names)} known, e.g. "
                     f"{', '.join(names[:8])}, ...; see reasoning_gym.factory.DATASETS)")
  kwargs = _plain(config)
  reserved = sorted({"size", "seed"} & set(kwargs))
  if reserved:
    raise ValueError(f"config for task {task!r} must not set {reserved}: they come from the "
                     "size / seed arguments")
  config_cls = DATASETS[task][1]
  if dataclasses.is_dataclass(config_cls):
    valid = [f.name for f in dataclasses.fields(config_cls) if f.name not in ("size", "seed")]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
      raise ValueError(f"unknown config key(s) {unknown} for reasoning-gym task {task!r}; "
                       f"valid keys: {', '.join(valid)}")
  if size <= 0:
    raise ValueError(f"size must be positive, got {size}")
  try:
    return reasoning_gym.create_dataset(task, size=int(size), seed=int(seed), **kwargs)
  except (AssertionError, TypeError) as e:
    raise ValueError(f"invalid config {kwargs} for reasoning-gym task {task!r}: {e}") from e


def rg_example(task: str, seed: int, index: int, entry: Mapping) -> dict:
  """The example dict of entry `index` of a reasoning-gym dataset built with `seed`."""
  answer = entry.get("answer")
  return {
    "id": f"{task}/{seed}/{index}",
    "question": entry["question"],
    # A few generators have no single oracle answer (None); score_answer handles those.
    "answer": "" if answer is None else str(answer),
    "task": task,
    "metadata": entry.get("metadata", {}),
  }


def reasoning_gym_examples(task: str, size: int, seed: int, config: Any = None,
                           *, start: int = 0) -> list[dict]:
  """Generates `size` reasoning-gym examples (indices start..start+size-1 of the generator).

  Args:
    task, seed, config: as in `reasoning_gym_dataset`.
    size: number of examples.
    start: first generator index.

  Returns:
    list of raw example dicts {id, question, answer, task, metadata}; id is
    "{task}/{seed}/{index}".
  Raises:
    ValueError: as in `reasoning_gym_dataset`.
  """
  ds = reasoning_gym_dataset(task, start + size, seed, config)
  return [rg_example(task, seed, i, ds[i]) for i in range(start, start + size)]


def open_lines(path: Path):
  """Binary line iterator over a plain or gzipped file (gzip detected by its magic bytes)."""
  with open(path, "rb") as f:
    magic = f.read(2)
  if magic == b"\x1f\x8b":
    return gzip.open(path, "rb")
  return open(path, "rb")


def _parse_record(line: bytes, lineno: int, name: str) -> dict:
  """One JSONL line -> raw example. Raises ValueError (without the file/line prefix)."""
  try:
    text = line.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
  if lineno == 1:
    text = text.lstrip("\ufeff")
  try:
    rec = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"invalid JSON: {e.msg} (column {e.colno})") from None
  if not isinstance(rec, dict):
    raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
  if "prompt" not in rec or rec["prompt"] is None:
    raise ValueError('missing "prompt"')
  prompt = rec["prompt"]
  if not isinstance(prompt, str):
    raise ValueError(f'"prompt" must be a string, got {type(prompt).__name__}')
  if not prompt.strip():
    raise ValueError('empty "prompt"')
  # Code problems (task "code") are judged by their tests (r1jax.rewards.code) and general
  # prompts (kind "general", all-scenario RL) by reward models: no answer needed.
  kind = rec.get("kind", "reasoning")
  if kind not in ("reasoning", "general"):
    raise ValueError(f'"kind" must be "reasoning" or "general", got {kind!r}')
  is_code = rec.get("task") == "code" or kind == "general"
  if ("answer" not in rec or rec["answer"] is None) and not is_code:
    raise ValueError('missing "answer"')
  answer = "" if rec.get("answer") is None else rec["answer"]
  # bool is an int subclass but never a meaningful answer.
  if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
    raise ValueError(f'"answer" must be a string or a number, got {type(answer).__name__}')
  answer = answer if isinstance(answer, str) else str(answer)
  if not answer.strip() and not is_code:
    raise ValueError('empty "answer"')
  task = rec.get("task", "general" if kind == "general" else "math")
  if not isinstance(task, str) or not task.strip():
    raise ValueError(f'"task" must be a non-empty string, got {task!r}')
  ex_id = rec.get("id", f"{name}:{lineno}")
  if isinstance(ex_id, bool) or not isinstance(ex_id, (str, int)):
    raise ValueError(f'"id" must be a string or an integer, got {type(ex_id).__name__}')
  metadata = rec.get("metadata", {})
  if metadata is None:
    metadata = {}
  if not isinstance(metadata, dict):
    raise ValueError(f'"metadata" must be an object, got {type(metadata).__name__}')
  metadata = dict(metadata)
  for k, v in rec.items():
    if k not in _JSONL_FIELDS:
      metadata.setdefault(k, v)  # an explicit metadata entry wins over a top-level field
  return {"id": str(ex_id), "question": prompt, "answer": answer, "task": task,
          "metadata": metadata}


def read_jsonl(path: str | os.PathLike, *, on_error: str = "raise") -> tuple[list[dict], list[int]]:
  """`jsonl_examples` that also returns the 1-based numbers of the skipped malformed lines.

  Returns:
    (examples, skipped_line_numbers).
  Raises:
    as `jsonl_examples`.
  """
  if on_error not in ("raise", "skip"):
    raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
  p = Path(path).expanduser()
  if not p.is_file():
    raise FileNotFoundError(f"JSONL file not found: {p}")
  examples, skipped, first_error = [], [], None
  try:
    with open_lines(p) as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          examples.append(_parse_record(line, lineno, p.name))
        except ValueError as e:
          if on_error == "raise":
            raise ValueError(f"{p}: line {lineno}: {e}") from None
          skipped.append(lineno)
          first_error = first_error or f"line {lineno}: {e}"
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise ValueError(f"{p}: corrupt gzip data ({e})") from e
  if skipped:
    shown = ", ".join(map(str, skipped[:_SHOW_LINES])) + (", ..." if len(skipped) > _SHOW_LINES
                                                         else "")
    log.warning("%s: skipped %d malformed line(s) (lines %s; first: %s)", p, len(skipped), shown,
                first_error)
  return examples, skipped


def jsonl_examples(path: str | os.PathLike, *, on_error: str = "raise") -> list[dict]:
  """Reads prompt/answer records from a JSONL file (plain or gzip-compressed, e.g. .jsonl.gz).

  Each non-blank line is a JSON object with
    "prompt" (non-empty str, required) -> question,
    "answer" (non-empty str, or a number converted with str(); required except for
      task "code", whose tests live in metadata: see r1jax.rewards.code),
    "task" (str, optional, default "math"; "general" for kind "general"),
    "kind" (optional, "reasoning" (default) or "general": a general prompt needs no answer and
      is scored by reward models in all-scenario RL, r1jax.rewards.routing; kept in metadata),
    "id" (str or int, optional, default "{file name}:{line}"),
    "metadata" (object, optional); any other field is added to metadata (an explicit metadata
    entry of the same name wins).
  Blank lines are ignored.

  Args:
    path: the file.
    on_error: "raise" (first malformed line raises) or "skip" (malformed lines are skipped,
      counted, and reported in one logged warning with the first few line numbers).

  Returns:
    list of raw example dicts {id, question, answer, task, metadata}, in file order.
  Raises:
    FileNotFoundError: the file does not exist (names the path).
    ValueError: a malformed line with on_error="raise"; the message is
      "{path}: line {n}: {what is wrong}" with n 1-based. Also a bad on_error value, or corrupt
      gzip data.
  """
  return read_jsonl(path, on_error=on_error)[0]
