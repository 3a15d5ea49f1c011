"""Stage `sft`: supervised fine-tuning on conversations (DeepSeek-R1, sections 2.3.1, 2.3.3
and 2.4; docs/method.md "Stages").

Serves the cold-start SFT of R1 (configs/cold_start_sft.py), plain SFT (configs/sft.py) and
distillation (configs/distill.py: SFT on teacher samples, optionally with the teacher's logits
as a frozen extra input of the update, r1jax.losses.distill). One step: a global batch of
packed rows (r1jax.data.sft_data; each process trains on its block of rows) -> Trainer update
with the token-mean response NLL (r1jax.losses.sft; the denominator counts the response tokens
of the global batch, so micro-batches and processes add up exactly). The loop
(r1jax.train.loop) does resume, eval, checkpoints and the collective stop. At the end the
params are exported with the tokenizer as a Hugging Face directory `run_dir/hf`, which the
next stage takes as `--config.model=<run_dir>/hf`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional

import jax
from absl import logging

from r1jax import models
from r1jax import sharding as shd
from r1jax.data.sft_data import SFTData
from r1jax.kernels import logprob as kernel_lib
from r1jax.losses import sft as sft_lib
from r1jax.train import loop
from r1jax.train import precision
from r1jax.train import settings as settings_lib
from r1jax.train import trainer as trainer_lib

HF_DIR = "hf"


@dataclasses.dataclass(frozen=True)
class Settings:
  """The validated settings of an SFT run (built once by validate_config)."""
  model: settings_lib.ModelSettings
  parallel: settings_lib.ParallelSettings
  teacher: Optional[settings_lib.ModelSettings]


def validate_config(config) -> Settings:
  """Check every value and build the typed settings, before any compute.

  Raises:
    ValueError: with the offending key and value.
  """
  settings_lib.check_supervised(config)
  kernel_lib.kwargs_from_config(config.kernels)
  models.check_dtype(config.export.dtype, "export.dtype")
  teacher = None
  d = config.get("distill")
  if d is not None and d.teacher:
    if not 0.0 <= d.alpha <= 1.0:
      raise ValueError(f"distill.alpha must be in [0, 1], got {d.alpha}")
    if not d.temperature > 0:
      raise ValueError(f"distill.temperature must be > 0, got {d.temperature}")
    settings_lib.check_positive(config, "distill.chunk_size")
  model = settings_lib.ModelSettings.from_config(config)
  if d is not None and d.teacher:
    # The frozen teacher is kept in the compute dtype: it never trains (train/precision).
    teacher = settings_lib.ModelSettings(source=d.teacher, dtype=model.dtype,
                                         param_dtype=model.dtype)
  return Settings(model, settings_lib.ParallelSettings.from_config(config), teacher)


def make_eval_fn(loss_fn):
  """Jitted (params, batch) -> (sum of response-token NLL, number of response tokens)."""
  def ev(params, batch):
    nll, _ = loss_fn(params, batch, 1.0)
    return nll, batch["loss_mask"].sum()
  return jax.jit(ev)


def evaluate(eval_fn, params, batches, shard) -> dict[str, float]:
  """Token-mean NLL over all eval batches (exact: sums, then one division). `batches` are
  global host batches; `shard` places this process's rows (Trainer.shard_batch)."""
  total, count = 0.0, 0.0
  for b in batches:
    s, n = jax.device_get(eval_fn(params, shard(trainer_lib.process_rows(b))))
    total, count = total + float(s), count + float(n)
  return {"loss": total / max(count, 1.0), "tokens": count}


