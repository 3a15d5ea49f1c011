"""R1 stage 4, all-scenario RL (DeepSeek-R1, section 2.3.4; docs/method.md "Stages"): GRPO over
a mix of reasoning prompts (rule rewards: accuracy, language consistency, format) and general
prompts (preference reward models: helpfulness judged on the final summary only,
harmlessness on the whole response).

  python -m r1jax.main --config=configs/reward_model.py --config.data.train_jsonl=prefs.jsonl \
      --config.run_dir=runs/reward_model                     # -> runs/reward_model/reward_model
  python -m r1jax.main --config=configs/all_scenario_rl.py \
      --config.model=<stage-3 SFT run>/hf --config.data.jsonl=general_prompts.jsonl \
      [--config.rewards.harmlessness_rm=runs/rm_harmless/reward_model]

General prompts are JSONL records {"prompt": ..., "kind": "general"} (no "answer" needed);
records without "kind" are reasoning prompts with an "answer". reasoning-gym tasks (data.tasks)
are reasoning prompts. The reward models are routed per example by r1jax.rewards.routing;
either path may be "" (that score is then not used). Everything else is configs/grpo.py.
"""
from r1jax.configs import grpo

# Where the stage-3 SFT (rejection sampling + non-reasoning data) exports its model.
STAGE3_MODEL = "runs/stage3_sft/hf"
# Where configs/reward_model.py saves its reward model.
REWARD_MODEL = "runs/reward_model/reward_model"


def get_config():
  c = grpo.get_config()
  c.model = STAGE3_MODEL
  c.run_dir = "runs/all_scenario_rl"
  # The SFT'd model answers in the chat format and opens <think> itself.
  c.data.template = "chat"
  c.rl.max_new_tokens = 128
  # Reasoning prompts: r = r_acc + 0.1 * r_lang + 0.2 * r_fmt (docs/method.md "Rewards").
  c.rewards.spec = "accuracy:1.0,language:0.1,format:0.2"
  # General prompts: helpfulness RM on the summary (after </think>), harmlessness RM on the
  # whole response; "" = not used.
  c.rewards.helpfulness_rm = REWARD_MODEL
  c.rewards.harmlessness_rm = ""
  return c
