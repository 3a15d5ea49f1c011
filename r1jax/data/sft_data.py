"""SFT data: JSONL conversations -> tokens with a loss mask -> packed fixed-shape batches.

Used by the SFT stage, and meant for every SFT-family stage (cold start, RFT, rejection-
sampling SFT, distillation; DeepSeek-R1, sections 2.3 and 2.4): they differ in where the records come
from, not in how they are tokenised, packed and batched.

Records (r1jax.data.sft_records; one JSON object per line of a JSONL or JSONL.gz file), one of
  {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
      the loss is on the assistant turns;
  {"prompt": str, "response": str}              one user turn and one assistant turn;
  {"prompt": str, "reasoning": str, "summary": str}
      the assistant turn is the R1 output format (DeepSeek-R1, section 2.3.1),
      `format_r1_response(reasoning, summary)` = "<think>\\n{reasoning}\\n</think>\\n{summary}";
plus optional "id" (str/int) and "system" (str, prepended as a system message). Other fields
go into "metadata".

Formats (`data.format`):
  "chat"  the tokenizer's chat template. Each assistant turn's tokens are what the template
          adds after the generation prompt (content + end-of-turn, e.g. "...<|im_end|>\\n"),
          so the model learns to stop; the rest is masked. Pieces are tokenised separately at
          the turn boundaries, exactly as the sampler sees a prompt and its continuation.
  "raw"   the contents concatenated as they are (BOS as the tokenizer adds by default), EOS
          appended after the last assistant turn (and trained).

Batch layout (one row of `seq_len` slots holds one or more examples; an example of n tokens
takes n - 1 slots, input t predicting target t + 1, so no target crosses an example boundary):
  tokens [R, L] int32      input ids (pad_id on padding)
  targets [R, L] int32     next-token ids (0 on padding)
  loss_mask [R, L] float32 1.0 where the target is a trained (response) token
  positions [R, L] int32   restart at 0 for each example
  segment_ids [R, L] int32 1, 2, ... per example in the row; 0 = padding
The decoder's `forward(tokens, positions, segment_ids)` attends causally within a segment
only, so a packed row computes exactly what separate rows would.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping, NamedTuple, Optional, Sequence

import numpy as np
from ml_collections import ConfigDict

from r1jax.data import supervised as sup
from r1jax.data.supervised import FORMATS
from r1jax.data.sft_records import (R1_RESPONSE_FORMAT, champ_sft_records,  # noqa: F401
                                    format_r1_response, parse_sft_record, read_sft_jsonl)

__all__ = ["R1_RESPONSE_FORMAT", "SFTExample", "SFTData", "SFTBatchIterator",
           "default_sft_data_config", "format_r1_response", "read_sft_jsonl", "parse_sft_record", "champ_sft_records",
           "tokenize_messages", "fit_length", "pack_rows", "build_batch", "empty_batch"]

log = logging.getLogger(__name__)

OVERLONG = ("skip", "truncate")
SOURCES = ("jsonl", "champ")


def default_sft_data_config() -> ConfigDict:
  """The `data` sub-config of SFT stages, with defaults (unlocked ConfigDict)."""
  c = ConfigDict()
  # Where records come from: "jsonl" (train_jsonl files) | "champ" (CHAMP worked solutions in
  # the R1 format; note that the eval stage's "champ" dataset then overlaps the training data).
  c.source = "jsonl"
  # Comma-separated JSONL(.gz) files of SFT records (see r1jax.data.sft_data).
  c.train_jsonl = ""
  # A JSONL file used whole as the eval split ("" = hold out `eval_size` train records).
  c.eval_jsonl = ""
  # Records held out from the train records for the eval loss (when eval_jsonl is "").
  c.eval_size = 16
  # "chat" (tokenizer's chat template; loss on assistant turns) | "raw" (plain concatenation).
  c.format = "chat"
  # System message added to records without one ("" = none; the chat template may add its own).
  c.system_prompt = ""
  # How {"reasoning", "summary"} records become a response (R1 output format).
  c.r1_format = R1_RESPONSE_FORMAT
  # Slots per row (an example of n tokens takes n - 1).
  c.seq_len = 512
  # Several examples per row (segment-aware attention) instead of one padded example per row.
  c.packing = True
  # Examples longer than a row: "skip" or "truncate" (kept only if a trained token is left).
  c.overlong = "skip"
  # Malformed JSONL lines: "raise" (error naming the line) or "skip" (counted, warned once).
  c.on_error = "raise"
  # Shuffle the train examples every epoch (seeded by seed and the epoch).
  c.shuffle = True
  c.seed = 0
  return c


class SFTExample(NamedTuple):
  """A tokenised example: ids [n] int32 and loss_mask [n] bool (True = trained token)."""
  id: str
  ids: np.ndarray
  loss_mask: np.ndarray


# ---------------------------------------------------------------------------------- tokens
def _encode_piece(tok, text: str, first: bool) -> list[int]:
  """Ids of one piece: the tokenizer's default prefix (BOS) only when `first`; its default
  suffix (EOS for some models) never. As r1jax.data.pipeline tokenises prompts: a chat
  template writes its own BOS, plain text gets the model's default prefix."""
  ids = tok.encode(text, add_bos=None if first else False)
  n = len(tok.suffix_ids)
  return ids[:len(ids) - n] if n and tuple(ids[-n:]) == tuple(tok.suffix_ids) else ids