def run(config) -> dict[str, Any]:
  """Run SFT as configured; returns the last step's metrics and the final eval loss.

  Raises:
    ValueError: bad config, data or checkpoint (see validate_config, SFTData, Checkpointer).
  """
  s = validate_config(config)
  loop.prepare_run_dir(config.run_dir, loop.parse_resume(config.resume))
  mesh = s.parallel.mesh()
  rules = s.parallel.train_rules
  t = config.train
  div = shd.batch_divisor(mesh, rules)
  nproc = jax.process_count()
  num_micro = settings_lib.check_batch_split(t.batch_size, t.micro_batch_size, div,
                                             batch_key="train.batch_size",
                                             micro_key="train.micro_batch_size")
  eval_rows = -(-config.eval.batch_size // div) * div
  if t.batch_size % nproc or eval_rows % nproc:
    raise ValueError(f"train.batch_size={t.batch_size} and eval rows ({eval_rows}) must split "
                     f"over {nproc} processes")

  loaded = s.model.load()
  cfg, tok = loaded.config, loaded.tokenizer
  if config.data.seq_len > cfg.max_position_embeddings:
    raise ValueError(f"data.seq_len={config.data.seq_len} exceeds the model's context of "
                     f"{cfg.max_position_embeddings} tokens")
  data = SFTData(config.data, tok)
  logging.info("SFT data: %s", json.dumps(data.summary()))
  data_iter = data.train_iterator(t.batch_size)
  steps = config.steps or int(round(config.num_epochs * data_iter.batches_per_epoch()))
  optimizer, schedule = trainer_lib.make_optimizer(
      settings_lib.optimizer_config(config, decay_steps=steps))
  kernel = kernel_lib.kwargs_from_config(
      config.kernels, mesh, shd.batch_sharding(mesh, 1, rules).spec[0],
      # d W of the fused log-prob is reduce-scattered straight into the head's own layout.
      weight_spec=shd.logical_to_spec(("embed", "vocab"), (cfg.hidden_size, cfg.vocab_size),
                                      mesh, rules))
  # The update computes in cfg.dtype on a copy of the param_dtype masters (train/precision).
  loss_fn = precision.compute_params(sft_lib.make_loss_fn(cfg, kernel=kernel, remat=config.remat),
                                     cfg.dtype)
  logging.info("%s", precision.describe(cfg.dtype, cfg.param_dtype))
  frozen = None
  if s.teacher is not None:
    # Logit distillation: the teacher is a frozen input of the update; the eval loss stays
    # the plain NLL (loss_fn).
    from r1jax.losses import distill as distill_lib
    d = config.distill
    teacher = s.teacher.load(with_tokenizer=False)
    distill_lib.check_vocab(cfg, teacher.config)
    logging.info("logit distillation from %s (%.1fM params): alpha=%s, T=%s", d.teacher,
                 teacher.config.num_params() / 1e6, d.alpha, d.temperature)
    train_loss = precision.compute_params(
        distill_lib.make_loss_fn(cfg, teacher.config, alpha=d.alpha, temperature=d.temperature,
                                 chunk_size=d.chunk_size, kernel=kernel, remat=config.remat),
        cfg.dtype)
    trainer = trainer_lib.Trainer(mesh, models.param_logical_axes(cfg), train_loss, optimizer,
                                  num_micro, rules=rules,
                                  frozen_axes=models.param_logical_axes(teacher.config))
    frozen = trainer.shard_frozen(teacher.params)
    del teacher
  else:
    trainer = trainer_lib.Trainer(mesh, models.param_logical_axes(cfg), loss_fn, optimizer,
                                  num_micro, rules=rules)
  state = trainer.init_state(loaded.params)
  del loaded
  eval_fn = make_eval_fn(loss_fn)
  eval_batches = data.eval_batches(eval_rows) if data.eval else []

  def step_fn(state, step):
    t0 = time.perf_counter()
    batch = next(data_iter)  # the global batch: the same on every process
    denom = sft_lib.loss_denominator(batch)
    state, m = trainer.update(state, trainer_lib.process_rows(batch), denom, frozen)
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    real = int((batch["segment_ids"] > 0).sum())
    m.update({"lr": float(schedule(step)), "epoch": data_iter.epoch_progress(),
              "response_tokens": int(batch["loss_mask"].sum()), "tokens": real,
              "examples": int(batch["segment_ids"].max(axis=1).sum()),
              "packing_efficiency": real / batch["segment_ids"].size,
              "step_s": time.perf_counter() - t0})
    m["tokens_per_s"] = real / m["step_s"]
    return state, m, None

  def evaluate_hook(state, step):
    return evaluate(eval_fn, state.params, eval_batches, trainer.shard_batch), []

  def export(state, step, result):
    if not config.export.hf:
      return {}
    out = os.path.join(os.path.abspath(config.run_dir), HF_DIR)
    params = loop.host_params(state.params)
    if jax.process_index() == 0:
      models.save_pretrained(cfg, params, out, dtype=config.export.dtype)
      tok.save_pretrained(out)
      logging.info("exported the model to %s (use --config.model=%s in the next stage)", out,
                   out)
    return {"hf_dir": out}

  settings = loop.LoopSettings.from_config(config, steps=steps, desc="sft",
                                           progress_keys=("loss", "eval_loss", "tokens_per_s",
                                                          "step_s"))
  first = {f"data/{k}": v for k, v in data.summary().items() if isinstance(v, (int, float))}
  _, result = loop.run(settings, trainer=trainer, state=state, data=data_iter,
                       step_fn=step_fn,
                       evaluate=evaluate_hook if eval_batches else None, finish=export,
                       config=config, first_metrics=first)
  return result

