"""One-step-async vs synchronous GRPO step time, and the sampler-vs-trainer mismatch of bf16
rollouts, measured in one process on fake CPU devices.

python tools/bench_async_rollouts.py [--devices 8] [--rollout-devices 4] [--steps 6]
    [--model tiny-random --tiny-width 256 --tiny-layers 4] [--prompts 8] [--samples 4]
    [--new-tokens 32] [--part timing,mismatch] [--mismatch-model smollm2-135m-instruct]
    [--mismatch-steps 4] [--mismatch-runs bf16_rollouts,f32_rollouts,f32_async]

timing: the real GRPO stage (configs/grpo.py) under four schedules, run back to back in this
process on the same config, data and seed:
  sync_shared   rollout then update, both on all devices (the default);
  sync_split    rollout then update, rollout on --rollout-devices devices, update on the rest;
  async_split   the rollout of step t+1 during the update of step t, on the split meshes;
  async_shared  the same overlap on shared devices (only host work can overlap).
Every completion is forced to --new-tokens tokens (no stop ids, no stop strings). A step's
time is the mean over steps 2 .. steps-1 (step 1 compiles and samples synchronously; the
async schedule's last step prefetches nothing).
mismatch: --mismatch-steps steps of --mismatch-model with rl.offpolicy_correction=tis:
bf16 rollouts against the f32 trainer, f32 rollouts (the float-rounding floor) and async f32
rollouts (one update stale), same seed; the offpolicy/* metrics of every step.
Prints one JSON object on its last line.
"""
import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEDULES = {"sync_shared": (False, False), "sync_split": (False, True),
             "async_split": (True, True), "async_shared": (True, False)}
MISMATCH_KEYS = ("offpolicy/logp_diff_abs", "offpolicy/logp_diff_abs_max", "offpolicy/logp_diff",
                 "offpolicy/capped_frac", "offpolicy/is_weight")


def base_config(args, model, steps):
  from r1jax import configs
  c = configs.load("grpo")
  c.model = model
  c.steps = steps
  c.run_dir = tempfile.mkdtemp(prefix="bench_async_")
  c.rl.prompts_per_step = args.prompts
  c.rl.num_generations = args.samples
  c.rl.micro_batch_prompts = args.prompts
  c.rl.max_new_tokens = args.new_tokens
  c.rl.offpolicy_correction = "tis"
  c.data.train_size = 400
  c.data.eval_size = 0
  c.eval.at_start = False
  c.checkpoint.every_steps = 0
  c.log.plot = False
  c.log.samples_every = 0
  c.rewards.num_workers = 0
  if args.tiny_width:
    w = args.tiny_width
    heads = max(w // 32, 2)
    c.tiny_model = type(c.tiny_model)(dict(hidden_size=w, intermediate_size=4 * w,
                                           num_layers=args.tiny_layers, num_heads=heads,
                                           num_kv_heads=max(heads // 2, 1), head_dim=32))
  return c


def run(c):
  from r1jax.stages import grpo
  t0 = time.perf_counter()
  grpo.run(c)
  wall = time.perf_counter() - t0
  rows = [json.loads(l) for l in open(os.path.join(c.run_dir, "metrics.jsonl"))]
  return [r for r in rows if "loss" in r], wall


def timing(args):
  from r1jax.tokenizer import Tokenizer
  orig = Tokenizer.from_source.__func__

  def no_stops(cls, source):  # full-length completions: the same work every step
    tok = orig(cls, source)
    tok.stop_ids = ()
    return tok

  Tokenizer.from_source = classmethod(no_stops)
  out = {}
  try:
    for name in args.schedules.split(","):
      is_async, split = SCHEDULES[name]
      c = base_config(args, args.model, args.steps)
      c.rl.stop_strings = ""
      c.rl.async_rollouts = is_async
      c.rl.rollout_devices = args.rollout_devices if split else 0
      rows, wall = run(c)
      timed = rows[1:-1] or rows
      mean = lambda k: float(f"{sum(r[k] for r in timed) / len(timed):.4g}")
      out[name] = {"step_s": mean("step_s"), "rollout_s": mean("seconds/rollout"),
                   "update_s": mean("seconds/update"), "prefetch_s": mean("seconds/prefetch"),
                   "wait_update_s": mean("seconds/wait_update"),
                   "wait_rollout_s": mean("seconds/wait_rollout"),
                   "first_step_s": round(rows[0]["step_s"], 2), "wall_s": round(wall, 1),
                   "steps_timed": len(timed),
                   "logp_diff_abs": mean("offpolicy/logp_diff_abs")}
  finally:
    Tokenizer.from_source = classmethod(orig)
  for name in out:
    for base in ("sync_shared", "sync_split"):
      if base in out and name.startswith("async"):
        out[name][f"speedup_vs_{base}"] = round(out[base]["step_s"] / out[name]["step_s"], 3)
  return out


def mismatch(args):
  out = {}
  runs = (("bf16_rollouts", "bfloat16", False), ("f32_rollouts", "", False),
          ("f32_async", "", True))
  for name, dtype, is_async in (r for r in runs if r[0] in args.mismatch_runs.split(",")):
    c = base_config(args, args.mismatch_model, args.mismatch_steps)
    c.rl.rollout_dtype = dtype
    c.rl.async_rollouts = is_async
    rows, wall = run(c)
    out[name] = {"wall_s": round(wall, 1),
                 "steps": [{k: r[k] for k in ("step", *MISMATCH_KEYS) if k in r} for r in rows]}
    for k in MISMATCH_KEYS:
      if k in rows[0]:
        vals = [r[k] for r in rows]
        out[name][k + "_mean_over_steps"] = sum(vals) / len(vals)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--devices", type=int, default=8)
  ap.add_argument("--rollout-devices", type=int, default=4)
  ap.add_argument("--steps", type=int, default=6)
  ap.add_argument("--model", default="tiny-random")
  ap.add_argument("--tiny-width", type=int, default=256)
  ap.add_argument("--tiny-layers", type=int, default=4)
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--samples", type=int, default=4)
  ap.add_argument("--new-tokens", type=int, default=32)
  ap.add_argument("--schedules", default=",".join(SCHEDULES))
  ap.add_argument("--part", default="timing,mismatch")
  ap.add_argument("--mismatch-model", default="smollm2-135m-instruct")
  ap.add_argument("--mismatch-steps", type=int, default=4)
  ap.add_argument("--mismatch-runs", default="bf16_rollouts,f32_rollouts,f32_async")
  args = ap.parse_args()
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}")
  sys.path.insert(0, ROOT)
  import jax
  result = {"devices": jax.device_count(), "rollout_devices": args.rollout_devices,
            "model": args.model, "tiny_width": args.tiny_width, "tiny_layers": args.tiny_layers,
            "prompts": args.prompts, "samples_per_prompt": args.samples,
            "new_tokens": args.new_tokens, "steps": args.steps, "cpu_count": os.cpu_count()}
  parts = args.part.split(",")
  if "timing" in parts:
    result["timing"] = timing(args)
  if "mismatch" in parts:
    result["mismatch_model"] = args.mismatch_model
    result["mismatch"] = mismatch(args)
  print(json.dumps(result))


if __name__ == "__main__":
  sys.exit(main())
