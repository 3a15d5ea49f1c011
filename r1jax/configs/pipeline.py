"""The full DeepSeek-R1 recipe as one resumable run (stage `pipeline`; DeepSeek-R1, section 2.3;
docs/method.md "Stages").

  python -m r1jax.main --config=configs/pipeline.py [--config.run_dir=runs/r1]
  python -m r1jax.main --config=configs/pipeline.py --config.stages.distill.enabled=True

Stages (run in `order`, each in run_dir/<name>, each a stage config file + `overrides`):
  1. cold_start_sft   SFT of the base model on long-CoT examples (configs/cold_start_sft.py)
  2. reasoning_rl     GRPO, accuracy + language consistency (configs/reasoning_rl.py)
  3. rejection_sampling  samples from the stage-2 model, kept when correct (data output)
  4. sft              SFT on the rejection-sampling output (its train.jsonl). R1 fine-tunes
                      the *base* model for 2 epochs on those ~800k samples: model_from="base";
                      set model_from="reasoning_rl" to continue from the RL model instead
  5. reward_model     preference reward model (Bradley-Terry) from the stage-3 SFT model
  6. all_scenario_rl  GRPO from the stage-3 SFT model, rule + reward-model rewards
  7. distill          (off by default) SFT of a student on the stage-3 samples; set
                      teacher_from="all_scenario_rl" for logit distillation too
  8. eval             pass@1 / pass@k / cons@n of the final model
The R1 model (final_from) is exported to run_dir/final_hf. A stage with run_dir/<name>/DONE
is skipped; an interrupted stage resumes from its checkpoint when the command is re-run.
A stage whose kind is not in r1jax.stages.STAGES fails with a clear error when reached.

Variants: "" (the recipe), "tiny" (tiny SFT -> tiny GRPO from the SFT export -> eval of the
GRPO model, about a minute on CPU; with --config.order=sft,grpo,rejection_sampling,sft3,eval
also R1's stage 3: rejection sampling from the GRPO model and SFT of the base model on its
output; a random model needs an accept-all judge:
--config.stages.rejection_sampling.overrides.judge.fn=...).
"""
from ml_collections import ConfigDict

from r1jax.configs import common


def stage(config, model_from="", data_from="", teacher_from="", inputs="", data_output="",
          model_output="", enabled=True, **overrides):
  """One pipeline entry: a stage config ("sft.py", "sft.py:tiny": a config of this package,
  or a path) + overrides + input wiring."""
  return ConfigDict(dict(config=config, model_from=model_from,
                         data_from=data_from, teacher_from=teacher_from, inputs=inputs,
                         data_output=data_output, model_output=model_output,
                         enabled=enabled, overrides=ConfigDict(overrides)))


def get_config(variant: str = "") -> ConfigDict:
  c = ConfigDict()
  c.stage = "pipeline"
  # Stage outputs go to run_dir/<stage name>; the final model to run_dir/final_hf.
  c.run_dir = "runs/r1"
  # The base model of stages with model_from="base" (and its tokenizer, "" = the same).
  c.model = "smollm2-135m-instruct"
  c.tokenizer = ""
  # Multi-host settings for every stage (jax.distributed is initialised once, before any).
  common.add_parallel(c)
  del c.mesh, c.sharding
  # Comma-separated stage names, run in this order (entries of `stages`).
  c.order = ("cold_start_sft,reasoning_rl,rejection_sampling,sft,reward_model,"
             "all_scenario_rl,distill,eval")
  # The stage whose model is the pipeline's result (copied to run_dir/final_hf).
  c.final_from = "all_scenario_rl"
  # dtype of the HF export of GRPO checkpoints.
  c.export_dtype = "float32"
  # model_from: "base" | an earlier stage (its HF export) | "" (the stage config's model).
  # data_from: an earlier stage whose data output becomes data.train_jsonl.
  # teacher_from: an earlier stage whose model becomes distill.teacher.
  # inputs: "config.key=stage[:output],..." any other key from an earlier stage's output
  #   (output: model | data | report; default model).
  # data_output / model_output: the file / directory (in the stage's run_dir) that
  #   a stage other than sft / grpo / eval produces.
  c.stages = ConfigDict()
  c.stages.cold_start_sft = stage("cold_start_sft.py", model_from="base")
  c.stages.reasoning_rl = stage("reasoning_rl.py", model_from="cold_start_sft")
  c.stages.rejection_sampling = stage("rejection_sampling.py", model_from="reasoning_rl",
                                      data_output="train.jsonl")
  c.stages.sft = stage("sft.py", model_from="base", data_from="rejection_sampling",
                       steps=0, num_epochs=2.0)
  # Preference reward model for the general prompts of stage 4, initialised from the stage-3
  # SFT model; needs --config.stages.reward_model.overrides.data.train_jsonl=prefs.jsonl
  # (the key is listed here because the command line can only set keys that exist; other
  # stage keys go in a pipeline file of your own, as configs/r1_small.py does).
  c.stages.reward_model = stage("reward_model.py", model_from="sft",
                                model_output="reward_model", data=dict(train_jsonl=""))
  c.stages.all_scenario_rl = stage("all_scenario_rl.py", model_from="sft",
                                   inputs="rewards.helpfulness_rm=reward_model")
  c.stages.distill = stage("distill.py", data_from="rejection_sampling", enabled=False)
  c.stages.eval = stage("eval.py", model_from="all_scenario_rl")
  return common.select_variant(c, variant, {"tiny": tiny}, "configs/pipeline.py")


def tiny(c: ConfigDict) -> None:
  """A tiny pipeline for tests and smoke runs; final model in run_dir/final_hf."""
  c.run_dir = "runs/tiny_pipeline"
  c.model = "tiny-random"
  c.order = "sft,grpo,eval"
  c.final_from = "grpo"
  c.stages = dict(
      # No held-out evaluation inside the training stages: fewer compilations.
      sft=stage("sft.py:tiny", model_from="base", steps=2, data=dict(eval_size=0),
                checkpoint=dict(every_steps=1)),
      grpo=stage("grpo.py:tiny", model_from="sft", steps=2, data=dict(train_size=50, eval_size=0),
                 eval=dict(at_start=False), log=dict(samples_every=0)),
      # Stage 3 of R1, used by the slow test (order "sft,grpo,rejection_sampling,sft3,eval";
      # a random model is never correct: the test passes an accept-all judge).
      rejection_sampling=stage("rejection_sampling.py:tiny", model_from="grpo",
                               data_output="train.jsonl", max_prompts=4, batch_size=4),
      sft3=stage("sft.py:tiny", model_from="base", data_from="rejection_sampling", steps=2,
                 data=dict(eval_size=0, seq_len=512, format="chat"),
                 checkpoint=dict(every_steps=1)),
      eval=stage("eval.py", model_from="grpo", datasets="heldout", num_samples=2,
                 pass_k="1,2", batch_size=8, reward_workers=0,
                 data=dict(train_size=50, eval_size=8),
                 sampling=dict(max_new_tokens=8)))
