"""Seconds per GRPO step, split into rollout / reward / reference / update, and tokens/s.

python tools/bench_grpo_step.py [--model smollm2-135m-instruct] [--prompts 8] [--samples 4]
                                [--new-tokens 128] [--steps 3] [--micro-batch 8]

Runs the real GRPO stage (configs/grpo.py) for --steps steps with every sample forced to
generate exactly --new-tokens tokens (no stop strings, EOS suppressed from the stop set),
and reports the mean of the steps after the first (the first includes compilation).
Also reports the peak RSS of the process. Prints a JSON object on its last line.
"""
import argparse
import importlib.util
import json
import os
import resource
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
  args = ap.parse_args()

  spec = importlib.util.spec_from_file_location("grpo_cfg", os.path.join(ROOT, "configs", "grpo.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.model = args.model
  c.steps = args.steps
  c.run_dir = tempfile.mkdtemp(prefix="bench_grpo_")
  c.rl.num_generations = args.samples
  c.rl.batch_size = args.prompts * args.samples
  c.rl.micro_batch_size = min(args.micro_batch, c.rl.batch_size)
  c.rl.max_new_tokens = args.new_tokens
  c.rl.stop_strings = ""
  c.rl.beta = args.beta
  c.data.template = args.template
  c.remat = args.remat
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
  try:
    grpo.run(c)
  finally:
    Tokenizer.from_source = classmethod(orig)
  rows = [json.loads(l) for l in open(os.path.join(c.run_dir, "metrics.jsonl"))]
  rows = [r for r in rows if "loss" in r]
  timed = rows[1:] or rows
  mean = lambda k: sum(r[k] for r in timed) / len(timed)
  tokens = args.prompts * args.samples * args.new_tokens
  result = {
      "model": args.model, "prompts": args.prompts, "samples_per_prompt": args.samples,
      "new_tokens": args.new_tokens, "beta": args.beta, "remat": args.remat, "steps_timed": len(timed),
      "step_s": round(mean("step_s"), 2),
      "rollout_s": round(mean("seconds/rollout"), 2),
      "reward_s": round(mean("seconds/reward"), 3),
      "reference_s": round(mean("seconds/reference"), 2),
      "update_s": round(mean("seconds/update"), 2),
      "first_step_s_incl_compile": round(rows[0]["step_s"], 1),
      "rollout_tokens_per_s": round(mean("rollout_tokens_per_s"), 1),
      "step_tokens_per_s": round(tokens / mean("step_s"), 1),
      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
  }
  print(json.dumps(result))


if __name__ == "__main__":
  sys.exit(main())
