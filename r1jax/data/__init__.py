"""Prompt datasets for GRPO: reasoning-gym tasks and JSONL files as grain pipelines.

  data = PromptData(config.data, tokenizer)      # config.data from default_data_config()
  it = data.train_iterator(batch_size=8)         # endless; it.get_state() / it.set_state(s)
  batch = next(it)                               # list of example dicts
  data.eval_examples(); data.summary()

Example dict: {"id", "question", "answer", "task", "metadata", "prompt", "prompt_ids"}.
"""

from r1jax.data.pipeline import PromptData, PromptIterator, default_data_config
from r1jax.data.sources import (jsonl_examples, read_jsonl, reasoning_gym_dataset,
                                reasoning_gym_examples, reasoning_gym_task_names)
from r1jax.data.templates import (R1_SYSTEM_PROMPT, R1_ZERO_TEMPLATE, TEMPLATES, render_prompt)

__all__ = [
  "PromptData", "PromptIterator", "default_data_config", "champ_examples",
  "jsonl_examples", "read_jsonl", "reasoning_gym_dataset", "reasoning_gym_examples",
  "reasoning_gym_task_names",
  "R1_SYSTEM_PROMPT", "R1_ZERO_TEMPLATE", "TEMPLATES", "render_prompt",
]

from r1jax.data.champ import champ_examples  # noqa: E402
