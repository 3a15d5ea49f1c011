"""Trainer core shared by the stages: sharded state, optax, a jitted update with exact
gradient accumulation, orbax checkpoints with resume, and SIGTERM-safe saving.

A stage supplies `loss_fn(params, micro_batch) -> (loss, metrics)` whose loss and metrics
are *sums* normalised by a global denominator (see r1jax.losses.grpo.loss_weights): the
update adds them over micro-batches, so accumulation is exact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from r1jax import sharding as shd


class TrainState(NamedTuple):
  """params: the policy; opt_state: optax state; step: int32 scalar (updates done)."""
  params: Any
  opt_state: Any
  step: jax.Array


def make_optimizer(cfg) -> tuple[optax.GradientTransformation, Callable[[int], float]]:
  """AdamW with warmup + cosine/constant schedule and global-norm clipping.

  cfg fields: learning_rate, warmup_steps, schedule ("cosine" | "constant"),
  decay_steps, end_lr_factor, weight_decay, b1, b2, eps, max_grad_norm (0 = no clipping).

  Raises:
    ValueError: unknown schedule or non-positive learning rate.
  """
  if cfg.learning_rate <= 0:
    raise ValueError(f"optim.learning_rate must be > 0, got {cfg.learning_rate}")
  warmup = max(int(cfg.warmup_steps), 0)
  if cfg.schedule == "cosine":
    decay = max(int(cfg.decay_steps) - warmup, 1)
    after = optax.cosine_decay_schedule(cfg.learning_rate, decay, alpha=cfg.end_lr_factor)
  elif cfg.schedule == "constant":
    after = optax.constant_schedule(cfg.learning_rate)
  else:
    raise ValueError(f"optim.schedule must be 'cosine' or 'constant', got {cfg.schedule!r}")
  if warmup:
    # Starts at lr / warmup (not 0, which would make the first update a no-op).
    schedule = optax.join_schedules(
        [optax.linear_schedule(cfg.learning_rate / warmup, cfg.learning_rate, warmup), after],
        [warmup])
  else:
    schedule = after
  parts = []
  if cfg.max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay))
  return optax.chain(*parts), schedule


def _split_micro(x: jax.Array, num_micro: int) -> jax.Array:
  """[S, ...] -> [M, S/M, ...] taking rows i, i+M, ... for micro-batch i, so that each
  micro-batch keeps the batch sharding of the data axis."""
  S = x.shape[0]
  return x.reshape(S // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)


def _merge_micro(x: jax.Array) -> jax.Array:
  """Inverse of _split_micro: [M, S/M, ...] -> [S, ...]."""
  return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


class Trainer:
  """Holds the mesh, shardings, optimizer and the jitted update.

  Args:
    mesh: device mesh (r1jax.sharding.make_mesh).
    param_axes: logical axes tree of the params.
    loss_fn: (params, micro_batch dict, denominator) -> (loss, metrics dict of scalars).
    optimizer: optax transformation.
    num_micro_batches: gradient-accumulation steps per update.
    rules: logical-axis -> mesh-axis rules (r1jax.sharding.PRESETS / config_rules) for the
      params, optimizer state and batches.
  """

  def __init__(self, mesh, param_axes, loss_fn, optimizer, num_micro_batches: int = 1,
               rules: Optional[dict] = None):
    self.mesh = mesh
    self.rules = dict(rules if rules is not None else shd.DEFAULT_RULES)
    self.param_axes = param_axes
    self.loss_fn = loss_fn
    self.optimizer = optimizer
    self.num_micro = num_micro_batches
    self._update = None
    self.state_shardings = None

  # ------------------------------------------------------------------ state
  def param_shardings(self, params_shapes):
    return shd.tree_shardings(self.param_axes, params_shapes, self.mesh, self.rules)

  def shard_params(self, params):
    """Place a host/param tree on the mesh according to its logical axes (with several
    processes every process must pass the same values)."""
    return shd.reshard(params, self.param_shardings(params))

  def init_state(self, params) -> TrainState:
    """Sharded TrainState from (already sharded or host) params."""
    params = self.shard_params(params)
    p_sh = self.param_shardings(params)
    opt_shapes = jax.eval_shape(self.optimizer.init, params)
    # Optimizer moments mirror the params; scalars (counts) are replicated.
    opt_sh = optax.tree_map_params(self.optimizer, lambda _, s: s, opt_shapes, p_sh,
                                   transform_non_params=lambda _: shd.replicated(self.mesh))
    opt_sh = jax.tree.map(lambda s: s if isinstance(s, jax.sharding.Sharding)
                          else shd.replicated(self.mesh), opt_sh,
                          is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
    self.state_shardings = TrainState(p_sh, opt_sh, shd.replicated(self.mesh))
    opt_state = jax.jit(self.optimizer.init, out_shardings=opt_sh)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shd.replicated(self.mesh))
    return TrainState(params, opt_state, step)

  def abstract_state(self, state: TrainState):
    """ShapeDtypeStructs with shardings (what orbax restores into)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, self.state_shardings)

  # ------------------------------------------------------------------ update
  def _build_update(self):
    M = self.num_micro
    loss_fn = shd.with_activation_sharding(self.loss_fn, self.mesh, self.rules)
    optimizer = self.optimizer

    def update(state: TrainState, batch: dict, denominator):
      micro = jax.tree.map(lambda x: _split_micro(x, M), batch)
      grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

      def body(acc, mb):
        out = grad_fn(state.params, mb, denominator)
        return jax.tree.map(lambda a, x: a + x.astype(a.dtype), acc, out), None

      mb0 = jax.tree.map(lambda x: x[0], micro)
      shapes = jax.eval_shape(lambda: grad_fn(state.params, mb0, denominator))
      # Accumulate in float32 whatever the param dtype (bf16 sums of micro-batches drift).
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.promote_types(s.dtype, jnp.float32)),
                           shapes)
      ((loss, metrics), grads), _ = jax.lax.scan(body, zeros, micro)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads),
                     update_norm=optax.global_norm(updates))
      return TrainState(params, opt_state, state.step + 1), metrics

    return update

  def _jit_update(self, batch):
    """The jitted update with explicit in/out shardings for this batch structure."""
    batch_shardings = {k: shd.batch_sharding(self.mesh, np.ndim(v), self.rules)
                       for k, v in batch.items()}
    return jax.jit(self._build_update(), donate_argnums=(0,),
                   in_shardings=(self.state_shardings, batch_shardings,
                                 shd.replicated(self.mesh)),
                   out_shardings=(self.state_shardings, shd.replicated(self.mesh)))

  def update(self, state: TrainState, batch: dict[str, np.ndarray], denominator: float):
    """One optimizer step on `batch` (leaves [S, ...], S divisible by num_micro_batches and
    S / num_micro_batches by the batch shards); returns (new state, metrics on device).

    With several processes, host (NumPy) leaves hold this process's rows only (see
    shard_batch); S counts the global rows.

    Raises:
      ValueError: the batch does not split into micro-batches as configured.
    """
    S = self._global_rows(batch)
    div = shd.batch_divisor(self.mesh, self.rules)
    if S % self.num_micro or (S // self.num_micro) % div:
      raise ValueError(f"batch of {S} rows does not split into {self.num_micro} micro-batches "
                       f"that are multiples of the {div} batch shards")
    keys = tuple(sorted(batch))
    if self._update is None or self._update[0] != keys:
      self._update = (keys, self._jit_update(batch))
    batch = self.shard_batch(batch)
    state, metrics = self._update[1](state, batch, jnp.float32(denominator))
    return state, metrics

  @staticmethod
  def _global_rows(batch) -> int:
    x = next(iter(batch.values()))
    if isinstance(x, jax.Array):
      return x.shape[0]
    return len(x) * jax.process_count()

  def shard_batch(self, batch: dict[str, Any]):
    """Batch leaves as global arrays with the batch sharding.

    Host leaves are this process's rows of the global batch (the whole batch in a
    single-process run); jax.Array leaves are taken as global already and only resharded.
    """
    out = {}
    for k, v in batch.items():
      sh = shd.batch_sharding(self.mesh, np.ndim(v), self.rules)
      out[k] = (shd.reshard(v, sh) if isinstance(v, jax.Array)
                else shd.global_batch(np.asarray(v), sh, process_local=True))
    return out

  def memory_analysis(self, state: TrainState, batch: dict[str, np.ndarray],
                      denominator: float) -> dict[str, int]:
    """Per-device bytes of the compiled update for this batch (XLA's memory analysis):
    arguments, outputs, temporaries and their sum `peak_bytes` (an upper bound: donated
    arguments alias outputs). Compiles the update once more; for tools, not the loop."""
    fn = self._jit_update(batch)
    ma = fn.lower(state, self.shard_batch(batch), jnp.float32(denominator)).compile()
    ma = ma.memory_analysis()
    out = {"argument_bytes": int(ma.argument_size_in_bytes),
           "output_bytes": int(ma.output_size_in_bytes),
           "temp_bytes": int(ma.temp_size_in_bytes),
           "alias_bytes": int(getattr(ma, "alias_size_in_bytes", 0))}
    out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                         - out["alias_bytes"])
    return out


