"""R1-Zero: GRPO with rule-based rewards on the default model (the main job, stage `grpo`).

  python -m r1jax.main --config=configs/grpo.py [--config.rl.num_generations=8 ...]
  python -m r1jax.main --config=configs/grpo.py:tiny       # tiny random model, seconds a step

Sized to finish in about 30 minutes on a 2-core CPU with visible learning on easy
reasoning-gym arithmetic. At scale, point `model` at a Qwen2.5/Llama HF directory, raise
batch sizes and lengths, and set `mesh` for the devices.

Variants: "" (the default), "tiny" (tiny-random model, 2 steps: tests and smoke runs),
"gspo" (GSPO, Zheng et al. 2025: sequence ratio and clip, mu = 2 updates per rollout).
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
  # Policy loss: grpo (token ratio and clip, DeepSeekMath eq. 3) | gspo (sequence ratio
  # exp(mean token log-ratio) and its clip, Zheng et al. 2025; the paper's clip is about
  # epsilon_low = 3e-4 / epsilon_high = 4e-4 with sequence_mean_token_mean; with mu = 1 and
  # on-policy rollouts its ratio is 1 and its gradient equals grpo's: see the gspo variant).
  c.rl.policy_loss = "grpo"
  # Entropy bonus coefficient (>= 0; PPO eq. 9): c * token entropy is subtracted from the
  # loss, aggregated like the policy-gradient term. 0 = off.
  c.rl.entropy_coef = 0.0
  # Advantage estimator on the step's gathered rewards [prompts, G]: grpo (group mean/std,
  # scaled by advantage_scaling) | rloo (leave-one-out baseline) | reinforce_pp
  # (REINFORCE++: group mean baseline, then normalised over the whole batch).
  c.rl.advantage_estimator = "grpo"
  # Advantage scaling of the grpo estimator: group (GRPO) | batch | none (Dr. GRPO).
  c.rl.advantage_scaling = "group"
  # DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): completions longer than
  # max_new_tokens - overlong_buffer tokens lose up to overlong_penalty reward, linearly,
  # reaching it at the limit. overlong_buffer in tokens, 0 <= . <= max_new_tokens; 0 = off.
  c.rl.overlong_buffer = 0
  c.rl.overlong_penalty = 1.0
  # Exclude completions cut at max_new_tokens from the loss (DAPO overlong filtering).
  c.rl.mask_truncated = False
  # Dynamic sampling (DAPO): drop groups whose rewards are all equal and refill with new
  # prompts, up to max_resample_rounds extra rollouts per step. The refill decision is made
  # on the rewards gathered from every process (each keeps its own quota of groups).
  c.rl.dynamic_sampling = False
  c.rl.max_resample_rounds = 2
  # Blocks of the step's prompts that each keep their own quota of informative groups
  # (0 = one per process, so no rollout moves between processes). Set it to a multiple of
  # every process count the run may use and the kept groups do not depend on the count.
  c.rl.dynamic_sampling_blocks = 0
  # Off-policy correction of the sampler-vs-trainer mismatch (bf16 or other rollout kernels,
  # one-step-stale async rollouts): none | tis (token-level truncated importance sampling,
  # weight min(pi_old / mu, offpolicy_cap)) | mis (sequence-level masked importance sampling:
  # sequences whose ratio leaves [offpolicy_mis_low, offpolicy_cap] are dropped). The
  # mismatch metrics (offpolicy/*) are logged every step whatever the mode.
  c.rl.offpolicy_correction = "none"
  c.rl.offpolicy_cap = 2.0
  c.rl.offpolicy_mis_low = 0.5
  # One-step-async rollouts (r1jax/stages/grpo_async.py, docs/scaling.md): the rollout of
  # step t+1 runs while step t updates, with the policy one update stale (correct it with
  # offpolicy_correction). False = the synchronous schedule (rollout, then update).
  c.rl.async_rollouts = False
  # Devices given to the rollout (a sub-mesh of that many devices, taken evenly from every
  # process; the trainer keeps the rest and the params are copied over after each update).
  # 0 = rollout and training share all devices.
  c.rl.rollout_devices = 0
  # Mesh of the rollout devices (used when rollout_devices > 0; one -1 takes the rest).
  c.rl.rollout_mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Dtype of the sampler's params and compute ("" = as the trained model; bfloat16 = bf16
  # rollouts against the float32 trainer). Held-out evaluation always uses the trained dtype.
  c.rl.rollout_dtype = ""
  # Fused GRPO loss (r1jax/losses/grpo_fused.py): per chunk of kernels.logprob_chunk_size
  # tokens, logits, loss, d hidden and d W in one pass (3 matmul-equivalents instead of 5).
  # Needs policy_loss grpo and offpolicy_correction none / tis.
  c.rl.fused_loss = False

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
  return common.select_variant(c, variant, {"tiny": tiny, "gspo": gspo}, "configs/grpo.py")


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


def gspo(c: ConfigDict) -> None:
  """GSPO (Zheng et al. 2025, arXiv:2507.18071): sequence-level ratio and clip, with the
  paper's clip range and two updates per rollout batch (with mu = 1 the ratio is 1 and
  GSPO's gradient equals GRPO's sequence-mean one)."""
  c.run_dir = "runs/gspo"
  c.rl.policy_loss = "gspo"
  c.rl.loss_aggregation = "sequence_mean_token_mean"
  c.rl.epsilon_low = 3e-4
  c.rl.epsilon_high = 4e-4
  c.rl.num_iterations = 2
