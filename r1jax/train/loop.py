"""The one training loop of the stages (grpo, sft, reward_model, distillation).

A stage supplies a step function and optional hooks; the loop owns everything around them:

  state, result = loop.run(settings, trainer=trainer, state=state, data=data_iter,
                    step_fn=step, evaluate=evaluate, samples=samples, finish=export,
                    config=config)

  * resume: `settings.resume` False (a run_dir with checkpoints is an error), True (continue
    from the latest checkpoint; none is an error) or "auto" (continue when there is one);
    the state, the data position (`data.get_state()` / `set_state`) and the metrics files
    are rolled back to the checkpoint, and the seed must match;
  * every-N actions: checkpoint (`checkpoint_every`, at the end and on a signal), held-out
    evaluation (`eval_every`, at the start and at the end), sample completions
    (`samples_every`), the curves PNG at the end (`plot`);
  * the collective stop: `PreemptionGuard.should_stop()` on every process after every step,
    so all processes save the same step and stop together;
  * process-0 writing: metrics.jsonl, samples, config.json, TensorBoard, the optional
    experiment trackers (Weights & Biases, MLflow: `log.wandb_project`,
    `log.mlflow_experiment`) and the progress bar on process 0 only;
  * stage state: `stage_state.get_state()` (JSON-able; e.g. GRPO's pending async rollout) is
    saved in every checkpoint and given back to `stage_state.set_state` on resume, after the
    data iterator's state;
  * finite updates: a step whose metrics report `update_skipped` > 0 (Trainer.update kept the
    state after a non-finite loss or gradient) is logged with its step and counted
    (`skipped_updates`); after `max_skipped_steps` such steps in a row the run stops with
    NonFiniteUpdateError, and its last checkpoint is the last good state.

Hooks (all called on every process, in the same order):
  step_fn(state, step) -> (state, metrics, payload): one training step; `step` = steps done
    before it; metrics are host scalars; payload is passed to `samples`.
  evaluate(state, step) -> (metrics, samples): held-out evaluation.
  samples(payload) -> list of sample dicts for samples.jsonl.
  finish(state, step, result) -> dict: outputs of a finished run (an export), merged into the
    result; `result` holds the metrics so far (the final evaluation's as "eval/<key>").
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Optional, Union

import jax
import numpy as np
from absl import logging

from r1jax.train import trainer as trainer_lib
from r1jax.train.metrics import MetricsWriter, ProgressBar, make_trackers

CHECKPOINT_DIR = "checkpoints"
Resume = Union[bool, str]


class NonFiniteUpdateError(RuntimeError):
  """Too many consecutive steps had a non-finite loss or gradient (their updates were
  skipped); the run's last checkpoint holds the last good state."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """What the loop does around the steps (built once from a stage config).

  Attributes:
    run_dir: metrics, samples, plots and checkpoints/ go here.
    steps: total steps of the run (the loop resumes at the checkpoint's step).
    seed: stored in checkpoints; a resume with another seed is an error.
    resume: False | True | "auto" (see the module docstring).
    checkpoint_every, checkpoint_keep: save every N steps (0 = only at the end / on a
      signal); keep the newest `keep`.
    eval_every: evaluate every N steps (0 = only at the end); eval_at_start: also at step 0.
    samples_every: write samples every N steps (0 = never).
    plot: draw run_dir/curves.png at the end (process 0).
    max_skipped_steps: consecutive steps with a skipped (non-finite) update before the run
      stops with NonFiniteUpdateError (0 = never stop).
    desc, progress_keys: progress bar label and the metrics it shows ("eval_" + key shows
      the latest evaluation's value).
    trackers: experiment trackers as (kind, options) pairs, e.g. ("wandb", (("project",
      "r1"), ("entity", ""))) (see r1jax.train.metrics.make_trackers); () = none.
  """
  run_dir: str
  steps: int
  seed: int = 0
  resume: Resume = False
  checkpoint_every: int = 0
  checkpoint_keep: int = 2
  eval_every: int = 0
  eval_at_start: bool = False
  samples_every: int = 0
  plot: bool = False
  max_skipped_steps: int = 3
  desc: str = "train"
  progress_keys: tuple[str, ...] = ("loss", "step_s")
  trackers: tuple = ()

  def __post_init__(self):
    if self.resume not in (True, False, "auto"):
      raise ValueError(f"resume must be True, False or 'auto', got {self.resume!r}")
    for key in ("steps", "checkpoint_every", "eval_every", "samples_every", "max_skipped_steps"):
      if getattr(self, key) < 0:
        raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
    if self.checkpoint_keep < 1:
      raise ValueError(f"checkpoint.keep must be >= 1, got {self.checkpoint_keep}")

  @classmethod
  def from_config(cls, config, *, steps: Optional[int] = None, **overrides) -> "LoopSettings":
    """Settings from the shared blocks of a stage config (run_dir, steps, seed, resume,
    checkpoint, eval, log, optim.max_skipped_steps); `overrides` win."""
    log = config.get("log") or {}
    ev = config.get("eval") or {}
    kw = dict(run_dir=os.path.abspath(config.run_dir),
              steps=int(config.steps if steps is None else steps), seed=int(config.seed),
              resume=parse_resume(config.resume),
              checkpoint_every=int(config.checkpoint.every_steps),
              checkpoint_keep=int(config.checkpoint.keep),
              eval_every=int(ev.get("every_steps", 0)), eval_at_start=bool(ev.get("at_start", False)),
              samples_every=int(log.get("samples_every", 0)), plot=bool(log.get("plot", False)),
              max_skipped_steps=int(config.optim.get("max_skipped_steps", 3)),
              trackers=tracker_settings(log))
    kw.update(overrides)
    return cls(**kw)


def tracker_settings(log) -> tuple:
  """The experiment trackers a `log` config block asks for, as LoopSettings.trackers."""
  out = []
  if log.get("wandb_project"):
    out.append(("wandb", (("project", str(log.wandb_project)),
                          ("entity", str(log.get("wandb_entity", "") or "")))))
  if log.get("mlflow_experiment"):
    out.append(("mlflow", (("experiment", str(log.mlflow_experiment)),
                           ("tracking_uri", str(log.get("mlflow_tracking_uri", "") or "")))))
  return tuple(out)


def parse_resume(value) -> Resume:
  """The `resume` config value as False | True | "auto" (strings from the command line too).

  Raises:
    ValueError: any other value.
  """
  if isinstance(value, str):
    v = value.strip().lower()
    table = {"false": False, "no": False, "0": False, "": False, "true": True, "yes": True,
             "1": True, "auto": "auto"}
    if v in table:
      return table[v]
  elif value in (True, False):
    return bool(value)
  raise ValueError(f"resume must be True, False or auto, got {value!r}")


def prepare_run_dir(run_dir: str, resume: Resume) -> str:
  """Create run_dir (checking that it is writable), refuse to overwrite a run, and refuse
  resume=True without a checkpoint (before any model is loaded).

  Returns the checkpoint directory.

  Raises:
    PermissionError: run_dir cannot be created or written.
    ValueError: it holds checkpoints and resume is False.
    FileNotFoundError: resume is True and it holds no checkpoint.
  """
  try:
    os.makedirs(run_dir, exist_ok=True)
  except OSError as e:
    raise PermissionError(f"run_dir {run_dir} cannot be created: {e.strerror or e}") from e
  if not os.access(run_dir, os.W_OK | os.X_OK):
    raise PermissionError(f"run_dir {run_dir} is not writable")
  ckpt_dir = os.path.join(run_dir, CHECKPOINT_DIR)
  if not resume and os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise ValueError(f"run_dir {run_dir} already has checkpoints: pass "
                          f"--config.resume=True to continue that run, or choose another "
                          f"--config.run_dir")
  return ckpt_dir


class NullWriter:
  """Stands in for MetricsWriter on processes other than 0 (they write no run files)."""

  def __getattr__(self, name):
    return lambda *args, **kwargs: {}


def resume_state(settings: LoopSettings, checkpointer: trainer_lib.Checkpointer,
                 trainer: trainer_lib.Trainer, state, data, writer,
                 stage_state=None) -> tuple[Any, int]:
  """(state, start step) after the resume policy of `settings` (see the module docstring).

  Raises:
    FileNotFoundError: resume=True and there is no checkpoint.
    ValueError: the checkpoint was made with another seed, or does not match the model.
  """
  if not settings.resume:
    return state, 0
  if checkpointer.latest_step() is None:
    if settings.resume is True:
      raise FileNotFoundError(f"resume=True but {checkpointer.directory} has no checkpoint "
                              f"(use --config.resume=auto to start fresh when there is none)")
    logging.info("resume=auto: no checkpoint in %s, starting fresh", checkpointer.directory)
    return state, 0
  state, extra = checkpointer.restore(trainer.abstract_state(state))
  if extra.get("seed") != settings.seed:
    raise ValueError(f"checkpoint was made with seed={extra.get('seed')}, config has "
                     f"seed={settings.seed}")
  data.set_state(extra["data_state"])
  if stage_state is not None:
    stage_state.set_state(extra.get("stage_state") or {})
  start = int(extra["step"])
  writer.truncate_after(start)
  logging.info("resumed from step %d", start)
  return state, start


def _fmt(metrics: dict) -> str:
  return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                   if isinstance(v, (int, float)) and k != "seconds")


def run(settings: LoopSettings, *, trainer: trainer_lib.Trainer, state, data,
        step_fn: Callable, evaluate: Optional[Callable] = None,
        samples: Optional[Callable] = None, finish: Optional[Callable] = None,
        config: Any = None, first_metrics: Optional[dict] = None,
        stage_state: Any = None) -> tuple[Any, dict[str, Any]]:
  """Run steps [start, settings.steps) with the hooks (see the module docstring).

  Args:
    settings: LoopSettings.
    trainer: the stage's Trainer (for checkpoint shardings).
    state: the initial TrainState (replaced by the checkpoint's on resume).
    data: the train iterator (get_state / set_state).
    step_fn, evaluate, samples, finish: the hooks.
    config: written to run_dir/config.json.
    first_metrics: logged at step 0 of a fresh run (e.g. data counts).
    stage_state: optional object with get_state() -> JSON-able dict and set_state(dict),
      saved with each checkpoint (every process calls get_state: it may be a collective).

  Returns:
    (final TrainState, result): the last step's metrics, the latest evaluation's as
    "eval/<key>", "steps", "step", "finished", "skipped_updates", "wall_s" and `finish`'s
    outputs.

  Raises:
    NonFiniteUpdateError: max_skipped_steps consecutive skipped updates.
    FileNotFoundError / PermissionError / ValueError: see
      prepare_run_dir and resume_state.
  """
  t_start = time.perf_counter()
  is_main = jax.process_index() == 0
  ckpt_dir = prepare_run_dir(settings.run_dir, settings.resume)
  checkpointer = trainer_lib.Checkpointer(ckpt_dir, keep=settings.checkpoint_keep)
  writer = (MetricsWriter(settings.run_dir, trackers=make_trackers(settings.trackers,
                                                                    settings.run_dir))
            if is_main else NullWriter())
  guard = progress = None
  last: dict[str, Any] = {"steps": settings.steps}
  try:
    state, start = resume_state(settings, checkpointer, trainer, state, data, writer,
                                stage_state)
    if config is not None:
      writer.write_config(config.to_dict() if hasattr(config, "to_dict") else config)
    if first_metrics and start == 0:
      writer.write(0, first_metrics)
    guard = trainer_lib.PreemptionGuard()
    progress = ProgressBar(settings.steps, initial=start, keys=settings.progress_keys,
                           desc=settings.desc, disable=not is_main)
    evals: dict[str, Any] = {}

    def run_eval(step):
      t0 = time.perf_counter()
      m, eval_samples = evaluate(state, step)
      m = dict(m, seconds=time.perf_counter() - t0)
      writer.write(step, m, prefix="eval/")
      if eval_samples:
        writer.write_samples(step, eval_samples)
      if is_main:
        progress.write(f"eval @ step {step}: {_fmt(m)}")
      evals.update(m)
      last.update({f"eval/{k}": v for k, v in m.items()})

    def save(step):
      extra = {"step": step, "seed": settings.seed, "data_state": data.get_state()}
      if stage_state is not None:
        extra["stage_state"] = stage_state.get_state()
      checkpointer.save(step, state, extra)

    if evaluate is not None and settings.eval_at_start and start == 0:
      run_eval(0)
    step, in_a_row, skipped = start, 0, 0
    while step < settings.steps:
      t0 = time.perf_counter()
      state, metrics, payload = step_fn(state, step)
      step += 1
      metrics = dict(metrics)
      metrics.setdefault("step_s", time.perf_counter() - t0)
      bad = float(metrics.get("update_skipped", 0.0)) > 0
      in_a_row = in_a_row + 1 if bad else 0
      skipped += int(bad)
      if bad:
        logging.warning("step %d: non-finite loss or gradient (loss=%s, grad_norm=%s): update "
                        "skipped, params and optimizer state unchanged (%d in a row)", step,
                        metrics.get("loss"), metrics.get("grad_norm"), in_a_row)
      metrics["skipped_updates"] = skipped
      writer.write(step, metrics)
      progress.update(step, {**metrics, **{f"eval_{k}": v for k, v in evals.items()}})
      last.update(metrics)
      if settings.max_skipped_steps and in_a_row >= settings.max_skipped_steps:
        raise NonFiniteUpdateError(
            f"{in_a_row} consecutive steps up to step {step} had a non-finite loss or gradient "
            f"(updates skipped); the last good checkpoint is step "
            f"{checkpointer.latest_step()} in {ckpt_dir}")
      if samples is not None and settings.samples_every and step % settings.samples_every == 0:
        writer.write_samples(step, samples(payload))
      is_last = step == settings.steps
      stop = guard.should_stop()  # a collective: every process stops (and saves) together
      # Save before evaluating: after a SIGTERM the grace period may not cover an eval.
      if is_last or stop or (settings.checkpoint_every and not bad
                             and step % settings.checkpoint_every == 0):
        save(step)
      if stop:
        logging.warning("stopping at step %d after a signal; resume with --config.resume=True",
                        step)
        break
      if evaluate is not None and (is_last or (settings.eval_every and
                                               step % settings.eval_every == 0)):
        run_eval(step)
    if start >= settings.steps and settings.steps > 0:
      logging.info("nothing to do: the checkpoint is already at step %d", start)
    finished = step >= settings.steps
    last.update(step=step, finished=finished, skipped_updates=skipped)
    if finished and finish is not None:
      last.update(finish(state, step, dict(last)) or {})
  finally:
    if guard is not None:
      guard.restore()
    if progress is not None:
      progress.close()
    writer.close()
    checkpointer.close()
  last["wall_s"] = time.perf_counter() - t_start
  if settings.plot and is_main:
    from r1jax.train import plots
    plots.plot_run_dir(settings.run_dir)
  logging.info("done: %s", json.dumps({k: v for k, v in last.items()
                                       if isinstance(v, (int, float))})[:3000])
  return state, last


def host_params(params):
  """A param tree as host NumPy arrays on every process (gathers shards across processes)."""
  if jax.process_count() == 1:
    return jax.device_get(params)
  from jax.experimental import multihost_utils
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(params, tiled=True))
