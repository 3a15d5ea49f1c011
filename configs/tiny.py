"""A tiny random model on the GRPO stage, for tests and smoke runs (seconds per step)."""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "r1jax_configs_grpo", os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo.py"))
grpo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grpo)


def get_config():
  c = grpo.get_config()
  c.model = "tiny-random"
  c.run_dir = "runs/tiny"
  c.steps = 2
  c.data.train_size = 200
  c.data.eval_size = 8
  # 8 prompts x G=2: one prompt per device on 8 fake test devices.
  c.rl.batch_size = 16
  c.rl.num_generations = 2
  c.rl.micro_batch_size = 16
  c.rl.max_new_tokens = 8
  c.rewards.num_workers = 0
  c.eval.every_steps = 0
  c.eval.batch_size = 8
  c.checkpoint.every_steps = 1
  c.log.samples_every = 1
  c.log.plot = False
  return c
