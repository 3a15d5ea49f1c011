"""Bounded I/O between the trusted parent and a sandboxed child, and the answer format.

Everything a sandboxed child writes is untrusted: it may stop mid-frame, claim a huge frame,
shrink its pipes, flood them, or craft an answer whose parsing is slow. So every read and
write here is non-blocking with a deadline, frames are capped in size, and answers are JSON
(linear-time C parser; no `ast.literal_eval`, whose set and dict building is quadratic on
crafted hash collisions) converted to Python values with a cap on depth and on the number of
values whose hash the child can choose freely (see `decode_answer`).
"""

from __future__ import annotations

import json
import os
import select
import time
from typing import Any

# Values whose hash a child can make collide without bound (big ints, complex numbers,
# tuples, frozensets): at most this many per answer, so that building sets or dicts of them
# (here or in a test's own code) stays far from quadratic blow-up.
MAX_HASH_RISKY = 4096
MAX_DEPTH = 100
_P61 = (1 << 61) - 1  # ints below this hash to themselves


class Deadline(Exception):
  """A read or write did not complete before its deadline."""


class Closed(Exception):
  """The other end closed its pipe (EOF, or EPIPE on write)."""


class Oversize(Exception):
  """A frame announced more bytes than allowed."""


def _wait(fd: int, events: int, deadline: float) -> None:
  left = deadline - time.monotonic()
  if left <= 0:
    raise Deadline()
  p = select.poll()
  p.register(fd, events)
  if not p.poll(max(1, int(left * 1000))) and time.monotonic() >= deadline:
    raise Deadline()


def write_all(fd: int, data: bytes, deadline: float) -> None:
  """Write `data` to non-blocking `fd` before `deadline` (monotonic s).

  Raises:
    Deadline: the child did not read it in time. Closed: the child closed its end.
  """
  view = memoryview(data)
  while view:
    _wait(fd, select.POLLOUT, deadline)
    try:
      view = view[os.write(fd, view[:1 << 16]):]
    except (BlockingIOError, InterruptedError):
      continue
    except OSError:
      raise Closed() from None


def write_frame(fd: int, data: bytes, deadline: float) -> None:
  """One length-prefixed frame (4-byte big-endian length, then the data); see write_all."""
  write_all(fd, len(data).to_bytes(4, "big") + data, deadline)


def read_some(fd: int, limit: int, deadline: float) -> bytes:
  """Up to `limit` bytes from non-blocking `fd` (b"" on EOF) before `deadline`.

  Raises:
    Deadline: nothing arrived in time.
  """
  while True:
    _wait(fd, select.POLLIN, deadline)
    try:
      return os.read(fd, limit)
    except (BlockingIOError, InterruptedError):
      continue


def read_frame(fd: int, cap: int, deadline: float) -> bytes:
  """One length-prefixed frame of at most `cap` bytes.

  Raises:
    Deadline, Closed (EOF before a whole frame), Oversize (announced length > cap).
  """
  buf = bytearray()
  need = 4
  while len(buf) < need:
    data = read_some(fd, min(1 << 20, need - len(buf)), deadline)
    if not data:
      raise Closed()
    buf += data
    if need == 4 and len(buf) == 4:
      size = int.from_bytes(buf, "big")
      if size > cap:
        raise Oversize(size)
      need += size
  return bytes(buf[4:])


def encode_request(name: str, args: tuple, kwargs: dict) -> bytes:
  """The call frame sent to the child: a Python literal of (name, args, kwargs).

  Raises:
    ValueError: arguments that do not round-trip as literals (the child evaluates the text).
  """
  import ast
  req = (name, tuple(args), dict(kwargs))
  text = repr(req)
  try:
    ok = ast.literal_eval(text) == req  # our own data: a cheap check, not child output
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    ok = False
  if not ok:
    raise ValueError("call arguments must be Python literals")
  return text.encode("utf-8", "surrogatepass")


class _Budget:
  def __init__(self):
    self.risky = 0

  def charge(self) -> None:
    self.risky += 1
    if self.risky > MAX_HASH_RISKY:
      raise ValueError(f"answer holds more than {MAX_HASH_RISKY} tuples / big numbers")


def _untag(o: Any, budget: _Budget, depth: int) -> Any:
  if depth > MAX_DEPTH:
    raise ValueError("answer nested too deeply")
  if isinstance(o, list):
    return [_untag(x, budget, depth + 1) for x in o]
  if isinstance(o, dict):
    if len(o) != 1:
      raise ValueError("malformed tagged value")
    (tag, body), = o.items()
    if tag == "bytes" and isinstance(body, str):
      return body.encode("latin-1")
    if not isinstance(body, list):
      raise ValueError("malformed tagged value")
    if tag == "complex" and len(body) == 2 and all(type(x) in (int, float) for x in body):
      budget.charge()
      return complex(*body)
    items = [_untag(x, budget, depth + 1) for x in body]
    if tag == "tuple":
      budget.charge()
      return tuple(items)
    if tag == "frozenset":
      budget.charge()
      return frozenset(items)
    if tag == "set":
      return set(items)
    if tag == "dict" and all(isinstance(p, list) and len(p) == 2 for p in items):
      return {k: v for k, v in items}
    raise ValueError(f"malformed tagged value {tag!r}")
  if type(o) is int and not -_P61 < o < _P61:
    budget.charge()
  return o


def decode_answer(data: bytes) -> tuple[str, Any]:
  """(kind, value) of an answer frame (see r1jax/rewards/sandbox_runner.py).

  Raises:
    ValueError: not JSON, not a [kind, body] pair, a malformed tagged value, nesting deeper
      than MAX_DEPTH, more than MAX_HASH_RISKY hash-controllable values, unhashable set
      members or dict keys, or an integer of more than 4300 digits (Python's limit).
  """
  try:
    msg = json.loads(data)
  except (ValueError, RecursionError, MemoryError) as e:
    raise ValueError(f"answer is not JSON: {type(e).__name__}") from None
  if not (isinstance(msg, list) and len(msg) == 2 and isinstance(msg[0], str)):
    raise ValueError("answer is not a [kind, value] pair")
  kind, body = msg
  if kind in ("ok",):
    try:
      return kind, _untag(body, _Budget(), 0)
    except (TypeError, RecursionError, MemoryError) as e:  # unhashable members, ...
      raise ValueError(f"malformed answer value: {type(e).__name__}") from None
  if not isinstance(body, (str, type(None))):
    raise ValueError("malformed answer")
  return kind, body
