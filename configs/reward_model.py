"""A preference reward model for R1 stage 4 (stage `reward_model`).

python -m r1jax.main --config=configs/reward_model.py \
  --config.data.train_jsonl=prefs.jsonl [--config.data.eval_jsonl=heldout.jsonl ...]

Records are {"prompt", "chosen", "rejected"} JSONL lines. The decoder starts from `model`
(default model, HF directory, e.g. an SFT run's `run_dir/hf`, or tiny-random) with a scalar
head on the last token; the loss is Bradley-Terry, -log sigmoid(r_chosen - r_rejected). The
trained model is saved to `run_dir/reward_model`; all-scenario RL takes it with
--config.rewards.helpfulness_rm=runs/reward_model/reward_model (or harmlessness_rm).
"""
from ml_collections import ConfigDict

from r1jax.data.preference_data import default_preference_data_config


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.stage = "reward_model"
  # Decoder source: a default model name, a .gguf path, an HF directory, or "tiny-random".
  c.model = "smollm2-135m-instruct"
  # Tokenizer source ("" = the model source; "tiny-random" uses the default model's tokenizer).
  c.tokenizer = ""
  c.dtype = "float32"
  c.param_dtype = "float32"
  c.run_dir = "runs/reward_model"
  # Continue the run in run_dir from its latest checkpoint (same config expected).
  c.resume = False
  c.seed = 0
  # Optimizer steps; 0 = num_epochs passes over the train pairs.
  c.steps = 0
  c.num_epochs = 1.0
  # Device mesh sizes; one -1 takes the remaining devices.
  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical axis -> mesh axis rules (see configs/grpo.py).
  c.sharding = ConfigDict(dict(preset="fsdp_tp", rules=""))
  # Recompute each decoder block in the backward pass.
  c.remat = True
  # Size of the tiny-random model (model="tiny-random" only).
  c.tiny_model = ConfigDict(dict(hidden_size=64, intermediate_size=128, num_layers=2,
                                 num_heads=4, num_kv_heads=2, head_dim=16))

  c.data = default_preference_data_config()

  c.train = ConfigDict()
  # Pairs per optimizer step.
  c.train.batch_size = 16
  # Pairs per micro-batch (gradient accumulation; the loss is the exact mean over the batch).
  c.train.micro_batch_size = 4
  # Weight of the centering term (r_chosen + r_rejected)^2 (0 = off); pins the score offset.
  c.train.center_coef = 0.0

  c.optim = ConfigDict()
  c.optim.learning_rate = 1e-5
  c.optim.warmup_steps = 10
  # cosine | constant (after warmup).
  c.optim.schedule = "cosine"
  c.optim.end_lr_factor = 0.1
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  c.optim.max_grad_norm = 1.0

  c.eval = ConfigDict()
  # Held-out loss and accuracy every N steps (and at the end; 0 = only at the end).
  c.eval.every_steps = 50
  # Pairs per eval batch.
  c.eval.batch_size = 16
  c.eval.at_start = True

  c.checkpoint = ConfigDict()
  c.checkpoint.every_steps = 100
  c.checkpoint.keep = 2

  c.log = ConfigDict()
  c.log.plot = True
  return c
