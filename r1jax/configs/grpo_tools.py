"""GRPO with a Python tool (issue 17): tool-calling rollouts on arithmetic where the tool pays.

  python -m r1jax.main --config=configs/grpo_tools.py            # tools on
  python -m r1jax.main --config=configs/grpo_tools.py:notools    # same run, tools off
  python -m r1jax.main --config=configs/grpo_tools.py:tiny       # tiny random model, smoke

The task is reasoning-gym `basic_arithmetic` and `chain_sum` with 3-5 terms of 3-4 digits:
hard to do in the head for a 135M model, one line of Python with the tool. The template
(`r1_zero_tool_1shot`) shows one worked tool call. A sample pauses at each closed
```python block, the code runs in the code sandbox (r1jax.rewards.tool_exec: nsjail,
fails closed), and the output comes back as a ```output block prefilled into the KV cache;
tool tokens are not trained on (r1jax.tool_rollout). docs/tools.md has the details.

Variants: "" (tools on), "notools" (the baseline: same data, template and steps, plain
sampler), "tiny" (tiny random model, 2 steps), "tiny_notools".
"""
from ml_collections import ConfigDict

from r1jax.configs import common
from r1jax.configs import grpo
from r1jax.tool_rollout_stage import tools_config


def get_config(variant: str = "") -> ConfigDict:
  c = grpo.get_config("")
  c.run_dir = "runs/grpo_tools"
  c.steps = 30
  c.data.tasks = "basic_arithmetic,chain_sum"
  c.data.task_configs.basic_arithmetic = ConfigDict(dict(
      min_terms=3, max_terms=4, min_digits=3, max_digits=4, operators=("+", "-"),
      allow_parentheses=False, allow_negation=False))
  c.data.task_configs.chain_sum = ConfigDict(dict(min_terms=3, max_terms=5, min_digits=3,
                                                  max_digits=4))
  c.data.template = "r1_zero_tool_1shot"
  c.data.train_size = 2000
  c.data.eval_size = 32
  c.data.max_prompt_tokens = 320
  c.rl.max_new_tokens = 96
  c.rl.prompts_per_step = 4
  c.rl.num_generations = 4
  c.rl.micro_batch_prompts = 1
  c.tools = tools_config(enabled=True)
  c.eval.every_steps = 0  # start and end
  c.eval.batch_size = 32
  c.checkpoint.every_steps = 10
  c.log.samples_every = 5
  variants = {"notools": notools, "tiny": tiny, "tiny_notools": lambda c: (tiny(c), notools(c))}
  return common.select_variant(c, variant, variants, "configs/grpo_tools.py")


def notools(c: ConfigDict) -> None:
  """The baseline: tools off (the plain sampler), everything else the same."""
  c.tools.enabled = False
  c.run_dir = c.run_dir + "_notools"


def tiny(c: ConfigDict) -> None:
  """A tiny random model, for tests and smoke runs (seconds per step)."""
  grpo.tiny(c)
  c.run_dir = "runs/tiny_tools"
  c.data.eval_size = 8
  c.data.max_prompt_tokens = 320
  c.rl.max_new_tokens = 16
  c.tools.max_output_tokens = 8
