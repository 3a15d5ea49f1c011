"""R1-Zero's signature on the default model: GRPO on a task where more steps of reasoning
pay, to see held-out accuracy and response length rise together (DeepSeek-R1, figures 2-3).

  python -m r1jax.main --config=configs/grpo_reasoning.py

The task is reasoning-gym `chain_sum` with 2-4 single-digit terms: a 135M model adds two
digits reliably but not four at once, so writing the partial sums ("7 + 5 = 12. 12 - 3 =
9.") pays, and the worked example of the `r1_zero_steps_1shot` template shows how. Against
the default job (configs/grpo.py): no KL (beta = 0) and Dr. GRPO's constant length
normaliser (Liu et al. 2025, arXiv:2503.20783), so that neither a KL to the short-answering
start nor per-sequence length normalisation holds the length down; a 96-token budget;
twice the learning rate (the dr_grpo normaliser divides by the budget, not the length).
Sized for about 60-80 minutes on a 2-core CPU.

Result on the default model (docs/r1_zero_signature.md): over 35 steps held-out greedy
accuracy rose (5.0 % -> 24.5 %) but length fell (52 -> 21 tokens): the 135M model's
individual steps are too unreliable for longer reasoning to pay, and the policy learnt to
answer after one partial sum. The config is the starting point for a larger base model.

Variants: "" and "tiny" (tiny random model, 2 steps: tests).
"""
from ml_collections import ConfigDict

from r1jax.configs import common
from r1jax.configs import grpo


def get_config(variant: str = "") -> ConfigDict:
  c = grpo.get_config()
  c.run_dir = "runs/grpo_reasoning"
  c.steps = 70
  c.data.tasks = "chain_sum"
  c.data.task_configs.chain_sum = ConfigDict(dict(min_terms=2, max_terms=4, min_digits=1,
                                                  max_digits=1))
  c.data.template = "r1_zero_steps_1shot"
  c.data.eval_size = 200
  c.rl.max_new_tokens = 96
  # The template is a User/Assistant transcript: a base model that skips the answer tags runs
  # on into the next "User:" turn. Cutting there keeps the response length a measure of the
  # reasoning, not of rambling (the signature is read off this length).
  c.rl.stop_strings = "</answer>,User:"
  c.rl.beta = 0.0
  c.rl.loss_aggregation = "dr_grpo"
  c.optim.learning_rate = 2e-5
  c.eval.every_steps = 35
  c.checkpoint.every_steps = 35
  return common.select_variant(c, variant, {"tiny": grpo.tiny}, "configs/grpo_reasoning.py")
