"""The plan stage's predicted memory growth of a GRPO step against the RSS growth of the
real step on CPU.

python tools/plan_vs_rss.py [--variant tiny] [--steps 3] [--set rl.max_new_tokens=32 ...]

1. measure (a subprocess): runs the GRPO stage (configs/grpo.py[:variant], 1 CPU device)
   for --steps steps and, around every step, samples the process's resident set size
   (/proc/self/statm) every millisecond from a thread: growth = peak RSS during the step -
   RSS just before it. glibc is told to serve every allocation above 64 KiB with mmap
   (MALLOC_MMAP_THRESHOLD_) and malloc_trim runs before each step, so freed XLA buffers
   leave the RSS instead of staying in malloc's free lists. Steps during which JAX
   compiled anything are flagged (compilation memory is not the step's); the figure is
   the largest growth among steps without compilation.
2. plan (this process): r1jax.stages.plan.analyse of the same config; predicted growth =
   the step's peak - what is resident before a step (policy params, optimizer state,
   reference copy).

Prints the per-step figures, predicted vs measured, their ratio, and one JSON object on
the last line.
"""
import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * PAGE


def make_config(variant: str, steps: int, sets: list[str]):
  from r1jax import configs
  c = configs.load(f"configs/grpo.py:{variant}" if variant else "configs/grpo.py")
  c.steps = steps
  c.run_dir = tempfile.mkdtemp(prefix="plan_vs_rss_")
  c.eval.at_start = False
  c.eval.every_steps = 0
  c.data.eval_size = 1  # the end-of-run eval (after the measured steps) stays short
  c.eval.batch_size = 1
  c.checkpoint.every_steps = 10 ** 6
  c.log.plot = False
  c.log.samples_every = 10 ** 6
  c.rewards.num_workers = 0
  for kv in sets:
    key, value = kv.split("=", 1)
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = type(node[last])(value) if not isinstance(node[last], bool) else value == "True"
  return c


def measure(args) -> list[dict]:
  """Run the stage; per-step RSS figures (see module docstring)."""
  import jax
  from r1jax import stages
  from r1jax.train import loop
  libc = ctypes.CDLL("libc.so.6")
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **kw: compiles.append(time.monotonic())
      if "compile" in event else None)
  steps = []
  original = loop.run

  def run(settings, *, step_fn, **kw):
    def measured(state, step):
      libc.malloc_trim(0)
      before, peak, stop = rss(), [0], threading.Event()

      def poll():
        while not stop.is_set():
          peak[0] = max(peak[0], rss())
          time.sleep(0.001)
      t = threading.Thread(target=poll, daemon=True)
      t0 = time.monotonic()
      t.start()
      out = step_fn(state, step)
      jax.block_until_ready(out[0])
      stop.set()
      t.join()
      peak[0] = max(peak[0], rss())
      steps.append({"step": step, "rss_before": before, "rss_peak": peak[0],
                    "growth": peak[0] - before, "seconds": time.monotonic() - t0,
                    "compiled": any(t0 <= c for c in compiles)})
      compiles.clear()
      return out
    return original(settings, step_fn=measured, **kw)

  loop.run = run
  stages.run(make_config(args.variant, args.steps, args.set))
  return steps


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--variant", default="", help="configs/grpo.py variant ('' = the default)")
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--set", action="append", default=[], help="config key=value")
  ap.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    with open(args.child, "w") as f:
      json.dump(measure(args), f)
    return
  out = tempfile.mktemp(suffix=".json")
  env = dict(os.environ, JAX_PLATFORMS="cpu", MALLOC_MMAP_THRESHOLD_="65536",
             MALLOC_TRIM_THRESHOLD_="65536",
             PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "device_count" not in f)
  subprocess.run([sys.executable, os.path.abspath(__file__), "--child", out, "--variant",
                  args.variant, "--steps", str(args.steps)] +
                 [a for s in args.set for a in ("--set", s)], check=True, env=env, cwd=ROOT)
  with open(out) as f:
    steps = json.load(f)
  os.environ["JAX_PLATFORMS"] = "cpu"
  from r1jax.stages import grpo as grpo_stage
  from r1jax.stages import plan
  c = make_config(args.variant, args.steps, args.set)
  s = grpo_stage.validate_config(c)
  cfg = s.model.load(params=False, with_tokenizer=False).config
  a = plan.analyse(c, cfg, s.parallel.mesh(),
                   plan.Knobs(s.micro_batch_prompts, bool(c.remat),
                              int(c.kernels.logprob_chunk_size)))
  print(plan.format_report(a))
  mib = lambda b: round(b / 2 ** 20, 1)
  for st in steps:
    print(f"step {st['step']}: RSS before {mib(st['rss_before'])} MiB, peak "
          f"{mib(st['rss_peak'])} MiB, growth {mib(st['growth'])} MiB, {st['seconds']:.1f} s"
          f"{' (compiled)' if st['compiled'] else ''}")
  clean = [st["growth"] for st in steps if not st["compiled"]]
  measured = max(clean) if clean else None
  predicted = a["step_growth_bytes"]
  ratio = predicted / measured if measured else None
  print(f"predicted step growth {mib(predicted)} MiB (step peak {mib(a['step_peak_bytes'])} "
        f"MiB - resident {mib(a['step_peak_bytes'] - predicted)} MiB); measured "
        f"{mib(measured) if measured else 'n/a (every step compiled)'} MiB; "
        f"ratio {ratio if ratio is None else round(ratio, 3)}")
  print(json.dumps({"variant": args.variant, "sets": args.set,
                    "predicted_growth_mib": mib(predicted),
                    "predicted_peak_mib": mib(a["step_peak_bytes"]),
                    "measured_growth_mib": mib(measured) if measured else None,
                    "ratio": ratio, "steps": steps,
                    "per_program_step_mib": {k: mib(v["step_bytes"])
                                             for k, v in a["programs"].items()}}))


if __name__ == "__main__":
  main()
