"""On-policy preference pairs for the helpfulness reward model (stage `preference_pairs`;
R1 stage 4's reward data, DeepSeek-R1 section 2.3.4).

  python -m r1jax.main --config=configs/preference_pairs.py --config.model=<stage-3 SFT>/hf
  python -m r1jax.main --config=configs/reward_model.py \\
      --config.data.train_jsonl=runs/preference_pairs/pairs.jsonl

n samples per general prompt from `model`, judged by the rule judge
(r1jax.curation.preference_judge: finished, enough words, no markup, on topic, no loops, on
the summary after </think>); best vs worst -> {"prompt", "chosen", "rejected"} when they
differ by >= judge.min_margin. With prompts="builtin" the general prompts of
r1jax.data.general_prompts (576 train, 144 held-out on unseen topics) are also written to
run_dir for all-scenario RL and its evaluation.
"""
from ml_collections import ConfigDict

from r1jax.configs import common


def get_config() -> ConfigDict:
  c = common.base("preference_pairs", run_dir="runs/preference_pairs")
  del c.steps, c.resume
  common.add_model(c, remat=None)
  common.add_parallel(c)
  # "builtin" (r1jax.data.general_prompts) or a JSONL of {"prompt", "topic"?, "id"?} records.
  c.prompts = "builtin"
  # A seeded subset of this many prompts (0 = all).
  c.max_prompts = 0
  # The template the RL stage will render general prompts with.
  c.template = "chat"
  # Samples per prompt (the best and the worst by the judge make the pair).
  c.num_samples = 4
  # T = 1: the spread of the policy's own samples is what the pairs contrast.
  c.sampling = common.sampling(temperature=1.0, top_p=1.0, max_new_tokens=96)
  c.batch_size = 16
  c.judge = ConfigDict(dict(min_words=6, min_distinct=0.8, min_margin=1.0))
  return c
