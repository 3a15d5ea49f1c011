"""Train-batch iteration of GRPO prompt data: a grain MapDataset split into per-process
blocks (`BlockShard`), served by a `PromptIterator` whose state is the batch index."""

from __future__ import annotations

import logging
from typing import Iterator, Mapping

import grain

log = logging.getLogger(__name__)

STATE_FORMAT = "r1jax.data.PromptIterator/1"


class BlockShard(grain.MapDataset):
  """Shard `index` of `count` of a MapDataset, in blocks: element m is the parent's
  (m // block) * block * count + index * block + m % block (see train_iterator)."""

  def __init__(self, parent: grain.MapDataset, block: int, index: int, count: int):
    super().__init__(parent)
    self._block, self._index, self._count = block, index, count

  def __len__(self) -> int:
    return len(self._parent) // self._count

  def __getitem__(self, m):
    if isinstance(m, slice):
      return self.slice(m)
    b = self._block
    return self._parent[(m // b) * b * self._count + self._index * b + m % b]

  def __str__(self) -> str:
    return f"BlockShard(block={self._block}, index={self._index}, count={self._count})"


class PromptIterator:
  """Endless iterator of train batches with checkpointable state.

  Wraps a grain DatasetIterator over a MapDataset, so the state is just the next batch index
  and restoring is O(1). Batches are deterministic functions of (config, tokenizer, batch index).
  """

  def __init__(self, it, fingerprint: str, batch_size: int):
    """Internal: use `PromptData.train_iterator`."""
    self._it = it
    self._fingerprint = fingerprint
    self.batch_size = batch_size
    self.local_batch_size = batch_size  # this shard's examples per batch

  def __iter__(self) -> Iterator[list[dict]]:
    return self

  def __next__(self) -> list[dict]:
    return next(self._it)

  def get_state(self) -> dict:
    """JSON-serialisable state: {"format", "fingerprint", "batch_size", "grain"}."""
    return {"format": STATE_FORMAT, "fingerprint": self._fingerprint,
            "batch_size": self.batch_size, "grain": self._it.get_state()}

  def set_state(self, state: Mapping, *, strict: bool = True) -> None:
    """Restores a `get_state()`; the next batches are those the saved iterator would yield.

    Args:
      state: a dict from get_state (e.g. after a JSON round trip).
      strict: a state saved with another data config / tokenizer / batch size raises; with
        strict=False it only logs a warning (the batches then differ from the original run).

    Raises:
      ValueError: not a PromptIterator state, or (strict) a fingerprint mismatch.
    """
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
      raise ValueError(f"not a {STATE_FORMAT} state: {state!r:.200}")
    if state.get("fingerprint") != self._fingerprint:
      msg = ("iterator state was saved with a different data config, tokenizer or batch size "
             f"({state.get('fingerprint')} != {self._fingerprint})")
      if strict:
        raise ValueError(msg + "; pass strict=False to restore the position anyway")
      log.warning("%s; restoring the position anyway", msg)
    self._it.set_state(dict(state["grain"]))
