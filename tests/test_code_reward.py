"""Code-execution reward (r1jax.rewards.code) and its sandbox (r1jax.rewards.sandbox).

Correct programs score 1, partial ones their fraction, and an adversarial suite (ADVERSARIAL:
loops, fork/memory/output bombs, file and network access, parent killing, exit tricks,
monkeypatching, secret hunting) scores 0 while leaving this machine and the test process
unharmed: no process of a sandbox uid survives, no file appears outside the work dir.
Short limits keep the file well under a minute on 2 cores."""

import json
import os
import time

import pytest

from r1jax.rewards import RewardComputer, sandbox
from r1jax.rewards import code as code_lib
from r1jax.data.sources import jsonl_examples

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "code_problems.jsonl")
FAST = {"timeout_s": 0.8, "total_timeout_s": 1.6}
SECRET = "r1jax-test-secret-3f9a"
os.environ.setdefault("R1JAX_TEST_SECRET", SECRET)  # must never reach the child


@pytest.fixture(scope="module")
def problems():
  return {ex["id"]: ex for ex in jsonl_examples(FIXTURE)}


def _fence(src):
  return f"<think> plan </think> <answer>\n```python\n{src}\n```\n</answer>"


def _sandbox_procs():
  """PIDs of live processes owned by a sandbox uid or started for a sandbox (their command
  line names an r1jax_sbx_ work dir); there must be none between tests."""
  out = []
  for pid in os.listdir("/proc"):
    if pid.isdigit():
      try:
        with open(f"/proc/{pid}/status") as f:
          uid = int(next(l for l in f if l.startswith("Uid:")).split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
          cmd = f.read()
      except (OSError, StopIteration, ValueError):
        continue
      if sandbox.UID_BASE <= uid < sandbox.UID_BASE + sandbox.UID_RANGE or b"r1jax_sbx_" in cmd:
        out.append(int(pid))
  return out


def _assert_clean():
  deadline = time.monotonic() + 3.0
  while _sandbox_procs() and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not _sandbox_procs(), "a sandboxed process outlived its run"


SOLUTIONS = {
  "sum-stdin": "a, b = map(int, input().split())\nprint(a + b)",
  "add-fn": "def add(a, b):\n    return a + b",
  "is-prime-asserts": ("def is_prime(n):\n"
                       "    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))"),
  "sort-humaneval": "def sort_desc(xs):\n    return sorted(xs, reverse=True)",
  "apps-call": "def square(x):\n    return x * x",
  "apps-stdin": "input()\nprint(max(map(int, input().split())))",
}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PWNED = [os.path.join(REPO, "PWNED"), "/tmp/PWNED", "/var/tmp/PWNED", "/dev/shm/PWNED"]


# ------------------------------------------------------------------ extraction / schema

def test_extract_code():
  assert code_lib.extract_code("x ```python\na=1\n``` y ```python\nb=2\n```") == "b=2\n"
  assert code_lib.extract_code("```python\na=1\n``` then ```\nplain\n```") == "a=1\n"
  assert code_lib.extract_code("```\nplain\n```") == "plain\n"
  text = "<think>```python\nscratch\n```</think><answer>```py\nfinal\n```</answer>"
  assert code_lib.extract_code(text) == "final\n"
  assert code_lib.extract_code("```python\nunclosed") is None
  assert code_lib.extract_code("no code") is None


def test_apps_and_livecodebench_converters():
  tests, fn = code_lib.apps_tests({"inputs": [[1, 2]], "outputs": [[3]], "fn_name": "f"})
  assert fn == "f" and tests == [{"input": [1, 2], "output": [3], "alt_outputs": [3]}]
  tests, fn = code_lib.apps_tests('{"inputs": ["1\\n"], "outputs": ["2\\n"]}')
  assert fn is None and tests == [{"input": "1\n", "output": "2\n"}]
  cases = [{"input": "[1, 2]\n3", "output": "[3]", "testtype": "functional"}]
  tests, fn = code_lib.livecodebench_tests(json.dumps(cases), "Solution.f")
  assert fn == "Solution.f" and tests == [{"input": [[1, 2], 3], "output": [3]}]
  with pytest.raises(ValueError):
    code_lib.parse_tests({"prompt": "no tests"})


def test_stdout_and_value_comparison():
  assert code_lib.stdout_matches("3  \n\n", "3\n")
  assert code_lib.stdout_matches("0.3333333\n", "0.33333333")
  assert not code_lib.stdout_matches("3 4", "3")
  assert code_lib.values_equal((1, 2), [1, 2]) and code_lib.values_equal(0.1 + 0.2, 0.3)
  assert not code_lib.values_equal(True, 1.0) and not code_lib.values_equal("3", 3)


def test_jsonl_fixture_loads_without_answer(problems):
  assert len(problems) == 6
  assert all(p["task"] == "code" and p["answer"] == "" for p in problems.values())


# ------------------------------------------------------------------ correct and partial

@pytest.mark.parametrize("pid", sorted(SOLUTIONS))
def test_correct_programs_score_one(problems, pid):
  assert code_lib.code_reward(_fence(SOLUTIONS[pid]), problems[pid], **FAST) == 1.0
  res = code_lib.run_tests(SOLUTIONS[pid], problems[pid], **FAST)
  assert res.all_passed and res.isolation["mode"] == sandbox.isolation()["mode"]


def test_partial_credit_and_binary(problems):
  add = "def add(a, b):\n    return int(a) + int(b)"  # wrong on floats and strings
  res = code_lib.run_tests(add, problems["add-fn"], **FAST)
  assert res.statuses()[:2] == ["pass", "pass"] and res.passed == 2
  assert code_lib.code_reward(_fence(add), problems["add-fn"], **FAST) == 0.5
  assert code_lib.code_reward(_fence(add), problems["add-fn"], binary=True, **FAST) == 0.0
  prime = "def is_prime(n):\n    return all(n % d for d in range(2, n))"  # wrong for 0 and 1
  assert code_lib.code_reward(_fence(prime), problems["is-prime-asserts"], **FAST) == 0.6
  half = "a, b = map(int, input().split())\nprint(a + b if a > 0 else 7)"
  assert code_lib.code_reward(_fence(half), problems["sum-stdin"], **FAST) == pytest.approx(2 / 3)
  assert code_lib.code_reward("no code here", problems["sum-stdin"], **FAST) == 0.0


# ------------------------------------------------------------------ adversarial suite

# (name, problem id, code, statuses allowed (None: any)). Each must score 0.
TIMEOUTS = {"timeout", "skipped"}
ADVERSARIAL = [
  ("infinite_loop", "sum-stdin", "while True:\n    pass", TIMEOUTS),
  ("infinite_loop_fn", "add-fn", "def add(a, b):\n    while True: pass", TIMEOUTS),
  ("sleep_past_limit", "add-fn", "import time\ndef add(a, b):\n    time.sleep(30)", TIMEOUTS),
  ("fork_bomb", "sum-stdin", "import os\nwhile True:\n    os.fork()", None),
  ("fork_bomb_fn", "add-fn", "import os\ndef add(a, b):\n    while True:\n        os.fork()",
   None),
  ("memory_bomb", "sum-stdin", "x = []\nwhile True:\n    x.append(bytearray(1 << 26))", None),
  ("memory_bomb_fn", "add-fn", "def add(a, b):\n    return bytearray(10 ** 11)", None),
  ("huge_output", "sum-stdin", "while True:\n    print('x' * 100000)",
   {"output_limit", "timeout", "skipped"}),
  ("huge_result", "add-fn", "def add(a, b):\n    return 'x' * (1 << 24)",
   {"output_limit", "error", "skipped"}),
  ("write_outside", "sum-stdin",
   f"for p in {PWNED + ['../PWNED']!r}:\n"
   "    try:\n        open(p, 'w').write('x')\n    except Exception:\n        pass\n"
   "print(-1)", None),
  ("read_tests_file", "sum-stdin", f"print(open({FIXTURE!r}).read().split('output')[1][4:5])",
   None),
  ("hunt_expected_in_memory", "add-fn",
   "import gc, sys\n"
   "def add(a, b):\n"
   "    for o in gc.get_objects():\n"
   "        if isinstance(o, dict) and 'output' in o:\n"
   "            return o['output']\n"
   "    f = sys._getframe(1)\n"
   "    while f:\n"
   "        for v in f.f_locals.values():\n"
   "            if isinstance(v, (int, float)) and v not in (a, b):\n"
   "                return v\n"
   "        f = f.f_back\n", None),
  ("socket", "sum-stdin",
   "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=0.5)\nprint(3)", None),
  ("kill_parent", "sum-stdin",
   "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint(-1)", None),
  ("killpg_and_kill_all", "add-fn",
   "import os\n"
   "def add(a, b):\n"
   "    for f in (lambda: os.killpg(0, 9), lambda: os.kill(-1, 9),\n"
   "              lambda: os.killpg(os.getpgid(0), 9)):\n"
   "        try:\n            f()\n        except Exception:\n            pass\n"
   "    return -7", None),
  ("os_exit_before_asserts", "is-prime-asserts", "import os\nos._exit(0)", {"error", "skipped"}),
  ("os_exit_in_call", "add-fn", "import os\ndef add(a, b):\n    os._exit(0)", {"error", "skipped"}),
  ("fake_pass_marker", "add-fn",
   "print('PASS'); print('All tests passed')\ndef add(a, b):\n    print('PASS')\n    return 'PASS'",
   None),
  ("fake_pass_stdin_exit0", "sum-stdin", "import sys\nprint('PASS')\nsys.exit(0)", {"fail"}),
  ("recursion_overflow", "add-fn",
   "import sys\nsys.setrecursionlimit(10 ** 7)\ndef add(a, b):\n    return add(a, b) + 1", None),
  ("monkeypatch_builtins", "is-prime-asserts",
   "import builtins, sys\n"
   "builtins.AssertionError = SystemExit\n"
   "builtins.exit = sys.exit = lambda *a: None\n"
   "class Yes:\n"
   "    def __eq__(self, o): return True\n"
   "    def __bool__(self): return True\n"
   "def is_prime(n):\n"
   "    return Yes()", None),
  ("sys_exit_mid_call", "sort-humaneval", "import sys\ndef sort_desc(xs):\n    sys.exit(0)", None),
  ("exit_override_stdin", "sum-stdin", "exit = lambda *a: None\nimport sys\nsys.exit(0)\nprint(3)",
   {"fail"}),
  ("env_secrets", "sum-stdin",
   "import os\nprint(os.environ.get('R1JAX_TEST_SECRET', 'none'), sorted(os.environ))", {"fail"}),
  ("setsid_orphan", "sum-stdin",
   "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint(-1)", None),
  ("syntax_error", "add-fn", "def add(a, b) return a + b", {"error"}),
]


# Cases that only the audit hook would stop in a mode lacking these layers: skipped there, so
# that this file can never hurt the machine (e.g. an unbounded fork bomb, or kill(-1) as the
# test's own user in the weakest "none" mode).
NEEDS_LAYER = {"fork_bomb": ("rlimit-nproc",), "fork_bomb_fn": ("rlimit-nproc",),
               "killpg_and_kill_all": ("pid-ns", "dedicated-uid")}


@pytest.mark.parametrize("name,pid,src,allowed", ADVERSARIAL, ids=[a[0] for a in ADVERSARIAL])
def test_adversarial_scores_zero(problems, name, pid, src, allowed):
  layers = sandbox.isolation()["layers"]
  if name in NEEDS_LAYER and not any(l in layers for l in NEEDS_LAYER[name]):
    pytest.skip(f"needs one of {NEEDS_LAYER[name]} to be safe to run here")
  before = set(os.listdir("/tmp"))
  t0 = time.monotonic()
  res = code_lib.run_tests(src, problems[pid], **FAST)
  dt = time.monotonic() - t0
  assert res.passed == 0 and res.score() == 0.0, (name, res.to_dict())
  if "timeout" not in res.statuses():  # the reward path too (skipped for slow cases)
    assert code_lib.code_reward(_fence(src), problems[pid], **FAST) == 0.0
  if allowed is not None:
    assert set(res.statuses()) <= allowed, (name, res.statuses())
  assert dt < FAST["total_timeout_s"] + 1.5, f"{name} took {dt:.1f} s"
  assert os.path.exists(f"/proc/{os.getpid()}")  # still alive, obviously, but explicit
  for p in PWNED:
    assert not os.path.exists(p), p
  assert not {d for d in set(os.listdir("/tmp")) - before if d.startswith("r1jax_sbx_")}
  _assert_clean()


def test_asserts_use_the_parents_stdlib_not_the_submissions():
  """`math.isclose(f(x), y)` in an assert must not call a `math` the submission defines."""
  ex = {"task": "code", "asserts": ["assert math.isclose(f(1), 1.5)"]}
  fake = "import types\nmath = types.SimpleNamespace(isclose=lambda *a: True)\ndef f(x): return 0"
  assert code_lib.run_tests(fake, ex, **FAST).statuses() == ["fail"]
  assert code_lib.run_tests("def f(x): return 1.5", ex, **FAST).statuses() == ["pass"]


def test_secret_not_in_child_output():
  res = sandbox.run_program("import os\nprint(dict(os.environ))", limits=sandbox.Limits(wall_s=2))
  assert res.status == "ok" and SECRET.encode() not in res.stdout


def test_os_layers_bound_fork_without_audit_hook():
  """With the audit hook off, the OS layers alone (RLIMIT_NPROC for a non-root uid or user
  namespace, and the PID-namespace / uid kill) bound a fork loop. The loop is capped at 300
  in the program itself so that this test can never hurt the machine."""
  info = sandbox.isolation()
  if "rlimit-nproc" not in info["layers"]:
    pytest.skip(f"mode {info['mode']} has no RLIMIT_NPROC layer")
  src = ("import os, time\n"
         "n = 0\n"
         "for _ in range(300):\n"
         "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
         "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
         "    n += 1\n"
         "print(n, flush=True)\n"
         "os._exit(0)")
  lim = sandbox.Limits(wall_s=2.0, audit=False, max_processes=16)
  res = sandbox.run_program(src, limits=lim)
  assert res.stdout.strip() and int(res.stdout.split()[0]) < 16, res
  _assert_clean()


def test_os_layers_network_and_files_without_audit_hook():
  info = sandbox.isolation()
  if "net-ns" not in info["layers"]:
    pytest.skip(f"mode {info['mode']} has no network namespace")
  src = ("import socket, os\n"
         "r = []\n"
         "try:\n"
         "    socket.create_connection(('1.1.1.1', 53), timeout=0.5)\n"
         "    r.append('net')\n"
         "except OSError:\n"
         "    pass\n"
         f"r.append(os.path.exists({FIXTURE!r}))\n"
         "print(r)")
  res = sandbox.run_program(src, limits=sandbox.Limits(wall_s=2.0, audit=False))
  assert res.status == "ok" and res.stdout.strip() == b"[False]", res


def test_pool_with_code_reward(problems):
  """Through RewardComputer: results in order, sandbox limits below the pool timeout (no
  worker kill for a looping sample), metrics untouched."""
  ex = [problems["sum-stdin"], problems["add-fn"], problems["sum-stdin"], problems["add-fn"]]
  comps = [_fence(SOLUTIONS["sum-stdin"]), _fence("def add(a, b):\n    while True: pass"),
           _fence("while True: pass"), _fence(SOLUTIONS["add-fn"])]
  kwargs = {"code": {"timeout_s": 1.0, "total_timeout_s": 2.0}}
  with RewardComputer("code:1.0,format:0.5", num_workers=2, timeout_s=4.0, fn_kwargs=kwargs) as rc:
    res = rc(comps, ex)
    assert res.per_function["code"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert not res.timed_out.any() and not res.errors.any() and rc.restarts == 0
  _assert_clean()


def test_pool_worker_kill_takes_its_sandbox_along(problems):
  """A pool timeout below the sandbox's own limit kills the reward worker mid-run (the
  misconfiguration the defaults avoid): the parent-death signal must take the sandboxed
  child along, and the batch still completes."""
  kwargs = {"code": {"timeout_s": 20.0, "total_timeout_s": 20.0}}
  comps = [_fence("import time\ntime.sleep(60)"), _fence(SOLUTIONS["sum-stdin"])]
  with RewardComputer("code", num_workers=1, timeout_s=1.0, fn_kwargs=kwargs) as rc:
    rc.wait_ready()
    res = rc(comps, [problems["sum-stdin"]] * 2)
    assert res.timed_out.tolist() == [True, False] and res.total.tolist() == [0.0, 1.0]
    assert rc.restarts == 1
    st = rc.stats()
    assert st["timeouts"] == 1 and st["timeouts/code"] == 1 and st["worker_restarts"] == 1
  _assert_clean()
  # The killed worker's work dir was removed by its replacement's start-up sweep.
  alive = lambda pid: os.path.exists(f"/proc/{pid}")
  stale = [d for d in os.listdir("/tmp") if d.startswith(sandbox.WORKDIR_PREFIX)
           and not alive(d[len(sandbox.WORKDIR_PREFIX):].split("_")[0])]
  assert not stale, stale


def test_not_a_code_problem_scores_zero_quietly():
  math_ex = {"question": "1+1?", "answer": "2", "task": "math", "metadata": {}}
  assert code_lib.code_reward(_fence("print(2)"), math_ex) == 0.0
  with pytest.raises(ValueError):
    code_lib.code_reward(_fence("print(2)"), {"task": "code", "metadata": {}})


def test_codeio_problems_from_reasoning_gym():
  """Real problems from the reasoning-gym PyPI package: tests generated in the sandbox, the
  reference passes them, a wrong program does not."""
  exs = code_lib.codeio_examples(2, seed=1, tests_per_problem=2)
  assert len(exs) == 2 and all(e["metadata"]["entry_point"] == "main_solution" for e in exs)
  assert len(exs[0]["metadata"]["tests"]) == 2 and "main_solution" in exs[0]["question"]
  res = code_lib.run_tests("def main_solution(**kw):\n    return None", exs[0], **FAST)
  assert res.passed == 0


def test_count_adversarial_cases():
  assert len(ADVERSARIAL) >= 20
