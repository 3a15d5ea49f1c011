"""R1 stage 1, cold-start SFT (DeepSeek-R1, section 2.3.1; docs/method.md "Stages"): SFT on
long-CoT examples in the R1 output format `<think>\\n{reasoning}\\n</think>\\n{summary}`
(|special_token|<reasoning_process>|special_token|<summary> in the paper).

  python -m r1jax.main --config=configs/cold_start_sft.py --config.data.train_jsonl=cold_start.jsonl

Records are {"prompt", "reasoning", "summary"} (formatted with data.r1_format) or
{"prompt", "response"} / {"messages"} already in that format; tools/build_cold_start.py builds
them. The default file is a tiny example set (tests/data/sft_cold_start.jsonl, in a checkout).
The summary should state the final answer in <answer> ... </answer> or \\boxed{}, where the
accuracy reward of the next stage reads it. The result, runs/cold_start_sft/hf, is the
`model` of configs/reasoning_rl.py.
"""
import os

from r1jax.configs import sft


def get_config():
  c = sft.get_config()
  c.run_dir = "runs/cold_start_sft"
  c.data.source = "jsonl"
  c.data.train_jsonl = os.path.normpath(os.path.join(sft.TEST_DATA, "sft_cold_start.jsonl"))
  c.data.eval_size = 2
  # The paper trains the cold start for a couple of epochs over a few thousand examples.
  c.steps = 0
  c.num_epochs = 2.0
  c.data.seq_len = 1024
  c.train.batch_size = 2
  c.train.micro_batch_size = 1
  c.eval.every_steps = 0
  c.checkpoint.every_steps = 50
  return c
