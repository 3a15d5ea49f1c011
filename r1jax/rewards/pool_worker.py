"""Worker side of the reward pool (r1jax/rewards/pool.py): a fresh interpreter that scores
(sample, reward function) pairs sent by the trainer and reports each result as it finishes.

Protocol: worker -> ("ready", pid) once warm; parent -> a chunk [(i, fn_indices,
completion, example), ...]; worker -> ("r", i, f, value, error) per (sample, function), in
order, so the parent knows which pair is running and when it started; parent -> None to
stop. Both ends are trusted (the untrusted code of the code reward runs one level further
down, in r1jax.rewards.sandbox).
"""

from __future__ import annotations

import collections
import math
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Optional

__all__ = ["call_reward", "worker_main", "worker_entry", "WORKER_CMD", "WorkerProcess"]

WORKER_CMD = ("import sys; from r1jax.rewards.pool_worker import worker_entry; "
              "worker_entry(int(sys.argv[1]))")


def call_reward(fn, completion: str, example: dict, kwargs: dict
          ) -> tuple[float, Optional[tuple[str, str]]]:
  """Run one reward function; never raises. Returns (value, None) or (0.0, (kind, detail))."""
  try:
    value = float(fn(completion, example, **kwargs))
    if not math.isfinite(value):
      raise ValueError(f"reward function returned a non-finite value {value}")
    return value, None
  except Exception as e:  # pylint: disable=broad-except
    return 0.0, (type(e).__name__, traceback.format_exc(limit=-4)[-2000:])


def watch_parent(parent_pid: int) -> None:
  """Worker-side thread: exit when the parent is gone. The parent's atexit hook only runs on
  a clean exit, and EOF on the pipe is only seen between chunks, so a SIGKILLed trainer
  would otherwise leave a busy or hung worker behind."""
  while True:
    time.sleep(1.0)
    if os.getppid() != parent_pid:
      os._exit(0)  # pylint: disable=protected-access


def worker_main(conn, fns: list, kwargs: list[dict], warmups: list, parent_pid: int) -> None:
  """Worker loop: warm up, report ready, then score chunks until told to stop."""
  # Ctrl-C goes to the whole process group; the parent decides how to shut down.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  threading.Thread(target=watch_parent, args=(parent_pid,), daemon=True).start()
  for warm in warmups:
    try:
      warm()
    except Exception as e:  # pylint: disable=broad-except
      conn.send(("warn", f"reward warm-up {warm.__qualname__} failed: {e!r}"))
  conn.send(("ready", os.getpid()))
  while True:
    try:
      chunk = conn.recv()
    except (EOFError, OSError):
      return
    if chunk is None:
      return
    for i, fidx, completion, example in chunk:
      for f in fidx:
        value, err = call_reward(fns[f], completion, example, kwargs[f])
        conn.send(("r", i, f, value, err))


def worker_entry(fd: int) -> None:
  """Entry point of a worker interpreter (`python -c ...`); `fd` is its end of the pipe."""
  conn = multiprocessing.connection.Connection(fd)
  parent_path = conn.recv()  # plain strings: readable before any user module is importable
  sys.path[:] = parent_path + [p for p in sys.path if p not in parent_path]
  payload = conn.recv()  # unpickling imports the reward functions' modules
  worker_main(conn, *payload)


class WorkerProcess:
  """The parent's handle of one worker process: its process, pipe, readiness and the
  (sample, function) pairs sent to it and not yet reported, in order."""

  def __init__(self, slot: int, proc: subprocess.Popen, conn):
    self.slot = slot
    self.proc = proc
    self.conn = conn
    self.ready = False
    self.started = time.monotonic()
    self.pending: collections.deque = collections.deque()  # (i, f) not yet reported, in order
    self.last_progress = 0.0  # when the head of `pending` started (parent clock)

  def alive(self) -> bool:
    return self.proc.poll() is None

  def kill(self) -> None:
    """SIGKILL the process, reap it and release its pipe."""
    try:
      self.proc.kill()
      self.proc.wait(timeout=5.0)
    except (OSError, subprocess.TimeoutExpired):
      pass
    try:
      self.conn.close()
    except OSError:
      pass
