"""Rollout throughput with tools on vs off, on the same prompts (issue 17).

  PYTHONPATH=$PWD python tools/bench_tool_rollout.py [--config grpo_tools[:variant]]
      [--prompts 8] [--samples 4] [--new-tokens 96] [--repeats 1]

Work: the first --prompts held-out prompts of the config's task (its template, with the
worked tool call), --samples samples each at the rollout temperature, the config's stop
strings and the tokenizer's stop ids, budget --new-tokens. "off" is the plain sampler
(sampling.Sampler, the GRPO stage without tools); "on" is ToolSampler (r1jax.tool_rollout)
with the config's tools block and the code sandbox. Both run once untimed (compilation) and
then --repeats timed runs on the same prompts and key.

Reported per mode: model-written tokens/s (tool-message tokens excluded; "on" includes the
sandbox time of its calls), seconds, model and tool tokens, and for "on" the calls per sample,
call rate, errors, timeouts, sandbox seconds, and held-out accuracy with / without a call.
The ratio on/off of model-written tokens/s is the last line's "ratio". The samples of the two
modes differ once a tool output enters the context, so their token counts differ too.

Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from r1jax import sampling
from r1jax.data import PromptData
from r1jax.data.pipeline import split_list
from r1jax.data.templates import response_prefix
from r1jax.rewards import RewardComputer, registry
from r1jax.stages import grpo as grpo_stage
from r1jax.tool_rollout import tool_metrics
from r1jax.tool_rollout_stage import make_sampler
from r1jax.train import settings as settings_lib


def load_config(spec: str):
  """The config "name[:variant]" (r1jax.configs.load)."""
  from r1jax import configs
  return configs.load(spec)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="grpo_tools")
  ap.add_argument("--prompts", type=int, default=8)
  ap.add_argument("--samples", type=int, default=4)
  ap.add_argument("--new-tokens", type=int, default=96)
  ap.add_argument("--repeats", type=int, default=1)
  args = ap.parse_args()

  config = load_config(args.config)
  config.data.eval_size = max(int(config.data.eval_size), args.prompts)
  config.data.train_size = 50
  loaded = settings_lib.ModelSettings.from_config(config).load()
  cfg, tok, params = loaded.config, loaded.tokenizer, loaded.params
  examples = PromptData(config.data, tok).eval_examples()[:args.prompts]
  prompts = [ex["prompt_ids"] for ex in examples]
  rl = config.rl
  sp = sampling.SamplingParams(
      temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k, max_new_tokens=args.new_tokens,
      stop_ids=tok.stop_ids,
      stop_sequences=sampling.stop_sequences_for(tok, split_list(rl.stop_strings)))
  prefix = response_prefix(config.data.template)
  spec = list(registry.parse_reward_spec(config.rewards.spec))
  names = {name for name, _ in spec}
  rewards = RewardComputer(spec, num_workers=0, fn_kwargs={
      k: v for k, v in grpo_stage.reward_kwargs(config.rewards).items() if k in names})
  config.tools.enabled = True
  samplers = {"off": sampling.Sampler(cfg, pad_id=tok.pad_id, min_prompt_bucket=32),
              "on": make_sampler(config, cfg, tok, pad_id=tok.pad_id, min_prompt_bucket=32)}
  key = jax.random.key(0)
  G = args.samples
  result = {"config": args.config, "prompts": args.prompts, "samples": G,
            "new_tokens": args.new_tokens, "repeats": args.repeats,
            "backend": jax.default_backend()}
  for mode, sampler in samplers.items():
    out = sampler(params, prompts, key, num_samples=G, sampling=sp)  # compile
    secs = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      out = sampler(params, prompts, key, num_samples=G, sampling=sp)
      secs.append(time.perf_counter() - t0)
    seconds = float(np.median(secs))
    tool = np.asarray(getattr(out, "tool_mask", np.zeros(out.tokens.shape, bool)))
    model_tokens = int(out.lengths.sum() - tool.sum())
    texts = [t for row in sampling.decode_completions(tok, out, sp, prefix) for t in row]
    acc = rewards.heldout_accuracy(texts, [ex for ex in examples for _ in range(G)])
    r = {"seconds": seconds, "model_tokens": model_tokens, "tool_tokens": int(tool.sum()),
         "model_tokens_per_s": model_tokens / seconds, "accuracy": float(np.mean(acc))}
    if mode == "on":
      r.update({k.split("/", 1)[1]: v for k, v in tool_metrics(out, acc).items()})
      r["sandbox_seconds"] = sampler.last_stats["tool_seconds"]
      r["example"] = texts[0][:600]
    result[mode] = r
    print(mode, json.dumps(r), flush=True)
  samplers["on"].close()
  rewards.close()
  result["ratio"] = result["on"]["model_tokens_per_s"] / result["off"]["model_tokens_per_s"]
  print(json.dumps(result))


if __name__ == "__main__":
  main()
