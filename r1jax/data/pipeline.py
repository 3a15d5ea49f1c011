"""GRPO prompt data: reasoning-gym tasks and JSONL files -> rendered, tokenised prompt batches.

`PromptData(config, tokenizer)` builds everything eagerly (generation, held-out split, rendering,
tokenisation, length filtering), so counts are exact before training starts; `train_iterator`
then serves batches from a grain pipeline with checkpointable state.

Example dict (the contract with the reward code):
  {"id": str, "question": str, "answer": str, "task": str, "metadata": dict,
   "prompt": str, "prompt_ids": list[int]}
Each batch is a fresh list of fresh dicts: consumers may mutate them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from typing import Any, Mapping

import grain
import numpy as np
from ml_collections import ConfigDict

from r1jax.data import sources, templates
from r1jax.data.prompt_iterator import BlockShard, PromptIterator

__all__ = ["default_data_config", "PromptData", "PromptIterator"]

log = logging.getLogger(__name__)



def default_data_config() -> ConfigDict:
  """The `data` sub-config of GRPO stages, with defaults.

  `task_configs` holds one entry per default task because a locked ConfigDict rejects new keys:
  `--config.data.task_configs.chain_sum.max_terms=4` works, `--config.data.task_configs.
  leg_counting.min_animals=2` does not (edit the config file, or pass a plain dict to PromptData).
  Entries for tasks not listed in `tasks` are ignored.

  Returns:
    ConfigDict (unlocked).
  """
  c = ConfigDict()
  # Comma-separated reasoning-gym dataset names ("" = none).
  c.tasks = "basic_arithmetic,chain_sum"
  # Generator keyword arguments per task name (reasoning-gym config fields, minus size/seed).
  # The defaults are easy enough for a 135M model to get some reward early on.
  c.task_configs = ConfigDict()
  c.task_configs.basic_arithmetic = ConfigDict(dict(
    min_terms=2, max_terms=2, min_digits=1, max_digits=2, operators=("+", "-"),
    allow_parentheses=False, allow_negation=False))
  c.task_configs.chain_sum = ConfigDict(dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2))
  # Comma-separated JSONL(.gz) files of {"prompt", "answer", ...} records ("" = none).
  c.jsonl = ""
  # JSONL(.gz) file used whole as the JSONL part of the eval split ("" = hold out the last records
  # of each `jsonl` file instead, its even share of eval_size).
  c.eval_jsonl = ""
  # Examples generated per reasoning-gym task for training (before overlap/length filtering).
  c.train_size = 20000
  # Held-out examples in total, split evenly over the sources (each task; each jsonl file unless
  # eval_jsonl is set). Eval questions are unique and never occur in the train split.
  c.eval_size = 200
  # Prompt template: r1_zero | chat | chat_r1 | raw (see r1jax.data.templates).
  c.template = "r1_zero"
  # Seed of generation (train uses it directly, eval a seed derived from it) and shuffling.
  c.seed = 0
  # Malformed JSONL lines: "raise" or "skip" (skipped ones are counted and warned about once).
  c.on_error = "raise"
  # Prompts with more tokens are always skipped (counted in summary(), one warning), whatever
  # on_error says: generators produce the odd long question and that should not stop a run.
  c.max_prompt_tokens = 256
  # Shuffle the train split (reshuffled every epoch); False = generation/file order.
  c.shuffle = True
  # Comma-separated mixing weights, one per source in order (tasks, then jsonl files);
  # "" = equal (round-robin interleaving).
  c.weights = ""
  return c


def split_list(s: str) -> list[str]:
  """Non-empty, stripped items of a comma-separated config string ("a, b," -> ["a", "b"])."""
  return [x.strip() for x in str(s).split(",") if x.strip()]


def _derive_seed(seed: int, salt: str) -> int:
  """A 31-bit seed from (seed, salt); stable across processes (unlike hash())."""
  h = hashlib.sha256(f"{int(seed)}/{salt}".encode()).digest()
  return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def _resolve_config(config: Any) -> dict:
  """config (ConfigDict / mapping / None) merged over the defaults, as a plain dict."""
  cfg = default_data_config().to_dict()
  if config is None:
    return cfg
  user = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  unknown = sorted(set(user) - set(cfg))
  if unknown:
    raise ValueError(f"unknown data config field(s) {unknown}; known: {', '.join(sorted(cfg))}")
  task_configs = dict(cfg["task_configs"])
  for name, kw in (user.pop("task_configs", None) or {}).items():
    # Per task, the user's entry replaces the default one.
    task_configs[name] = kw.to_dict() if hasattr(kw, "to_dict") else dict(kw or {})
  cfg.update(user)
  cfg["task_configs"] = task_configs
  return cfg


class _Source:
  """One train/eval source (a reasoning-gym task or a JSONL file) and its counts."""

  def __init__(self, name: str, kind: str):
    self.name, self.kind = name, kind
    self.train: list[tuple] = []
    self.eval: list[tuple] = []
    self.counts = dict(train=0, eval=0, generated_train=0, removed_overlap=0,
                       too_long_train=0, too_long_eval=0, malformed=0)


class PromptData:
  """Train and held-out eval prompts for GRPO, from a `data` config.

  Build once per run; construction does all the work (3-4 s for the defaults on 2 CPU
  cores, mostly tokenisation). Sources are the reasoning-gym `tasks` and the `jsonl` files; the
  train iterator interleaves them evenly (or by `weights`).

  Held-out split:
    * reasoning-gym: eval examples come from a generator seeded with a seed derived from `seed`,
      unique by question; `eval_size` is shared evenly over the sources.
    * JSONL: the last records of each file (its share), or the whole `eval_jsonl` file.
    * any train example whose question text equals an eval question is dropped from train.
  Prompts longer than `max_prompt_tokens` are dropped from both splits and counted.

  Args:
    config: the `data` ConfigDict (see `default_data_config`), a plain dict of overrides, or
      None for the defaults.
    tokenizer: an `r1jax.tokenizer.Tokenizer`, or a source string for `Tokenizer.from_source`.

  Raises:
    ValueError: unknown config fields, unknown task/template names, bad task configs, bad
      on_error / sizes / weights, malformed JSONL (on_error="raise"), or a source left with no
      train examples.
    FileNotFoundError: a JSONL file is missing.
  """

  def __init__(self, config: Any, tokenizer: Any):
    cfg = _resolve_config(config)
    templates.check_template(cfg["template"])
    if cfg["on_error"] not in ("raise", "skip"):
      raise ValueError(f"data.on_error must be 'raise' or 'skip', got {cfg['on_error']!r}")
    if int(cfg["train_size"]) <= 0:
      raise ValueError(f"data.train_size must be positive, got {cfg['train_size']}")
    if int(cfg["eval_size"]) < 0:
      raise ValueError(f"data.eval_size must be >= 0, got {cfg['eval_size']}")
    if int(cfg["max_prompt_tokens"]) <= 0:
      raise ValueError(f"data.max_prompt_tokens must be positive, got {cfg['max_prompt_tokens']}")
    if isinstance(tokenizer, str):
      from r1jax.tokenizer import Tokenizer
      tokenizer = Tokenizer.from_source(tokenizer)
    self.config = cfg
    self.tokenizer = tokenizer
    self._chat = templates.is_chat_template(cfg["template"])
    self._seed = int(cfg["seed"])
    self._max_tokens = int(cfg["max_prompt_tokens"])
    self._cache: dict[str, tuple[str, np.ndarray]] = {}

    tasks = split_list(cfg["tasks"])
    files = split_list(cfg["jsonl"])
    names = tasks + [f"jsonl:{p}" for p in files]
    if not names:
      raise ValueError("no prompt sources: set data.tasks and/or data.jsonl")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
      raise ValueError(f"sources listed twice: {dupes}")
    for t in tasks:  # fail fast on a typo, before generating anything
      sources.reasoning_gym_dataset(t, 1, self._seed, cfg["task_configs"].get(t))
    self._weights = self._parse_weights(cfg["weights"], len(names))

    self._sources = [_Source(t, "reasoning_gym") for t in tasks]
    self._sources += [_Source(f"jsonl:{p}", "jsonl") for p in files]
    eval_jsonl = cfg["eval_jsonl"]
    eval_holders = [s for s in self._sources if s.kind == "reasoning_gym" or not eval_jsonl]
    n_eval = int(cfg["eval_size"])
    shares = {s.name: n_eval // len(eval_holders) + (i < n_eval % len(eval_holders))
              for i, s in enumerate(eval_holders)} if eval_holders else {}

    # Raw examples per source; eval first, so train can be filtered against it.
    raw_train: dict[str, list[dict]] = {}
    eval_questions: set[str] = set()
    for src in self._sources:
      share = shares.get(src.name, 0)
      if src.kind == "reasoning_gym":
        raw_train[src.name] = sources.reasoning_gym_examples(
          src.name, int(cfg["train_size"]), self._seed, cfg["task_configs"].get(src.name))
        src.eval = self._generate_eval(src, share, eval_questions)
      else:
        path = src.name[len("jsonl:"):]
        records, skipped = sources.read_jsonl(path, on_error=cfg["on_error"])
        src.counts["malformed"] = len(skipped)
        k = 0
        if share:
          k = min(share, len(records) // 2)
          if k < share:
            log.warning("%s: only %d records, holding out %d for eval instead of %d", path,
                        len(records), k, share)
        raw_train[src.name] = records[:len(records) - k]
        src.eval = self._take_eval(src, records[len(records) - k:], k, eval_questions)
    self._eval_jsonl_source = None
    if eval_jsonl:
      src = _Source(f"eval_jsonl:{eval_jsonl}", "eval_jsonl")
      records, skipped = sources.read_jsonl(eval_jsonl, on_error=cfg["on_error"])
      src.counts["malformed"] = len(skipped)
      src.eval = self._take_eval(src, records, len(records), eval_questions)
      self._eval_jsonl_source = src

    for src in self._sources:
      kept = []
      for ex in raw_train[src.name]:
        if ex["question"] in eval_questions:
          src.counts["removed_overlap"] += 1
        else:
          kept.append(ex)
      src.counts["generated_train"] = len(raw_train[src.name])
      self._prepare([ex["question"] for ex in kept])
      for ex in kept:
        rec = self._record(ex)
        if rec is None:
          src.counts["too_long_train"] += 1
        else:
          src.train.append(rec)
      src.counts["train"] = len(src.train)
      if not src.train:
        raise ValueError(f"source {src.name!r} has no train examples left (generated "
                         f"{src.counts['generated_train']}, {src.counts['removed_overlap']} in "
                         f"eval, {src.counts['too_long_train']} over max_prompt_tokens="
                         f"{self._max_tokens}, {src.counts['malformed']} malformed)")
    del raw_train

    too_long = {split: sum(s.counts[f"too_long_{split}"] for s in self._all_sources())
                for split in ("train", "eval")}
    if too_long["train"] or too_long["eval"]:
      log.warning("skipped %d train and %d eval prompts longer than max_prompt_tokens=%d",
                  too_long["train"], too_long["eval"], self._max_tokens)
    self._eval = self._interleave([s.eval for s in self._all_sources()])
    lengths = np.array([len(r[6]) for s in self._sources for r in s.train])
    self._train_lengths = (int(lengths.max()), float(lengths.mean()))
    self._cache.clear()  # records hold their own prompt/ids now
    self._fingerprint = self._make_fingerprint()

  # -- building ---------------------------------------------------------------------------------

  @staticmethod
  def _parse_weights(spec: str, n: int) -> list[float] | None:
    if not str(spec).strip():
      return None
    try:
      weights = [float(w) for w in split_list(spec)]
    except ValueError:
      raise ValueError(f"data.weights must be comma-separated numbers, got {spec!r}") from None
    if len(weights) != n or any(not w > 0 for w in weights):
      raise ValueError(f"data.weights needs {n} positive numbers (one per source: tasks, then "
                       f"jsonl files), got {spec!r}")
    return weights

  def _all_sources(self) -> list[_Source]:
    return self._sources + ([self._eval_jsonl_source] if self._eval_jsonl_source else [])

  def _prepare(self, questions: list[str]) -> None:
    """Renders and tokenises the questions not in the cache (each unique question once)."""
    new = list(dict.fromkeys(q for q in questions if q not in self._cache))
    if not new:
      return
    prompts = [templates.render_prompt(q, self.config["template"], self.tokenizer) for q in new]
    ids = self.tokenizer.encode_batch(prompts, add_bos=False)
    # Prompt ids: the model's default prefix (BOS) for plain-text templates; a chat template
    # writes its own BOS. Never the suffix (EOS): the prompt is continued, not ended.
    prefix = [] if self._chat else list(self.tokenizer.prefix_ids)
    suffix = list(self.tokenizer.suffix_ids)
    for q, p, x in zip(new, prompts, ids):
      if suffix and x[-len(suffix):] == suffix:
        x = x[:-len(suffix)]
      self._cache[q] = (p, np.asarray(prefix + x, np.int32))

  def _record(self, ex: dict) -> tuple | None:
    """A raw example as a stored record, or None when its prompt is too long."""
    self._prepare([ex["question"]])
    prompt, ids = self._cache[ex["question"]]
    if len(ids) > self._max_tokens:
      return None
    return (ex["id"], ex["question"], ex["answer"], ex["task"], ex["metadata"], prompt, ids)

  def _take_eval(self, src: _Source, candidates: list[dict], want: int,
                 seen: set[str]) -> list[tuple]:
    """Up to `want` eval records from candidates: unique questions, not over-long."""
    out = []
    for ex in candidates:
      if len(out) >= want:
        break
      if ex["question"] in seen:
        continue
      rec = self._record(ex)
      if rec is None:
        src.counts["too_long_eval"] += 1
        continue
      seen.add(ex["question"])
      out.append(rec)
    src.counts["eval"] = len(out)
    return out

  def _generate_eval(self, src: _Source, want: int, seen: set[str]) -> list[tuple]:
    """`want` eval records of a reasoning-gym task from the derived eval seed."""
    if want <= 0:
      return []
    eval_seed = _derive_seed(self._seed, "eval")
    # Few distinct questions (tiny configs) must not loop forever: cap the candidates.
    limit = 20 * want + 100
    ds = sources.reasoning_gym_dataset(src.name, limit, eval_seed,
                                       self.config["task_configs"].get(src.name))
    out = []
    step = 2 * want + 16
    for start in range(0, limit, step):
      batch = [sources.rg_example(src.name, eval_seed, i, ds[i])
               for i in range(start, min(start + step, limit))]
      self._prepare([ex["question"] for ex in batch])
      out += self._take_eval(src, batch, want - len(out), seen)
      if len(out) >= want:
        break
    src.counts["eval"] = len(out)
    if len(out) < want:
      log.warning("task %s: only %d unique eval questions in %d tries (wanted %d)", src.name,
                  len(out), limit, want)
    return out

  @staticmethod
  def _interleave(lists: list[list]) -> list:
    out, n = [], max((len(x) for x in lists), default=0)
    for i in range(n):
      out += [x[i] for x in lists if i < len(x)]
    return out

  def _make_fingerprint(self) -> str:
    blob = json.dumps({"config": self.config, "vocab": getattr(self.tokenizer, "vocab_size", None),
                       "sizes": [[s.name, len(s.train)] for s in self._sources]},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

  # -- public -----------------------------------------------------------------------------------

  @staticmethod
  def _to_example(rec: tuple) -> dict:
    ex_id, question, answer, task, metadata, prompt, ids = rec
    return {"id": ex_id, "question": question, "answer": answer, "task": task,
            "metadata": copy.deepcopy(metadata), "prompt": prompt, "prompt_ids": ids.tolist()}

  def train_dataset(self) -> grain.MapDataset:
    """The infinite, unbatched train stream as a grain MapDataset of example dicts.

    Per source: shuffled (seed derived from `seed` and the source name; reshuffled each epoch)
    and repeated forever; sources mixed by `weights` (equal = round-robin).
    """
    parts = []
    for src in self._sources:
      ds = grain.MapDataset.source(src.train)
      if self.config["shuffle"]:
        ds = ds.shuffle(seed=_derive_seed(self._seed, f"shuffle/{src.name}"))
      parts.append(ds.repeat())
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, self._weights)
    return ds.map(self._to_example)

  def train_iterator(self, batch_size: int, state: Mapping | None = None, *,
                     shard_index: int = 0, shard_count: int = 1) -> "PromptIterator":
    """An endless iterator of train batches (lists of `batch_size` example dicts).

    With shard_count > 1 (one shard per process, shard_index = jax.process_index()), global
    batch k is the same `batch_size` examples whatever the shard count, and shard i reads
    only its contiguous block of them: examples [i * b, (i + 1) * b) of each global batch,
    b = batch_size / shard_count. Shards are disjoint, their concatenation in shard order
    is the single-process batch, and the iterator state (the global batch index) does not
    depend on the shard count: a run can resume on another number of processes.

    Args:
      batch_size: examples per global batch.
      state: optional `PromptIterator.get_state()` to resume from.
      shard_index: this shard, in [0, shard_count).
      shard_count: number of shards; must divide batch_size.

    Returns:
      PromptIterator yielding lists of batch_size / shard_count examples.
    Raises:
      ValueError: batch_size < 1, bad shard arguments, or a state from another data setup
        (see set_state).
    """
    if int(batch_size) < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shard_count < 1 or not 0 <= shard_index < shard_count or batch_size % shard_count:
      raise ValueError(f"shard {shard_index} of {shard_count} does not split batches of "
                       f"{batch_size} examples evenly")
    ds = self.train_dataset()
    local = int(batch_size) // shard_count
    if shard_count > 1:
      ds = BlockShard(ds, local, shard_index, shard_count)
    ds = ds.batch(local, batch_fn=list)
    # In-memory data: no threads (grain's advice), so nothing runs in the background.
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    out = PromptIterator(iter(it), f"{self._fingerprint}/{int(batch_size)}", int(batch_size))
    out.local_batch_size = local
    if state is not None:
      out.set_state(state)
    return out

  def train_examples(self) -> list[dict]:
    """All train examples once, grouped by source in generation/file order (no shuffling or
    mixing); fresh dicts. For inspection and SFT-style uses; GRPO should use train_iterator."""
    return [self._to_example(r) for s in self._sources for r in s.train]

  def eval_examples(self) -> list[dict]:
    """The held-out examples, in a fixed order (sources interleaved round-robin); fresh dicts."""
    return [self._to_example(r) for r in self._eval]

  def summary(self) -> dict:
    """Counts for logging (JSON-serialisable).

    Returns:
      {"template", "max_prompt_tokens", "train": n, "eval": n,
       "sources": {name: {kind, train, eval, generated_train, removed_overlap, too_long_train,
                          too_long_eval, malformed}},
       "tasks": {task: {"train": n, "eval": n}},
       "skipped_too_long": n, "skipped_malformed": n, "removed_overlap": n,
       "train_prompt_tokens": {"max": n, "mean": x}}
    """
    per_task: dict[str, dict[str, int]] = {}
    for s in self._all_sources():
      for split, recs in (("train", s.train), ("eval", s.eval)):
        for r in recs:
          d = per_task.setdefault(r[3], {"train": 0, "eval": 0})
          d[split] += 1
    srcs = {s.name: {"kind": s.kind, **s.counts} for s in self._all_sources()}
    total = lambda key: sum(c[key] for c in srcs.values())  # noqa: E731
    return {
      "template": self.config["template"],
      "max_prompt_tokens": self._max_tokens,
      "train": total("train"),
      "eval": len(self._eval),
      "sources": srcs,
      "tasks": per_task,
      "skipped_too_long": total("too_long_train") + total("too_long_eval"),
      "skipped_malformed": total("malformed"),
      "removed_overlap": total("removed_overlap"),
      "train_prompt_tokens": {"max": self._train_lengths[0],
                              "mean": round(self._train_lengths[1], 2)},
    }
