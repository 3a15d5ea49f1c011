"""Run untrusted Python code (model completions) locally, bounded and isolated.

R1's accuracy reward for programming prompts runs the policy's code against test cases
(R1_SPEC section 3). That code is written under optimisation pressure: it loops, allocates
without bound, forks, writes files, opens sockets, signals its parent and looks for the
grader's answers. Every execution here is a fresh `python -I -S` child set up in layers:

  layer                         stops                                  does not stop
  ----------------------------  -------------------------------------  --------------------------
  own session/process group,    runaway time: the wall timer SIGKILLs  a child that escapes the
  wall timer + RLIMIT_CPU       the group (and, with namespaces, the   group with setsid() in
                                whole PID namespace); RLIMIT_CPU is a  the no-namespace modes
                                second, in-kernel bound on busy loops  (see the uid kill below)
  PID namespace                 escaped descendants (killing pid 1     -
  (`unshare --pid --fork        kills the namespace), signals to any
  --kill-child`)                process outside it (kill(-1) included)
  network namespace             all network access (only a down       -
  (`unshare --net`)             loopback exists); audit hook as the
                                weaker no-namespace substitute
  mount namespace + minimal     reading anything but the stdlib:      -
  root (tmpfs, pivot_root)      the tests, the dataset, the repo,
                                /root, /etc; writing outside /tmp
                                (a size-capped tmpfs, the work dir);
                                a fresh /proc shows only the sandbox
  dedicated uid (when root)     signals to and ptrace of the trainer,  -
                                RLIMIT_NPROC enforcement (not
                                enforced for root), file access as
                                an unprivileged user
  RLIMIT_AS / FSIZE / NOFILE /  memory bombs (MemoryError), huge      memory outside the address
  NPROC / CORE=0                files, fd exhaustion, fork bombs       space limit (page cache)
                                (bounded to max_processes), core dumps
  output cap                    output floods: stdout is read up to   -
                                max_output_bytes, then the child is
                                killed
  minimal environment, -I -S    inherited secrets (API keys in env),  -
                                PYTHON* variables, site-packages
  parent-death signal           a sandbox outliving its reward worker  (tied to the calling thread:
  (`setpriv --pdeathsig KILL`)  (e.g. one the pool killed on timeout)  call from a long-lived one)
  audit hook (sys.addaudithook) sockets, fork/exec/spawn/kill, ctypes, it is in-process: it can in
                                writes outside the work dir, reads    principle be defeated by an
                                outside the stdlib (the weaker layer  interpreter bug; a defence
                                that stands in where namespaces are   in depth, not a boundary
                                unavailable)

Modes (probed once per process, `isolation()`; reported in every result):
  "ns-root"   root and `unshare` works: all layers; the code runs as a dedicated uid.
  "ns-user"   not root, unprivileged user namespaces allowed (`unshare --user
              --map-root-user`): namespaces, minimal root, rlimits (RLIMIT_NPROC counted
              inside the new user namespace). The code is "root" inside its user namespace
              (no privilege outside); the minimal root is set up with pivot_root.
  "uid"       root, no namespaces (e.g. Docker's default seccomp profile): dedicated uid,
              rlimits, audit hook, process-group kill plus a kill(-1) as the dedicated uid,
              which reaches every process it left. Files readable by everyone stay
              readable; commonly used stdlib modules are imported before the uid drop when
              the stdlib is not readable by others (e.g. python under /root).
  "none"      neither: rlimits (no RLIMIT_NPROC: it would count all of the user's
              processes), audit hook, process-group kill. The weakest mode.

The expected outputs never enter the child: stdin/stdout tests are compared in the parent,
and function tests are called through `FunctionSession`, which sends only the arguments
(and reads back `repr` of the result); see r1jax/rewards/code.py.

This is not a security boundary against kernel exploits or side channels. It bounds and
contains ordinary misbehaviour of generated code on a training machine.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import json
import math
import os
import platform
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional

__all__ = ["Limits", "RunResult", "run_program", "FunctionSession", "SandboxError",
           "CallTimeout", "CallError", "isolation"]

# Base of the dedicated uids (when root). Each execution gets its own uid (base + a per-
# process counter), so that RLIMIT_NPROC counts only its processes and a kill(-1) as that
# uid reaches nothing else. Far above regular and subordinate (100000+) uid ranges.
UID_BASE = 1_900_000_000
UID_RANGE = 100_000_000

# Stdlib modules imported before the uid drop in "uid" mode when the stdlib is not readable
# by the dedicated uid (competitive-programming staples).
PREIMPORT = ("math", "cmath", "itertools", "functools", "collections", "heapq", "bisect",
             "re", "string", "random", "decimal", "fractions", "statistics", "operator", "copy",
             "typing", "array", "datetime", "json", "io", "dataclasses", "enum", "queue",
             "struct", "textwrap", "unicodedata", "calendar", "numbers", "abc", "time")

# Work dirs are tempfile.gettempdir()/r1jax_sbx_<creator pid>_*; a reward worker killed
# mid-run leaves its dir behind, and the next process to probe the mode removes it.
WORKDIR_PREFIX = "r1jax_sbx_"

_SYS_PIVOT_ROOT = {"x86_64": 155, "amd64": 155, "aarch64": 41, "arm64": 41}


@dataclasses.dataclass(frozen=True)
class Limits:
  """Resource limits of one sandboxed execution.

  wall_s: wall-clock limit (the whole process group is killed when it passes).
  cpu_s: RLIMIT_CPU in seconds (default: ceil(wall_s)).
  memory_mb: RLIMIT_AS (address space).
  file_size_mb: RLIMIT_FSIZE (largest file the code can write).
  tmpfs_mb: size of the minimal root's tmpfs (the work dir lives there; namespace modes).
  max_open_files: RLIMIT_NOFILE.
  max_processes: RLIMIT_NPROC (processes and threads of the sandbox uid / user namespace).
  max_output_bytes: stdout (and each result message) is read up to this many bytes; the
    child is killed when it writes more.
  audit: install the in-process audit hook (see the module docstring).
  """
  wall_s: float = 2.0
  cpu_s: Optional[float] = None
  memory_mb: int = 512
  file_size_mb: int = 16
  tmpfs_mb: int = 32
  max_open_files: int = 64
  max_processes: int = 32
  max_output_bytes: int = 1 << 20
  audit: bool = True


@dataclasses.dataclass
class RunResult:
  """Outcome of one `run_program` call.

  status: "ok" (exited 0), "error" (non-zero exit, or killed by a signal other than ours:
    RLIMIT_CPU ends in SIGXCPU/SIGKILL and is reported as "timeout"), "timeout" (wall or CPU
    limit), "output_limit" (more than max_output_bytes on stdout).
  returncode: the child's exit status (negative: signal), None if we killed it.
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


