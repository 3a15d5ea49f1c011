"""R1-Zero, then R1's stage 3, on the default model and the default job's tasks: does
rejection sampling from an RL checkpoint give verified samples that teach the *base* model?

  eval_base -> reasoning_rl (R1-Zero: the default GRPO job, 30 steps, from the base model)
  -> eval_reasoning_rl -> rejection_sampling (verified, readable samples of the RL
  checkpoint on train prompts) -> eval_base_chat -> sft (the base model on them, chat
  format: R1's stage 3; with the base as the student it is also R1-Distill) -> eval_sft

  python -m r1jax.main --config=configs/r1_stage3.py
  python tools/recipe_report.py runs/r1_stage3 \\
      --pairs eval_reasoning_rl:eval_base,eval_sft:eval_reasoning_rl,eval_sft:eval_base_chat

Every evaluation: the 200 held-out problems of the GRPO job (never trained on), n = 4
samples each at the R1 paper's settings (temperature 0.6, top-p 0.95): pass@1 from 4,
cons@4, 95% intervals and paired tests (tools/recipe_report.py). The base and the RL model
are asked with the RL template (r1_zero_1shot); the SFT'd base and its no-distillation
baseline (eval_base_chat: the same student, without the samples) with the chat template
they are trained and asked in. Figures: docs/r1_stage3.md.
"""
from ml_collections import ConfigDict

from r1jax.configs import pipeline
from r1jax.configs.pipeline import stage

RL_TEMPLATE = "r1_zero_1shot"


def eval_settings(template: str) -> dict:
  """Overrides of an eval stage: 200 held-out problems x 4 samples, T 0.6, top-p 0.95."""
  return dict(datasets="heldout", num_samples=4, pass_k="1,4", template=template,
              data=dict(template=template, eval_size=200),
              sampling=dict(temperature=0.6, top_p=0.95, max_new_tokens=64))


def get_config() -> ConfigDict:
  c = pipeline.get_config()
  c.run_dir = "runs/r1_stage3"
  c.order = ("eval_base,reasoning_rl,eval_reasoning_rl,rejection_sampling,eval_base_chat,"
             "sft,eval_sft")
  c.final_from = "sft"
  s = ConfigDict()
  s.eval_base = stage("eval.py", model_from="base", **eval_settings(RL_TEMPLATE))
  s.reasoning_rl = stage("grpo.py", model_from="base", steps=30,
                         eval=dict(every_steps=0, at_start=False), checkpoint=dict(every_steps=100))
  s.eval_reasoning_rl = stage("eval.py", model_from="reasoning_rl", **eval_settings(RL_TEMPLATE))
  s.rejection_sampling = stage(
      "rejection_sampling.py", model_from="reasoning_rl", data_output="train.jsonl",
      # The RL policy is sharp (entropy ~0.15 nats/token): at T = 0.7 most verified samples
      # of a prompt are duplicates. T = 1 and 400 prompts give a few hundred distinct ones.
      prompts="train", max_prompts=400, num_samples=4, template=RL_TEMPLATE,
      data=dict(template=RL_TEMPLATE),
      sampling=dict(temperature=1.0, max_new_tokens=64))
  s.eval_base_chat = stage("eval.py", model_from="base", **eval_settings("chat"))
  s.sft = stage("sft.py", model_from="base", data_from="rejection_sampling", steps=0,
                num_epochs=2.0, train=dict(batch_size=8, micro_batch_size=8),
                optim=dict(learning_rate=1e-4), data=dict(seq_len=256, eval_size=8))
  s.eval_sft = stage("eval.py", model_from="sft", **eval_settings("chat"))
  c.stages = s
  return c
