"""R1-Zero: GRPO with rule-based rewards on the default model (the main job).

python -m r1jax.main --config=configs/grpo.py [--config.rl.num_generations=8 ...]

Sized to finish in about 30 minutes on a 2-core CPU with visible learning on easy
reasoning-gym arithmetic. At scale, point `model` at a Qwen2.5/Llama HF directory, raise
batch sizes and lengths, and set `mesh` for the devices.
"""
from ml_collections import ConfigDict

from r1jax.kernels.logprob import default_config as kernels_config
from r1jax.data.pipeline import default_data_config


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.stage = "grpo"
  # Policy source: a default model name, a .gguf path, an HF directory, or "tiny-random"
  # (a small random model for tests; see `tiny_model`).
  c.model = "smollm2-135m-instruct"
  # Tokenizer source ("" = the model source; "tiny-random" uses the default model's tokenizer).
  c.tokenizer = ""
  # Compute / param dtypes: float32 | bfloat16 | float16.
  c.dtype = "float32"
  c.param_dtype = "float32"
  # Where metrics, samples, plots and checkpoints go.
  c.run_dir = "runs/grpo"
  # Continue the run in run_dir from its latest checkpoint (same config expected).
  c.resume = False
  # Seed of sampling (per-step keys are derived from it and the step, so resume is exact).
  c.seed = 0
  # Number of GRPO steps (one rollout batch each).
  c.steps = 50
  # Device mesh sizes; one -1 takes the remaining devices (all processes' devices together).
  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical axis -> mesh axis rules (r1jax/sharding.py, docs/scaling.md). preset:
  #   dp      params / optimizer state / KV cache replicated, batch over data x fsdp;
  #   fsdp    params and optimizer state split on the embed dim over fsdp (ZeRO-3);
  #   fsdp_tp fsdp + heads / MLP / vocab / KV-cache heads over tensor (default; with
  #           fsdp = tensor = 1 in the mesh it is plain data parallelism).
  # rules: overrides "logical=mesh_axis[+mesh_axis];..." e.g. "mlp=;embed=fsdp+tensor".
  # sampler_preset / sampler_rules: the rollout's layout of the same params ("" = as the
  # trainer); the loop reshards explicitly before each rollout when they differ.
  c.sharding = ConfigDict(dict(preset="fsdp_tp", rules="", sampler_preset="",
                               sampler_rules=""))
  # Multi-host (jax.distributed, before any device use). Empty/-1/0 fields fall back to
  # $R1JAX_COORDINATOR_ADDRESS / $R1JAX_NUM_PROCESSES / $R1JAX_PROCESS_ID (or JAX_*);
  # auto=True lets JAX detect the cluster (TPU pod, SLURM, Open MPI, Kubernetes).
  # cpu_collectives: cross-process collectives of the CPU backend (gloo | mpi).
  c.distributed = ConfigDict(dict(coordinator_address="", num_processes=0, process_id=-1,
                                  auto=False, cpu_collectives="gloo",
                                  initialization_timeout_s=300))
  # Recompute each decoder block in the backward pass (activation memory ~ 1 layer).
  c.remat = True
  # Size of the tiny-random model (model="tiny-random" only).
  c.tiny_model = ConfigDict(dict(hidden_size=64, intermediate_size=128, num_layers=2,
                                 num_heads=4, num_kv_heads=2, head_dim=16))

  c.data = default_data_config()
  # The spec's R1-Zero instructions + one worked example, response opened with "<think>":
  # with the bare template a 135M model never emits the tags (no reward to learn from).
  c.data.template = "r1_zero_1shot"
  c.data.eval_size = 200
  c.data.max_prompt_tokens = 192

  c.rl = ConfigDict()
  # Sequences per step (= prompts x num_generations); must be a whole number of groups.
  c.rl.batch_size = 32
  # G: samples per prompt (the group of GRPO).
  c.rl.num_generations = 8
  # Sequences per micro-batch of the update (gradient accumulation; exact aggregation).
  c.rl.micro_batch_size = 8
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

  c.rewards = ConfigDict()
  # Reward functions with weights: r = r_acc + lambda * r_fmt (R1_SPEC section 3).
  c.rewards.spec = "accuracy:1.0,format:0.5"
  # Graded format reward: fully conforming / partly conforming values.
  c.rewards.format_full = 1.0
  c.rewards.format_partial = 0.5
  c.rewards.partial_credit = False  # accuracy: binary (True: reasoning-gym partial credit)
  # Reward worker processes (0 = inline, no timeout) and per-sample timeout (seconds).
  c.rewards.num_workers = 2
  c.rewards.timeout_s = 10.0
  # Code reward (spec "code:1.0,..."; docs/code_reward.md): all-or-nothing instead of the
  # fraction of tests passed; per-test wall limit and per-sample budget (keep the budget
  # about 1 s under rewards.timeout_s).
  c.rewards.code_binary = True
  c.rewards.code_test_timeout_s = 2.0
  c.rewards.code_total_timeout_s = 4.0
  # All-scenario RL (R1 stage 4, r1jax/rewards/routing.py; configs/all_scenario_rl.py):
  # reward-model directories (the reward_model stage's run_dir/reward_model, "" = none).
  # With either set, prompts of kind "reasoning" get the rule rewards above and prompts of
  # kind "general" (JSONL field "kind") get weight * RM score: helpfulness on the summary
  # (text after the last summary marker), harmlessness on the whole response.
  c.rewards.helpfulness_rm = ""
  c.rewards.harmlessness_rm = ""
  c.rewards.helpfulness_weight = 1.0
  c.rewards.harmlessness_weight = 1.0
  c.rewards.summary_markers = "</think>"
  # RM scoring: sequences per jitted batch; token limit (0 = the RM's training seq_len).
  c.rewards.rm_batch_size = 16
  c.rewards.rm_max_len = 0

  c.optim = ConfigDict()
  c.optim.learning_rate = 1e-5
  c.optim.warmup_steps = 3
  # cosine | constant (after warmup); cosine decays to end_lr_factor * lr at `steps`.
  c.optim.schedule = "constant"
  c.optim.end_lr_factor = 0.1
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.eps = 1e-8
  # Global-norm gradient clipping (0 = off).
  c.optim.max_grad_norm = 1.0

  c.eval = ConfigDict()
  # Held-out evaluation every N steps (and at step 0 and the end; 0 = only start and end).
  c.eval.every_steps = 25
  # Prompts per eval rollout batch.
  c.eval.batch_size = 50
  # Sampled eval temperature (greedy eval is always run too).
  c.eval.temperature = 1.0
  # Also evaluate at step 0 (before any update).
  c.eval.at_start = True

  c.checkpoint = ConfigDict()
  # Save every N steps (and at the end and on SIGTERM); keep the newest `keep`.
  c.checkpoint.every_steps = 50
  c.checkpoint.keep = 2

  c.log = ConfigDict()
  # Sample completions written to samples.jsonl every N steps.
  c.log.samples_every = 10
  c.log.num_samples = 4
  # Draw runs/.../curves.png at the end.
  c.log.plot = True
  return c