# --------------------------------------------------------------------------- the child

# Runs as `python -I -S -c _RUNNER <json config>`. Everything before `exec` of the submission
# is trusted setup; the submission then runs in a fresh namespace in the same process.
_RUNNER = r'''
import os, sys

def _rd(fd):
  head = b""
  while len(head) < 4:
    b = os.read(fd, 4 - len(head))
    if not b:
      return None
    head += b
  n = int.from_bytes(head, "big")
  buf = bytearray()
  while len(buf) < n:
    b = os.read(fd, min(1 << 20, n - len(buf)))
    if not b:
      return None
    buf += b
  return bytes(buf)

def _wr(fd, data):
  data = len(data).to_bytes(4, "big") + data
  while data:
    data = data[os.write(fd, data):]

def _setup(cfg):
  import resource
  libc = None
  if cfg["newroot"] or cfg["pdeathsig"]:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    def mount(src, dst, fstype, flags, data=None):
      enc = lambda s: None if s is None else s.encode()
      if libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "mount %s: %s" % (dst, os.strerror(e)))
  notes = []
  if cfg["newroot"]:
    # A minimal root on a size-capped tmpfs: the stdlib (read-only binds at the same paths),
    # a few devices, a fresh /proc, and /tmp as the work dir. Nothing else is visible.
    RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC = 1, 2, 4, 8, 32, 4096, 16384
    R = cfg["newroot"]
    mount("tmpfs", R, "tmpfs", NOSUID | NODEV,
          "size=%dm,nr_inodes=8192,mode=755" % cfg["tmpfs_mb"])
    for p in cfg["binds"]:
      t = R + p
      os.makedirs(t, exist_ok=True)
      mount(p, t, None, BIND | REC)
      try:
        mount(None, t, None, BIND | REMOUNT | RDONLY | NOSUID | NODEV)
      except OSError:
        notes.append("stdlib-rw")
    os.makedirs(R + "/dev", exist_ok=True)
    for d in ("null", "zero", "urandom", "random"):
      open(R + "/dev/" + d, "w").close()
      try:
        mount("/dev/" + d, R + "/dev/" + d, None, BIND)
      except OSError:
        os.unlink(R + "/dev/" + d)
    os.makedirs(R + "/tmp", exist_ok=True)
    os.chmod(R + "/tmp", 0o1777)
    if cfg["uid"] is not None:
      os.chown(R + "/tmp", cfg["uid"], cfg["gid"])
    os.makedirs(R + "/proc", exist_ok=True)
    try:
      mount("proc", R + "/proc", "proc", NOSUID | NODEV | NOEXEC)
    except OSError:
      notes.append("no-proc")
    os.chdir(R)
    nr = cfg["pivot_nr"]
    if nr is not None and libc.syscall(nr, b".", b".") == 0:
      libc.umount2(b".", 2)  # MNT_DETACH: the old root is gone from this namespace
      os.chroot(".")
    else:
      os.chroot(".")
      notes.append("chroot")
    os.chdir("/tmp")
  for name, value in cfg["rlimits"]:
    resource.setrlimit(getattr(resource, name), (value, value))
  for m in cfg["preimport"]:
    try:
      __import__(m)
    except Exception:
      pass
  if cfg["uid"] is not None:
    os.setgroups([])
    os.setgid(cfg["gid"])
    os.setuid(cfg["uid"])
    if cfg["pdeathsig"]:
      libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG (cleared by the uid change)
  if not cfg["newroot"]:
    os.chdir(cfg["cwd"])
  for m in ("ctypes", "_ctypes", "ctypes._endian", "resource"):
    sys.modules.pop(m, None)
  return notes

def _audit(cwd, allowed_read):
  blocked = frozenset(("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                       "os.forkpty", "subprocess.Popen", "os.killpg", "signal.pthread_kill",
                       "os.symlink", "os.link", "pty.spawn", "os.setuid", "os.chroot"))
  banned_imports = frozenset(("ctypes", "_ctypes", "_posixsubprocess", "_socket", "socket",
                              "ssl", "_ssl", "mmap"))
  pathops = frozenset(("os.remove", "os.rename", "os.rmdir", "shutil.rmtree", "os.mkdir",
                       "os.truncate", "os.chmod", "os.chown", "os.utime"))
  norm, sep, me = os.path.normpath, os.sep, os.getpid
  def inside(p, roots):
    p = norm(p if p.startswith(sep) else cwd + sep + p)
    return any(p == r or p.startswith(r + sep) for r in roots)
  def hook(event, args):
    if event in blocked or event.startswith("socket.") or event.startswith("ctypes."):
      raise PermissionError("sandbox: %s is not allowed" % event)
    if event == "os.kill" and args[0] not in (0, me()):
      raise PermissionError("sandbox: os.kill is not allowed")
    if event == "import" and args[0].split(".")[0] in banned_imports:
      raise ImportError("sandbox: import of %s is not allowed" % args[0])
    if event == "open" or event in pathops:
      p = args[0]
      if isinstance(p, bytes):
        p = p.decode("utf-8", "replace")
      if not isinstance(p, str):
        return
      write = event != "open"
      if event == "open":
        mode, flags = args[1], args[2]
        write = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
          isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
      roots = (cwd,) if write else (cwd,) + allowed_read
      if not inside(p, roots):
        raise PermissionError("sandbox: access to %s is not allowed" % p)
  sys.addaudithook(hook)

def _main():
  # The config and the call requests come from the trusted parent; eval of a literal avoids
  # importing json / ast (about 40 ms of start-up per child).
  lit = {"__builtins__": {}, "set": set, "frozenset": frozenset, "true": True,
         "false": False, "null": None}
  cfg = eval(sys.argv[1], lit)
  ctl, res = cfg["ctl"], cfg["res"]
  notes = _setup(cfg)
  src = _rd(ctl)
  if src is None:
    os._exit(70)
  import builtins
  if cfg["audit"]:
    allowed = tuple(os.path.normpath(p) for p in sys.path if p) + (
      "/dev/null", "/dev/urandom", "/dev/random", "/dev/zero")
    _audit(os.getcwd(), allowed)
  code_src = src.decode("utf-8", "replace")
  if cfg["mode"] == "run":
    _wr(res, repr(notes).encode())  # set-up notes, read by the parent's probe
    os.close(ctl)
    os.close(res)
    g = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(code_src, "<solution>", "exec"), g)
    return
  # "serve": load the submission, then answer call requests one at a time.
  wr, rd, rep, tn = _wr, _rd, repr, type
  def send(obj):
    try:
      data = rep(obj).encode("utf-8", "backslashreplace")
    except BaseException as e:
      data = rep(("err", "unrepresentable result: %s" % tn(e).__name__)).encode()
    wr(res, data)
  g = {"__name__": "__solution__", "__builtins__": builtins}
  try:
    exec(compile(code_src, "<solution>", "exec"), g)
  except BaseException as e:
    send(("load_error", "%s: %s" % (tn(e).__name__, str(e)[:300])))
    return
  send(("ready", notes))
  while True:
    req = rd(ctl)
    if req is None:
      return
    try:
      name, args, kwargs = eval(req.decode(), lit)
      obj = g
      parts = name.split(".")
      fn = g[parts[0]]
      for i, part in enumerate(parts[1:]):
        if i == 0 and isinstance(fn, type):
          fn = fn()  # "Solution.method": LeetCode-style class
        fn = getattr(fn, part)
      value = fn(*args, **kwargs)
      try:
        out = ("ok", rep(value))
      except BaseException as e:
        out = ("err", "unrepresentable result: %s" % tn(e).__name__)
    except BaseException as e:
      out = ("err", "%s: %s" % (tn(e).__name__, str(e)[:300]))
    send(out)

_main()
'''


