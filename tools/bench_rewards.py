"""Code-reward sandbox and reward-pool figures, before (a git ref, default main) and after (this
checkout), measured in the same run on the same machine.

For each tree, in a fresh interpreter with that tree first on the path:
  sandbox_start_s     median wall time of run_program("print(1)") (start to exit), its
                      default mode
  code_samples_per_s  N simple correct code samples (stdin/stdout, function and assert tests
                      over tests/data/code_problems.jsonl) through RewardComputer
                      ("code:1.0", 2 workers), best of --reps after a warm-up call
  mixed_batch_s       wall time of one batch of honest and hostile samples (loops, fork and
                      memory bombs, output floods, a setsid orphan), 1 s per test
  honest_equal        every honest reward in the mixed batch equals its all-honest value
After only (the parent-side parse of a child's answer): the time to parse a set of K big
integers with colliding hashes, by ast.literal_eval (the old parser) and by
r1jax.rewards.wire.decode_answer (the new one, which refuses it).

  python tools/bench_rewards.py [--ref main] [--n 64] [--reps 2] [--workers 2]

The last line of the output is one JSON object with all figures and the after/before ratios.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fence(src):
  return f"<think> plan </think> <answer>\n```python\n{src}\n```\n</answer>"


SOLUTIONS = {
    "sum-stdin": "a, b = map(int, input().split())\nprint(a + b)",
    "add-fn": "def add(a, b):\n    return a + b",
    "is-prime-asserts": ("def is_prime(n):\n    return n > 1 and "
                         "all(n % d for d in range(2, int(n**0.5) + 1))"),
    "apps-call": "def square(x):\n    return x * x",
}
HOSTILE = [
    ("sum-stdin", "while True:\n    pass"),
    ("add-fn", "def add(a, b):\n    while True: pass"),
    ("sum-stdin", "import os\nwhile True:\n    os.fork()"),
    ("sum-stdin", "x = []\nwhile True:\n    x.append(bytearray(1 << 26))"),
    ("sum-stdin", "while True:\n    print('x' * 100000)"),
    ("sum-stdin", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
                  "print(-1)"),
]


def measure(n: int, reps: int, workers: int) -> dict:
  """Figures of the r1jax found first on sys.path (run in a child interpreter)."""
  from r1jax.data.sources import jsonl_examples
  from r1jax.rewards import RewardComputer, sandbox
  fixture = os.path.join(ROOT, "tests", "data", "code_problems.jsonl")
  probs = {ex["id"]: ex for ex in jsonl_examples(fixture)}
  out = {}
  sandbox.run_program("print(1)")  # probe the mode once
  starts = []
  for _ in range(20):
    t = time.perf_counter()
    res = sandbox.run_program("print(1)")
    starts.append(time.perf_counter() - t)
    assert res.status == "ok", res
  out["sandbox_start_s"] = round(statistics.median(starts), 4)
  out["isolation"] = res.isolation.get("mode")
  ids = list(SOLUTIONS)
  exs = [probs[ids[i % len(ids)]] for i in range(n)]
  comps = [_fence(SOLUTIONS[ex["id"]]) for ex in exs]
  kw = {"code": {"timeout_s": 2.0, "total_timeout_s": 4.0}}
  with RewardComputer("code:1.0", num_workers=workers, timeout_s=5.0, fn_kwargs=kw) as rc:
    rc.wait_ready()
    rc(comps[:4], exs[:4])
    best = None
    for _ in range(reps):
      t = time.perf_counter()
      res = rc(comps, exs)
      dt = time.perf_counter() - t
      best = dt if best is None else min(best, dt)
      assert res.per_function["code"].min() == 1.0, res.per_function["code"]
    out["code_samples_per_s"] = round(n / best, 1)
  kw = {"code": {"timeout_s": 1.0, "total_timeout_s": 2.0}}
  honest = [(probs[p], _fence(SOLUTIONS[p])) for p in ids]
  hostile = [(probs[p], _fence(src)) for p, src in HOSTILE]
  batch = [x for pair in zip(honest, hostile) for x in pair] + hostile[len(honest):]
  with RewardComputer("code:1.0", num_workers=workers, timeout_s=4.0, fn_kwargs=kw) as rc:
    rc.wait_ready()
    alone = rc([c for _, c in honest], [e for e, _ in honest])
    t = time.perf_counter()
    mixed = rc([c for _, c in batch], [e for e, _ in batch])
    out["mixed_batch_s"] = round(time.perf_counter() - t, 2)
    out["mixed_batch_size"] = len(batch)
    idx = [i for i, x in enumerate(batch) if x in honest]
    out["honest_equal"] = bool(mixed.total[idx].tolist() == alone.total.tolist())
    out["hostile_rewards"] = [float(mixed.total[i]) for i in range(len(batch)) if i not in idx]
    out["pool_timeouts_in_mixed_batch"] = int(mixed.timed_out.sum())
  return out


def parse_cost(k: int) -> dict:
  """Parent-side cost of parsing a child's answer: a set of k colliding big integers."""
  import ast
  from r1jax.rewards import wire
  p = (1 << 61) - 1
  ints = [str(i * p) for i in range(1, k + 1)]
  t = time.perf_counter()
  ast.literal_eval("{" + ",".join(ints) + "}")
  old = time.perf_counter() - t
  payload = ('["ok",{"set":[' + ",".join(ints) + "]}]").encode()
  t = time.perf_counter()
  try:
    wire.decode_answer(payload)
    refused = False
  except ValueError:
    refused = True
  new = time.perf_counter() - t
  return {"colliding_set_size": k, "literal_eval_s": round(old, 3),
          "decode_answer_s": round(new, 4), "decode_answer_refused": refused}


def _in_tree(tree: str, args) -> dict:
  env = dict(os.environ, PYTHONPATH=tree)
  env.pop("R1JAX_SANDBOX_MODE", None)
  cmd = [sys.executable, os.path.abspath(__file__), "--measure", "--n", str(args.n),
         "--reps", str(args.reps), "--workers", str(args.workers)]
  out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, timeout=1800)
  if out.returncode != 0:
    raise RuntimeError(f"measuring {tree} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--ref", default="main", help="git ref of the 'before' code ('' to skip)")
  ap.add_argument("--n", type=int, default=64)
  ap.add_argument("--reps", type=int, default=2)
  ap.add_argument("--workers", type=int, default=2)
  ap.add_argument("--collisions", type=int, default=10000)
  ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.measure:
    print(json.dumps(measure(args.n, args.reps, args.workers)))
    return
  result = {"n": args.n, "workers": args.workers, "ref": args.ref}
  if args.ref:
    with tempfile.TemporaryDirectory() as tree:
      archive = subprocess.run(["git", "-C", ROOT, "archive", args.ref], check=True,
                               capture_output=True).stdout
      subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
      result["before"] = _in_tree(tree, args)
      print("before:", json.dumps(result["before"]))
  result["after"] = _in_tree(ROOT, args)
  print("after:", json.dumps(result["after"]))
  sys.path.insert(0, ROOT)
  result["parse"] = parse_cost(args.collisions)
  print("parse:", json.dumps(result["parse"]))
  if "before" in result:
    b, a = result["before"], result["after"]
    result["ratios_after_over_before"] = {
        k: round(a[k] / b[k], 3) for k in ("sandbox_start_s", "code_samples_per_s",
                                           "mixed_batch_s") if b.get(k)}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
