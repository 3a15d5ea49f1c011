"""Evaluation as the R1 paper reports it: pass@1 from n samples, pass@k, cons@n (stage `eval`).

python -m r1jax.main --config=configs/eval.py                                  # default model
python -m r1jax.main --config=configs/eval.py --config.model=runs/grpo         # a GRPO run
python -m r1jax.main --config=configs/eval.py --config.datasets=/data/math500.jsonl \\
    --config.template=chat_r1 --config.sampling.max_new_tokens=4096

JSONL datasets: one record per line, {"prompt": question, "answer": final answer, ...}
(MATH-500 / AIME layout: `problem`/`solution` files need their final answer extracted
into "answer" first).
"""
from ml_collections import ConfigDict

from r1jax.configs import common


def get_config() -> ConfigDict:
  c = common.base("eval", run_dir="runs/eval")
  del c.steps, c.resume
  common.add_model(c, remat=None)
  # With a training run directory as `model`: its checkpoint step (-1 = the latest).
  c.checkpoint_step = -1
  common.add_parallel(c)
  # Comma-separated: heldout (the GRPO held-out split of `data`), champ (270 competition
  # problems of champ-dataset, the answer-checkable ones), or .jsonl paths.
  c.datasets = "heldout,champ"
  # The held-out split's settings: the same defaults as configs/grpo.py.
  c.data = common.heldout_data()
  # Prompt template for every dataset.
  c.template = "r1_zero_1shot"
  # n: samples per problem; pass@k is reported for each k in pass_k (k <= n); cons@n too.
  c.num_samples = 8
  c.pass_k = "1,8"
  # The R1 paper's evaluation settings: temperature 0.6, top-p 0.95.
  c.sampling = common.sampling(temperature=0.6)
  # Problems per sampler call (each prefilled once for its n samples).
  c.batch_size = 16
  # A helpfulness reward model directory (the reward_model stage's output) scoring the
  # samples of general prompts (kind "general") on their summary; "" = judge only.
  c.reward_model = ""
  c.rm_batch_size = 16
  c.reward_workers = 2
  c.reward_timeout_s = 10.0
  return c
