"""R1's stage 4 on the default model: all-scenario RL from the stage-3 model of
configs/r1_stage3.py, with a helpfulness reward model trained on on-policy preference pairs.

  r1_stage3's stages (eval_base ... sft -> eval_sft)
  -> preference_pairs (4 samples of the stage-3 model on 256 general train prompts, best vs
     worst by the rule judge r1jax.curation.preference_judge)
  -> reward_model (Bradley-Terry, initialised from the stage-3 model, 1 epoch on the pairs)
  -> eval_sft_general (the stage-3 model on the 144 held-out general prompts, unseen topics:
     reward-model score and judge score)
  -> all_scenario_rl (GRPO: reasoning-gym prompts with rule rewards, general prompts with the
     reward model on the summary after </think>)
  -> eval_all_scenario_rl (the 200 held-out reasoning problems, as eval_sft)
  -> eval_all_scenario_rl_general (as eval_sft_general)
  -> reasoning_rl_after_sft (R1 stage 2 from the SFT'd base: the sft stage trained the base on
     R1-Zero's verified, readable samples, which is R1's cold start (section 2.3.1: "R1-Zero
     outputs in a readable format"); GRPO with accuracy + 0.1 language consistency, chat
     template, dynamic sampling) -> eval_reasoning_rl_after_sft (as eval_sft)

  python -m r1jax.main --config=configs/r1_all_scenario.py
  python tools/recipe_report.py runs/r1_all_scenario \\
      --pairs eval_all_scenario_rl:eval_sft,eval_all_scenario_rl_general:eval_sft_general,\
eval_reasoning_rl_after_sft:eval_sft

Where the preference pairs come from: the stage-3 model's own samples, labelled by a rule
judge (finished, >= 6 words, no markup, on topic, no loops; on the summary) in place of human
labellers; the judge scores every general evaluation too, as a check that a higher
reward-model score is a better answer. Figures: docs/r1_all_scenario.md.
"""
from ml_collections import ConfigDict

from r1jax.configs import r1_stage3
from r1jax.configs.pipeline import stage


def _general_eval(model_from: str) -> ConfigDict:
  return stage("eval.py", model_from=model_from,
               inputs="datasets=preference_pairs:general_heldout,reward_model=reward_model",
               num_samples=4, pass_k="1", template="chat",
               sampling=dict(temperature=0.6, top_p=0.95, max_new_tokens=96))


def get_config() -> ConfigDict:
  c = r1_stage3.get_config()
  c.run_dir = "runs/r1_all_scenario"
  c.order += (",preference_pairs,reward_model,eval_sft_general,all_scenario_rl,"
              "eval_all_scenario_rl,eval_all_scenario_rl_general,reasoning_rl_after_sft,"
              "eval_reasoning_rl_after_sft")
  c.final_from = "all_scenario_rl"
  s = c.stages
  s.preference_pairs = stage("preference_pairs.py", model_from="sft", max_prompts=256,
                             num_samples=4, sampling=dict(max_new_tokens=96))
  # Initialised from the policy it will judge (as InstructGPT's reward models are).
  s.reward_model = stage(
      "reward_model.py", model_from="sft", data_from="preference_pairs",
      model_output="reward_model", steps=0, num_epochs=1.0,
      train=dict(batch_size=8, micro_batch_size=8), optim=dict(learning_rate=3e-5),
      data=dict(seq_len=192, eval_size=32), eval=dict(every_steps=0, at_start=True),
      checkpoint=dict(every_steps=100))
  s.eval_sft_general = _general_eval("sft")
  s.all_scenario_rl = stage(
      "all_scenario_rl.py", model_from="sft",
      # General train prompts join the reasoning-gym tasks; the held-out general prompts are
      # the eval_jsonl, so the reasoning held-out split stays the one eval_sft used.
      inputs=("rewards.helpfulness_rm=reward_model,data.jsonl=preference_pairs:general_train,"
              "data.eval_jsonl=preference_pairs:general_heldout"),
      steps=24, data=dict(weights="1,1,2"), rl=dict(max_new_tokens=96),
      eval=dict(every_steps=0, at_start=False), checkpoint=dict(every_steps=8))
  s.eval_all_scenario_rl = stage("eval.py", model_from="all_scenario_rl",
                                 **r1_stage3.eval_settings("chat"))
  s.eval_all_scenario_rl_general = _general_eval("all_scenario_rl")
  s.reasoning_rl_after_sft = stage(
      "reasoning_rl.py", model_from="sft", steps=24, rl=dict(max_new_tokens=96),
      eval=dict(every_steps=0, at_start=False), checkpoint=dict(every_steps=8))
  s.eval_reasoning_rl_after_sft = stage("eval.py", model_from="reasoning_rl_after_sft",
                                        **r1_stage3.eval_settings("chat"))
  return c
