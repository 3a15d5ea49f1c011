"""Throughput of the reward pool (RewardComputer) on this machine.

Prints samples/s for math verification (the `accuracy` reward on reasoning-gym and
free-form math examples) and for code execution (the `code` reward on simple correct
programs, stdin/stdout and function tests), and what one timing-out code sample costs.
The last line of the output is one JSON object with all figures.

  python tools/bench_rewards.py [--workers 2] [--n 64]
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1jax.rewards import RewardComputer, sandbox  # noqa: E402
from r1jax.data.sources import jsonl_examples, reasoning_gym_examples  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                       "data", "code_problems.jsonl")


def _wrap(ans):
  return f"<think> working </think> <answer>{ans}</answer>"


def _fence(src):
  return f"<think> plan </think> <answer>\n```python\n{src}\n```\n</answer>"


def _timed(rc, comps, exs, reps=1):
  rc(comps[:2], exs[:2])  # warm
  t = time.perf_counter()
  for _ in range(reps):
    res = rc(comps, exs)
  return (time.perf_counter() - t) / reps, res


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workers", type=int, default=2)
  ap.add_argument("--n", type=int, default=64)
  args = ap.parse_args()
  n, out = args.n, {"workers": args.workers, "n": args.n}

  # Math: reasoning-gym arithmetic (its scorer) and free-form math (math_verify).
  rg = reasoning_gym_examples("basic_arithmetic", n // 2, seed=0) + \
      reasoning_gym_examples("chain_sum", n - n // 2, seed=0)
  comps = [_wrap(ex["answer"] if i % 2 == 0 else "12345") for i, ex in enumerate(rg)]
  maths = [{"question": "q", "answer": a, "task": "math", "metadata": {}}
           for a in ("\\frac{1}{2}", "x+1", "\\sqrt{2}", "18")] * (n // 4)
  mcomps = [_wrap(p) for p in ("0.5", "1+x", "2^{1/2}", "17")] * (n // 4)
  with RewardComputer("accuracy:1.0,format:0.5", num_workers=args.workers, timeout_s=10.0) as rc:
    rc.wait_ready()
    dt, _ = _timed(rc, comps, rg, reps=3)
    out["math_rg_samples_per_s"] = round(n / dt, 1)
    dt, res = _timed(rc, mcomps, maths, reps=3)
    out["math_verify_samples_per_s"] = round(len(maths) / dt, 1)
    print(f"math (reasoning-gym scorer): {out['math_rg_samples_per_s']} samples/s; "
          f"math_verify: {out['math_verify_samples_per_s']} samples/s")

  # Code: simple correct programs, n samples over the fixture's problems.
  probs = {ex["id"]: ex for ex in jsonl_examples(FIXTURE)}
  sols = {"sum-stdin": "a, b = map(int, input().split())\nprint(a + b)",
          "add-fn": "def add(a, b):\n    return a + b",
          "is-prime-asserts": ("def is_prime(n):\n    return n > 1 and "
                               "all(n % d for d in range(2, int(n**0.5) + 1))"),
          "apps-call": "def square(x):\n    return x * x"}
  ids = list(sols)
  cexs = [probs[ids[i % len(ids)]] for i in range(n)]
  ccomps = [_fence(sols[ex["id"]]) for ex in cexs]
  stdio = [i for i, ex in enumerate(cexs) if ex["id"] == "sum-stdin"]
  kw = {"code": {"timeout_s": 2.0, "total_timeout_s": 4.0}}
  with RewardComputer("code:1.0,format:0.5", num_workers=args.workers, timeout_s=5.0,
                      fn_kwargs=kw) as rc:
    rc.wait_ready()
    dt, res = _timed(rc, ccomps, cexs)
    assert res.per_function["code"].min() == 1.0, res.per_function["code"]
    out["code_samples_per_s"] = round(n / dt, 1)
    s_comps, s_exs = [ccomps[i] for i in stdio], [cexs[i] for i in stdio]
    dt, _ = _timed(rc, s_comps, s_exs)
    out["code_stdio_samples_per_s"] = round(len(stdio) / dt, 1)
    out["code_stdio_tests_per_s"] = round(3 * len(stdio) / dt, 1)
    f_comps = [c for i, c in enumerate(ccomps) if i not in stdio]
    f_exs = [e for i, e in enumerate(cexs) if i not in stdio]
    dt, _ = _timed(rc, f_comps, f_exs)
    out["code_function_samples_per_s"] = round(len(f_exs) / dt, 1)
    print(f"code: {out['code_samples_per_s']} samples/s (mixed); stdin/stdout "
          f"{out['code_stdio_samples_per_s']} samples/s ({out['code_stdio_tests_per_s']} "
          f"tests/s); function tests {out['code_function_samples_per_s']} samples/s")
    # Timeout cost: one looping sample alone, then mixed into a batch.
    loop = [_fence("while True:\n    pass")]
    t = time.perf_counter()
    r = rc(loop, [probs["sum-stdin"]])
    out["code_timeout_sample_s"] = round(time.perf_counter() - t, 2)
    out["pool_timeouts"] = int(r.timed_out.sum())
    kw1 = {"code": {"timeout_s": 1.0, "total_timeout_s": 4.0}}
  with RewardComputer("code:1.0", num_workers=args.workers, timeout_s=5.0, fn_kwargs=kw1) as rc:
    rc.wait_ready()
    t = time.perf_counter()
    rc(loop, [probs["add-fn"]])
    out["code_timeout_fn_sample_s_at_1s_per_test"] = round(time.perf_counter() - t, 2)
    print(f"timeout cost: {out['code_timeout_sample_s']} s for a looping stdin sample "
          f"(2 s per test, 4 s budget, 3 tests, stop on timeout); "
          f"{out['code_timeout_fn_sample_s_at_1s_per_test']} s for a looping function sample "
          "(1 s per call, 4 s budget, 4 tests); pool "
          f"timeouts: {out['pool_timeouts']}")
  t = time.perf_counter()
  res = sandbox.run_program("print(1)")
  out["sandbox_start_s"] = round(time.perf_counter() - t, 3)
  out["isolation"] = sandbox.isolation()["mode"]
  print(json.dumps(out))


if __name__ == "__main__":
  main()
