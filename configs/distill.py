"""R1-Distill (R1_SPEC sections 1 and 5): SFT of a small student on teacher samples (stage `sft`).

  python -m r1jax.main --config=configs/distill.py \\
      --config.model=/ckpt/Qwen2.5-Math-1.5B --config.data.train_jsonl=teacher_samples.jsonl

What R1 did: the students are SFT'd on the ~800k samples of stage 3 (rejection sampling from
the RL checkpoint + non-reasoning data), with no RL on the students. `data.train_jsonl` is
that JSONL: {"prompt", "response"} or {"messages"} records, as the rejection-sampling stage
writes them (default: runs/rejection_sampling/samples.jsonl). `model` is the student.

Optional logit distillation (a student sharing the teacher's tokenizer): set
`--config.distill.teacher=<teacher model source>` to train on
(1 - alpha) * NLL + alpha * T^2 * KL_T(teacher || student) (r1jax/losses/distill.py).
At the end the student is exported to `run_dir/hf`.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "r1jax_configs_sft", os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft.py"))
sft = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sft)

# Where the rejection-sampling stage writes its kept samples.
TEACHER_SAMPLES = "runs/rejection_sampling/samples.jsonl"


def get_config():
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
