"""The Python tool of tool rollouts: each call runs in the code sandbox, in parallel.

A tool call's code (written by the policy mid-rollout, r1jax.tool_rollout) is as untrusted
as a code-reward submission, so it gets the same isolation and limits
(r1jax.rewards.sandbox: nsjail namespaces, seccomp, cgroup, rlimits, read-only minimal
root, wall timer; the configured mode or none at all, `SandboxUnavailable` at start-up).
Each call is a fresh sandboxed `python -I -S` running a small driver that executes the code
like a notebook cell: statements run, then the value of a final expression is printed (its
repr, unless None), as the interpreters of tool-integrated reasoning do (ToRA, Gou et al.
2024). An exception prints `ExcType: message` (no traceback: it would show the driver).

`SandboxToolExecutor(codes)` runs all calls of a batch at once, one thread per call waiting
on its own sandboxed process, and returns by a deadline of wall limit + `grace_s` from the
start of the batch: whatever has not answered by then is a timeout (its process is killed
by its own wall timer). So one hanging call delays the batch by at most about its limit.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from typing import Optional, Sequence

from r1jax.rewards import sandbox

__all__ = ["ToolResult", "SandboxToolExecutor", "driver_source", "DEFAULT_LIMITS"]

# A small calculator-style budget: tool calls are many and short.
DEFAULT_LIMITS = sandbox.Limits(wall_s=2.0, memory_mb=256, max_processes=8,
                                max_output_bytes=1 << 16)

_DRIVER = '''import ast, sys
src = %r
try:
    tree = ast.parse(src, "<tool>", "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(tree, "<tool>", "exec"), ns)
    if last is not None:
        value = eval(compile(last, "<tool>", "eval"), ns)
        if value is not None:
            print(repr(value))
except SystemExit:
    raise
except BaseException as e:
    sys.stdout.flush()
    try:
        msg = "%%s: %%s" %% (type(e).__name__, e)
    except BaseException:
        msg = type(e).__name__
    print(msg)
    sys.exit(1)
'''


def driver_source(code: str) -> str:
  """The sandboxed program that runs `code` as a notebook cell (module docstring)."""
  return _DRIVER % (code,)


@dataclasses.dataclass(frozen=True)
class ToolResult:
  """Outcome of one tool call.

  status: "ok" (the program ended normally), "error" (it raised or crashed), "timeout"
    (wall or CPU limit), "output_limit" (more than the sandbox's output cap).
  output: the text the model gets back (stdout; the error line on an exception; a note on
    a timeout or a crash).
  seconds: wall seconds of the call.
  """
  status: str
  output: str
  seconds: float = 0.0


class SandboxToolExecutor:
  """Runs batches of tool calls in the code sandbox, in parallel, by a deadline.

  Args:
    limits: sandbox.Limits of each call (wall_s is the per-call limit).
    mode: isolation mode (sandbox.MODES; default $R1JAX_SANDBOX_MODE, else the strongest).
    max_workers: calls running at once; keep it >= the calls of a batch (samples per
      rollout) so that the batch costs one limit, not several.
    grace_s: slack over wall_s for starting the sandboxes before a call counts as a timeout.

  Raises:
    ValueError: unknown mode. sandbox.SandboxUnavailable: the mode does not work here
      (probed at construction: fail closed, before any rollout).
  """

  def __init__(self, limits: sandbox.Limits = DEFAULT_LIMITS, *, mode: Optional[str] = None,
               max_workers: int = 64, grace_s: float = 2.0):
    self.limits = limits
    self.mode = mode
    self.grace_s = grace_s
    self.isolation = sandbox.isolation(mode)
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers,
                                                       thread_name_prefix="tool-call")

  def run_one(self, code: str) -> ToolResult:
    """One call, synchronously."""
    t0 = time.monotonic()
    try:
      res = sandbox.run_program(driver_source(code), b"", self.limits, mode=self.mode)
    except (OSError, sandbox.SandboxError) as e:
      return ToolResult("error", f"Error: the sandbox could not run the code ({e})",
                        time.monotonic() - t0)
    out = res.stdout.decode("utf-8", "replace")
    if res.status == "timeout":
      out += f"\nTimeoutError: the program ran past its {self.limits.wall_s:g} s limit"
    elif res.status == "output_limit":
      out += "\n[output truncated]"
    elif res.status == "error" and not out.strip():
      err = res.stderr.decode("utf-8", "replace").strip().splitlines()
      out = err[-1] if err else f"Error: the program was killed (exit code {res.returncode})"
    return ToolResult(res.status, out, res.wall_s)

  def __call__(self, codes: Sequence[str]) -> list[ToolResult]:
    """Run every code of the batch at once; results in order, by wall_s + grace_s."""
    t0 = time.monotonic()
    futures = [self._pool.submit(self.run_one, c) for c in codes]
    deadline = t0 + self.limits.wall_s + self.grace_s
    out = []
    for f in futures:
      try:
        out.append(f.result(timeout=max(0.0, deadline - time.monotonic())))
      except concurrent.futures.TimeoutError:
        out.append(ToolResult("timeout", "TimeoutError: no result within "
                              f"{self.limits.wall_s:g} s", time.monotonic() - t0))
    return out

  def close(self) -> None:
    """Stop accepting calls (running ones end by their own limits)."""
    self._pool.shutdown(wait=False, cancel_futures=True)