# --------------------------------------------------------------------------- the parent

_counter = itertools.count()
_counter_lock = threading.Lock()


def _next_uid() -> int:
  with _counter_lock:
    k = next(_counter)
  return UID_BASE + (os.getpid() * 1009 + k) % UID_RANGE


def _env(home: str) -> dict:
  """Minimal environment: nothing of the trainer's (tokens, credentials) is inherited."""
  return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": home,
          "TMPDIR": home, "PYTHONHASHSEED": "0"}


def _stdlib_paths() -> list[str]:
  """Directories the child's `python -I -S` imports from (the stdlib and lib-dynload)."""
  try:
    out = subprocess.run([sys.executable, "-I", "-S", "-c",
                          "import sys, json; print(json.dumps(sys.path))"],
                         capture_output=True, timeout=30, check=True, env=_env("/"))
    paths = json.loads(out.stdout)
  except (OSError, subprocess.SubprocessError, ValueError):
    paths = [os.path.dirname(os.__file__)]
  return [os.path.realpath(p) for p in paths if p and os.path.isdir(p)]


def _world_readable(path: str) -> bool:
  """Whether `path` and all its ancestors are traversable by any user."""
  p = os.path.realpath(path)
  while True:
    try:
      if not os.stat(p).st_mode & 0o001:
        return False
    except OSError:
      return False
    if p == "/":
      return True
    p = os.path.dirname(p)


