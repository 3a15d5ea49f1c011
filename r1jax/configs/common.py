"""The blocks every stage config shares, built in one place.

  c = common.base("sft", run_dir="runs/sft", steps=20)   # stage, run_dir, resume, seed, steps
  common.add_model(c)        # model, tokenizer, dtype, param_dtype, remat, tiny_model
  common.add_parallel(c)     # mesh, sharding, distributed
  c.optim = common.optim(learning_rate=2e-5, warmup_steps=3)
  c.checkpoint = common.checkpoint(every_steps=10)
  c.log = common.log(plot=True)
  common.add_rewards(c)      # rewards (RL stages)
  c.lora = common.lora()     # LoRA adapters (off by default)

Variants are selected by argument: `--config=configs/grpo.py:tiny` calls get_config("tiny");
`select_variant` applies one and names the known ones when the argument is unknown.
"""

from __future__ import annotations

from typing import Callable, Optional

from ml_collections import ConfigDict, config_dict

from r1jax.default_models import DEFAULT_MODEL

# A small random model for tests and smoke runs (model = "tiny-random").
TINY_MODEL = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=16)


def base(stage: str, *, run_dir: str, steps: int = 0) -> ConfigDict:
  """stage, run_dir, resume, seed and steps."""
  c = ConfigDict()
  c.stage = stage
  # Where metrics, samples, plots, checkpoints and exports go.
  c.run_dir = run_dir
  # False: a run_dir with checkpoints is an error; True: continue from its latest checkpoint
  # (none is an error); auto: continue when there is a checkpoint, else start fresh.
  c.resume = config_dict.FieldReference(False, field_type=object)
  # Seed of initialisation, data order and sampling (per-step keys derive from it: resume is
  # exact).
  c.seed = 0
  c.steps = steps
  return c


def add_model(c: ConfigDict, model: str = DEFAULT_MODEL, *,
              remat: Optional[bool] = True) -> ConfigDict:
  """model, tokenizer, dtype, param_dtype, remat (training stages: remat not None), tiny_model."""
  # Model source: a default model name, a .gguf path, an HF directory, a training run
  # directory, or "tiny-random" (a small random model; sizes in tiny_model).
  c.model = model
  # Tokenizer source ("" = the model's; tiny-random uses the default model's tokenizer).
  c.tokenizer = ""
  # Precision (r1jax/train/precision.py): dtype = compute dtype (activations, matmul
  # inputs, sampler and reference weights); param_dtype = master weights and optimizer
  # state; log-probs, losses and gradient accumulation are float32 whatever the two.
  #   float32 / float32   the default (CPU, tests);
  #   bfloat16 / float32  bf16 mixed precision, the TPU / GPU setting (--config.dtype=bfloat16);
  #   bfloat16 / bfloat16 bf16 everywhere (updates below bf16's precision are lost).
  # Names: float32 | bfloat16 | float16.
  c.dtype = "float32"
  c.param_dtype = "float32"
  if remat is not None:
    # Recompute each decoder block in the backward pass (activation memory ~ 1 layer).
    c.remat = remat
  c.tiny_model = ConfigDict(dict(TINY_MODEL))
  return c


