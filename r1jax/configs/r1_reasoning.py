"""R1-Zero, then R1's stage 3 and distillation, on the default model and a task where
reasoning pays (reasoning-gym `chain_sum`, 2-4 single-digit terms; configs/grpo_reasoning.py):

  eval_base -> reasoning_rl (R1-Zero: GRPO from the base model) -> eval_reasoning_rl
  -> rejection_sampling (verified, readable samples of the RL checkpoint on train prompts)
  -> sft (the *base* model on them, chat format: R1's stage 3, which for a student that is
     the base model is also R1-Distill) -> eval_sft, against eval_base_chat (the same
     student, same template, without distillation)

  python -m r1jax.main --config=configs/r1_reasoning.py
  python tools/recipe_report.py runs/r1_reasoning

Every evaluation: the 200 held-out problems of the GRPO run (never trained on), n = 4
samples each at the R1 paper's settings (temperature 0.6, top-p 0.95): pass@1 from 4,
cons@4, a 95% interval and a paired test against the previous evaluation
(tools/recipe_report.py). The RL model and the base are evaluated with the RL template
(r1_zero_steps_1shot), the SFT'd model and its no-distillation baseline with the chat
template they are trained and asked in.
"""
from ml_collections import ConfigDict

from r1jax.configs import pipeline
from r1jax.configs.pipeline import stage

TASK = dict(tasks="chain_sum",
            task_configs=dict(chain_sum=dict(min_terms=2, max_terms=4, min_digits=1,
                                             max_digits=1)))
STOP = "</answer>,User:"


def _eval(template: str, **kw) -> dict:
  return dict(datasets="heldout", num_samples=4, pass_k="1,4", template=template,
              data=dict(template=template, eval_size=200, **TASK),
              sampling=dict(temperature=0.6, top_p=0.95, max_new_tokens=96,
                            stop_strings=STOP), **kw)


def get_config() -> ConfigDict:
  c = pipeline.get_config()
  c.run_dir = "runs/r1_reasoning"
  c.order = ("eval_base,reasoning_rl,eval_reasoning_rl,rejection_sampling,eval_base_chat,"
             "sft,eval_sft")
  c.final_from = "sft"
  s = ConfigDict()
  rl_template = "r1_zero_steps_1shot"
  s.eval_base = stage("eval.py", model_from="base", **_eval(rl_template))
  s.reasoning_rl = stage("grpo_reasoning.py", model_from="base")
  s.eval_reasoning_rl = stage("eval.py", model_from="reasoning_rl", **_eval(rl_template))
  s.rejection_sampling = stage(
      "rejection_sampling.py", model_from="reasoning_rl", data_output="train.jsonl",
      prompts="train", max_prompts=200, num_samples=4, template=rl_template,
      data=dict(template=rl_template, **TASK),
      sampling=dict(temperature=0.7, max_new_tokens=96, stop_strings=STOP))
  s.eval_base_chat = stage("eval.py", model_from="base", **_eval("chat"))
  s.sft = stage("sft.py", model_from="base", data_from="rejection_sampling", steps=0,
                num_epochs=2.0, train=dict(batch_size=8, micro_batch_size=8),
                optim=dict(learning_rate=1e-4),
                data=dict(seq_len=256, eval_size=8))
  s.eval_sft = stage("eval.py", model_from="sft", **_eval("chat"))
  c.stages = s
  return c