def _prefix(mode: str) -> list[str]:
  """Command prefix of a mode: parent-death signal, namespaces."""
  pre = []
  setpriv = shutil.which("setpriv")
  if setpriv:
    pre = [setpriv, "--pdeathsig", "KILL", "--"]  # the child dies with the reward worker
  unshare = shutil.which("unshare") or "unshare"
  if mode == "ns-root":
    pre += [unshare, "--mount", "--net", "--pid", "--fork", "--kill-child", "--"]
  elif mode == "ns-user":
    pre += [unshare, "--user", "--map-root-user", "--mount", "--net", "--pid", "--fork",
            "--kill-child", "--"]
  return pre


@dataclasses.dataclass
class _Mode:
  name: str
  prefix: list
  stdlib: list
  preimport: tuple
  info: dict


def _mode_info(mode: str, notes: list) -> dict:
  ns = mode.startswith("ns-")
  layers = ["process-group", "wall-timer", "rlimits", "minimal-env", "output-cap",
            "tmp-workdir"]
  if ns:
    layers += ["pid-ns", "net-ns", "mount-ns", "minimal-root"]
    if "no-proc" not in notes:
      layers.append("fresh-proc")
  if mode in ("ns-root", "uid"):
    layers.append("dedicated-uid")
  # RLIMIT_NPROC does not bind uid 0 (a user namespace forced on root maps to uid 0).
  if mode in ("ns-root", "uid") or (mode == "ns-user" and os.geteuid() != 0):
    layers.append("rlimit-nproc")
  if shutil.which("setpriv"):
    layers.append("pdeathsig")
  return {"mode": mode, "layers": layers, "notes": list(notes)}


