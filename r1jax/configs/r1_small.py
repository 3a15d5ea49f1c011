"""A short R1 recipe on the default model with real data (about 30-40 minutes on 2 CPU cores):
cold-start SFT -> reasoning RL -> rejection sampling -> SFT of the base model on its output,
with a held-out evaluation of the base model and after each stage.

  python tools/build_cold_start.py --champ --out runs/r1_small/cold_start.jsonl
  python -m r1jax.main --config=configs/r1_small.py

Cold-start data: CHAMP worked solutions in the R1 format (tools/build_cold_start.py).
Reasoning RL and rejection sampling: reasoning-gym arithmetic (configs/grpo.py's tasks).
Evaluations: 64 held-out reasoning-gym problems, one greedy-like sample each (temperature
0.6, top-p 0.95), in run_dir/eval_<stage>/report.json and records.jsonl.
"""
from ml_collections import ConfigDict

from r1jax.configs import pipeline
from r1jax.configs.pipeline import stage

EVAL = dict(datasets="heldout", num_samples=1, pass_k="1", template="chat",
            data=dict(template="chat", eval_size=64),
            sampling=dict(max_new_tokens=192))


def get_config() -> ConfigDict:
  c = pipeline.get_config()
  c.run_dir = "runs/r1_small"
  c.order = ("eval_base,cold_start_sft,eval_cold_start_sft,reasoning_rl,eval_reasoning_rl,"
             "rejection_sampling,sft,eval_sft")
  c.final_from = "sft"
  s = ConfigDict()
  s.eval_base = stage("eval.py", model_from="base", **EVAL)
  s.cold_start_sft = stage(
      "cold_start_sft.py", model_from="base", steps=30, num_epochs=0.0,
      optim=dict(learning_rate=1e-4),
      data=dict(train_jsonl="runs/r1_small/cold_start.jsonl",
                seq_len=512, eval_size=8))
  s.eval_cold_start_sft = stage("eval.py", model_from="cold_start_sft", **EVAL)
  # Without dynamic sampling (the default of reasoning_rl.py since), as docs/r1_small.md ran.
  s.reasoning_rl = stage("reasoning_rl.py", model_from="cold_start_sft", steps=8,
                         data=dict(eval_size=32), eval=dict(at_start=False, every_steps=0),
                         checkpoint=dict(every_steps=4), rl=dict(dynamic_sampling=False))
  s.eval_reasoning_rl = stage("eval.py", model_from="reasoning_rl", **EVAL)
  s.rejection_sampling = stage(
      "rejection_sampling.py", model_from="reasoning_rl", data_output="train.jsonl",
      max_prompts=32, num_samples=4, template="chat",
      data=dict(template="chat"), sampling=dict(max_new_tokens=160))
  s.sft = stage("sft.py", model_from="base", data_from="rejection_sampling", steps=0,
                num_epochs=2.0, data=dict(seq_len=512, eval_size=4))
  s.eval_sft = stage("eval.py", model_from="sft", **EVAL)
  c.stages = s
  return c
