"""Chat generation from the command line (stage `generate`).

python -m r1jax.main --config=configs/generate.py --config.prompt="What is 12*13?"
"""
from ml_collections import ConfigDict

from r1jax.configs import common


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.stage = "generate"
  common.add_model(c, remat=None)
  common.add_parallel(c)
  # The user message.
  c.prompt = "Write a haiku about the sea."
  # Optional system message ("" = the chat template's default).
  c.system = ""
  # Wrap the prompt in the model's chat template (False = raw text continuation).
  c.chat_template = True
  # Completions to sample for the prompt.
  c.num_samples = 1
  # PRNG seed (same seed, same completions; tiny-random init).
  c.seed = 0
  c.sampling = common.sampling(temperature=0.7, stop_strings="")
  return c