_MODE: Optional[_Mode] = None
_FORCED: dict[str, _Mode] = {}
_MODE_LOCK = threading.Lock()


def _candidates(force: Optional[str]) -> list[str]:
  if force:
    return [force]
  root = os.geteuid() == 0
  out = []
  if shutil.which("unshare"):
    out.append("ns-root" if root else "ns-user")
  out.append("uid" if root else "none")
  return out


def _sweep_stale_workdirs() -> None:
  """Remove work dirs whose creating process is gone (e.g. a worker the pool killed)."""
  base = tempfile.gettempdir()
  try:
    names = os.listdir(base)
  except OSError:
    return
  for name in names:
    pid = name[len(WORKDIR_PREFIX):].split("_", 1)[0]
    if not (name.startswith(WORKDIR_PREFIX) and pid.isdigit()):
      continue
    try:
      os.kill(int(pid), 0)
      continue  # creator alive
    except ProcessLookupError:
      pass
    except OSError:
      continue
    shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def _resolve_mode(force: Optional[str] = None) -> _Mode:
  """Probe the strongest working mode once per process (a tiny program must run in it)."""
  global _MODE
  if force is None and _MODE is not None:
    return _MODE
  if force is not None and force in _FORCED:
    return _FORCED[force]
  with _MODE_LOCK:
    if force is None and _MODE is not None:
      return _MODE
    _sweep_stale_workdirs()
    stdlib = _stdlib_paths()
    chosen = None
    for name in _candidates(force or os.environ.get("R1JAX_SANDBOX_MODE") or None):
      if name in ("uid", "ns-root") and os.geteuid() != 0:
        raise SandboxError(f"sandbox mode {name!r} needs root")
      pre = tuple(PREIMPORT) if (name == "uid" and not all(map(_world_readable, stdlib))) \
        else ()
      m = _Mode(name, _prefix(name), stdlib, pre, {})
      try:
        res = _run(m, "print(6 * 7)", b"", Limits(wall_s=10.0), probe=True)
      except (OSError, SandboxError) as e:
        res = None
        err = repr(e)
      if res is not None and res[0].status == "ok" and res[0].stdout.strip() == b"42":
        m.info = _mode_info(name, res[1])
        chosen = m
        break
      err = err if res is None else res[0].stderr[-300:]
      if force:
        raise SandboxError(f"sandbox mode {name!r} does not work here: {err!r}")
    if chosen is None:
      raise SandboxError("no sandbox mode works on this machine")
    if force is None:
      _MODE = chosen
    else:
      _FORCED[force] = chosen
    return chosen


def isolation(mode: Optional[str] = None) -> dict:
  """The isolation mode used on this machine and its layers.

  Args:
    mode: force a mode ("ns-root", "ns-user", "uid", "none") instead of the strongest that
      works; the env var R1JAX_SANDBOX_MODE does the same for the default.
  Returns:
    {"mode": str, "layers": [str], "notes": [str]} (see the module docstring).
  Raises:
    SandboxError: no mode (or not the forced one) works on this machine.
  """
  return dict(_resolve_mode(mode).info)


def _rlimits(limits: Limits, mode: str, cpu_s: float) -> list:
  cpu = max(1, int(math.ceil(cpu_s)))
  out = [("RLIMIT_CPU", cpu), ("RLIMIT_AS", limits.memory_mb << 20),
         ("RLIMIT_FSIZE", limits.file_size_mb << 20), ("RLIMIT_NOFILE", limits.max_open_files),
         ("RLIMIT_CORE", 0)]
  if mode != "none":
    out.append(("RLIMIT_NPROC", limits.max_processes))
  return out


