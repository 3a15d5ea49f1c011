"""A preference reward model for R1 stage 4 (stage `reward_model`).

  python -m r1jax.main --config=configs/reward_model.py \
    --config.data.train_jsonl=prefs.jsonl [--config.data.eval_jsonl=heldout.jsonl ...]
  python -m r1jax.main --config=configs/reward_model.py:tiny    # toy pairs, tiny model

Records are {"prompt", "chosen", "rejected"} JSONL lines. The decoder starts from `model`
(default model, HF directory, e.g. an SFT run's `run_dir/hf`, a run directory, or
tiny-random) with a scalar head on the last token; the loss is Bradley-Terry,
-log sigmoid(r_chosen - r_rejected). The trained model is saved to `run_dir/reward_model`;
all-scenario RL takes it with --config.rewards.helpfulness_rm=runs/reward_model/reward_model
(or harmlessness_rm).

Variants: "" (the default), "tiny" (tiny-random on a separable toy preference set: chosen and
rejected responses are the same random words with "kindly" or "rudely" inserted; held-out
accuracy reaches ~1.0 in a few dozen steps).
"""
from ml_collections import ConfigDict

from r1jax.configs import common
from r1jax.data.preference_data import default_preference_data_config


def get_config(variant: str = "") -> ConfigDict:
  c = common.base("reward_model", run_dir="runs/reward_model", steps=0)
  # Optimizer steps; 0 = num_epochs passes over the train pairs.
  c.num_epochs = 1.0
  common.add_model(c)
  common.add_parallel(c)

  c.data = default_preference_data_config()

  c.train = ConfigDict()
  # Pairs per optimizer step.
  c.train.batch_size = 16
  # Pairs per micro-batch (gradient accumulation; the loss is the exact mean over the batch).
  c.train.micro_batch_size = 4
  # Weight of the centering term (r_chosen + r_rejected)^2 (0 = off); pins the score offset.
  c.train.center_coef = 0.0
  c.optim = common.optim(learning_rate=1e-5, warmup_steps=10)

  c.eval = ConfigDict()
  # Held-out loss and accuracy every N steps (and at the end; 0 = only at the end).
  c.eval.every_steps = 50
  # Pairs per eval batch.
  c.eval.batch_size = 16
  c.eval.at_start = True

  c.checkpoint = common.checkpoint(every_steps=100)
  c.log = common.log(plot=True)
  return common.select_variant(c, variant, {"tiny": tiny}, "configs/reward_model.py")


def tiny(c: ConfigDict) -> None:
  """A tiny random reward model on the toy preference set (tests and smoke runs)."""
  c.model = "tiny-random"
  c.run_dir = "runs/tiny_reward_model"
  c.data.source = "toy"
  c.data.toy_size = 160
  c.data.eval_size = 32
  c.data.format = "raw"
  c.data.seq_len = 24
  c.steps = 24
  c.num_epochs = 0.0
  # 8 pairs: one per device on 8 fake test devices.
  c.train.batch_size = 8
  c.train.micro_batch_size = 8
  c.remat = False
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"
  c.eval.every_steps = 8
  c.eval.batch_size = 16
  c.eval.at_start = True
  c.checkpoint.every_steps = 8
  c.log.plot = False
