"""A tiny pipeline for tests and smoke runs (stage `pipeline`, about a minute on CPU):
tiny SFT -> tiny GRPO from the SFT export -> eval of the GRPO model; final model in
run_dir/final_hf. With --config.order=sft,grpo,rejection_sampling,sft3,eval also R1's stage 3
(rejection sampling from the GRPO model, SFT of the base model on its output; a random model
needs an accept-all judge: --config.stages.rejection_sampling.overrides.judge.fn=...).
See configs/pipeline.py for the R1 recipe.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "r1jax_configs_pipeline", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                           "pipeline.py"))
pipeline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pipeline)
stage = pipeline.stage


def get_config():
  c = pipeline.get_config()
  c.run_dir = "runs/tiny_pipeline"
  c.model = "tiny-random"
  c.order = "sft,grpo,eval"
  c.final_from = "grpo"
  c.stages = dict(
      # No held-out evaluation inside the training stages: fewer compilations.
      sft=stage("tiny_sft.py", model_from="base", steps=2, data=dict(eval_size=0),
                checkpoint=dict(every_steps=1)),
      grpo=stage("tiny.py", model_from="sft", steps=2, data=dict(train_size=50, eval_size=0),
                 eval=dict(at_start=False), log=dict(samples_every=0)),
      # Stage 3 of R1, used by the slow test (order "sft,grpo,rejection_sampling,sft3,eval";
      # a random model is never correct: the test passes an accept-all judge).
      rejection_sampling=stage("tiny_rejection_sampling.py", model_from="grpo",
                               data_output="train.jsonl", max_prompts=4, batch_size=4),
      sft3=stage("tiny_sft.py", model_from="base", data_from="rejection_sampling", steps=2,
                 data=dict(eval_size=0, seq_len=512, format="chat"),
                 checkpoint=dict(every_steps=1)),
      eval=stage("eval.py", model_from="grpo", datasets="heldout", num_samples=2,
                 pass_k="1,2", batch_size=8, reward_workers=0,
                 data=dict(train_size=50, eval_size=8),
                 sampling=dict(max_new_tokens=8)))
  return c