class _Child:
  """One started child: its process, pipes, work dir and kill logic."""

  def __init__(self, m: _Mode, source: str, mode: str, limits: Limits, cpu_s: float,
               stdin: bool):
    self.m = m
    self.limits = limits
    self.workdir = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}_")
    self.uid = _next_uid() if m.name in ("ns-root", "uid") else None
    ctl_r, self.ctl = os.pipe()
    self.res, res_w = os.pipe()
    try:
      if self.uid is not None:
        os.chown(self.workdir, self.uid, self.uid)
      os.chmod(self.workdir, 0o700)
      cfg = {"mode": mode, "ctl": ctl_r, "res": res_w, "cwd": self.workdir,
             "newroot": self.workdir if m.name.startswith("ns-") else "",
             "binds": m.stdlib, "tmpfs_mb": limits.tmpfs_mb, "uid": self.uid,
             "gid": self.uid, "pdeathsig": m.name in ("ns-root", "uid"),
             "pivot_nr": _SYS_PIVOT_ROOT.get(platform.machine().lower()),
             "rlimits": _rlimits(limits, m.name, cpu_s), "preimport": list(m.preimport),
             "audit": limits.audit}
      argv = m.prefix + [sys.executable, "-I", "-S", "-c", _RUNNER, json.dumps(cfg)]
      self.started = time.monotonic()
      self.proc = subprocess.Popen(
          argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
          stdout=subprocess.PIPE if mode == "run" else subprocess.DEVNULL,
          stderr=subprocess.PIPE if mode == "run" else subprocess.DEVNULL,
          pass_fds=(ctl_r, res_w), start_new_session=True,
          cwd=self.workdir, env=_env(self.workdir), close_fds=True)
    except BaseException:
      for fd in (ctl_r, res_w, self.ctl, self.res):
        _close(fd)
      shutil.rmtree(self.workdir, ignore_errors=True)
      raise
    os.close(ctl_r)
    os.close(res_w)
    try:
      _write_frame(self.ctl, source.encode("utf-8", "surrogatepass"))
    except OSError:
      pass  # died at once: seen when its output is read
    self.killed = False
    self._stderr = bytearray()

  def kill(self) -> None:
    """SIGKILL the group (and in "uid" mode every process of the dedicated uid)."""
    self.killed = True
    for target in (lambda: os.killpg(self.proc.pid, signal.SIGKILL), self.proc.kill):
      try:
        target()
      except (OSError, ProcessLookupError):
        pass

  def close(self) -> None:
    """Kill, reap, close the pipes and remove the work dir. Idempotent."""
    if self.proc.poll() is None:
      self.kill()
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      pass
    if self.m.name == "uid" and self.uid is not None:
      _kill_uid(self.uid)
    for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
      if f is not None:
        try:
          f.close()
        except OSError:
          pass
    _close(self.ctl)
    _close(self.res)
    self.ctl = self.res = -1
    shutil.rmtree(self.workdir, ignore_errors=True)


def _close(fd: int) -> None:
  if fd >= 0:
    try:
      os.close(fd)
    except OSError:
      pass


def _kill_uid(uid: int) -> None:
  """kill(-1, SIGKILL) as `uid`: every process of that (dedicated) uid, e.g. ones that left
  the process group with setsid(). The kill itself is exempt from kill(-1)."""
  kill = shutil.which("kill")
  if not kill:
    return
  try:
    subprocess.run([kill, "-9", "-1"], user=uid, group=uid, extra_groups=[], timeout=5,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env("/"),
                   cwd="/")
  except (OSError, subprocess.SubprocessError):
    pass


def _write_frame(fd: int, data: bytes) -> None:
  data = len(data).to_bytes(4, "big") + data
  while data:
    data = data[os.write(fd, data):]


def _status_of(child: _Child, timed_out: bool, overflow: bool) -> str:
  if overflow:
    return "output_limit"
  rc = child.proc.returncode
  if timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL) and not child.killed:
    return "timeout"  # RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL at the hard one
  return "ok" if rc == 0 else "error"


