"""Stage `reward_model`: a scalar reward model trained on preference pairs (R1 stage 4 inputs).

R1's all-scenario RL (DeepSeek-R1, section 2.3.4; docs/method.md "Rewards") scores general
prompts with preference reward models (helpfulness on the summary, harmlessness on the whole
response). This stage trains one: the decoder (initialised from `model`, any source of
r1jax.models.load) with a scalar head on the last real token (r1jax.models.reward_model), on
JSONL pairs {"prompt", "chosen", "rejected"} (r1jax.data.preference_data), with the
Bradley-Terry loss -log sigmoid(r_chosen - r_rejected) (r1jax.losses.preference; the
denominator counts the real pairs of the global batch, each process trains on its block of
pairs, so micro-batches and processes add up exactly). Held-out loss and accuracy (fraction
with r_chosen > r_rejected) every N steps; resume, checkpoints and the collective stop come
from r1jax.train.loop. At the end the model is saved to `run_dir/reward_model` (params
safetensors + config + tokenizer), which the all-scenario RL config takes as
`--config.rewards.helpfulness_rm=<run_dir>/reward_model` (or harmlessness_rm).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
from absl import logging

from r1jax import sharding as shd
from r1jax.data import preference_data as pd
from r1jax.losses import preference as pref_lib
from r1jax.models import reward_model as rm_lib
from r1jax.train import loop
from r1jax.train import settings as settings_lib
from r1jax.train import trainer as trainer_lib

RM_DIR = "reward_model"


@dataclasses.dataclass(frozen=True)
class Settings:
  """The validated settings of a reward-model run (built once by validate_config)."""
  model: settings_lib.ModelSettings
  parallel: settings_lib.ParallelSettings


def validate_config(config) -> Settings:
  """Check every value and build the typed settings, before any compute.

  Raises:
    ValueError: with the offending key and value.
  """
  settings_lib.check_supervised(config)
  if config.train.center_coef < 0:
    raise ValueError(f"train.center_coef must be >= 0, got {config.train.center_coef}")
  for key, allowed in (("source", pd.SOURCES), ("format", pd.FORMATS),
                       ("overlong", pd.OVERLONG), ("on_error", ("raise", "skip"))):
    if config.data[key] not in allowed:
      raise ValueError(f"data.{key} must be one of {allowed}, got {config.data[key]!r}")
  return Settings(settings_lib.ModelSettings.from_config(config),
                  settings_lib.ParallelSettings.from_config(config))


def make_eval_fn(loss_fn):
  """Jitted (params, batch) -> (sum of pair NLL, pairs ranked right, pairs)."""
  def ev(params, batch):
    _, m = loss_fn(params, batch, 1.0)
    return m["bt_loss"], m["accuracy"], batch["weight"].sum()
  return jax.jit(ev)


def evaluate(eval_fn, params, batches, shard) -> dict[str, float]:
  """Held-out mean Bradley-Terry loss and accuracy (exact: sums, then one division).
  `batches` are global host batches; `shard` places this process's rows."""
  loss, correct, count = 0.0, 0.0, 0.0
  for b in batches:
    s, c, n = jax.device_get(eval_fn(params, shard(trainer_lib.process_rows(b))))
    loss, correct, count = loss + float(s), correct + float(c), count + float(n)
  return {"loss": loss / max(count, 1.0), "accuracy": correct / max(count, 1.0), "pairs": count}


def run(config) -> dict[str, Any]:
  """Train a reward model as configured; returns the last step's metrics, the final eval
  metrics and `rm_dir` (the saved model).

  Raises:
    ValueError: bad config, data or checkpoint.
  """
  s = validate_config(config)
  loop.prepare_run_dir(config.run_dir, loop.parse_resume(config.resume))
  mesh = s.parallel.mesh()
  rules = s.parallel.train_rules
  t = config.train
  div = shd.batch_divisor(mesh, rules)
  num_micro = settings_lib.check_batch_split(t.batch_size, t.micro_batch_size, div,
                                             batch_key="train.batch_size",
                                             micro_key="train.micro_batch_size", what="pairs")
  eval_rows = -(-config.eval.batch_size // div) * div

  loaded = s.model.load()
  cfg, tok = loaded.config, loaded.tokenizer
  if config.data.seq_len > cfg.max_position_embeddings:
    raise ValueError(f"data.seq_len={config.data.seq_len} exceeds the model's context of "
                     f"{cfg.max_position_embeddings} tokens")
  host_params = rm_lib.init_reward_params(cfg, jax.random.key(config.seed + 1), loaded.params)
  del loaded
  data = pd.PreferenceData(config.data, tok)
  logging.info("preference data: %s", json.dumps(data.summary()))
  data_iter = data.train_iterator(t.batch_size)
  steps = config.steps or int(round(config.num_epochs * data_iter.batches_per_epoch()))
  optimizer, schedule = trainer_lib.make_optimizer(
      settings_lib.optimizer_config(config, decay_steps=steps))
  loss_fn = pref_lib.make_loss_fn(cfg, remat=config.remat, center_coef=t.center_coef)
  trainer = trainer_lib.Trainer(mesh, rm_lib.reward_logical_axes(cfg), loss_fn, optimizer,
                                num_micro, rules=rules)
  state = trainer.init_state(host_params)
  del host_params
  eval_fn = make_eval_fn(loss_fn)
  eval_batches = data.eval_batches(eval_rows) if data.eval else []

  def step_fn(state, step):
    t0 = time.perf_counter()
    batch = next(data_iter)  # the global batch: the same on every process
    state, m = trainer.update(state, trainer_lib.process_rows(batch),
                              pref_lib.loss_denominator(batch))
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    dt = time.perf_counter() - t0
    pairs = float(batch["weight"].sum())
    m.update({"lr": float(schedule(step)), "epoch": data_iter.epoch_progress(),
              "pairs": int(pairs), "step_s": dt, "pairs_per_s": pairs / dt})
    return state, m, None

  def evaluate_hook(state, step):
    return evaluate(eval_fn, state.params, eval_batches, trainer.shard_batch), []

  def save_model(state, step, result):
    out = os.path.join(os.path.abspath(config.run_dir), RM_DIR)
    params = loop.host_params(state.params)
    if jax.process_index() == 0:
      rm_lib.save_reward_model(out, cfg, params, tok, fmt=config.data.format,
                               max_len=config.data.seq_len,
                               extra={"step": step, **{k: v for k, v in result.items()
                                                       if k.startswith("eval/")}})
      logging.info("saved the reward model to %s (use --config.rewards.helpfulness_rm=%s or "
                   "harmlessness_rm in all-scenario RL)", out, out)
    return {"rm_dir": out}

  settings = loop.LoopSettings.from_config(
      config, steps=steps, desc="rm", progress_keys=("loss", "accuracy", "eval_accuracy",
                                                     "step_s"))
  first = {f"data/{k}": v for k, v in data.summary().items() if isinstance(v, (int, float))}
  _, result = loop.run(settings, trainer=trainer, state=state, data=data_iter, step_fn=step_fn,
                       evaluate=evaluate_hook if eval_batches else None, finish=save_model,
                       config=config, first_metrics=first)
  return result