def add_parallel(c: ConfigDict, *, sampler: bool = False) -> ConfigDict:
  """mesh, sharding (with the sampler's layout when `sampler`), distributed."""
  # Device mesh sizes; one -1 takes the remaining devices (all processes' devices together).
  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Multi-slice TPU / multi-node GPU: how many slices (nodes) each axis spans, i.e. the part
  # of it that crosses the data-centre network (DCN) rather than the chips' interconnect
  # (ICI); each must divide its axis. All 1 = one slice. E.g. 2 slices of 16 chips:
  # --config.mesh.fsdp=16 --config.mesh.dcn.data=2 (data parallelism across slices, FSDP
  # inside one; sharding.make_mesh, mesh_utils.create_hybrid_device_mesh).
  c.mesh.dcn = ConfigDict(dict(data=1, fsdp=1, tensor=1))
  # Logical axis -> mesh axis rules (r1jax/sharding.py, docs/scaling.md). preset:
  #   dp      params / optimizer state / KV cache replicated, batch over data x fsdp;
  #   fsdp    params and optimizer state split on the embed dim over fsdp (ZeRO-3);
  #   fsdp_tp fsdp + heads / MLP / vocab / KV-cache heads over tensor (default; with
  #           fsdp = tensor = 1 in the mesh it is plain data parallelism).
  # rules: overrides "logical=mesh_axis[+mesh_axis];..." e.g. "mlp=;embed=fsdp+tensor".
  # on_indivisible: a rule whose mesh axis does not divide the dimension is an "error"
  # naming the array and rule, or "replicate"s that dimension with a logged warning (e.g.
  # SmolLM2's 9 query / 3 KV heads on a tensor axis of 2).
  c.sharding = ConfigDict(dict(preset="fsdp_tp", rules="", on_indivisible="error"))
  if sampler:
    # The rollout's layout of the same params ("" = as the trainer); the loop reshards
    # explicitly before each rollout when they differ.
    c.sharding.sampler_preset = ""
    c.sharding.sampler_rules = ""
  # Multi-host (jax.distributed, before any device use). Empty/-1/0 fields fall back to
  # $R1JAX_COORDINATOR_ADDRESS / $R1JAX_NUM_PROCESSES / $R1JAX_PROCESS_ID (or JAX_*);
  # auto=True lets JAX detect the cluster (TPU pod, SLURM, Open MPI, Kubernetes).
  # cpu_collectives: cross-process collectives of the CPU backend (gloo | mpi).
  c.distributed = ConfigDict(dict(coordinator_address="", num_processes=0, process_id=-1,
                                  auto=False, cpu_collectives="gloo",
                                  initialization_timeout_s=300))
  # Pre-flight plan (stage "plan", r1jax/stages/plan.py): compile the stage's programs for
  # this mesh without running them and print per-device memory, FLOPs and collectives.
  # hbm_gib > 0: also choose micro-batch size, remat and log-prob chunk so that the step
  # fits in that many GiB per device (0 = report only). GRPO configs only.
  c.plan = ConfigDict(dict(hbm_gib=0.0))
  return c


def optim(*, learning_rate: float, warmup_steps: int = 0, schedule: str = "cosine",
          b2: float = 0.95, max_grad_norm: float = 1.0) -> ConfigDict:
  """AdamW with warmup, cosine/constant schedule, clipping, and the non-finite guard."""
  o = ConfigDict()
  o.learning_rate = learning_rate
  o.warmup_steps = warmup_steps
  # cosine | constant (after warmup); cosine decays to end_lr_factor * lr at the last step.
  o.schedule = schedule
  o.end_lr_factor = 0.1
  o.weight_decay = 0.0
  o.b1 = 0.9
  o.b2 = b2
  o.eps = 1e-8
  # Global-norm gradient clipping (0 = off).
  o.max_grad_norm = max_grad_norm
  # A step whose loss or gradient is not finite skips its update (params and optimizer state
  # unchanged, counted in metrics); this many such steps in a row stop the run (0 = never).
  o.max_skipped_steps = 3
  return o


def checkpoint(*, every_steps: int, keep: int = 2) -> ConfigDict:
  """Save every N steps (and at the end and on SIGTERM); keep the newest `keep`."""
  return ConfigDict(dict(every_steps=every_steps, keep=keep))


def log(*, plot: bool = True, samples_every: Optional[int] = None,
        num_samples: int = 4) -> ConfigDict:
  """plot: draw run_dir/curves.png at the end; samples_every / num_samples: sample
  completions written to samples.jsonl every N steps (RL stages); optional experiment
  trackers next to metrics.jsonl and TensorBoard (r1jax/train/metrics.py)."""
  c = ConfigDict()
  if samples_every is not None:
    c.samples_every = samples_every
    c.num_samples = num_samples
  c.plot = plot
  # Weights & Biases (pip install wandb; off when the project is ""): metrics, samples and
  # config of process 0 go to this project (entity "" = the default one). The run id is
  # kept in run_dir/wandb_run_id, so a resumed run continues the same W&B run.
  c.wandb_project = ""
  c.wandb_entity = ""
  # MLflow (pip install mlflow; off when the experiment is ""): tracking URI "" = the
  # MLFLOW_TRACKING_URI environment variable or ./mlruns. The run id is kept in
  # run_dir/mlflow_run_id.
  c.mlflow_experiment = ""
  c.mlflow_tracking_uri = ""
  return c