def _run(m: _Mode, source: str, stdin: bytes, limits: Limits, probe: bool = False):
  """Run `source` as a program (stdin -> stdout) in mode `m`. Returns (RunResult, notes)."""
  child = _Child(m, source, "run", limits, limits.cpu_s or limits.wall_s, stdin=True)
  cap = limits.max_output_bytes
  out, err = bytearray(), bytearray()
  timed_out = overflow = False
  sel = selectors.DefaultSelector()
  try:
    proc = child.proc
    pending = memoryview(stdin)
    if pending:
      os.set_blocking(proc.stdin.fileno(), False)
      sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
      proc.stdin.close()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline = child.started + limits.wall_s
    open_reads = 2
    while open_reads:
      left = deadline - time.monotonic()
      if left <= 0:
        timed_out = True
        break
      for key, _ in sel.select(left):
        if key.fileobj is proc.stdin:
          try:
            k = os.write(proc.stdin.fileno(), pending[:65536])
            pending = pending[k:]
          except (BlockingIOError, InterruptedError):
            continue
          except OSError:  # the child closed its stdin
            pending = pending[:0]
          if not pending:
            sel.unregister(proc.stdin)
            proc.stdin.close()
          continue
        data = os.read(key.fileobj.fileno(), 65536)
        if not data:
          sel.unregister(key.fileobj)
          open_reads -= 1
        elif key.fileobj is proc.stdout:
          out += data
          if len(out) > cap:
            overflow = True
            del out[cap:]
            open_reads = 0
            break
        elif len(err) < 4096:
          err += data[:4096 - len(err)]
    if timed_out or overflow:
      child.kill()
    else:
      # Output closed: the child is exiting (or closed its stdout; the timer still holds).
      try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        timed_out = True
        child.kill()
    elapsed = time.monotonic() - child.started
    notes = _read_notes(child.res) if probe else []
  finally:
    sel.close()
    child.close()
  res = RunResult(_status_of(child, timed_out, overflow), None if child.killed else
                  child.proc.returncode, bytes(out), bytes(err), elapsed, {})
  return res, notes


def _read_notes(fd: int) -> list:
  """Set-up notes the runner wrote before running the program (probe only)."""
  os.set_blocking(fd, False)
  try:
    data = os.read(fd, 65536)
    notes = _decode(data[4:].decode()) if len(data) > 4 else []
  except (OSError, ValueError, SyntaxError):
    return []
  return [str(n) for n in notes] if isinstance(notes, list) else []


def run_program(source: str, stdin: bytes = b"", limits: Limits = Limits(), *,
                mode: Optional[str] = None) -> RunResult:
  """Run `source` as a Python program with `stdin`, in a fresh sandboxed child.

  Args:
    source: the program text (run as `__main__`).
    stdin: bytes fed to its stdin (then closed).
    limits: resource limits (Limits).
    mode: force an isolation mode (see `isolation`); default: the strongest that works.
  Returns:
    RunResult (status "ok" / "error" / "timeout" / "output_limit", stdout, stderr, ...).
  Raises:
    SandboxError: no isolation mode works here; OSError: the child could not be started.
  """
  m = _resolve_mode(mode)
  res, _ = _run(m, source, stdin, limits)
  res.isolation = dict(m.info)
  return res


def _decode(text: str) -> Any:
  """Python literal of a result `repr` sent by the child; untrusted, so parsed only by
  ast.literal_eval (size-capped by the caller)."""
  return ast.literal_eval(text)


