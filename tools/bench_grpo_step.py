"""Seconds per GRPO step, split into rollout / reward / reference / update, and tokens/s.

python tools/bench_grpo_step.py [--model smollm2-135m-instruct] [--prompts 8] [--samples 4]
                                [--new-tokens 128] [--steps 3] [--micro-batch 8]
                                [--devices 8] [--preset dp|fsdp|fsdp_tp] [--mesh data=1,fsdp=4,tensor=2]
                                [--lora 16] [--lora-base-dtype bfloat16]
python tools/bench_grpo_step.py --compare-lora 16 --prompts 4 --samples 4 --new-tokens 64

Runs the real GRPO stage (configs/grpo.py) for --steps steps with every sample forced to
generate exactly --new-tokens tokens (no stop strings, EOS suppressed from the stop set),
and reports the mean of the steps after the first (the first includes compilation).
Also reports the peak RSS of the process and, per device, XLA's memory analysis of the
compiled update (params + optimizer state + batch + temporaries on one device).
--devices N runs on N fake CPU devices (XLA_FLAGS, set before JAX starts); --preset picks
the sharding rules and, unless --mesh is given, the mesh that goes with them
(r1jax.sharding.PRESET_MESHES). --lora R trains rank-R LoRA adapters instead of the whole
model (lora.rank; the reference policy is then the base with adapters off).
--compare-lora R runs four variants back to back, each in its own process (peak RSS is per
process): full fine-tuning and LoRA rank R, each with beta = 0 and with --beta, and reports
each variant's figures and LoRA / full ratios. Prints a JSON object on its last line.
"""
import argparse
import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--model", default="smollm2-135m-instruct")
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--samples", type=int, default=4)
  ap.add_argument("--new-tokens", type=int, default=128)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--micro-batch", type=int, default=8)
  ap.add_argument("--beta", type=float, default=0.04)
  ap.add_argument("--template", default="r1_zero_1shot")
  ap.add_argument("--remat", action="store_true", help="recompute blocks in the backward pass")
  ap.add_argument("--devices", type=int, default=0,
                  help="fake CPU devices (0 = whatever the platform has)")
  ap.add_argument("--preset", default="fsdp_tp", choices=("dp", "fsdp", "fsdp_tp"))
  ap.add_argument("--mesh", default="", help="mesh sizes, e.g. data=1,fsdp=4,tensor=2")
  ap.add_argument("--tiny-width", type=int, default=0,
                  help="with --model tiny-random: hidden size (MLP 4x, heads of 32)")
  ap.add_argument("--tiny-layers", type=int, default=2)
  ap.add_argument("--lora", type=int, default=0, help="LoRA rank (0 = full fine-tuning)")
  ap.add_argument("--lora-base-dtype", default="", help="lora.base_dtype ('' = param_dtype)")
  ap.add_argument("--compare-lora", type=int, default=0,
                  help="run full vs LoRA of this rank, beta 0 and --beta, back to back")
  args = ap.parse_args()
  if args.compare_lora:
    return compare_lora(args)
  if args.devices:
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
  import jax
  from r1jax import sharding as shd
  from r1jax.train import trainer as trainer_lib

  spec = importlib.util.spec_from_file_location("grpo_cfg", os.path.join(ROOT, "configs", "grpo.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.model = args.model
  c.steps = args.steps
  c.run_dir = tempfile.mkdtemp(prefix="bench_grpo_")
  c.rl.num_generations = args.samples
  c.rl.prompts_per_step = args.prompts
  c.rl.micro_batch_prompts = max(1, min(args.micro_batch, args.prompts * args.samples)
                                 // args.samples)
  c.rl.max_new_tokens = args.new_tokens
  c.rl.stop_strings = ""
  c.rl.beta = args.beta
  c.lora.rank = args.lora
  c.lora.base_dtype = args.lora_base_dtype
  c.data.template = args.template
  c.remat = args.remat
  c.sharding.preset = args.preset
  if args.mesh:
    mesh = {k: int(v) for k, v in (kv.split("=") for kv in args.mesh.split(","))}
  else:
    mesh = dict(shd.PRESET_MESHES[args.preset])
    n = jax.device_count()
    if mesh["tensor"] > 1 and n % mesh["tensor"]:
      mesh["tensor"] = 1
  c.mesh = type(c.mesh)(dict({"data": 1, "fsdp": 1, "tensor": 1}, **mesh))
  if args.tiny_width:
    w = args.tiny_width
    heads = max(w // 32, 2)
    c.tiny_model = type(c.tiny_model)(dict(hidden_size=w, intermediate_size=4 * w,
                                           num_layers=args.tiny_layers, num_heads=heads,
                                           num_kv_heads=max(heads // 2, 1), head_dim=32))
  c.data.train_size = 2000
  c.data.eval_size = 0
  c.eval.at_start = False
  c.checkpoint.every_steps = 0
  c.log.plot = False
  c.log.samples_every = 0

  from r1jax.stages import grpo
  from r1jax.tokenizer import Tokenizer
  # Force full-length completions: a tokenizer without stop ids.
  orig = Tokenizer.from_source.__func__

  def no_stops(cls, source):
    tok = orig(cls, source)
    tok.stop_ids = ()
    return tok

  Tokenizer.from_source = classmethod(no_stops)
  # Per-device memory of the update, from XLA, measured once before the first update.
  memory = {}
  orig_update = trainer_lib.Trainer.update

  def update(self, state, batch, denominator, frozen=None):
    if not memory:
      memory.update(self.memory_analysis(state, batch, denominator, frozen))
      n_params = sum(x.size for x in jax.tree.leaves(state.params))
      memory["params"] = int(n_params)
      memory["state_bytes_per_device"] = int(sum(
          x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state)))
    return orig_update(self, state, batch, denominator, frozen)

  trainer_lib.Trainer.update = update
  try:
    grpo.run(c)
  finally:
    Tokenizer.from_source = classmethod(orig)
    trainer_lib.Trainer.update = orig_update
  rows = [json.loads(l) for l in open(os.path.join(c.run_dir, "metrics.jsonl"))]
  rows = [r for r in rows if "loss" in r]
  timed = rows[1:] or rows
  mean = lambda k: sum(r[k] for r in timed) / len(timed)
  tokens = args.prompts * args.samples * args.new_tokens
  result = {
      "model": args.model, "prompts": args.prompts, "samples_per_prompt": args.samples,
      "new_tokens": args.new_tokens, "beta": args.beta, "remat": args.remat,
      "lora_rank": args.lora, "steps_timed": len(timed),
      "step_s": round(mean("step_s"), 2),
      "rollout_s": round(mean("seconds/rollout"), 2),
      "reward_s": round(mean("seconds/reward"), 3),
      "reference_s": round(mean("seconds/reference"), 2),
      "update_s": round(mean("seconds/update"), 2),
      "first_step_s_incl_compile": round(rows[0]["step_s"], 1),
      "rollout_tokens_per_s": round(mean("rollout_tokens_per_s"), 1),
      "step_tokens_per_s": round(tokens / mean("step_s"), 1),
      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
      "devices": jax.device_count(), "preset": args.preset,
      "mesh": dict(shd.make_mesh(c.mesh.to_dict()).shape),
      "params": memory.get("params"),
      "state_mb_per_device": round(memory.get("state_bytes_per_device", 0) / 2 ** 20, 2),
      "update_peak_mb_per_device": round(memory.get("peak_bytes", 0) / 2 ** 20, 2),
      "update_temp_mb_per_device": round(memory.get("temp_bytes", 0) / 2 ** 20, 2),
  }
  print(json.dumps(result))


def child_args(argv, drop):
  """argv without the flags in `drop` (as "--flag value" or "--flag=value")."""
  out, skip = [], False
  for a in argv:
    if skip:
      skip = False
      continue
    if a.split("=", 1)[0] in drop:
      skip = "=" not in a
      continue
    out.append(a)
  return out


def compare_lora(args) -> None:
  """Four runs back to back, each in a fresh process: (full, LoRA) x (beta 0, --beta)."""
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  passed = child_args(sys.argv[1:], drop=("--compare-lora", "--beta", "--lora"))
  runs, failed = {}, {}
  # beta > 0 first (where the reference's copy shows); each variant's line is printed as it
  # finishes, so a cut-short comparison still leaves its finished variants.
  for name, extra in (("full_beta", ["--beta", str(args.beta)]),
                      ("lora_beta", ["--beta", str(args.beta), "--lora", str(args.compare_lora)]),
                      ("full_beta0", ["--beta", "0"]),
                      ("lora_beta0", ["--beta", "0", "--lora", str(args.compare_lora)])):
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), *passed, *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
      stdout, stderr = child.communicate()
    finally:  # a killed parent (timeout's SIGTERM) takes its running variant with it
      if child.poll() is None:
        child.kill()
    if child.returncode:  # recorded (e.g. -9: killed for memory); the others still run
      sys.stderr.write(stdout[-3000:] + stderr[-3000:])
      failed[name] = child.returncode
      print(name, f"failed (exit {child.returncode})", flush=True)
      continue
    runs[name] = json.loads(stdout.strip().splitlines()[-1])
    print(name, json.dumps(runs[name]), flush=True)
  keys = ("step_s", "update_s", "reference_s", "peak_rss_gb", "state_mb_per_device",
          "update_peak_mb_per_device")
  ratio = lambda a, b, k: (round(runs[a][k] / runs[b][k], 3)
                          if a in runs and b in runs and runs[b][k] else None)
  rss = lambda n: runs[n]["peak_rss_gb"] if n in runs else None
  diff = lambda a, b: round(rss(a) - rss(b), 2) if rss(a) and rss(b) else None
  result = {"lora_rank": args.compare_lora, "beta": args.beta, "order": list(runs),
            "failed_exit_codes": failed,
            "runs": {n: {k: r[k] for k in keys + ("params",)} for n, r in runs.items()},
            "lora_over_full_beta0": {k: ratio("lora_beta0", "full_beta0", k) for k in keys},
            "lora_over_full_beta": {k: ratio("lora_beta", "full_beta", k) for k in keys},
            "beta_cost_rss_gb": {"full": diff("full_beta", "full_beta0"),
                                 "lora": diff("lora_beta", "lora_beta0")}}
  print(json.dumps(result))


if __name__ == "__main__":
  sys.exit(main())
