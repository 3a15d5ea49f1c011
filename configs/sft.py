"""SFT of the default model on CHAMP worked solutions in the R1 output format (stage `sft`).

python -m r1jax.main --config=configs/sft.py [--config.steps=100 ...]

Each CHAMP problem (270 competition problems, PyPI champ-dataset) becomes a chat record whose
assistant turn is "<think>\\n{reference solution}\\n</think>\\nThe answer is <answer> X </answer>."
(r1jax.data.sft_data.champ_sft_records); 16 problems are held out for the eval loss. Sized to
run a few minutes on a 2-core CPU. Note: the eval stage's "champ" dataset overlaps this
training data, so evaluate an SFT'd model on other data.

The same stage trains on any JSONL of {"messages"} / {"prompt", "response"} records:
  --config.data.source=jsonl --config.data.train_jsonl=train.jsonl [--config.data.eval_jsonl=..]
At the end the model is exported to `run_dir/hf` (HF safetensors + tokenizer); the next stage
takes it with --config.model=runs/sft/hf.
"""
from ml_collections import ConfigDict

from r1jax.kernels.logprob import default_config as kernels_config
from r1jax.data.sft_data import default_sft_data_config


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.stage = "sft"
  # Model source: a default model name, a .gguf path, an HF directory, or "tiny-random".
  c.model = "smollm2-135m-instruct"
  # Tokenizer source ("" = the model source; "tiny-random" uses the default model's tokenizer).
  c.tokenizer = ""
  c.dtype = "float32"
  c.param_dtype = "float32"
  c.run_dir = "runs/sft"
  # Continue the run in run_dir from its latest checkpoint (same config expected).
  c.resume = False
  c.seed = 0
  # Optimizer steps; 0 = num_epochs passes over the train split.
  c.steps = 20
  c.num_epochs = 0.0
  # Device mesh sizes; one -1 takes the remaining devices.
  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Recompute each decoder block in the backward pass (activation memory ~ 1 layer).
  c.remat = True
  # Size of the tiny-random model (model="tiny-random" only).
  c.tiny_model = ConfigDict(dict(hidden_size=64, intermediate_size=128, num_layers=2,
                                 num_heads=4, num_kv_heads=2, head_dim=16))

  c.data = default_sft_data_config()
  c.data.source = "champ"
  c.data.eval_size = 16
  c.data.seq_len = 512

  c.train = ConfigDict()
  # Packed rows of data.seq_len tokens per optimizer step.
  c.train.batch_size = 2
  # Rows per micro-batch (gradient accumulation; the loss is exact token-mean over the batch).
  c.train.micro_batch_size = 1
  # Per-token log-probs (r1jax/kernels/logprob.py): logprob_impl, logprob_chunk_size, tiles.
  c.kernels = kernels_config()

  c.optim = ConfigDict()
  c.optim.learning_rate = 2e-5
  c.optim.warmup_steps = 3
  # cosine | constant (after warmup); cosine decays to end_lr_factor * lr at the last step.
  c.optim.schedule = "cosine"
  c.optim.end_lr_factor = 0.1
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  # Global-norm gradient clipping (0 = off).
  c.optim.max_grad_norm = 1.0

  c.distill = ConfigDict()
  # Logit distillation (r1jax/losses/distill.py): loss = (1 - alpha) * NLL
  # + alpha * T^2 * KL_T(teacher || student) on the response tokens. teacher: model source
  # of the frozen teacher ("" = off, plain SFT); it must share the student's vocabulary.
  c.distill.teacher = ""
  c.distill.alpha = 0.5
  # Softmax temperature T of both models in the KL term (Hinton et al. 2015).
  c.distill.temperature = 1.0
  # Tokens per chunk of the KL (memory ~ chunk x vocab floats per model).
  c.distill.chunk_size = 256

  c.eval = ConfigDict()
  # Held-out loss every N steps (and at the end; 0 = only at the end).
  c.eval.every_steps = 10
  # Rows per eval batch.
  c.eval.batch_size = 4
  # Also evaluate before the first update.
  c.eval.at_start = True

  c.checkpoint = ConfigDict()
  # Save every N steps (and at the end and on SIGTERM); keep the newest `keep`.
  c.checkpoint.every_steps = 10
  c.checkpoint.keep = 2

  c.export = ConfigDict()
  # Write run_dir/hf (HF safetensors + tokenizer) at the end, for the next stage's `model`.
  c.export.hf = True
  c.export.dtype = "float32"

  c.log = ConfigDict()
  # Draw run_dir/curves.png at the end.
  c.log.plot = True
  return c
