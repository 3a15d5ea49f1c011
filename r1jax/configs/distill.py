"""R1-Distill (DeepSeek-R1, section 2.4; docs/method.md "Stages"): SFT of a small student on
teacher samples (stage `sft`).

  python -m r1jax.main --config=configs/distill.py \\
      --config.model=/ckpt/Qwen2.5-Math-1.5B --config.data.train_jsonl=teacher_samples.jsonl
  python -m r1jax.main --config=configs/sft.py:tiny          # the teacher: runs/tiny_sft/hf
  python -m r1jax.main --config=configs/distill.py:tiny      # tiny logit distillation

What R1 did: the students are SFT'd on the ~800k samples of stage 3 (rejection sampling from
the RL checkpoint + non-reasoning data), with no RL on the students. `data.train_jsonl` is
that JSONL: {"prompt", "response"} or {"messages"} records, as the rejection-sampling stage
writes them (default: runs/rejection_sampling/train.jsonl). `model` is the student.

Optional logit distillation (a student sharing the teacher's tokenizer): set
`--config.distill.teacher=<teacher model source>` to train on
(1 - alpha) * NLL + alpha * T^2 * KL_T(teacher || student) (r1jax/losses/distill.py).
At the end the student is exported to `run_dir/hf`.

Variants: "" (the default), "tiny" (a smaller tiny-random student of runs/tiny_sft/hf with
alpha = 0.5, T = 2).
"""
from r1jax.configs import common, sft

# Where the rejection-sampling stage writes its SFT set.
TEACHER_SAMPLES = "runs/rejection_sampling/train.jsonl"


def get_config(variant: str = ""):
  if variant:
    # Variants start from the same variant of the SFT config.
    return common.select_variant(sft.get_config(variant if variant in VARIANTS else ""),
                                 variant, VARIANTS, "configs/distill.py")
  c = sft.get_config()
  c.run_dir = "runs/distill"
  # The student.
  c.model = "smollm2-135m-instruct"
  c.data.source = "jsonl"
  c.data.train_jsonl = TEACHER_SAMPLES
  c.data.eval_size = 16
  c.data.seq_len = 1024
  # R1 fine-tunes the students for 2 epochs over the samples.
  c.steps = 0
  c.num_epochs = 2.0
  c.train.batch_size = 4
  c.train.micro_batch_size = 1
  c.optim.learning_rate = 1e-5
  c.eval.every_steps = 0
  c.checkpoint.every_steps = 100
  # Logit distillation off: plain SFT on the teacher's samples.
  c.distill.teacher = ""
  return c


def tiny(c):
  """The tiny SFT config with a smaller student (same tokenizer, hence vocabulary, as the
  teacher runs/tiny_sft/hf), trained on the toy data with alpha = 0.5, T = 2."""
  c.run_dir = "runs/tiny_distill"
  c.seed = 1
  c.tiny_model.hidden_size = 32
  c.tiny_model.intermediate_size = 64
  c.tiny_model.num_heads = 2
  c.tiny_model.num_kv_heads = 1
  c.distill.teacher = "runs/tiny_sft/hf"
  c.distill.alpha = 0.5
  c.distill.temperature = 2.0
  c.distill.chunk_size = 64


VARIANTS = {"tiny": tiny}
