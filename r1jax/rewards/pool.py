"""Reward computation in a small pool of worker processes with per-sample timeouts.

Rule-based rewards (DeepSeek-R1, Guo et al. 2025, Sec. 2.2.2) call sympy (math_verify) and
third-party scorers (reasoning-gym), which can hang or blow up on adversarial model output.
Training must not stall or crash on that, so each (sample, reward function) pair gets a
deadline: if it does not finish within `timeout_s`, its worker process is killed (the only
way to stop a stuck Python call) and replaced, the pair scores 0, and the rest of the
worker's chunk is re-queued. `concurrent.futures.ProcessPoolExecutor` cannot kill a single
task, hence this small pool of worker processes, one duplex pipe each (a per-worker pipe,
unlike a shared queue, cannot be corrupted by killing its reader mid-read).

Workers are fresh interpreters started with `subprocess` (fork+exec, i.e. no fork of the
trainer's state: the trainer runs JAX, which is multithreaded, and a plain fork of a
multithreaded process can deadlock the child). Unlike multiprocessing's "spawn" they do
not re-import the parent's `__main__`, so they behave the same under scripts, `python -`,
notebooks and `python -m`. The parent's sys.path is sent to each worker, and reward
functions are sent by reference (module + name), so they must live in an importable module
(not `__main__`).

Worker side and protocol: r1jax/rewards/pool_worker.py.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import inspect
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Optional, Sequence, Union

import numpy as np
from absl import logging

from r1jax.rewards import pool_worker, registry

# Samples per chunk sent to a worker (upper bound; small batches use smaller chunks so
# that every worker gets some work).
MAX_CHUNK = 16
# A worker that is not ready (imports + warm-up) after this many seconds is restarted.
STARTUP_TIMEOUT_S = 120.0
# Consecutive failed starts of one worker slot before giving up (broken environment).
MAX_START_FAILURES = 3


@dataclasses.dataclass
class RewardResult:
  """Rewards of one batch of N completions.

  total: [N] float32, sum over functions of weight * reward.
  per_function: name -> [N] float32 unweighted reward (0 where it timed out or raised).
  timed_out: [N] bool, some function exceeded the per-sample timeout on this sample.
  errors: [N] bool, some function raised (or its worker crashed) on this sample.
  """
  total: np.ndarray
  per_function: dict[str, np.ndarray]
  timed_out: np.ndarray
  errors: np.ndarray


def _snippet(text: str, n: int = 160) -> str:
  """Short printable excerpt (head ... tail) of a possibly long completion, for logs."""
  if len(text) <= n:
    return repr(text)
  return f"{text[:n // 2]!r} ... {text[-n // 2:]!r} ({len(text)} chars)"


# Live computers, closed at interpreter exit (workers are not multiprocessing daemons).
_LIVE: "weakref.WeakSet[RewardComputer]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
  for rc in list(_LIVE):
    rc.close()


@dataclasses.dataclass
class _CallState:
  completions: Sequence[str]
  examples: Sequence[dict]
  values: np.ndarray  # [F, N]
  timed_out: np.ndarray  # [N]
  errors: np.ndarray  # [N]
  todo: collections.deque  # (i, fn index tuple)
  remaining: int  # (sample, function) pairs not yet scored


class RewardComputer:
  """Weighted sum of registered reward functions, computed in worker processes.

  Example:
    with RewardComputer("accuracy:1.0,format:0.2", num_workers=2) as rc:
      res = rc(completions, examples)   # res.total [N] float32

  Args:
    spec: [(name, weight), ...] or a spec string "name:weight,..." (registry names).
    num_workers: worker processes; 0 runs inline in the calling process (no timeout; for
      debugging and tests).
    timeout_s: per (sample, function) deadline in seconds, measured from when the worker
      starts that pair; None disables. A pair that misses it scores 0, sets timed_out, is
      logged, and its worker is killed and respawned. Rewards with their own limits (the
      `code` reward's per-sample budget, math_verify's timeout) should stay about 1 s
      below it, so that a slow sample ends as a clean 0 inside the worker.
    fn_kwargs: name -> extra keyword arguments of that function (e.g.
      {"format": {"full": 1.0, "partial": 0.5}}); must be picklable.
    chunk_size: samples per chunk sent to a worker (default: N / (4 * num_workers), at
      most MAX_CHUNK).

  Workers start in the background at construction (fresh interpreters; they exit with
  the parent: atexit hook, EOF on their pipe, or a parent-pid watchdog) and import
  their heavy dependencies there; the first call waits for them (`wait_ready` to block
  earlier). Reward functions never make a call raise: an exception scores 0, sets
  `errors` and is logged once per (function, exception type).

  Each function's start-up check (registry.STARTUP_CHECKS, e.g. the code reward's sandbox
  probe) runs here, in the calling process, before any worker starts; its figures join
  `stats()`. `heldout_accuracy` scores with the shared held-out scorer in the same workers.

  Raises:
    ValueError: bad spec, unknown names in fn_kwargs, kwargs the function does not accept,
      a function that cannot be sent to a worker (lambda / local function), num_workers < 0,
      or a start-up check's ValueError (e.g. an unknown sandbox mode).
    r1jax.rewards.sandbox.SandboxUnavailable: the code reward's isolation is unavailable.
    RuntimeError (from calls): workers that repeatedly fail to start; use after close().
  """

  def __init__(self, spec: Union[str, Sequence[tuple[str, float]]], *, num_workers: int = 2,
               timeout_s: Optional[float] = 5.0,
               fn_kwargs: Optional[dict[str, dict[str, Any]]] = None,
               chunk_size: Optional[int] = None):
    pairs = registry.parse_reward_spec(spec) if isinstance(spec, str) else list(spec)
    if not pairs:
      raise ValueError("empty reward spec")
    for name, weight in pairs:
      if name not in registry.REWARD_FUNCTIONS:
        raise ValueError(f"unknown reward function {name!r}; "
                         f"known: {sorted(registry.REWARD_FUNCTIONS)}")
      if not math.isfinite(float(weight)):
        raise ValueError(f"weight of {name!r} must be finite, got {weight!r}")
    if num_workers < 0:
      raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if timeout_s is not None and timeout_s <= 0:
      raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
    fn_kwargs = dict(fn_kwargs or {})
    unknown = set(fn_kwargs) - {n for n, _ in pairs}
    if unknown:
      raise ValueError(f"fn_kwargs for reward functions not in the spec: {sorted(unknown)}")

    self.names = [n for n, _ in pairs]
    self.weights = np.asarray([float(w) for _, w in pairs], np.float32)
    self._fns = [registry.REWARD_FUNCTIONS[n] for n in self.names]
    self._kwargs = [dict(fn_kwargs.get(n, {})) for n in self.names]
    for name, fn, kw in zip(self.names, self._fns, self._kwargs):
      try:
        inspect.signature(fn).bind("", {}, **kw)
      except TypeError as e:
        raise ValueError(f"fn_kwargs {kw} do not fit reward function {name!r}: {e}") from None
    # Checks that must pass before any sample is scored (e.g. the code sandbox's isolation),
    # run here in the trainer: a failure stops the run at start-up instead of scoring 0s.
    self.startup_metrics: dict[str, float] = {}
    for name, kw in zip(self.names, self._kwargs):
      check = registry.STARTUP_CHECKS.get(name)
      if check is not None:
        self.startup_metrics.update({f"{name}/{k}": v for k, v in check(kw).items()})
    # The held-out scorer rides along as one more function (index len(names)).
    self._fns.append(registry.HELDOUT_ACCURACY)
    self._kwargs.append({})
    self._fn_names = self.names + ["heldout_accuracy"]
    self.num_workers = int(num_workers)
    self.timeout_s = timeout_s
    self.chunk_size = chunk_size
    self.timeout_counts: collections.Counter = collections.Counter()  # name -> count
    self.error_counts: collections.Counter = collections.Counter()  # (name, kind) -> count
    self.restarts = 0
    self._lock = threading.Lock()
    self._closed = False
    self._workers: list[pool_worker.WorkerProcess] = []
    self._start_failures = [0] * self.num_workers
    if self.num_workers:
      try:
        pickle.dumps((self._fns, self._kwargs))
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError("reward functions and fn_kwargs must be picklable (module-level "
                         f"functions) to run in worker processes: {e}") from None
      in_main = [n for n, fn in zip(self.names, self._fns) if fn.__module__ == "__main__"]
      if in_main:
        raise ValueError(f"reward functions {in_main} are defined in __main__; move them to "
                         "an importable module so that worker processes can load them")
      self._warmups = list({id(w): w for w in (registry.WARMUPS.get(n) for n in self.names)
                            if w is not None}.values())
      self._workers = [self._spawn(k) for k in range(self.num_workers)]
      _LIVE.add(self)

  # ---------------------------------------------------------------- lifecycle

  def _spawn(self, slot: int) -> pool_worker.WorkerProcess:
    parent_conn, child_conn = multiprocessing.Pipe(duplex=True)
    fd = child_conn.fileno()
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([pkg_root] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.Popen([sys.executable, "-c", pool_worker.WORKER_CMD, str(fd)],
                            pass_fds=(fd,), stdin=subprocess.DEVNULL, env=env, close_fds=True)
    child_conn.close()  # so that the parent sees EOF when the child dies
    try:
      parent_conn.send(list(sys.path))
      parent_conn.send((self._fns, self._kwargs, self._warmups, os.getpid()))
    except OSError:
      pass  # died at once: seen as EOF by the next wait
    return pool_worker.WorkerProcess(slot, proc, parent_conn)

  def _replace(self, w: pool_worker.WorkerProcess) -> None:
    """Kill worker `w` and start a fresh one in its slot."""
    w.kill()
    self.restarts += 1
    self._workers[w.slot] = self._spawn(w.slot)

  def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> bool:
    """Block until every worker has finished its imports and warm-up.

    Returns:
      True if all are ready within `timeout_s` seconds (always True inline).
    """
    deadline = time.monotonic() + timeout_s
    with self._lock:
      self._check_open()
      while not all(w.ready for w in self._workers):
        left = deadline - time.monotonic()
        if left <= 0:
          return False
        self._pump(None, min(left, 1.0))
    return True

  def close(self) -> None:
    """Stop the workers (graceful, then SIGKILL). Idempotent."""
    if self._closed:
      return
    self._closed = True
    for w in self._workers:
      if not w.ready:  # still importing: it would not read the stop message for a while
        w.kill()
        continue
      try:
        w.conn.send(None)
      except (OSError, ValueError):
        pass
    deadline = time.monotonic() + 2.0
    for w in self._workers:
      try:
        w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        pass
      w.kill()
    self._workers = []

  def __enter__(self) -> "RewardComputer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  def stats(self) -> dict[str, int]:
    """Cumulative counters since construction, for metrics.

    Returns:
      {"timeouts": pairs that missed the deadline, "errors": pairs that raised or whose
      worker died, "worker_crashes": workers that exited while scoring, "worker_restarts":
      workers replaced (timeouts and crashes), "timeouts/<name>": per function, and the
      start-up checks' figures, e.g. "code/sandbox_level" (2 nsjail+cgroup, 1 nsjail, 0 none:
      the code sandbox's isolation in effect)}.
    """
    out = {"timeouts": sum(self.timeout_counts.values()),
           "errors": sum(self.error_counts.values()),
           "worker_crashes": sum(v for (_, kind), v in self.error_counts.items()
                                 if kind == "WorkerDied"),
           "worker_restarts": self.restarts}
    out.update({f"timeouts/{n}": c for n, c in self.timeout_counts.items()})
    out.update(self.startup_metrics)
    return out

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError("RewardComputer is closed")

  # ---------------------------------------------------------------- scoring

  def __call__(self, completions: Sequence[str], examples: Sequence[dict]) -> RewardResult:
    """Score N completions against their examples.

    Args:
      completions: N generated texts (str).
      examples: N example dicts ("question", "answer", "task", "metadata").
    Returns:
      RewardResult (see its docstring).
    Raises:
      ValueError: len(completions) != len(examples).
      RuntimeError: closed, or a worker failed to start MAX_START_FAILURES times in a row
        (the computer is then closed).
    """
    nf = len(self.names)
    st = self._score(completions, examples, tuple(range(nf)))
    per_function = {name: st.values[f] for f, name in enumerate(self.names)}
    total = (self.weights[:, None] * st.values[:nf]).sum(axis=0).astype(np.float32)
    return RewardResult(total, per_function, st.timed_out, st.errors)

  def heldout_accuracy(self, completions: Sequence[str], examples: Sequence[dict]
                       ) -> np.ndarray:
    """Held-out correctness of N completions by `accuracy.heldout_accuracy`, the scorer the
    GRPO stage's in-loop evaluation and the eval stage share (whatever this computer's spec
    and options), in the same workers and with the same per-sample timeout.

    Returns:
      [N] float32 of 1.0 / 0.0 (0.0 where it timed out or raised).
    Raises:
      As `__call__`.
    """
    return self._score(completions, examples, (len(self.names),)).values[len(self.names)]

  def _score(self, completions, examples, fidx: tuple[int, ...]) -> _CallState:
    if len(completions) != len(examples):
      raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
    n = len(completions)
    st = _CallState(completions, examples, np.zeros((len(self._fns), n), np.float32),
                    np.zeros(n, bool), np.zeros(n, bool),
                    collections.deque((i, fidx) for i in range(n)), n * len(fidx))
    with self._lock:
      self._check_open()
      if self.num_workers == 0:
        self._run_inline(st)
      else:
        self._run_pool(st)
    return st

  def _record(self, st: _CallState, i: int, f: int, value: float,
              err: Optional[tuple[str, str]]) -> None:
    st.values[f, i] = value
    st.remaining -= 1
    if err is not None:
      st.errors[i] = True
      kind, detail = err
      key = (self._fn_names[f], kind)
      self.error_counts[key] += 1
      if self.error_counts[key] == 1:  # once per function and kind
        logging.warning("reward %r raised %s on sample %d (task=%s), scored 0 (logged once "
                        "per function/kind). completion: %s\n%s", self._fn_names[f], kind, i,
                        st.examples[i].get("task"), _snippet(st.completions[i]), detail)

  def _run_inline(self, st: _CallState) -> None:
    for i, fidx in st.todo:
      for f in fidx:
        value, err = pool_worker.call_reward(self._fns[f], st.completions[i], st.examples[i],
                                             self._kwargs[f])
        self._record(st, i, f, value, err)
    st.todo.clear()

  def _run_pool(self, st: _CallState) -> None:
    n = len(st.completions)
    chunk = self.chunk_size or max(1, min(MAX_CHUNK, math.ceil(n / (4 * self.num_workers))))
    try:
      while st.remaining > 0:
        self._dispatch(st, chunk)
        self._pump(st, None)
    finally:
      # Only after an exception (e.g. KeyboardInterrupt) can work still be in flight: drop
      # those workers so that stale results never leak into a later call.
      for w in list(self._workers):
        if w.pending:
          self._replace(w)

  def _dispatch(self, st: _CallState, chunk: int) -> None:
    """Send a chunk to every idle ready worker while there is work."""
    for w in list(self._workers):
      if not st.todo:
        return
      if not w.ready or w.pending:
        continue
      items = [st.todo.popleft() for _ in range(min(chunk, len(st.todo)))]
      msg = [(i, fidx, st.completions[i], st.examples[i]) for i, fidx in items]
      try:
        w.conn.send(msg)
      except (OSError, ValueError):
        st.todo.extendleft(reversed(items))  # died while idle: nothing started
        self._on_death(st, w)
        continue
      w.pending.extend((i, f) for i, fidx in items for f in fidx)
      w.last_progress = time.monotonic()

  def _pump(self, st: Optional[_CallState], max_wait: Optional[float]) -> None:
    """Wait for worker messages, deaths or deadlines (at most `max_wait` s) and handle them."""
    now = time.monotonic()
    deadlines = []
    for w in self._workers:
      if not w.ready:
        deadlines.append(w.started + STARTUP_TIMEOUT_S)
      elif w.pending and self.timeout_s is not None:
        deadlines.append(w.last_progress + self.timeout_s)
    wait = max(0.0, min(deadlines) - now) if deadlines else None
    if max_wait is not None:
      wait = max_wait if wait is None else min(wait, max_wait)
    # A dead worker's pipe reads as EOF (only the child held the other end).
    by_conn = {w.conn: w for w in self._workers}
    for conn in multiprocessing.connection.wait(list(by_conn), timeout=wait):
      w = by_conn[conn]
      if not self._drain(st, w):
        self._on_death(st, w)
    now = time.monotonic()
    for w in list(self._workers):
      if not w.ready and now > w.started + STARTUP_TIMEOUT_S:
        logging.warning("reward worker %d not ready after %.0f s; restarting it", w.slot,
                        STARTUP_TIMEOUT_S)
        self._on_death(st, w)
      elif (w.pending and self.timeout_s is not None
            and now > w.last_progress + self.timeout_s and st is not None):
        self._on_timeout(st, w, now)

  def _drain(self, st: Optional[_CallState], w: pool_worker.WorkerProcess) -> bool:
    """Read every available message of `w`. Returns False if its process is gone."""
    try:
      while w.conn.poll():
        msg = w.conn.recv()
        if msg[0] == "r":
          _, i, f, value, err = msg
          if not w.pending or w.pending[0] != (i, f) or st is None:
            logging.error("reward worker %d sent an unexpected result for (%d, %d)", w.slot, i, f)
            continue
          w.pending.popleft()
          w.last_progress = time.monotonic()
          self._record(st, i, f, value, err)
        elif msg[0] == "ready":
          w.ready = True
          self._start_failures[w.slot] = 0
        elif msg[0] == "warn":
          logging.warning("reward worker %d: %s", w.slot, msg[1])
    except (EOFError, OSError):
      return False
    return True

  def _requeue_rest(self, st: _CallState, w: pool_worker.WorkerProcess) -> None:
    """Put the pairs of `w` after the head back at the front of the queue, grouped by sample."""
    rest = list(w.pending)[1:]
    w.pending.clear()
    groups: dict[int, list[int]] = {}
    for i, f in rest:
      groups.setdefault(i, []).append(f)
    st.todo.extendleft(reversed([(i, tuple(fs)) for i, fs in groups.items()]))

  def _on_timeout(self, st: _CallState, w: pool_worker.WorkerProcess, now: float) -> None:
    i, f = w.pending[0]
    name = self._fn_names[f]
    st.values[f, i] = 0.0
    st.timed_out[i] = True
    st.remaining -= 1
    self.timeout_counts[name] += 1
    logging.warning("reward %r timed out after %.1f s on sample %d (task=%s); scored 0, "
                    "restarting worker %d. completion: %s", name, now - w.last_progress, i,
                    st.examples[i].get("task"), w.slot, _snippet(st.completions[i]))
    self._requeue_rest(st, w)
    self._replace(w)

  def _on_death(self, st: Optional[_CallState], w: pool_worker.WorkerProcess) -> None:
    """Worker exited unexpectedly (or never became ready): blame the running pair, requeue
    the rest, respawn."""
    if self._workers[w.slot] is not w:
      return
    try:
      w.proc.wait(timeout=1.0)  # EOF usually means it is exiting: get its real exit code
    except subprocess.TimeoutExpired:
      pass
    w.kill()
    code = w.proc.returncode
    logging.warning("reward worker %d %s (exit code %s); restarting it", w.slot,
                    "exited" if w.ready else "failed to start", code)
    if not w.ready:
      self._start_failures[w.slot] += 1
      if self._start_failures[w.slot] >= MAX_START_FAILURES:
        self.close()  # a broken environment: later calls fail fast with "closed"
        raise RuntimeError(f"reward worker {w.slot} failed to start {MAX_START_FAILURES} "
                           f"times (last exit code {code}); run with num_workers=0 to debug")
    elif w.pending and st is not None:
      i, f = w.pending[0]
      self._record(st, i, f, 0.0, ("WorkerDied", f"reward worker exited with code {code}"))
      self._requeue_rest(st, w)
    self._replace(w)
