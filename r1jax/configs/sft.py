"""SFT of the default model on CHAMP worked solutions in the R1 output format (stage `sft`).

  python -m r1jax.main --config=configs/sft.py [--config.steps=100 ...]
  python -m r1jax.main --config=configs/sft.py:tiny     # tiny random model on toy data

Each CHAMP problem (270 competition problems, PyPI champ-dataset) becomes a chat record whose
assistant turn is "<think>\\n{reference solution}\\n</think>\\nThe answer is <answer> X </answer>."
(r1jax.data.sft_data.champ_sft_records); 16 problems are held out for the eval loss. Sized to
run a few minutes on a 2-core CPU. Note: the eval stage's "champ" dataset overlaps this
training data, so evaluate an SFT'd model on other data.

The same stage trains on any JSONL of {"messages"} / {"prompt", "response"} records:
  --config.data.source=jsonl --config.data.train_jsonl=train.jsonl [--config.data.eval_jsonl=..]
At the end the model is exported to `run_dir/hf` (HF safetensors + tokenizer); the next stage
takes it with --config.model=runs/sft/hf.

Variants: "" (the default), "tiny" (tiny-random on tests/data/sft_toy.jsonl, seconds).
"""
import os

from ml_collections import ConfigDict

from r1jax.configs import common
from r1jax.data.sft_data import default_sft_data_config
from r1jax.kernels.logprob import default_config as kernels_config

# Small example data of the test suite (present in a checkout).
TEST_DATA = os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..", "tests", "data")


def get_config(variant: str = "") -> ConfigDict:
  c = common.base("sft", run_dir="runs/sft", steps=20)
  # Optimizer steps; 0 = num_epochs passes over the train split.
  c.num_epochs = 0.0
  common.add_model(c)
  common.add_parallel(c)

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
  c.optim = common.optim(learning_rate=2e-5, warmup_steps=3)

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

  c.checkpoint = common.checkpoint(every_steps=10)
  c.export = ConfigDict()
  # Write run_dir/hf (HF safetensors + tokenizer) at the end, for the next stage's `model`.
  c.export.hf = True
  c.export.dtype = "float32"
  c.log = common.log(plot=True)
  return common.select_variant(c, variant, {"tiny": tiny}, "configs/sft.py")


def tiny(c: ConfigDict) -> None:
  """A tiny random model on toy data, for tests and smoke runs (well under a second a step).

  Trains on tests/data/sft_toy.jsonl, a few short memorisable question/answer pairs, in the
  "raw" format (no chat-template system prompt: 4x fewer tokens than "chat" for these).
  """
  c.model = "tiny-random"
  c.run_dir = "runs/tiny_sft"
  c.data.source = "jsonl"
  c.data.train_jsonl = os.path.normpath(os.path.join(TEST_DATA, "sft_toy.jsonl"))
  c.data.eval_size = 2
  c.data.format = "raw"
  c.data.seq_len = 32
  c.steps = 6
  # 8 rows: one per device on 8 fake test devices.
  c.train.batch_size = 8
  c.train.micro_batch_size = 8
  c.kernels.logprob_chunk_size = 64
  c.optim.learning_rate = 1e-2
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"
  c.eval.every_steps = 3
  c.eval.batch_size = 8
  c.checkpoint.every_steps = 3
  c.log.plot = False
