"""A tiny logit-distillation run, for tests and smoke runs (stage `sft` with `distill`).

  python -m r1jax.main --config=configs/tiny_sft.py          # the teacher: runs/tiny_sft/hf
  python -m r1jax.main --config=configs/tiny_distill.py

The student is a smaller tiny-random model (same tokenizer, hence vocabulary, as the
teacher) trained on the toy data with alpha = 0.5, T = 2.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "r1jax_configs_tiny_sft",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_sft.py"))
tiny_sft = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_sft)


def get_config():
  c = tiny_sft.get_config()
  c.run_dir = "runs/tiny_distill"
  c.seed = 1
  c.tiny_model.hidden_size = 32
  c.tiny_model.intermediate_size = 64
  c.tiny_model.num_heads = 2
  c.tiny_model.num_kv_heads = 1
  c.distill.teacher = "runs/tiny_sft/hf"
  c.distill.alpha = 0.5
  c.distill.temperature = 2.0
  c.distill.chunk_size = 64
  return c
