"""Stage `sft`: supervised fine-tuning on conversations (R1_SPEC sections 1 and 5).

Serves the cold-start SFT of R1 (configs/cold_start_sft.py) and plain SFT (configs/sft.py);
rejection-sampling SFT, RFT and distillation reuse it with other data. One step: a batch of
packed rows (r1jax.data.sft_data) -> Trainer update with the token-mean response NLL
(r1jax.losses.sft, global denominator = response tokens of the batch, so micro-batch
accumulation is exact) -> metrics; the held-out eval loss every N steps; orbax checkpoints
with the data position (resume is exact, SIGTERM-safe). At the end the params are exported
with the tokenizer as a Hugging Face directory `run_dir/hf`, which the next stage takes as
`--config.model=<run_dir>/hf`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
from absl import logging
from ml_collections import ConfigDict

from r1jax import models
from r1jax.kernels import logprob as kernel_lib
from r1jax import sharding as shd
from r1jax.data.sft_data import SFTData
from r1jax.losses import sft as sft_lib
from r1jax.stages.grpo import load_policy
from r1jax.train import trainer as trainer_lib
from r1jax.train.metrics import MetricsWriter, ProgressBar

HF_DIR = "hf"


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
  if config.steps < 0:
    raise ValueError(f"steps must be >= 0, got {config.steps}")
  if config.steps == 0 and config.num_epochs <= 0:
    raise ValueError(f"set steps > 0 or num_epochs > 0 (got steps={config.steps}, "
                     f"num_epochs={config.num_epochs})")
  kernel_lib.kwargs_from_config(config.kernels)
  if config.eval.batch_size < 1:
    raise ValueError(f"eval.batch_size must be >= 1, got {config.eval.batch_size}")
  if config.data.seq_len < 2:
    raise ValueError(f"data.seq_len must be >= 2, got {config.data.seq_len}")
  if config.export.dtype not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"export.dtype must be float32, bfloat16 or float16, got "
                     f"{config.export.dtype!r}")
  d = config.get("distill")
  if d is not None and d.teacher:
    if not 0.0 <= d.alpha <= 1.0:
      raise ValueError(f"distill.alpha must be in [0, 1], got {d.alpha}")
    if not d.temperature > 0:
      raise ValueError(f"distill.temperature must be > 0, got {d.temperature}")
    if d.chunk_size < 1:
      raise ValueError(f"distill.chunk_size must be >= 1, got {d.chunk_size}")


def _optim(config, steps: int):
  o = config.optim.to_dict()
  o["decay_steps"] = max(steps, 1)
  return ConfigDict(o)


def _distill_trainer(config, cfg, mesh, kernel, optimizer, num_micro):
  """A DistillTrainer with the frozen teacher of config.distill (r1jax.losses.distill).

  Raises:
    ValueError: the teacher's vocabulary differs from the student's.
  """
  from r1jax.losses import distill as distill_lib
  d = config.distill
  t_cfg, t_params = models.from_pretrained(d.teacher, dtype=config.dtype,
                                           param_dtype=config.param_dtype)
  distill_lib.check_vocab(cfg, t_cfg)
  logging.info("logit distillation from %s (%.1fM params): alpha=%s, T=%s", d.teacher,
               t_cfg.num_params() / 1e6, d.alpha, d.temperature)
  loss = distill_lib.make_loss_fn(cfg, t_cfg, alpha=d.alpha, temperature=d.temperature,
                                  chunk_size=d.chunk_size, kernel=kernel, remat=config.remat)
  return distill_lib.DistillTrainer(mesh, models.param_logical_axes(cfg), loss, optimizer,
                                    num_micro, teacher_params=t_params,
                                    teacher_axes=models.param_logical_axes(t_cfg))


def make_eval_fn(loss_fn):
  """Jitted (params, batch) -> (sum of response-token NLL, number of response tokens)."""
  def ev(params, batch):
    nll, _ = loss_fn(params, batch, 1.0)
    return nll, batch["loss_mask"].sum()
  return jax.jit(ev)


def evaluate(eval_fn, params, batches, shard) -> dict[str, float]:
  """Token-mean NLL over all eval batches (exact: sums, then one division)."""
  total, count = 0.0, 0.0
  for b in batches:
    s, n = jax.device_get(eval_fn(params, shard(b)))
    total, count = total + float(s), count + float(n)
  return {"loss": total / max(count, 1.0), "tokens": count}


def run(config) -> dict[str, Any]:
  """Run SFT as configured; returns the last step's metrics and the final eval loss.

  Raises:
    ValueError: bad config, data or checkpoint (see validate_config, SFTData, Checkpointer).
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
  t = config.train
  num_micro = t.batch_size // t.micro_batch_size
  if t.micro_batch_size % shd.batch_divisor(mesh):
    raise ValueError(f"train.micro_batch_size={t.micro_batch_size} must be a multiple of the "
                     f"mesh's batch shards ({shd.batch_divisor(mesh)})")
  eval_rows = -(-config.eval.batch_size // shd.batch_divisor(mesh)) * shd.batch_divisor(mesh)

  cfg, host_params, tok = load_policy(config)
  if config.data.seq_len > cfg.max_position_embeddings:
    raise ValueError(f"data.seq_len={config.data.seq_len} exceeds the model's context of "
                     f"{cfg.max_position_embeddings} tokens")
  data = SFTData(config.data, tok)
  logging.info("SFT data: %s", json.dumps(data.summary()))
  data_iter = data.train_iterator(t.batch_size)
  steps = config.steps or int(round(config.num_epochs * data_iter.batches_per_epoch()))
  optimizer, schedule = trainer_lib.make_optimizer(_optim(config, steps))
  kernel = kernel_lib.kwargs_from_config(config.kernels, mesh,
                                         shd.batch_sharding(mesh, 1).spec[0])
  loss_fn = sft_lib.make_loss_fn(cfg, kernel=kernel, remat=config.remat)
  if config.get("distill") is not None and config.distill.teacher:
    # Logit distillation; the eval loss stays the plain NLL (loss_fn).
    trainer = _distill_trainer(config, cfg, mesh, kernel, optimizer, num_micro)
  else:
    trainer = trainer_lib.Trainer(mesh, models.param_logical_axes(cfg), loss_fn, optimizer,
                                  num_micro)
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
                         keys=("loss", "eval_loss", "tokens_per_s", "step_s"), desc="sft")
  last: dict[str, Any] = {"steps": steps}

  def run_eval(step):
    t0 = time.perf_counter()
    m = evaluate(eval_fn, state.params, eval_batches, trainer.shard_batch)
    m["seconds"] = time.perf_counter() - t0
    writer.write(step, m, prefix="eval/")
    progress.write(f"eval @ step {step}: loss={m['loss']:.4f} ({int(m['tokens'])} tokens)")
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
      denom = sft_lib.loss_denominator(batch)
      state, m = trainer.update(state, batch, denom)
      m = jax.device_get(m)
      dt = time.perf_counter() - t0
      step += 1
      real = int((batch["segment_ids"] > 0).sum())
      metrics = {k: float(v) for k, v in m.items()}
      metrics.update({"lr": float(schedule(step - 1)), "epoch": data_iter.epoch_progress(),
                      "response_tokens": int(batch["loss_mask"].sum()), "tokens": real,
                      "examples": int(batch["segment_ids"].max(axis=1).sum()),
                      "packing_efficiency": real / batch["segment_ids"].size,
                      "step_s": dt, "tokens_per_s": real / dt})
      if "eval/loss" in last:
        metrics["eval_loss"] = last["eval/loss"]  # the latest, for the progress bar only
      writer.write(step, {k: v for k, v in metrics.items() if k != "eval_loss"})
      progress.update(step, metrics)
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
    if finished and config.export.hf:
      out = os.path.join(run_dir, HF_DIR)
      models.save_pretrained(cfg, state.params, out, dtype=config.export.dtype)
      tok.save_pretrained(out)
      logging.info("exported the model to %s (use --config.model=%s in the next stage)", out, out)
      last["hf_dir"] = out
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
