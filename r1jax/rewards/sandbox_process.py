"""One sandboxed process, seen from the trusted parent (used by r1jax/rewards/sandbox.py).

`Child` starts `python -I -S -c <sandbox_runner.py> <config>` under nsjail (or bare in mode
"none"), feeds it the program over a pipe, and kills and cleans up without ever raising;
`run` drives a stdin -> stdout run with non-blocking pipes and one deadline.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

from r1jax.rewards import isolation as iso
from r1jax.rewards import wire

__all__ = ["Limits", "RunResult", "Mode", "Child", "run", "remove_tree"]

_RUNNER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_runner.py")
# Seconds nsjail gets to kill its jail and remove its cgroup after SIGTERM before SIGKILL.
_TERM_GRACE_S = 1.0
_uids = itertools.count()


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


@dataclasses.dataclass
class Mode:
  """A resolved isolation mode: name, nsjail binary, cgroup place, root mounts, and the
  info dict reported with results (see r1jax.rewards.sandbox.isolation)."""
  name: str
  nsjail: Optional[str]
  cgroups: Optional[iso.Cgroups]
  binds: list
  hidden: list
  info: dict


@functools.lru_cache(maxsize=1)
def _runner_source() -> str:
  with open(_RUNNER_PATH, encoding="utf-8") as f:
    return f.read()


@functools.lru_cache(maxsize=1)
def _setpriv() -> Optional[str]:
  return shutil.which("setpriv")


def env(home: str) -> dict:
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


class Child:
  """One started sandbox: its process, pipes, (mode "none") work dir and kill logic."""

  def __init__(self, m: Mode, source: str, kind: str, limits: Limits, cpu_s: float):
    self.m, self.limits, self.killed = m, limits, False
    self.workdir = tempfile.mkdtemp(prefix="r1jax_sbx_") if m.name == "none" else ""
    ctl_r, self.ctl = os.pipe()
    self.res, res_w = os.pipe()
    cpu = max(1, int(math.ceil(cpu_s)))
    mem, fsize = limits.memory_mb << 20, limits.file_size_mb << 20
    # (name, soft, hard): the CPU soft limit ends the program with SIGXCPU ("timeout").
    rl = [("RLIMIT_CPU", cpu, cpu + 1), ("RLIMIT_AS", mem, mem), ("RLIMIT_FSIZE", fsize, fsize),
          ("RLIMIT_NOFILE", limits.max_open_files, limits.max_open_files),
          ("RLIMIT_CORE", 0, 0)]
    if m.name != "none":  # RLIMIT_NPROC would count all of the trainer user's processes
      rl.append(("RLIMIT_NPROC", limits.max_processes, limits.max_processes))
    cfg = {"mode": kind, "ctl": ctl_r, "res": res_w, "rlimits": rl, "pid1": m.name != "none",
           "cwd": self.workdir}
    argv = [os.path.realpath(sys.executable), "-I", "-S", "-c", _runner_source(), repr(cfg)]
    pre = []
    setpriv = _setpriv()
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
          rlimits={"as": str(limits.memory_mb), "cpu": str(cpu + 1),
                   "fsize": str(limits.file_size_mb), "nofile": str(limits.max_open_files),
                   "nproc": str(limits.max_processes), "core": "0"},
          cgroup_args=cg, pass_fds=(ctl_r, res_w)) + ["--"]
    try:
      self.started = time.monotonic()
      self.proc = subprocess.Popen(
          pre + argv, stdin=subprocess.PIPE if kind == "run" else subprocess.DEVNULL,
          stdout=subprocess.PIPE if kind == "run" else subprocess.DEVNULL,
          stderr=subprocess.PIPE if kind == "run" else subprocess.DEVNULL,
          pass_fds=(ctl_r, res_w), start_new_session=True, cwd=self.workdir or "/",
          env=env(self.workdir or "/tmp"), close_fds=True)
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


def run(m: Mode, source: str, stdin: bytes, limits: Limits) -> RunResult:
  """Run `source` as a program (stdin -> stdout) in mode `m`."""
  child = Child(m, source, "run", limits, limits.cpu_s or limits.wall_s)
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