class FunctionSession:
  """A sandboxed child that has loaded a submission and answers calls to its functions.

  The parent sends (name, args, kwargs) as a Python literal and reads back the `repr` of
  the return value, parsed with `ast.literal_eval`; expected values and assertions never
  enter the child (the caller compares). A call that times out or kills the child ends
  the session (`alive` False); start a new one to go on.

  Example:
    with FunctionSession(src, Limits(wall_s=2), budget_s=4) as s:
      s.call("add", (1, 2))   # -> 3

  Args:
    source: the submission (module text; `__name__` is "__solution__", so a
      `if __name__ == "__main__":` block does not run).
    limits: per-call wall limit is limits.wall_s; loading gets the same.
    budget_s: total CPU budget of the child (RLIMIT_CPU), default limits.wall_s.
    mode: force an isolation mode.
  Raises (from the constructor):
    CallTimeout: loading took longer than limits.wall_s.
    CallError: the submission raised while loading (e.g. SyntaxError) or the child died.
    SandboxError: no isolation mode works here.
  """

  def __init__(self, source: str, limits: Limits = Limits(), *,
               budget_s: Optional[float] = None, mode: Optional[str] = None):
    self.mode = _resolve_mode(mode)
    self.limits = limits
    self.isolation = dict(self.mode.info)
    self._child = _Child(self.mode, source, "serve", limits, budget_s or limits.wall_s,
                         stdin=False)
    self.alive = True
    try:
      msg = self._recv(limits.wall_s)
      if msg[0] != "ready":
        raise CallError(f"load error: {msg[1]}" if msg[0] == "load_error" else
                        "protocol error while loading")
    except BaseException:
      self.close()
      raise

  def _recv(self, timeout_s: float) -> tuple:
    """Read one frame from the child, killing it on timeout / oversize / EOF / garbage."""
    deadline = time.monotonic() + timeout_s
    buf = bytearray()
    need = 4
    size = None
    fd = self._child.res
    cap = self.limits.max_output_bytes
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    try:
      while len(buf) < need:
        left = deadline - time.monotonic()
        if left <= 0:
          self._fail()
          raise CallTimeout(f"no answer within {timeout_s:.2f} s")
        if not sel.select(left):
          continue
        data = os.read(fd, min(1 << 20, need - len(buf)))
        if not data:
          self._fail()
          rc = self._child.proc.wait(timeout=5)
          if rc in (-signal.SIGXCPU, -signal.SIGKILL):
            raise CallTimeout(f"child killed by the CPU limit (exit {rc})")
          raise CallError(f"child exited (code {rc})")
        buf += data
        if size is None and len(buf) >= 4:
          size = int.from_bytes(buf[:4], "big")
          if size > cap:
            self._fail()
            raise CallError(f"output_limit: answer of {size} bytes")
          need = 4 + size
    finally:
      sel.close()
    try:
      msg = _decode(bytes(buf[4:]).decode("utf-8", "replace"))
    except Exception:  # pylint: disable=broad-except
      msg = None
    if not (isinstance(msg, tuple) and len(msg) == 2 and isinstance(msg[0], str)):
      self._fail()
      raise CallError("protocol error: malformed answer from the child")
    return msg

  def _fail(self) -> None:
    self.alive = False
    self._child.kill()

  def call(self, name: str, args: tuple = (), kwargs: Optional[dict] = None,
           timeout_s: Optional[float] = None) -> Any:
    """Call `name(*args, **kwargs)` in the child; returns the value (a Python literal).

    Args:
      name: a top-level function of the submission, or "Class.method" (the class is
        instantiated with no arguments first, LeetCode-style).
      args, kwargs: Python literals (numbers, strings, bytes, None, bools, tuples, lists,
        dicts, sets).
      timeout_s: wall limit of this call (default limits.wall_s).
    Returns:
      The return value, as parsed from its repr (a value that is not a Python literal
      raises CallError "not a literal").
    Raises:
      CallTimeout: the call ran past its limit (the session is then dead).
      CallError: the call raised (message "ExcType: ..."), the child died, or arguments
        that are not literals.
    """
    if not self.alive:
      raise CallError("session is dead")
    req = repr((name, tuple(args), dict(kwargs or {})))
    try:
      if _decode(req) != (name, tuple(args), dict(kwargs or {})):
        raise ValueError
    except Exception:  # pylint: disable=broad-except
      raise CallError("arguments are not Python literals") from None
    try:
      _write_frame(self._child.ctl, req.encode("utf-8", "surrogatepass"))
    except OSError:
      self._fail()
      raise CallError("child is gone") from None
    kind, payload = self._recv(self.limits.wall_s if timeout_s is None else timeout_s)
    if kind == "err":
      raise CallError(str(payload))
    if kind != "ok" or not isinstance(payload, str):
      self._fail()
      raise CallError("protocol error: unexpected answer")
    try:
      return _decode(payload)
    except Exception:  # pylint: disable=broad-except
      raise CallError(f"result is not a literal: {payload[:80]}") from None

  def close(self) -> None:
    """Stop the child and clean up. Idempotent."""
    self.alive = False
    if self._child is not None:
      self._child.close()

  def __enter__(self) -> "FunctionSession":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