def tokenize_messages(messages: Sequence[Mapping[str, str]], tok, fmt: str = "chat"
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Token ids of a conversation and the mask of its trained (assistant) tokens.

  Args:
    messages: [{"role", "content"}], with at least one assistant turn.
    tok: an r1jax Tokenizer.
    fmt: "chat" or "raw" (module docstring). Messages after the last assistant turn are
      dropped (nothing to train on there).
  Returns:
    ids [n] int32, loss_mask [n] bool.
  Raises:
    ValueError: unknown fmt, no assistant turn, or (chat) a template that does not render a
      conversation as an extension of its prefix (e.g. one that rewrites earlier turns), so
      the assistant tokens cannot be located.
  """
  if fmt not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
  last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
  if last < 0:
    raise ValueError("no assistant message")
  messages = [dict(m) for m in messages[:last + 1]]
  pieces: list[tuple[str, bool]] = []
  if fmt == "raw":
    pieces = [(m["content"], m["role"] == "assistant") for m in messages]
  else:
    prev = ""
    for i, m in enumerate(messages):
      if m["role"] != "assistant":
        continue
      gen = tok.apply_chat_template(messages[:i], add_generation_prompt=True)
      full = tok.apply_chat_template(messages[:i + 1], add_generation_prompt=False)
      if not (gen.startswith(prev) and full.startswith(gen)):
        raise ValueError("the chat template does not render the conversation as an extension "
                         f"of its first {i} messages (turn {i}); use data.format='raw' or "
                         "a conversation that starts with a user/system message")
      pieces += [(gen[len(prev):], False), (full[len(gen):], True)]
      prev = full
  ids: list[int] = []
  mask: list[bool] = []
  for text, trained in pieces:
    if not text:
      continue
    p = _encode_piece(tok, text, first=fmt == "raw" and not ids)
    ids += p
    mask += [trained] * len(p)
  if fmt == "raw" and tok.eos_id is not None:
    ids.append(tok.eos_id)
    mask.append(True)
  return np.asarray(ids, np.int32), np.asarray(mask, bool)


def fit_length(ids: np.ndarray, mask: np.ndarray, seq_len: int, overlong: str
               ) -> Optional[tuple[np.ndarray, np.ndarray]]:
  """Make an example fit a row of `seq_len` slots (it needs len(ids) - 1).

  Returns (ids, mask), truncated to seq_len + 1 tokens when overlong == "truncate", or None
  when the example is dropped: over-long with "skip", or no trained target token left.
  """
  if len(ids) - 1 > seq_len:
    if overlong == "skip":
      return None
    ids, mask = ids[:seq_len + 1], mask[:seq_len + 1]
  if not mask[1:].any():
    return None
  return ids, mask


# ---------------------------------------------------------------------------------- packing
def pack_rows(lengths: Sequence[int], seq_len: int, packing: bool = True) -> list[list[int]]:
  """Greedy in-order packing: indices of the examples in each row.

  Args:
    lengths: slots each example needs (token count - 1), each <= seq_len.
    seq_len: slots per row.
    packing: False puts one example per row.
  Returns:
    rows, each a list of example indices (order kept; a row is closed when the next example
    does not fit).
  """
  rows: list[list[int]] = []
  used = seq_len + 1
  for i, n in enumerate(lengths):
    if not packing or used + n > seq_len:
      rows.append([])
      used = 0
    rows[-1].append(i)
    used += n
  return rows


def empty_batch(num_rows: int, seq_len: int, pad_id: int = 0) -> dict[str, np.ndarray]:
  """All-padding batch arrays (see module docstring for the layout)."""
  return {"tokens": np.full((num_rows, seq_len), pad_id, np.int32),
          "targets": np.zeros((num_rows, seq_len), np.int32),
          "loss_mask": np.zeros((num_rows, seq_len), np.float32),
          "positions": np.zeros((num_rows, seq_len), np.int32),
          "segment_ids": np.zeros((num_rows, seq_len), np.int32)}


def build_batch(examples: Sequence[SFTExample], rows: Sequence[Sequence[int]], seq_len: int,
                pad_id: int = 0, num_rows: Optional[int] = None) -> dict[str, np.ndarray]:
  """Batch arrays [R, seq_len] of `rows` (lists of indices into `examples`).

  Args:
    examples: tokenised examples, each fitting a row.
    rows: example indices per row (e.g. from pack_rows).
    seq_len: slots per row.
    pad_id: input id of padding slots.
    num_rows: R (>= len(rows)); extra rows are all padding. Default len(rows).
  Returns:
    dict of tokens, targets, loss_mask, positions, segment_ids (module docstring).
  Raises:
    ValueError: a row's examples need more than seq_len slots.
  """
  R = len(rows) if num_rows is None else num_rows
  b = empty_batch(R, seq_len, pad_id)
  for r, row in enumerate(rows):
    at = 0
    for seg, i in enumerate(row, 1):
      ex = examples[i]
      n = len(ex.ids) - 1
      if at + n > seq_len:
        raise ValueError(f"row {r} needs more than seq_len={seq_len} slots")
      b["tokens"][r, at:at + n] = ex.ids[:-1]
      b["targets"][r, at:at + n] = ex.ids[1:]
      b["loss_mask"][r, at:at + n] = ex.loss_mask[1:]
      b["positions"][r, at:at + n] = np.arange(n)
      b["segment_ids"][r, at:at + n] = seg
      at += n
  return b


# ---------------------------------------------------------------------------------- dataset
class SFTData:
  """The tokenised train and eval examples of an SFT config (built eagerly, counts exact).

  Args:
    config: a `default_sft_data_config()`-shaped ConfigDict or dict.
    tokenizer: r1jax Tokenizer.
  Raises:
    ValueError: bad config values, malformed records (on_error="raise"), or no train example
      left after filtering.
    FileNotFoundError: a JSONL file is missing.
  """

  def __init__(self, config: Any, tokenizer):
    c = sup.resolve_data_config(default_sft_data_config(), config, "SFT", SOURCES, OVERLONG)
    self.config, self.tokenizer = c, tokenizer
    self.seq_len = int(c["seq_len"])
    self.counts = {"malformed": 0, "train_records": 0, "eval_records": 0, "overlong_skipped": 0,
                   "truncated": 0, "no_trained_tokens": 0}
    read = lambda path: read_sft_jsonl(path, on_error=c["on_error"], r1_format=c["r1_format"])
    records = (champ_sft_records(c["r1_format"]) if c["source"] == "champ" else
               sup.read_train_files(c, read, self.counts, "SFT records"))
    records, eval_records = sup.split_eval(records, c, read, self.counts)
    self.train = self._tokenize(records)
    self.eval = self._tokenize(eval_records)
    sup.check_not_empty(self.train, c, self.counts, "SFT train examples")
    if any(self.counts[k] for k in ("overlong_skipped", "truncated", "no_trained_tokens")):
      log.warning("SFT data: %d over-long examples skipped, %d truncated to seq_len=%d, %d "
                  "without trained tokens dropped", self.counts["overlong_skipped"],
                  self.counts["truncated"], self.seq_len, self.counts["no_trained_tokens"])
    self.fingerprint = sup.fingerprint(c, tokenizer, [len(e.ids) for e in self.train])

  def _tokenize(self, records: list[dict]) -> list[SFTExample]:
    c, out = self.config, []
    for rec in records:
      msgs = rec["messages"]
      if c["system_prompt"] and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": c["system_prompt"]}] + msgs
      ids, mask = tokenize_messages(msgs, self.tokenizer, c["format"])
      over = len(ids) - 1 > self.seq_len
      fit = fit_length(ids, mask, self.seq_len, c["overlong"])
      if fit is None:
        self.counts["overlong_skipped" if over and c["overlong"] == "skip"
                    else "no_trained_tokens"] += 1
        continue
      self.counts["truncated"] += int(over)
      out.append(SFTExample(rec["id"], *fit))
    return out

  def summary(self) -> dict:
    """Counts and token statistics (JSON-serialisable)."""
    n = np.array([len(e.ids) for e in self.train])
    trained = int(sum(int(e.loss_mask[1:].sum()) for e in self.train))
    return {**self.counts, "train": len(self.train), "eval": len(self.eval),
            "seq_len": self.seq_len, "format": self.config["format"],
            "source": self.config["source"], "train_tokens": int(n.sum()),
            "train_trained_tokens": trained, "max_tokens": int(n.max()),
            "mean_tokens": round(float(n.mean()), 1)}

  def train_iterator(self, batch_size: int) -> "SFTBatchIterator":
    """Endless train batches of `batch_size` rows (epochs of freshly shuffled, packed rows)."""
    return SFTBatchIterator(self.train, self.seq_len, int(batch_size),
                            packing=bool(self.config["packing"]),
                            shuffle=bool(self.config["shuffle"]), seed=int(self.config["seed"]),
                            pad_id=self.tokenizer.pad_id,
                            fingerprint=f"{self.fingerprint}/{int(batch_size)}")

  def eval_batches(self, batch_size: int) -> list[dict[str, np.ndarray]]:
    """The eval split packed in file order into batches of `batch_size` rows (the last one
    padded with empty rows)."""
    rows = pack_rows([len(e.ids) - 1 for e in self.eval], self.seq_len,
                     bool(self.config["packing"]))
    return [build_batch(self.eval, rows[i:i + batch_size], self.seq_len,
                        self.tokenizer.pad_id, batch_size)
            for i in range(0, len(rows), batch_size)]


class SFTBatchIterator(sup.EpochState):
  """Endless iterator of packed train batches with an exact, JSON-serialisable position.

  Epoch e: the examples in a permutation seeded by (seed, e) (file order without shuffle),
  packed greedily into rows, split into batches of `batch_size` rows; the last batch of an
  epoch is padded with empty rows. The state is (epoch, batch index): a batch is a pure
  function of it, so resuming gives the batches the original run would have seen.
  """

  STATE_FORMAT = "r1jax.data.SFTBatchIterator/1"
  WHAT = "SFT"

  def __init__(self, examples: Sequence[SFTExample], seq_len: int, batch_size: int, *,
               packing: bool, shuffle: bool, seed: int, pad_id: int, fingerprint: str = ""):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.examples, self.seq_len, self.batch_size = list(examples), seq_len, batch_size
    self.packing, self.shuffle, self.seed, self.pad_id = packing, shuffle, seed, pad_id
    self.fingerprint = fingerprint
    self.epoch, self.index = 0, 0
    self._rows_epoch, self._rows = -1, []

  def _epoch_rows(self, epoch: int) -> list[list[int]]:
    if self._rows_epoch != epoch:
      order = np.arange(len(self.examples))
      if self.shuffle:
        order = np.random.RandomState([self.seed, epoch]).permutation(len(self.examples))
      rows = pack_rows([len(self.examples[i].ids) - 1 for i in order], self.seq_len, self.packing)
      self._rows = [[int(order[j]) for j in row] for row in rows]
      self._rows_epoch = epoch
    return self._rows

  def batches_per_epoch(self) -> int:
    """Batches in one epoch (epochs differ slightly when packing shuffled examples)."""
    return -(-len(self._epoch_rows(self.epoch)) // self.batch_size)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rows = self._epoch_rows(self.epoch)
    if self.index * self.batch_size >= len(rows):
      self.epoch, self.index = self.epoch + 1, 0
      rows = self._epoch_rows(self.epoch)
    chunk = rows[self.index * self.batch_size:(self.index + 1) * self.batch_size]
    self.index += 1
    return build_batch(self.examples, chunk, self.seq_len, self.pad_id, self.batch_size)

  def epoch_progress(self) -> float:
    """Epochs done as a float (e.g. 1.5 = half-way through the second epoch)."""
    n = len(self._epoch_rows(self.epoch))
    return self.epoch + min(self.index * self.batch_size, n) / max(n, 1)
