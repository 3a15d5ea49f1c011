"""A tiny random model on the rejection-sampling stage, for tests and smoke runs (seconds).

A random model is never correct, so the accuracy verifier keeps nothing; tests pass a toy
judge (judge.fn, judge.tasks="*") to exercise the rest of the stage.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "r1jax_configs_rejection_sampling",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "rejection_sampling.py"))
rs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rs)


def get_config():
  c = rs.get_config()
  c.model = "tiny-random"
  c.out_dir = "runs/tiny_rejection_sampling"
  c.prompts = "train"
  c.max_prompts = 6
  c.data.train_size = 6
  c.data.eval_size = 2
  c.num_samples = 4
  c.batch_size = 3
  c.sampling.max_new_tokens = 8
  c.sampling.temperature = 1.0
  c.verifier.workers = 0
  c.max_per_prompt = 2
  # 8 new tokens never reach a stop: keep truncated samples so that the stage has output.
  c.keep_truncated = True
  return c