def add_rewards(c: ConfigDict) -> ConfigDict:
  """The `rewards` block of the RL stages."""
  r = ConfigDict()
  # Reward functions with weights: r = r_acc + lambda * r_fmt (DeepSeek-R1, section 2.2.2;
  # docs/method.md "Rewards").
  r.spec = "accuracy:1.0,format:0.5"
  # Comma-separated Python modules imported before the spec is parsed, so that functions they
  # register (r1jax.rewards.register) can be named in `spec`, e.g. "my_pkg.my_rewards".
  r.modules = ""
  # Graded format reward: fully conforming / partly conforming values.
  r.format_full = 1.0
  r.format_partial = 0.5
  # Accuracy is binary (0/1, as R1's rule rewards); True opts in to reasoning-gym's partial
  # credit, which pays wrong answers that contain the gold string (docs/method.md "Rewards").
  r.partial_credit = False
  # Reward worker processes (0 = inline, no timeout) and per-sample timeout (seconds).
  r.num_workers = 2
  r.timeout_s = 10.0
  # Code reward (spec "code:1.0,..."; docs/code_reward.md): all-or-nothing (False: the
  # fraction of tests passed); per-test wall limit and per-sample budget (keep the budget
  # about 1 s under rewards.timeout_s).
  r.code_binary = True
  r.code_test_timeout_s = 2.0
  r.code_total_timeout_s = 4.0
  # All-scenario RL (R1 stage 4, r1jax/rewards/routing.py; configs/all_scenario_rl.py):
  # reward-model directories (the reward_model stage's run_dir/reward_model, "" = none).
  # With either set, prompts of kind "reasoning" get the rule rewards above and prompts of
  # kind "general" (JSONL field "kind") get weight * RM score: helpfulness on the summary
  # (text after the last summary marker), harmlessness on the whole response.
  r.helpfulness_rm = ""
  r.harmlessness_rm = ""
  r.helpfulness_weight = 1.0
  r.harmlessness_weight = 1.0
  r.summary_markers = "</think>"
  # RM scoring: sequences per jitted batch; token limit (0 = the RM's training seq_len).
  r.rm_batch_size = 16
  r.rm_max_len = 0
  c.rewards = r
  return c


def lora() -> ConfigDict:
  """The `lora` block: LoRA adapters on the projections (Hu et al. 2021;
  r1jax/models/lora.py), off by default. With rank > 0 only the adapters train (optimizer
  state and checkpoints hold only them), the base stays frozen, the RL reference policy is
  the base with adapters off (no second copy), and run_dir/peft_adapter gets the adapters in
  the PEFT layout at the end (the run directory itself loads as the merged model)."""
  c = ConfigDict()
  # Adapter rank r (0 = off: full fine-tuning).
  c.rank = 0
  # The adapter's update is scaled by alpha / rank.
  c.alpha = 32.0
  # Dropout on the adapters' input in the training forward.
  c.dropout = 0.0
  # Projections that get adapters: any of q,k,v,o,gate,up,down.
  c.targets = "q,k,v,o,gate,up,down"
  # Storage dtype of the frozen base: float32 | bfloat16 | float16 ("" = param_dtype, which
  # the adapters keep).
  c.base_dtype = ""
  return c


def select_variant(c: ConfigDict, variant: Optional[str], variants: dict[str, Callable],
                   where: str) -> ConfigDict:
  """Apply `variants[variant]` to `c` ("" / None = the base config).

  Raises:
    ValueError: an unknown variant (the message names the config file and the known ones).
  """
  if not variant:
    return c
  if variant not in variants:
    raise ValueError(f"{where} has no variant {variant!r}; known: {', '.join(sorted(variants))}")
  variants[variant](c)
  return c


def set_path(c: ConfigDict, key: str, value) -> None:
  """c["a.b.c"] = value, through nested ConfigDicts."""
  *path, last = key.split(".")
  node = c
  for p in path:
    node = node[p]
  node[last] = value


def heldout_data() -> ConfigDict:
  """The `data` block of the sampling stages (eval, rejection sampling): configs/grpo.py's
  reasoning-gym tasks and held-out split, with fewer train examples generated."""
  from r1jax.data.pipeline import default_data_config
  d = default_data_config()
  d.template = "r1_zero_1shot"
  d.max_prompt_tokens = 192
  d.train_size = 2000
  d.eval_size = 200
  return d


def sampling(*, temperature: float, top_p: float = 0.95, max_new_tokens: int = 256,
             stop_strings: str = "</answer>") -> ConfigDict:
  """A `sampling` block: temperature (0 = greedy), top_p / top_k (1 / 0 = off), the
  completion budget in tokens, comma-separated stop strings."""
  return ConfigDict(dict(temperature=temperature, top_p=top_p, top_k=0,
                         max_new_tokens=max_new_tokens, stop_strings=stop_strings))