# ---------------------------------------------------------------------- checkpoints
class Checkpointer:
  """orbax CheckpointManager for (TrainState, JSON extras: data-iterator state, RNG seed,
  config). Saves are atomic (orbax writes to a temporary directory, then renames), and
  older checkpoints are deleted only after a newer one is complete (keep-N)."""

  def __init__(self, directory: str, *, keep: int = 2):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "extra"))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: TrainState, extra: dict, *, force: bool = True) -> None:
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    extra=ocp.args.JsonSave(extra)),
                      force=force)
    self.manager.wait_until_finished()
    logging.info("saved checkpoint step %d to %s", step, self.directory)

  def restore(self, abstract_state, step: Optional[int] = None) -> tuple[TrainState, dict]:
    """Restore `step` (default latest) into the shardings of `abstract_state`.

    Raises:
      FileNotFoundError: no checkpoint in the directory.
      ValueError: the checkpoint's arrays do not match the model (shape mismatch).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint to resume from in {self.directory}")
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()))
    except (ValueError, KeyError) as e:
      raise ValueError(f"checkpoint {self.directory} step {step} does not match the model/"
                       f"optimizer of this config: {e}") from e
    restored = out["state"]
    for path, a, b in zip(jax.tree_util.tree_flatten_with_path(restored)[0],
                          jax.tree.leaves(restored), jax.tree.leaves(abstract_state)):
      if a.shape != b.shape:
        raise ValueError(f"checkpoint array {jax.tree_util.keystr(path[0])} has shape "
                         f"{a.shape}, the model expects {b.shape}")
    return TrainState(*restored), out["extra"]

  def close(self):
    self.manager.close()


class PreemptionGuard:
  """Turns SIGTERM/SIGINT into a flag the training loop checks after each step, so the
  loop can save a checkpoint and exit cleanly. A second signal exits at once."""

  def __init__(self):
    self.requested = False
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    if self.requested:
      raise KeyboardInterrupt
    logging.warning("received signal %d: will save a checkpoint and stop after this step", signum)
    self.requested = True

  def should_stop(self) -> bool:
    """Whether any process got a signal. All processes must call it at the same step
    (a collective when there are several): they then save and stop together."""
    if jax.process_count() == 1:
      return self.requested
    return bool(shd.process_allgather(np.asarray([self.requested], np.int32)).any())

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def resume_run(config, checkpointer: Checkpointer, trainer: Trainer, state: TrainState,
               data_iter, writer) -> tuple[TrainState, int]:
  """Continue a run from its latest checkpoint when `config.resume` is set.

  Restores the state into the trainer's shardings, the data iterator's position, and drops
  metrics logged after the checkpoint (they will be written again).

  Args:
    config: stage config (reads `resume`, `seed`).
    checkpointer, trainer, state: the run's; `state` gives the shapes and shardings.
    data_iter: has set_state(); writer: MetricsWriter (truncate_after()).

  Returns:
    (state, start_step): the restored state and step, or the given state and 0.

  Raises:
    ValueError: the checkpoint was made with another seed, or does not match the model.
  """
  if not config.resume:
    return state, 0
  if checkpointer.latest_step() is None:
    logging.warning("resume requested but %s has no checkpoint: starting fresh",
                    checkpointer.directory)
    return state, 0
  state, extra = checkpointer.restore(trainer.abstract_state(state))
  if extra.get("seed") != config.seed:
    raise ValueError(f"checkpoint was made with seed={extra.get('seed')}, config has "
                     f"seed={config.seed}")
  data_iter.set_state(extra["data_state"])
  start_step = int(extra["step"])
  writer.truncate_after(start_step)
  logging.info("resumed from step %d", start_step)
  return state, start_step


def load_run_params(run_dir: str, cfg, step: Optional[int] = None):
  """Policy params of a training run's orbax checkpoint (latest, or `step`).

  Args:
    run_dir: the run directory (with checkpoints/) or its checkpoints/ directory itself.
    cfg: the ModelConfig the run trained (its shapes are checked).
    step: checkpoint step; None = the latest.

  Returns:
    (params tree, step).

  Raises:
    FileNotFoundError: no checkpoint there.
    ValueError: the checkpoint's params do not match `cfg`.
  """
  from r1jax import models
  directory = os.path.join(run_dir, "checkpoints")
  if not os.path.isdir(directory):
    directory = run_dir
  mngr = ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "extra"))
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  shapes = models.param_shapes(cfg)
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                       sharding=shd.replicated(
                                                           shd.make_mesh({"data": 1},
                                                                         jax.devices()[:1]))),
                        shapes)
  try:
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": target}, partial_restore=True)))
  except Exception as e:  # orbax raises several types for structure/shape mismatches
    raise ValueError(f"checkpoint {directory} step {step} does not match the model: {e}") from e
  finally:
    mngr.close()
  params = out["state"]["params"]
  for path, a in jax.tree_util.tree_flatten_with_path(params)[0]:
    want = _tree_get(shapes, path)
    if a.shape != want.shape:
      raise ValueError(f"checkpoint param {jax.tree_util.keystr(path)} has shape {a.shape}, "
                       f"the model expects {want.shape}")
  return params, step


def _tree_get(tree, path):
  for k in path:
    tree = tree[getattr(k, "key", getattr(k, "idx", None))]
  return tree
