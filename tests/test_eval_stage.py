"""Stage `eval`: report figures from the records, and resume after an interruption."""
import json
import os

import jax
import numpy as np
import pytest

from r1jax import configs, models
from r1jax.stages import eval as eval_stage
from r1jax.tokenizer import Tokenizer



def _config(tmp_path, model_dir):
  c = configs.load("eval")
  c.model = str(model_dir)
  c.tokenizer = "smollm2-135m-instruct"
  c.datasets = "heldout"
  c.data.train_size = 50
  c.data.eval_size = 6
  c.num_samples = 4
  c.pass_k = "1,2,4"
  c.sampling.max_new_tokens = 6
  c.sampling.temperature = 1.0
  c.batch_size = 2
  c.reward_workers = 0
  c.run_dir = str(tmp_path / "eval")
  return c


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
  tok = Tokenizer.from_source("smollm2-135m-instruct")
  cfg = models.tiny_config(vocab_size=tok.vocab_size, eos_token_id=tok.eos_id,
                           bos_token_id=tok.bos_id, pad_token_id=tok.pad_id)
  d = tmp_path_factory.mktemp("tiny_hf")
  models.save_pretrained(cfg, models.init_params(cfg, jax.random.key(0)), d)
  return d


def test_summarize_hand_computed():
  recs = [{"correct": [1, 0, 0, 0], "cons_correct": 0.0, "lengths": [2, 4, 6, 8],
           "format_ok": [True, False, False, False], "finished": [True, True, False, True]},
          {"correct": [1, 1, 0, 1], "cons_correct": 1.0, "lengths": [1, 1, 1, 1],
           "format_ok": [True] * 4, "finished": [True] * 4}]
  s = eval_stage.summarize(recs, [1, 2, 4])
  assert s["pass@1"] == pytest.approx((0.25 + 0.75) / 2)
  assert s["pass@2"] == pytest.approx((0.5 + 1.0) / 2)  # 1 - C(3,2)/C(4,2) = 0.5; 1 - 0 = 1
  assert s["pass@4"] == pytest.approx(1.0)
  assert s["cons@4"] == pytest.approx(0.5)
  assert s["response_len_mean"] == pytest.approx(24 / 8)
  assert s["format_rate"] == pytest.approx(5 / 8)
  assert s["truncation_rate"] == pytest.approx(1 / 8)
  # Within-problem gaps: 2 - mean(4, 6, 8) = -4; 1 - 1 = 0.
  assert s["mixed_frac"] == 1.0 and s["len_gap"] == pytest.approx(-2.0)


def test_eval_report_and_resume_after_interruption(tmp_path, tiny_model_dir):
  c = _config(tmp_path, tiny_model_dir)
  full = eval_stage.run(c)
  rec_path = os.path.join(c.run_dir, "records.jsonl")
  lines = open(rec_path).read().splitlines()
  assert len(lines) == 6 and full["overall"]["problems"] == 6
  assert os.path.exists(os.path.join(c.run_dir, "report.md"))
  # Interrupted after the first two batches, with a half-written line.
  with open(rec_path, "w") as f:
    f.write("\n".join(lines[:4]) + "\n" + lines[4][:30])
  before = {r["id"]: r for r in map(json.loads, lines)}
  resumed = eval_stage.run(c)
  assert resumed["overall"] == full["overall"]
  records = [json.loads(l) for l in open(rec_path)]  # every line parses again
  assert len(records) == 6
  # The redone problems got exactly the same samples (keys depend on the problem).
  for r in records:
    assert r["completions"] == before[r["id"]]["completions"]
  assert len({tuple(r["lengths"]) for r in records} | {tuple(map(len, r["completions"]))
                                                       for r in records}) > 1
  # Another evaluation in the same out_dir is refused.
  c.num_samples = 2
  c.pass_k = "1"
  with pytest.raises(ValueError, match="another evaluation"):
    eval_stage.run(c)
