"""A tiny random reward model on a separable toy preference set (tests and smoke runs).

Chosen and rejected responses are the same random words with "kindly" or "rudely" inserted
(r1jax.data.preference_data.toy_preference_records); held-out accuracy reaches ~1.0 in a
few dozen steps.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "r1jax_configs_reward_model",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "reward_model.py"))
reward_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reward_model)


def get_config():
  c = reward_model.get_config()
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
  return c
