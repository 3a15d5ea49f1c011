"""A tiny random model on the SFT stage, for tests and smoke runs (well under a second a step).

Trains on tests/data/sft_toy.jsonl, a few short memorisable question/answer pairs, in the
"raw" format (no chat-template system prompt: 4x fewer tokens than "chat" for these).
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "r1jax_configs_sft", os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft.py"))
sft = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sft)


def get_config():
  c = sft.get_config()
  c.model = "tiny-random"
  c.run_dir = "runs/tiny_sft"
  c.data.source = "jsonl"
  c.data.train_jsonl = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                    "data", "sft_toy.jsonl")
  c.data.eval_size = 2
  c.data.format = "raw"
  c.data.seq_len = 32
  c.steps = 6
  # 8 rows: one per device on 8 fake test devices.
  c.train.batch_size = 8
  c.train.micro_batch_size = 8
  c.kernels.logprob_chunk_size = 64
  c.optim.learning_rate = 1e-2
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"
  c.eval.every_steps = 3
  c.eval.batch_size = 8
  c.checkpoint.every_steps = 3
  c.log.plot = False
  return c
