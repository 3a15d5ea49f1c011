"""Code-execution reward (r1jax.rewards.code) and its sandbox (r1jax.rewards.sandbox).

Correct programs score 1 (binary by default; partial credit opt-in), and an adversarial suite
scores 0 while leaving this machine and the test process unharmed: no sandbox process
survives, no file or directory (host work dir, per-run cgroup) is left, the cost stays within
the per-sample limit. ADVERSARIAL holds the classic cases; CLASSES one case per attack class
of the sandbox review (sub-interpreters, chdir/rename, /proc snooping, setsid + prctl,
memory summed over forks, protocol abuse, quadratic parse, deep directory chain, float
tolerance), each of which prints the right answer only if its attack works. The default run
uses the default mode (nsjail+cgroup); `test_class_x_mode_sweep` (slow) runs the classes in
every mode and is where the table in docs/code_reward.md comes from.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from r1jax.rewards import RewardComputer, isolation, sandbox
from r1jax.rewards import code as code_lib
from r1jax.data.sources import jsonl_examples

# Tests that start sandboxes check for leftover sandbox processes machine-wide: with
# pytest-xdist they share one worker (--dist loadgroup), so no two run at once.
pytestmark = pytest.mark.xdist_group("sandbox")

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "code_problems.jsonl")
FAST = {"timeout_s": 0.8, "total_timeout_s": 1.6}
# Limits for programs that must pass: generous, so a loaded machine cannot fail them.
HONEST = {"timeout_s": 5.0, "total_timeout_s": 10.0}
SECRET = "r1jax-test-secret-3f9a"
os.environ.setdefault("R1JAX_TEST_SECRET", SECRET)  # must never reach the child
RUNNER_MARK = b"Child side of the code sandbox"  # in the argv of every sandbox process
MARK = "r1jax-survivor-7c1e"


@pytest.fixture(scope="module")
def problems():
  return {ex["id"]: ex for ex in jsonl_examples(FIXTURE)}


def _fence(src):
  return f"<think> plan </think> <answer>\n```python\n{src}\n```\n</answer>"


def _sandbox_procs():
  """PIDs of live processes of a sandbox: a dedicated sandbox uid, the runner in their
  command line, or the survivor marker."""
  out = []
  for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
      try:
        with open(f"/proc/{pid}/status") as f:
          uid = int(next(line for line in f if line.startswith("Uid:")).split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
          cmd = f.read()
      except (OSError, StopIteration, ValueError):
        continue
      if (isolation.UID_BASE <= uid < isolation.UID_BASE + isolation.UID_RANGE
          or RUNNER_MARK in cmd or MARK.encode() in cmd):
        out.append(int(pid))
  return out


def _cgroup_leftovers():
  cg, _ = isolation.find_cgroups()
  if cg is None:
    return []
  return [os.path.join(p, d) for p in cg.parents() if os.path.isdir(p)
          for d in os.listdir(p) if d.startswith("NSJAIL.")]


def _assert_clean(tmp_before=None):
  deadline = time.monotonic() + 3.0
  while (_sandbox_procs() or _cgroup_leftovers()) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not _sandbox_procs(), "a sandboxed process outlived its run"
  assert not _cgroup_leftovers(), _cgroup_leftovers()
  if tmp_before is not None:
    assert not {d for d in set(os.listdir("/tmp")) - tmp_before if d.startswith("r1jax_sbx_")}


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
  # The answer-tag rules of the other accuracy rewards: several blocks or trailing text void it.
  assert code_lib.extract_code(text + "<answer>```python\nother\n```</answer>") is None
  assert code_lib.extract_code(text + " and more") is None


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
  # Integers are exact; tolerance only where the expected token is not an integer.
  assert not code_lib.stdout_matches("1000000000999", "1000000000000")
  assert not code_lib.stdout_matches("3.0000001", "3") and code_lib.stdout_matches("+3", "3")
  assert code_lib.stdout_matches("1000000000000.5", "1000000000000.0")  # relative 1e-6
  assert not code_lib.values_equal(10 ** 12 + 999, 10 ** 12) and code_lib.values_equal(3.0, 3)
  assert not code_lib.values_equal(3.0000001, 3) and not code_lib.values_equal(True, 1)


def test_jsonl_fixture_loads_without_answer(problems):
  assert len(problems) == 6
  assert all(p["task"] == "code" and p["answer"] == "" for p in problems.values())


# ------------------------------------------------------------------ correct and partial

@pytest.mark.parametrize("pid", sorted(SOLUTIONS))
def test_correct_programs_score_one(problems, pid):
  assert code_lib.code_reward(_fence(SOLUTIONS[pid]), problems[pid], **HONEST) == 1.0
  res = code_lib.run_tests(SOLUTIONS[pid], problems[pid], **HONEST)
  assert res.all_passed and res.isolation["mode"] == isolation.DEFAULT_MODE


def test_binary_by_default_and_partial_credit(problems):
  add = "def add(a, b):\n    return int(a) + int(b)"  # wrong on floats and strings
  res = code_lib.run_tests(add, problems["add-fn"], **HONEST)
  assert res.statuses()[:2] == ["pass", "pass"] and res.passed == 2
  assert code_lib.code_reward(_fence(add), problems["add-fn"], **FAST) == 0.0
  assert code_lib.code_reward(_fence(add), problems["add-fn"], binary=False, **HONEST) == 0.5
  prime = "def is_prime(n):\n    return all(n % d for d in range(2, n))"  # wrong for 0 and 1
  assert code_lib.code_reward(_fence(prime), problems["is-prime-asserts"], binary=False,
                              **HONEST) == 0.6
  half = "a, b = map(int, input().split())\nprint(a + b if a > 0 else 7)"
  assert code_lib.code_reward(_fence(half), problems["sum-stdin"], binary=False,
                              **HONEST) == pytest.approx(2 / 3)
  assert code_lib.code_reward("no code here", problems["sum-stdin"], **FAST) == 0.0


def test_function_values_round_trip(problems):
  """Every plain type comes back as itself (tagged JSON); other objects are errors."""
  src = ("def f(k):\n"
         "    return [None, True, 3, 2.5, float('inf'), 'x\\u00e9\\n', b'\\x00\\xff', (1, 2),\n"
         "            {1, 2}, frozenset({3}), {(1, 2): [1]}, 1j, 10 ** 40][k]\n"
         "def g():\n    return object()\n")
  want = [None, True, 3, 2.5, float("inf"), "x\u00e9\n", b"\x00\xff", (1, 2), {1, 2},
          frozenset({3}), {(1, 2): [1]}, 1j, 10 ** 40]
  with sandbox.FunctionSession(src, sandbox.Limits(wall_s=5)) as s:
    for k, w in enumerate(want):
      got = s.call("f", (k,))
      assert got == w and type(got) is type(w), (k, got)
    with pytest.raises(sandbox.CallError, match="unrepresentable"):
      s.call("g")


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
   {"output_limit", "error", "timeout", "skipped"}),
  ("write_outside", "sum-stdin",
   f"for p in {PWNED + ['../PWNED', '/PWNED']!r}:\n"
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
   "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, 9)\nprint(-1)", None),
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
   "class Yes(int):\n"
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


def _score_zero_cleanly(problems, name, pid, src, allowed, mode, limits=FAST):
  before = set(os.listdir("/tmp"))
  t0 = time.monotonic()
  res = code_lib.run_tests(src, problems[pid], mode=mode, **limits)
  dt = time.monotonic() - t0
  assert res.score() == 0.0, (name, res.to_dict())  # the binary reward
  if allowed is None or "pass" not in allowed:
    assert res.passed == 0, (name, res.to_dict())
  assert res.isolation["mode"] == mode
  if allowed is not None:
    assert set(res.statuses()) <= allowed, (name, res.statuses())
  limit = limits["total_timeout_s"] + 1.5
  assert dt < limit, f"{name} took {dt:.1f} s"
  for p in PWNED:
    assert not os.path.exists(p), p
  _assert_clean(before)
  return res


@pytest.mark.parametrize("name,pid,src,allowed", ADVERSARIAL, ids=[a[0] for a in ADVERSARIAL])
def test_adversarial_scores_zero(problems, name, pid, src, allowed):
  res = _score_zero_cleanly(problems, name, pid, src, allowed, isolation.DEFAULT_MODE)
  if "timeout" not in res.statuses():  # the reward path too (skipped for slow cases)
    assert code_lib.code_reward(_fence(src), problems[pid], **FAST) == 0.0


# ------------------------------------------------------------------ one case per attack class

# The decoy stands for the trainer: its command line holds the expected outputs of
# sum-stdin; a sandbox that can read other processes' /proc entries would find them.
DECOY_ARG = "--expected=1 2=>3;-5 5=>0;1000000000000 1=>1000000000001"
_ANSWER_IF = ("a, b = map(int, input().split())\n"
              "print(a + b if {cond} else -1)\n")

CLASSES = {
  # (problem, source, statuses allowed, safe to run without isolation)
  "subinterpreter_escape": ("sum-stdin",
      "try:\n    import _xxsubinterpreters as I\n"
      "except ImportError:\n    import _interpreters as I\n"
      "i = I.create()\n"
      f"I.run_string(i, 'open({FIXTURE!r}).read(); open({PWNED[0]!r}, \"w\").write(\"x\")')\n"
      "import os\n" + _ANSWER_IF.format(cond=f"os.path.exists({PWNED[0]!r})"), None, False),
  "chdir_rename": ("sum-stdin",
      "import os\nok = False\n"
      "try:\n    os.chdir('/')\n    open('tmp/x', 'w').write('x')\n"
      f"    os.rename('/tmp/x', {PWNED[0]!r})\n    ok = os.path.exists({PWNED[0]!r})\n"
      "except Exception:\n    pass\n"
      "try:\n    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath('x'))))\n"
      f"    ok = ok or bool(open({os.path.relpath(FIXTURE, '/')!r}).read())\n"
      "except Exception:\n    pass\n" + _ANSWER_IF.format(cond="ok"), None, False),
  "proc_snooping": ("sum-stdin",
      "import os\nline = input()\nfound = None\n"
      "for pid in (os.listdir('/proc') if os.path.isdir('/proc') else []):\n"
      "    try:\n        cmd = open('/proc/%s/cmdline' % pid, 'rb').read().decode()\n"
      "    except Exception:\n        continue\n"
      "    if '--expected=' in cmd:\n"
      "        kvs = cmd.split('--expected=')[1].strip('\\x00').split(';')\n"
      "        table = dict(kv.split('=>') for kv in kvs)\n"
      "        found = table.get(line.strip())\n"
      "print(found if found is not None else -1)\n", None, True),
  "setsid_prctl_survivor": ("sum-stdin",
      "import os, sys\n"
      "if os.fork() == 0:\n"
      "    os.setsid()\n"
      "    try:\n        import ctypes\n        ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)\n"
      "    except Exception:\n        pass\n"
      "    if os.fork() == 0:\n"
      "        os.execv(sys.executable,\n"
      f"                 [sys.executable, '-c', 'import time; time.sleep(30)', {MARK!r}])\n"
      "    os._exit(0)\n"
      "print(-1)\n", None, False),
  "memory_summed_over_forks": ("sum-stdin",
      "import os\nkids = []\n"
      "for _ in range(4):\n"
      "    pid = os.fork()\n"
      "    if pid == 0:\n"
      "        try:\n            b = bytearray(160 << 20)\n"
      "            for k in range(0, len(b), 4096):\n                b[k] = 1\n"
      "            import time; time.sleep(0.3)\n            os._exit(0)\n"
      "        except BaseException:\n            os._exit(3)\n"
      "    kids.append(pid)\n"
      "ok = all(os.waitpid(p, 0)[1] == 0 for p in kids)\n" + _ANSWER_IF.format(cond="ok"),
      None, False),
  "protocol_abuse_hang_parent": ("add-fn",
      "import fcntl, os, sys, time\n"
      "cfg = eval(sys.argv[1], {'__builtins__': {}, 'true': True, 'false': False, 'null': None})\n"
      "for fd in (cfg['ctl'], cfg['res']):\n"
      "    try:\n        fcntl.fcntl(fd, 1031, 4096)\n    except OSError:\n        pass\n"
      "os.write(cfg['res'], (7).to_bytes(4, 'big') + b'[\"ready\",null]'[:7])\n"
      "os.write(cfg['res'], (15).to_bytes(4, 'big') + b'[\"ready\",null]')\n"
      "os.write(cfg['res'], (1 << 19).to_bytes(4, 'big') + b'[\"ok\",')\n"
      "time.sleep(60)\n", {"error", "timeout", "skipped"}, True),
  "quadratic_parse": ("add-fn",
      "import os, sys\n"
      "cfg = eval(sys.argv[1], {'__builtins__': {}, 'true': True, 'false': False, 'null': None})\n"
      "def add(a, b):\n"
      "    p = (1 << 61) - 1\n"
      "    body = ','.join(str(k * p) for k in range(1, 30001))\n"
      "    msg = ('[\"ok\",{\"set\":[' + body + ']}]').encode()\n"
      "    os.write(cfg['res'], len(msg).to_bytes(4, 'big') + msg)\n"
      "    return a + b\n", {"error", "skipped"}, True),
  "deep_directory_chain": ("sum-stdin",
      "import os\n"
      "for _ in range(20000):\n"
      "    try:\n        os.mkdir('d')\n        os.chdir('d')\n    except OSError:\n        break\n"
      "print(-1)\n", None, True),
  "float_tolerance_cheat": ("sum-stdin",
      "a, b = map(int, input().split())\n"
      "print(a + b + 999 if abs(a + b) > 10 ** 6 else a + b)\n", {"pass", "fail"}, True),
  # (passes the two small tests: the binary reward is what must be 0)
}
# Classes a weaker mode does not bound: "nsjail" has no cgroup, so memory summed over forks
# is bounded only by RLIMIT_AS x RLIMIT_NPROC; "none" isolates nothing: other processes'
# /proc is readable, and its work dir is on the host, whose cleanup takes time linear in
# what the program made (a 20000-deep chain costs seconds of rmdir). Only the classes that
# attack the parent itself, or that cannot harm the machine, are run there.
NOT_BOUNDED = {"nsjail": {"memory_summed_over_forks"},
               "none": {"proc_snooping", "deep_directory_chain"}}


@pytest.fixture(scope="module")
def decoy():
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", DECOY_ARG])
  yield proc
  proc.kill()
  proc.wait()


def _run_class(problems, name, mode):
  pid, src, allowed, _ = CLASSES[name]
  # Touching 640 MB takes a while on a busy machine: time enough that only memory can stop it.
  limits = {"timeout_s": 4.0, "total_timeout_s": 4.0} if name.startswith("memory") else FAST
  res = _score_zero_cleanly(problems, name, pid, src, allowed, mode, limits)
  if name == "deep_directory_chain":  # the same process still scores honest code
    assert code_lib.run_tests(SOLUTIONS[pid], problems[pid], mode=mode, **HONEST).all_passed
  return res


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_attack_class_scores_zero(problems, decoy, name):
  del decoy
  _run_class(problems, name, isolation.DEFAULT_MODE)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["nsjail", "none"])
@pytest.mark.parametrize("name", sorted(CLASSES) + ["adversarial"])
def test_class_x_mode_sweep(problems, decoy, name, mode):
  """The classes in the weaker modes: where the mode's layers bound the class it scores 0
  and leaves nothing; where they do not, the attack is shown to work (xfail, strict)."""
  del decoy
  try:
    sandbox.isolation(mode)
  except sandbox.SandboxUnavailable as e:
    pytest.skip(str(e))
  if name == "adversarial":
    if mode == "none":
      pytest.skip("no isolation by design: hostile programs are not run in mode none")
    for case in ADVERSARIAL:
      _score_zero_cleanly(problems, *case, mode)
    return
  if mode == "none" and not CLASSES[name][3]:
    pytest.skip("no isolation by design: hostile programs are not run in mode none")
  if name in NOT_BOUNDED.get(mode, ()):
    with pytest.raises(AssertionError):
      _run_class(problems, name, mode)
    _assert_clean()
    return
  _run_class(problems, name, mode)


def test_unknown_or_unavailable_mode_fails_closed(problems, monkeypatch):
  with pytest.raises(ValueError, match="unknown sandbox mode 'nsjial'"):
    sandbox.isolation("nsjial")
  monkeypatch.setenv(isolation.ENV_MODE, "nsjial")  # a typo in the environment
  with pytest.raises(ValueError, match="R1JAX_SANDBOX_MODE"):
    sandbox.run_program("print(1)")
  with pytest.raises(ValueError, match="unknown sandbox mode"):
    code_lib.code_reward(_fence(SOLUTIONS["sum-stdin"]), problems["sum-stdin"], **FAST)
  with pytest.raises(ValueError, match="unknown sandbox mode"):  # at start-up, not per sample
    RewardComputer("code:1.0", num_workers=0)
  monkeypatch.delenv(isolation.ENV_MODE)
  with pytest.raises(ValueError, match="unknown sandbox mode 'bogus'"):
    RewardComputer("code:1.0", num_workers=1, fn_kwargs={"code": {"sandbox_mode": "bogus"}})
  monkeypatch.setenv(isolation.ENV_NSJAIL, "/nonexistent/nsjail")  # the tool is missing
  with pytest.raises(sandbox.SandboxUnavailable, match="needs nsjail"):
    RewardComputer("code:1.0,format:0.5", num_workers=0)
  with pytest.raises(sandbox.SandboxUnavailable):
    code_lib.run_tests(SOLUTIONS["sum-stdin"], problems["sum-stdin"], **FAST)
  monkeypatch.delenv(isolation.ENV_NSJAIL)
  with RewardComputer("code:1.0", num_workers=0) as rc:
    assert rc.stats()["code/sandbox_level"] == 2.0


def test_secret_not_in_child_output():
  res = sandbox.run_program("import os\nprint(dict(os.environ))", limits=sandbox.Limits(wall_s=2))
  assert res.status == "ok" and SECRET.encode() not in res.stdout


def test_os_layers_without_the_language_runtime():
  """What the kernel enforces, seen from inside: no network but AF_UNIX, no ptrace, no new
  namespaces, no /proc, a read-only root, site-packages hidden, a pids limit."""
  src = ("import os, socket, sys\n"
         "r = {}\n"
         "def t(k, f):\n"
         "    try:\n        f(); r[k] = 'ok'\n    except Exception as e:\n"
         "        r[k] = type(e).__name__\n"
         "t('inet', lambda: socket.socket(socket.AF_INET))\n"
         "t('unix', lambda: socket.socket(socket.AF_UNIX))\n"
         "def unshare():\n"
         "    import ctypes\n"
         "    libc = ctypes.CDLL(None, use_errno=True)\n"
         "    if libc.unshare(0x10000000) != 0:\n"
         "        raise OSError(ctypes.get_errno(), 'unshare')\n"
         "t('unshare', unshare)\n"
         "t('root_write', lambda: open('/x', 'w'))\n"
         f"t('tests', lambda: open({FIXTURE!r}))\n"
         "t('proc', lambda: os.listdir('/proc'))\n"
         "import sysconfig\n"
         "t('site', lambda: os.listdir(sysconfig.get_paths()['purelib']) or 1 / 0)\n"
         "n = 0\n"
         "for _ in range(100):\n"
         "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
         "    if pid == 0:\n        import time; time.sleep(5); os._exit(0)\n"
         "    n += 1\n"
         "r['forks'] = n\n"
         "print(r, flush=True)\nos._exit(0)\n")
  res = sandbox.run_program(src, limits=sandbox.Limits(wall_s=5.0, max_processes=16))
  assert res.status == "ok", res
  got = eval(res.stdout.decode())  # our own test program's dict
  assert got["inet"] == "PermissionError" and got["unix"] == "ok"
  assert got["unshare"] == "PermissionError" and got["root_write"] == "OSError"
  assert got["tests"] == "FileNotFoundError" and got["proc"] == "FileNotFoundError"
  assert got["site"] == "ZeroDivisionError"  # an empty directory
  assert got["forks"] < 16
  _assert_clean()


# ------------------------------------------------------------------ the reward pool

def test_mixed_batch_through_the_pool(problems):
  """Honest and hostile samples in one batch: every honest reward equals its reward in an
  all-honest batch, in order; the hostile ones score 0; no worker is killed."""
  honest = [(problems[p], _fence(SOLUTIONS[p])) for p in ("sum-stdin", "add-fn", "apps-call",
                                                          "is-prime-asserts")]
  hostile = [(problems[pid], _fence(src)) for name, pid, src, _ in ADVERSARIAL
             if name in ("infinite_loop", "fork_bomb", "memory_bomb", "kill_parent",
                         "setsid_orphan", "huge_output")]
  batch = [x for pair in zip(honest, hostile[:len(honest)]) for x in pair] + hostile[len(honest):]
  kwargs = {"code": {"timeout_s": 1.0, "total_timeout_s": 2.0}}
  with RewardComputer("code:1.0,format:0.5", num_workers=2, timeout_s=4.0,
                      fn_kwargs=kwargs) as rc:
    alone = rc([c for _, c in honest], [e for e, _ in honest])
    mixed = rc([c for _, c in batch], [e for e, _ in batch])
    assert rc.restarts == 0 and not mixed.timed_out.any() and not mixed.errors.any()
  honest_idx = [i for i, x in enumerate(batch) if x in honest]
  assert mixed.total[honest_idx].tolist() == alone.total.tolist() == [1.5] * len(honest)
  hostile_idx = [i for i in range(len(batch)) if i not in honest_idx]
  assert mixed.per_function["code"][hostile_idx].tolist() == [0.0] * len(hostile_idx)
  _assert_clean()


def test_accuracy_and_code_mix_over_mixed_data(problems):
  """"accuracy:1,code:1" over math and code examples: each problem is scored by its own
  reward, the other gives it 0, and nothing counts as an error."""
  math_ex = {"question": "2 + 3 = ?", "answer": "5", "task": "math"}
  batch = [(math_ex, "<think> 2 + 3 = 5 </think> <answer> 5 </answer>"),
           (problems["add-fn"], _fence(SOLUTIONS["add-fn"])),
           (math_ex, "<think> no </think> <answer> 6 </answer>")]
  kwargs = {"code": {"timeout_s": 1.0, "total_timeout_s": 2.0}}
  with RewardComputer("accuracy:1.0,code:1.0", num_workers=0, timeout_s=4.0,
                      fn_kwargs=kwargs) as rc:
    out = rc([c for _, c in batch], [e for e, _ in batch])
  assert not out.errors.any()
  assert out.per_function["accuracy"].tolist() == [1.0, 0.0, 0.0]
  assert out.per_function["code"].tolist() == [0.0, 1.0, 0.0]
  _assert_clean()


def test_pool_worker_kill_takes_its_sandbox_along(problems):
  """A pool timeout below the sandbox's own limit kills the reward worker mid-run (the
  misconfiguration the defaults avoid): the parent-death signal takes nsjail and its jail
  along, nsjail removes the per-run cgroup, and the batch still completes."""
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


def test_not_a_code_problem_scores_zero_quietly():
  math_ex = {"question": "1+1?", "answer": "2", "task": "math", "metadata": {}}
  assert code_lib.code_reward(_fence("print(2)"), math_ex) == 0.0
  with pytest.raises(ValueError):
    code_lib.code_reward(_fence("print(2)"), {"task": "code", "metadata": {}})


def test_codeio_problems_from_reasoning_gym():
  """Real problems from the reasoning-gym PyPI package: tests generated in the sandbox, the
  reference passes them, a wrong program does not."""
  from r1jax.data import codeio
  exs = codeio.codeio_examples(2, seed=1, tests_per_problem=2)
  assert len(exs) == 2 and all(e["metadata"]["entry_point"] == "main_solution" for e in exs)
  assert len(exs[0]["metadata"]["tests"]) == 2 and "main_solution" in exs[0]["question"]
  res = code_lib.run_tests("def main_solution(**kw):\n    return None", exs[0], **FAST)
  assert res.passed == 0


def test_count_adversarial_cases():
  assert len(ADVERSARIAL) >= 25 and len(CLASSES) == 9
