"""R1-Zero: GRPO with rule-based rewards on the default model (the main job, stage `grpo`).

  python -m r1jax.main --config=configs/grpo.py [--config.rl.num_generations=8 ...]
  python -m r1jax.main --config=configs/grpo.py:tiny       # tiny random model, seconds a step

Sized to finish in about 30 minutes on a 2-core CPU with visible learning on easy
reasoning-gym arithmetic. At scale, point `model` at a Qwen2.5/Llama HF directory, raise
batch sizes and lengths, and set `mesh` for the devices.

Variants: "" (the default), "tiny" (tiny-random model, 2 steps: tests and smoke runs).
"""
from ml_collections import ConfigDict

from r1jax.configs import common
from r1jax.data.pipeline import default_data_config
from r1jax.kernels.logprob import default_config as kernels_config


def get_config(variant: str = "") -> ConfigDict:
  c = common.base("grpo", run_dir="runs/grpo", steps=50)
  common.add_model(c)
  common.add_parallel(c, sampler=True)

  c.data = default_data_config()
  # R1-Zero's instructions + one worked example, response opened with "<think>": with the
  # bare template a 135M model never emits the tags (no reward to learn from).
  c.data.template = "r1_zero_1shot"
  c.data.eval_size = 200
  c.data.max_prompt_tokens = 192

  c.rl = ConfigDict()
  # Prompts per step; each gets num_generations samples (the step's batch is their product).
  c.rl.prompts_per_step = 4
  # G: samples per prompt (the group of GRPO).
  c.rl.num_generations = 8
  # Prompts per micro-batch of the update (gradient accumulation; exact aggregation).
  c.rl.micro_batch_prompts = 1
  # Completion budget (tokens).
  c.rl.max_new_tokens = 64
  # Comma-separated stop strings (matched on decoded text, which is cut after them;
  # EOS-like tokens always stop).
  c.rl.stop_strings = "</answer>"
  # Rollout sampling (the loss uses log-probs at the same temperature).
  c.rl.temperature = 1.0
  c.rl.top_p = 1.0
  c.rl.top_k = 0
  # mu: policy updates per rollout batch (old log-probs fixed before the first update).
  c.rl.num_iterations = 1
  # Clip range [1 - epsilon_low, 1 + epsilon_high]; epsilon_high > epsilon_low = clip-higher.
  c.rl.epsilon_low = 0.2
  c.rl.epsilon_high = 0.2
  # KL coefficient beta against the frozen starting policy (0 = no reference model at all).
  c.rl.beta = 0.04
  # KL estimator: k1 | k2 | k3.
  c.rl.kl_estimator = "k3"
  # Loss aggregation: sequence_mean_token_mean (GRPO) | token_mean (DAPO) | dr_grpo.
  c.rl.loss_aggregation = "sequence_mean_token_mean"
  # Advantage scaling: group (GRPO) | batch | none (Dr. GRPO).
  c.rl.advantage_scaling = "group"
  # Exclude completions cut at max_new_tokens from the loss (DAPO overlong filtering).
  c.rl.mask_truncated = False
  # Dynamic sampling (DAPO): drop groups whose rewards are all equal and refill with new
  # prompts, up to max_resample_rounds extra rollouts per step.
  c.rl.dynamic_sampling = False
  c.rl.max_resample_rounds = 2

  # Per-token log-probs from hidden states + LM head, never [tokens, vocab] logits
  # (r1jax/kernels/logprob.py): logprob_impl, logprob_chunk_size, block_tokens, block_vocab.
  c.kernels = kernels_config()
  common.add_rewards(c)
  c.lora = common.lora()
  c.optim = common.optim(learning_rate=1e-5, warmup_steps=3, schedule="constant", b2=0.99)

  c.eval = ConfigDict()
  # Held-out evaluation every N steps (and at step 0 and the end; 0 = only start and end).
  c.eval.every_steps = 25
  # Prompts per eval rollout batch.
  c.eval.batch_size = 50
  # Sampled eval temperature (greedy eval is always run too).
  c.eval.temperature = 1.0
  # Also evaluate at step 0 (before any update).
  c.eval.at_start = True

  c.checkpoint = common.checkpoint(every_steps=50)
  c.log = common.log(plot=True, samples_every=10, num_samples=4)
  return common.select_variant(c, variant, {"tiny": tiny}, "configs/grpo.py")


def tiny(c: ConfigDict) -> None:
  """A tiny random model, for tests and smoke runs (seconds per step)."""
  c.model = "tiny-random"
  c.run_dir = "runs/tiny"
  c.steps = 2
  c.data.train_size = 200
  c.data.eval_size = 8
  # 8 prompts x G=2: one prompt per device on 8 fake test devices.
  c.rl.prompts_per_step = 8
  c.rl.num_generations = 2
  c.rl.micro_batch_prompts = 8
  c.rl.max_new_tokens = 8
  c.rewards.num_workers = 0
  c.eval.every_steps = 0
  c.eval.batch_size = 8
  c.checkpoint.every_steps = 1
  c.log.samples_every = 1
  c.log.plot = False
