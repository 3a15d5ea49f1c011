"""R1 stage 2, reasoning-oriented RL (DeepSeek-R1, section 2.3.2; docs/method.md "Stages"):
GRPO from the cold-start checkpoint with the accuracy reward plus the language-consistency
reward, r = r_acc + alpha * r_lang (alpha = 0.1 here; the paper sums the two, i.e. alpha = 1).

  python -m r1jax.main --config=configs/cold_start_sft.py        # writes runs/cold_start_sft/hf
  python -m r1jax.main --config=configs/reasoning_rl.py [--config.model=runs/cold_start_sft/hf]

`model` is the HF directory that the SFT stage exports at its end (`<sft run_dir>/hf`: weights
and tokenizer); a training run directory works too (its latest checkpoint). Prompts use the
chat template, as the cold-start SFT does, so the policy opens `<think>` itself (no response
prefix). Dynamic sampling is on (see below). Everything else is configs/grpo.py.
"""
from r1jax.configs import grpo

# Where configs/cold_start_sft.py exports its model.
COLD_START_MODEL = "runs/cold_start_sft/hf"


def get_config():
  c = grpo.get_config()
  c.model = COLD_START_MODEL
  c.run_dir = "runs/reasoning_rl"
  # The cold-start SFT data is rendered with the chat template (data.format="chat").
  c.data.template = "chat"
  c.rl.max_new_tokens = 128
  # Language consistency (target from each example's "language" field, default "en").
  # R1 stage 2 sums accuracy and language consistency; format at weight 0 is logged per
  # function (reward/format) but not rewarded.
  c.rewards.spec = "accuracy:1.0,language:0.1,format:0.0"
  # DAPO's dynamic sampling (Yu et al. 2025, arXiv:2503.14476, section 3.2): a cold-start
  # policy is sharp, so many groups are all right or all wrong and carry no advantage;
  # they are replaced by groups of new prompts (rollouts are a small part of a step).
  # On the default model it turned a null stage 2 into a gain (docs/r1_all_scenario.md).
  c.rl.dynamic_sampling = True
  return c
