"""Trainer core shared by the stages: sharded state, optax, a jitted update with exact
gradient accumulation and a finite-update guard, orbax checkpoints, SIGTERM-safe stopping.

A stage supplies `loss_fn(params, micro_batch, denominator[, frozen]) -> (loss, metrics)`
whose loss and metrics are *sums* normalised by a global denominator (see
r1jax.losses.grpo.loss_weights): the update adds them over micro-batches, so accumulation is
exact. Metrics whose key ends in "_max" are maxima instead: the update takes their maximum
over micro-batches (e.g. the largest sampler-vs-trainer log-prob gap of the batch). `frozen`
is an optional tree of params that the loss reads but never trains (a
distillation teacher, a reference policy); it enters the jitted update as an argument.

An update whose loss or gradient is not finite is skipped: params and optimizer state stay
as they were and the metric `update_skipped` is 1 (r1jax.train.loop counts and logs these
and stops the run after too many in a row).
"""

from __future__ import annotations

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

from r1jax import compiled as compiled_lib
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


def split_micro(x: jax.Array, num_micro: int) -> jax.Array:
  """[S, ...] -> [M, S/M, ...] taking rows i, i+M, ... for micro-batch i, so that each
  micro-batch keeps the batch sharding of the data axis."""
  S = x.shape[0]
  return x.reshape(S // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)


def merge_micro(x: jax.Array) -> jax.Array:
  """Inverse of split_micro: [M, S/M, ...] -> [S, ...]."""
  return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


class Trainer:
  """Holds the mesh, shardings, optimizer and the jitted update.

  Args:
    mesh: device mesh (r1jax.sharding.make_mesh).
    param_axes: logical axes tree of the params.
    loss_fn: (params, micro_batch dict, denominator) -> (loss, metrics dict of scalars); with
      `frozen_axes`, (params, micro_batch, denominator, frozen) where `frozen` is the tree
      passed to `update` (no gradient flows into it).
    optimizer: optax transformation.
    num_micro_batches: gradient-accumulation steps per update.
    rules: logical-axis -> mesh-axis rules (r1jax.sharding.PRESETS / config_rules) for the
      params, optimizer state and batches.
    frozen_axes: logical axes tree of the frozen params (e.g. a teacher's
      models.param_logical_axes); None = the loss takes no frozen params.
  """

  def __init__(self, mesh, param_axes, loss_fn, optimizer, num_micro_batches: int = 1,
               rules: Optional[dict] = None, *, frozen_axes=None):
    self.mesh = mesh
    self.rules = dict(rules if rules is not None else shd.DEFAULT_RULES)
    self.param_axes = param_axes
    self.loss_fn = loss_fn
    self.optimizer = optimizer
    self.num_micro = num_micro_batches
    self.frozen_axes = frozen_axes
    self._update = None
    self.state_shardings = None

  # ------------------------------------------------------------------ state
  def param_shardings(self, params_shapes, axes=None):
    """Shardings of a param tree from its logical axes (default: the trained params')."""
    return shd.tree_shardings(self.param_axes if axes is None else axes, params_shapes,
                              self.mesh, self.rules)

  def shard_params(self, params, axes=None):
    """Place a host/param tree on the mesh according to its logical axes (with several
    processes every process must pass the same values)."""
    return shd.reshard(params, self.param_shardings(params, axes))

  def shard_frozen(self, frozen):
    """Place the frozen params (teacher, reference) on the mesh with `frozen_axes`.

    Raises:
      ValueError: the Trainer was built without frozen_axes.
    """
    if self.frozen_axes is None:
      raise ValueError("this Trainer's loss takes no frozen params (frozen_axes=None)")
    return self.shard_params(frozen, self.frozen_axes)

  def abstract_init(self, param_shapes) -> TrainState:
    """The TrainState `init_state` builds for params of these shapes and dtypes (arrays
    or ShapeDtypeStructs), as ShapeDtypeStructs with their shardings: nothing is
    allocated (pre-flight plans, compiled-program checks; works on an abstract mesh).
    Sets `state_shardings` as init_state does."""
    p_sh = self.param_shardings(param_shapes)
    opt_shapes = jax.eval_shape(self.optimizer.init, param_shapes)
    # Optimizer moments mirror the params; scalars (counts) are replicated.
    opt_sh = optax.tree_map_params(self.optimizer, lambda _, s: s, opt_shapes, p_sh,
                                   transform_non_params=lambda _: shd.replicated(self.mesh))
    opt_sh = jax.tree.map(lambda s: s if isinstance(s, jax.sharding.Sharding)
                          else shd.replicated(self.mesh), opt_sh,
                          is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
    self.state_shardings = TrainState(p_sh, opt_sh, shd.replicated(self.mesh))
    shapes = TrainState(param_shapes, opt_shapes, jax.ShapeDtypeStruct((), jnp.int32))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        shapes, self.state_shardings)

  def init_state(self, params) -> TrainState:
    """Sharded TrainState from (already sharded or host) params."""
    params = self.shard_params(params)
    self.abstract_init(params)
    opt_state = jax.jit(self.optimizer.init,
                        out_shardings=self.state_shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shd.replicated(self.mesh))
    return TrainState(params, opt_state, step)

  def abstract_state(self, state: TrainState):
    """ShapeDtypeStructs with shardings (what orbax restores into)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, self.state_shardings)

  # ------------------------------------------------------------------ update
  def build_update(self):
    """The update as a pure function (state, batch, denominator, frozen) -> (state, metrics),
    before jit: micro-batch gradient accumulation in float32, then one optimizer step, which
    is skipped (state kept) when the loss or the gradient norm is not finite."""
    M = self.num_micro
    optimizer = self.optimizer
    with_frozen = self.frozen_axes is not None
    loss_fn = shd.with_activation_sharding(self.loss_fn, self.mesh, self.rules)

    def update(state: TrainState, batch: dict, denominator, frozen):
      micro = jax.tree.map(lambda x: split_micro(x, M), batch)
      if with_frozen:
        frozen = jax.lax.stop_gradient(frozen)
        fn = lambda p, mb, d: loss_fn(p, mb, d, frozen)
      else:
        fn = loss_fn
      grad_fn = jax.value_and_grad(fn, has_aux=True)

      def body(acc, mb):
        out = grad_fn(state.params, mb, denominator)
        add = jax.tree.map(lambda a, x: a + x.astype(a.dtype), acc, out)
        (_, m_acc), _ = acc
        (_, m), _ = out
        # "_max" metrics: the maximum over micro-batches, not the sum.
        add[0][1].update({k: jnp.maximum(m_acc[k], m[k].astype(m_acc[k].dtype))
                          for k in m if k.endswith("_max")})
        return add, None

      mb0 = jax.tree.map(lambda x: x[0], micro)
      shapes = jax.eval_shape(lambda: grad_fn(state.params, mb0, denominator))
      # Accumulate in float32 whatever the param dtype (bf16 sums of micro-batches drift).
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.promote_types(s.dtype, jnp.float32)),
                           shapes)
      zeros[0][1].update({k: jnp.full_like(v, -jnp.inf)
                          for k, v in zeros[0][1].items() if k.endswith("_max")})
      ((loss, metrics), grads), _ = jax.lax.scan(body, zeros, micro)
      grad_norm = optax.global_norm(grads)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      # A NaN/inf would be written into every param and moment: keep the old state instead.
      ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
      params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
      metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                     update_norm=jnp.where(ok, optax.global_norm(updates), 0.0),
                     update_skipped=(~ok).astype(jnp.float32))
      return TrainState(params, opt_state, state.step + ok.astype(state.step.dtype)), metrics

    return update

  def jit_update(self, batch, frozen=None):
    """The jitted update, exactly as `update` runs it, with explicit in/out shardings for
    this batch structure: (state, sharded batch, float32 denominator, frozen) ->
    (state, metrics). For compiled-program checks and tools (`.lower(...).compile()`)."""
    batch_shardings = {k: shd.batch_sharding(self.mesh, np.ndim(v), self.rules)
                       for k, v in batch.items()}
    frozen_sh = None if frozen is None else self.param_shardings(frozen, self.frozen_axes)
    return jax.jit(self.build_update(), donate_argnums=(0,),
                   in_shardings=(self.state_shardings, batch_shardings,
                                 shd.replicated(self.mesh), frozen_sh),
                   out_shardings=(self.state_shardings, shd.replicated(self.mesh)))

  def _check_frozen(self, frozen):
    if (frozen is None) != (self.frozen_axes is None):
      raise ValueError("pass `frozen` params exactly when the Trainer has frozen_axes")

  def update(self, state: TrainState, batch: dict[str, np.ndarray], denominator: float,
             frozen=None):
    """One optimizer step on `batch` (leaves [S, ...], S divisible by num_micro_batches and
    S / num_micro_batches by the batch shards); returns (new state, metrics on device).

    With several processes, host (NumPy) leaves hold this process's rows only (see
    shard_batch); S counts the global rows. `frozen`: the frozen params (see shard_frozen),
    required exactly when the Trainer has frozen_axes. Metrics add `loss`, `grad_norm`,
    `update_norm` and `update_skipped` (1.0 when a non-finite loss or gradient left the state
    unchanged) to the loss's own.

    Raises:
      ValueError: the batch does not split into micro-batches as configured, or `frozen`
        does not match the Trainer.
    """
    self._check_frozen(frozen)
    S = self._global_rows(batch)
    div = shd.batch_divisor(self.mesh, self.rules)
    if S % self.num_micro or (S // self.num_micro) % div:
      raise ValueError(f"batch of {S} rows does not split into {self.num_micro} micro-batches "
                       f"that are multiples of the {div} batch shards")
    keys = tuple(sorted(batch))
    if self._update is None or self._update[0] != keys:
      self._update = (keys, self.jit_update(batch, frozen))
    batch = self.shard_batch(batch)
    return self._update[1](state, batch, jnp.float32(denominator), frozen)

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
                      denominator: float, frozen=None) -> dict[str, int]:
    """Per-device bytes of the compiled update for this batch (XLA's memory analysis):
    arguments, outputs, temporaries, aliases and `peak_bytes` (r1jax.compiled.memory:
    donated arguments reused as outputs counted once). Compiles the update once more; for
    tools, not the loop."""
    self._check_frozen(frozen)
    fn = self.jit_update(batch, frozen)
    return compiled_lib.memory(
        fn.lower(state, self.shard_batch(batch), jnp.float32(denominator), frozen).compile())


def process_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's block of rows of a global host batch (all rows with one process).

  Every process builds the same global batch (a pure function of the data position), takes
  its contiguous block, and `Trainer.update` assembles the global array: the data splits
  over processes by construction, and loss denominators computed on the global batch are
  global.

  Raises:
    ValueError: the batch's rows do not split evenly over the processes.
  """
  n, i = jax.process_count(), jax.process_index()
  if n == 1:
    return batch
  rows = len(next(iter(batch.values())))
  if rows % n:
    raise ValueError(f"a batch of {rows} rows does not split evenly over {n} processes")
  b = rows // n
  return {k: np.asarray(v)[i * b:(i + 1) * b] for k, v in batch.items()}


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
