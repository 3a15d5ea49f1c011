"""Stage `reward_model`: a scalar reward model trained on preference pairs (R1 stage 4 inputs).

R1's all-scenario RL (R1_SPEC sections 1 and 3) scores general prompts with preference reward
models (helpfulness on the summary, harmlessness on the whole response). This stage trains
one: the decoder (initialised from `model`: a default model, an HF directory, or tiny-random)
with a scalar head on the last real token (r1jax.models.reward_model), on JSONL pairs
{"prompt", "chosen", "rejected"} (r1jax.data.preference_data), with the Bradley-Terry loss
-log sigmoid(r_chosen - r_rejected) (r1jax.losses.preference; global denominator = real pairs
of the batch, so micro-batch accumulation is exact). Held-out loss and accuracy (fraction
with r_chosen > r_rejected) every N steps; orbax checkpoints with the data position (exact
resume, SIGTERM-safe). At the end the model is saved to `run_dir/reward_model` (params
safetensors + config + tokenizer), which the all-scenario RL config takes as
`--config.rewards.helpfulness_rm=<run_dir>/reward_model` (or harmlessness_rm).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
from absl import logging
from ml_collections import ConfigDict

from r1jax import sharding as shd
from r1jax.data.preference_data import PreferenceData
from r1jax.losses import preference as pref_lib
from r1jax.models import reward_model as rm_lib
from r1jax.stages.grpo import load_policy
from r1jax.train import trainer as trainer_lib
from r1jax.train.metrics import MetricsWriter, ProgressBar

RM_DIR = "reward_model"


def validate_config(config) -> None:
  """Reject bad values before any compute.

  Raises:
    ValueError: with the offending key and value.
  """
  t = config.train
  if t.batch_size < 1:
    raise ValueError(f"train.batch_size must be >= 1, got {t.batch_size}")
  if t.micro_batch_size < 1 or t.batch_size % t.micro_batch_size:
    raise ValueError(f"train.micro_batch_size={t.micro_batch_size} must divide "
                     f"train.batch_size={t.batch_size}")
  if t.center_coef < 0:
    raise ValueError(f"train.center_coef must be >= 0, got {t.center_coef}")
  if config.steps < 0:
    raise ValueError(f"steps must be >= 0, got {config.steps}")
  if config.steps == 0 and config.num_epochs <= 0:
    raise ValueError(f"set steps > 0 or num_epochs > 0 (got steps={config.steps}, "
                     f"num_epochs={config.num_epochs})")
  if config.eval.batch_size < 1:
    raise ValueError(f"eval.batch_size must be >= 1, got {config.eval.batch_size}")
  if config.data.seq_len < 2:
    raise ValueError(f"data.seq_len must be >= 2, got {config.data.seq_len}")
  from r1jax.data import preference_data as pd
  for key, allowed in (("source", pd.SOURCES), ("format", pd.FORMATS),
                       ("overlong", pd.OVERLONG), ("on_error", ("raise", "skip"))):
    if config.data[key] not in allowed:
      raise ValueError(f"data.{key} must be one of {allowed}, got {config.data[key]!r}")
  shd.config_rules(config)


def _optim(config, steps: int):
  o = config.optim.to_dict()
  o["decay_steps"] = max(steps, 1)
  return ConfigDict(o)


def make_eval_fn(loss_fn):
  """Jitted (params, batch) -> (sum of pair NLL, pairs ranked right, pairs)."""
  def ev(params, batch):
    _, m = loss_fn(params, batch, 1.0)
    return m["bt_loss"], m["accuracy"], batch["weight"].sum()
  return jax.jit(ev)


def evaluate(eval_fn, params, batches, shard) -> dict[str, float]:
  """Held-out mean Bradley-Terry loss and accuracy (exact: sums, then one division)."""
  loss, correct, count = 0.0, 0.0, 0.0
  for b in batches:
    s, c, n = jax.device_get(eval_fn(params, shard(b)))
    loss, correct, count = loss + float(s), correct + float(c), count + float(n)
  return {"loss": loss / max(count, 1.0), "accuracy": correct / max(count, 1.0), "pairs": count}


def run(config) -> dict[str, Any]:
  """Train a reward model as configured; returns the last step's metrics, the final eval
  metrics and `rm_dir` (the saved model).

  Raises:
    ValueError: bad config, data or checkpoint.
  """
  validate_config(config)
  run_dir = os.path.abspath(config.run_dir)
  os.makedirs(run_dir, exist_ok=True)
  ckpt_dir = os.path.join(run_dir, "checkpoints")
  if not config.resume and os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise ValueError(f"{run_dir} already has checkpoints: pass --config.resume=True to continue "
                     f"that run, or choose another --config.run_dir")
  t_start = time.perf_counter()
  mesh = shd.make_mesh(config.mesh.to_dict())
  rules = shd.config_rules(config)
  t = config.train
  num_micro = t.batch_size // t.micro_batch_size
  div = shd.batch_divisor(mesh, rules)
  if t.micro_batch_size % div:
    raise ValueError(f"train.micro_batch_size={t.micro_batch_size} must be a multiple of the "
                     f"mesh's batch shards ({div})")
  eval_rows = -(-config.eval.batch_size // div) * div

  cfg, decoder_params, tok = load_policy(config)
  if config.data.seq_len > cfg.max_position_embeddings:
    raise ValueError(f"data.seq_len={config.data.seq_len} exceeds the model's context of "
                     f"{cfg.max_position_embeddings} tokens")
  host_params = rm_lib.init_reward_params(cfg, jax.random.key(config.seed + 1), decoder_params)
  del decoder_params
  data = PreferenceData(config.data, tok)
  logging.info("preference data: %s", json.dumps(data.summary()))
  data_iter = data.train_iterator(t.batch_size)
  steps = config.steps or int(round(config.num_epochs * data_iter.batches_per_epoch()))
  optimizer, schedule = trainer_lib.make_optimizer(_optim(config, steps))
  loss_fn = pref_lib.make_loss_fn(cfg, remat=config.remat, center_coef=t.center_coef)
  trainer = trainer_lib.Trainer(mesh, rm_lib.reward_logical_axes(cfg), loss_fn, optimizer,
                                num_micro, rules=rules)
  state = trainer.init_state(host_params)
  del host_params
  eval_fn = make_eval_fn(loss_fn)
  eval_batches = data.eval_batches(eval_rows) if data.eval else []
  checkpointer = trainer_lib.Checkpointer(ckpt_dir, keep=config.checkpoint.keep)
  writer = MetricsWriter(run_dir)
  state, start_step = trainer_lib.resume_run(config, checkpointer, trainer, state, data_iter,
                                             writer)
  writer.write_config(config.to_dict())
  if start_step == 0:
    writer.write(0, {f"data/{k}": v for k, v in data.summary().items()
                     if isinstance(v, (int, float))})
  guard = trainer_lib.PreemptionGuard()
  progress = ProgressBar(steps, initial=start_step,
                         keys=("loss", "accuracy", "eval_accuracy", "step_s"), desc="rm")
  last: dict[str, Any] = {"steps": steps}

  def run_eval(step):
    t0 = time.perf_counter()
    m = evaluate(eval_fn, state.params, eval_batches, trainer.shard_batch)
    m["seconds"] = time.perf_counter() - t0
    writer.write(step, m, prefix="eval/")
    progress.write(f"eval @ step {step}: loss={m['loss']:.4f} accuracy={m['accuracy']:.3f} "
                   f"({int(m['pairs'])} pairs)")
    last.update({f"eval/{k}": v for k, v in m.items()})

  def save(step):
    checkpointer.save(step, state, {"step": step, "seed": config.seed,
                                    "data_state": data_iter.get_state()})

  try:
    if config.eval.at_start and start_step == 0 and eval_batches:
      run_eval(0)
    step = start_step
    while step < steps:
      t0 = time.perf_counter()
      batch = next(data_iter)
      state, m = trainer.update(state, batch, pref_lib.loss_denominator(batch))
      m = jax.device_get(m)
      dt = time.perf_counter() - t0
      step += 1
      metrics = {k: float(v) for k, v in m.items()}
      metrics.update({"lr": float(schedule(step - 1)), "epoch": data_iter.epoch_progress(),
                      "pairs": int(batch["weight"].sum()), "step_s": dt,
                      "pairs_per_s": float(batch["weight"].sum()) / dt})
      shown = dict(metrics)
      if "eval/accuracy" in last:
        shown["eval_accuracy"] = last["eval/accuracy"]  # the latest, for the progress bar
      writer.write(step, metrics)
      progress.update(step, shown)
      last.update(metrics)
      is_last = step == steps
      if is_last or guard.requested or (config.checkpoint.every_steps and
                                        step % config.checkpoint.every_steps == 0):
        save(step)
      if guard.requested:
        logging.warning("stopping at step %d after a signal; resume with --config.resume=True",
                        step)
        break
      if eval_batches and (is_last or (config.eval.every_steps and
                                       step % config.eval.every_steps == 0)):
        run_eval(step)
    finished = step >= steps
    if start_step >= steps and steps > 0:
      logging.info("nothing to do: the checkpoint is already at step %d", start_step)
    if finished:
      out = os.path.join(run_dir, RM_DIR)
      rm_lib.save_reward_model(out, cfg, state.params, tok, fmt=config.data.format,
                               max_len=config.data.seq_len,
                               extra={"step": step, **{k: v for k, v in last.items()
                                                       if k.startswith("eval/")}})
      logging.info("saved the reward model to %s (use --config.rewards.helpfulness_rm=%s or "
                   "harmlessness_rm in all-scenario RL)", out, out)
      last["rm_dir"] = out
  finally:
    guard.restore()
    progress.close()
    writer.close()
    checkpointer.close()
  last["wall_s"] = time.perf_counter() - t_start
  if config.log.plot:
    from r1jax.stages.grpo import _plot
    _plot(run_dir)
  logging.info("done: %s", json.dumps({k: v for k, v in last.items()
                                       if isinstance(v, (int, float))})[:3000])
  return last
