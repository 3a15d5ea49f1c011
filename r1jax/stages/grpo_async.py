"""One-step-async GRPO rollouts: the rollout of step t+1 runs while step t updates.

Schedule with rl.async_rollouts = True (theta_t = the params after t updates, R_t = the
rollout that step t trains on):

  step 0: sample R_0 with theta_0; update theta_0 -> theta_1 on R_0  || sample R_1 with theta_0
  step t: update theta_t -> theta_{t+1} on R_t                       || sample R_{t+1} with theta_t

R_t comes from theta_{t-1} while the update's pi_old is theta_t: the rollout policy is at most
one update stale. The loss corrects that with the sampler's log-probs (`sampler_logp` in the
batch; rl.offpolicy_correction = tis | mis, r1jax/losses/offpolicy.py), and the mismatch
metrics (offpolicy/*) show its size every step. With rl.async_rollouts = False (the default)
each step samples with the current params first and then updates, as before.

How the overlap happens: JAX's asynchronous dispatch, on the main thread. A step dispatches
the reference / pi_old log-probs and its mu updates (jitted calls return futures at once),
then samples, decodes and scores R_{t+1} on the host thread, and only then waits for the
update's metrics. The sampler reads a copy of theta_t made before the update was dispatched
(the update donates theta_t's buffers). Where the sampling runs (`split_devices`):

- rl.rollout_devices = N > 0: a rollout sub-mesh of N devices (taken evenly from every
  process; rl.rollout_mesh gives its axes) samples while the trainer's mesh of the remaining
  devices updates: the two programs run at the same time on disjoint devices, and the copy
  of theta_t is a device-to-device transfer into the rollout layout (cast to
  rl.rollout_dtype). This is the layout of the 4 rollout + 4 train benchmark
  (tools/bench_async_rollouts.py).
- rl.rollout_devices = 0: rollout and update share all devices. Their device work then
  queues on the same devices, and what overlaps is the host side of the rollout
  (detokenisation, reward functions, the code sandbox) with the device update.

Why dispatch on one thread rather than a rollout thread: with several processes every
process must launch its programs (and their cross-process collectives) in the same order;
with a second thread that order would depend on thread scheduling and could differ between
processes (a deadlock). Here every launch comes from the main thread in program order.

Exact resume: the checkpoint after step t holds theta_{t+1}, but the pending R_{t+1} came
from theta_t, which no checkpoint keeps. So `RolloutSchedule.get_state` (saved by the loop
in each checkpoint's extras) holds the pending rollout itself: the sampler's outputs (tokens,
log-probs, lengths, finished flags), the rewards, the dynamic-sampling selection and the data
position before its prompts were drawn. `set_state` draws the same prompts again and decodes
the same texts, so the resumed run trains on exactly the batch the interrupted one would
have. The last step of a run prefetches nothing (no wasted rollout): a finished run that is
extended with more steps starts its next step with a fresh synchronous rollout.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any, Callable, Optional

import jax
import numpy as np

from r1jax import sampling
from r1jax import sharding as shd
from r1jax.rewards import RewardResult
from r1jax.stages.grpo_rollout import Rollout

STATE_FORMAT = "r1jax.grpo.RolloutSchedule/1"


def split_devices(num_rollout: int, devices=None) -> tuple[list, list]:
  """(train devices, rollout devices): the last num_rollout / P devices of each of the P
  processes sample, the others train (so both meshes span every process).

  Raises:
    ValueError: num_rollout does not split evenly over the processes, or leaves a process
      no train device (naming rl.rollout_devices).
  """
  devices = list(jax.devices() if devices is None else devices)
  procs = sorted({d.process_index for d in devices})
  if num_rollout < 1 or num_rollout % len(procs):
    raise ValueError(f"rl.rollout_devices={num_rollout} must be a positive multiple of the "
                     f"{len(procs)} process(es)")
  per = num_rollout // len(procs)
  train, rollout = [], []
  for p in procs:
    local = [d for d in devices if d.process_index == p]
    if per >= len(local):
      raise ValueError(f"rl.rollout_devices={num_rollout} leaves no train device on a "
                       f"process with {len(local)} devices")
    train += local[:-per]
    rollout += local[-per:]
  return train, rollout


class RolloutParams:
  """The policy's params in the rollout's layout and dtype.

  Args:
    param_axes: logical axes tree of the params.
    params_like: a tree with the params' shapes.
    mesh, rules: the rollout mesh and the sampler's sharding rules.
    dtype: "" (keep the params' dtype) or a dtype name for the sampler (e.g. "bfloat16").
  """

  def __init__(self, param_axes, params_like, mesh, rules: dict, dtype: str = ""):
    self.dtype = dtype
    self.shardings = shd.tree_shardings(param_axes, params_like, mesh, rules)

  def __call__(self, params, *, copy: bool = False):
    """`params` cast and resharded for the sampler. copy=True guarantees fresh buffers (the
    trainer may then donate `params` while the sampler still reads the result)."""
    out = params
    if self.dtype:
      out = jax.tree.map(lambda x: x.astype(self.dtype), out)
    out = shd.reshard(out, self.shardings)
    if copy:  # leaves that neither the cast nor the reshard replaced
      out = jax.tree.map(lambda o, p: o.copy() if o is p else o, out, params)
    return out


def _encode(arrays: dict[str, np.ndarray]) -> str:
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  return base64.b64encode(buf.getvalue()).decode("ascii")


def _decode(text: str) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(base64.b64decode(text))) as f:
    return {k: f[k] for k in f.files}


def rollout_state(ro: Rollout, step: int, data_state: dict) -> dict:
  """A JSON-able record of a (pending) rollout: enough to rebuild it exactly with
  `restore_rollout`. Gathers every process's rows (a collective with several processes).

  Args:
    ro: this process's Rollout.
    step: the step it is for.
    data_state: the prompt iterator's state before its prompts were drawn.
  """
  g = shd.process_allgather
  res = ro.rewards
  arrays = {"tokens": g(ro.out.tokens), "lengths": g(ro.out.lengths),
            "logprobs": g(ro.out.logprobs), "finished": g(ro.out.finished),
            "total": g(res.total), "timed_out": g(res.timed_out), "errors": g(res.errors)}
  arrays.update({f"reward/{k}": g(v) for k, v in res.per_function.items()})
  if ro.selection is not None:
    arrays["selection"] = g(np.asarray(ro.selection, np.int64))
  return {"step": int(step), "data_state": data_state, "rounds": int(ro.rounds),
          "num_steps": int(ro.out.num_steps), "stats": dict(ro.stats),
          "seconds": [float(ro.seconds_rollout), float(ro.seconds_reward)],
          "reward_functions": list(res.per_function), "arrays": _encode(arrays)}


def restore_rollout(state: dict, data, sampler, tok, sp: sampling.SamplingParams,
                    prefix: str) -> Rollout:
  """Rebuild the Rollout recorded by `rollout_state` (this process's rows): its prompts are
  drawn again from the recorded data position (the iterator ends where the original run's
  did), its texts decoded again from the recorded tokens; rewards are the recorded ones.

  Raises:
    ValueError: the record does not split over this run's processes.
  """
  a = _decode(state["arrays"])
  nproc, pidx = jax.process_count(), jax.process_index()
  rows_global, G = a["lengths"].shape
  if rows_global % nproc:
    raise ValueError(f"the checkpoint's pending rollout has {rows_global} prompts, which do "
                     f"not split over {nproc} processes")
  b = rows_global // nproc
  mine, mine_flat = slice(pidx * b, (pidx + 1) * b), slice(pidx * b * G, (pidx + 1) * b * G)
  data.set_state(state["data_state"])
  draws = [next(data) for _ in range(int(state["rounds"]))]
  if "selection" in a:
    examples = [draws[r][row] for r, row in a["selection"][mine]]
  else:
    examples = draws[0]
  ids, lengths = sampler.pad_prompts([ex["prompt_ids"] for ex in examples], process_local=True)
  out = sampling.SampleOutput(a["tokens"][mine], a["lengths"][mine], a["logprobs"][mine],
                              a["finished"][mine], np.int32(state["num_steps"]))
  texts = [t for row in sampling.decode_completions(tok, out, sp, prefix) for t in row]
  res = RewardResult(a["total"][mine_flat],
                     {k: a[f"reward/{k}"][mine_flat] for k in state["reward_functions"]},
                     a["timed_out"][mine_flat], a["errors"][mine_flat])
  return Rollout(examples, ids, lengths, out, texts, res, *state["seconds"],
                 rounds=int(state["rounds"]),
                 selection=a["selection"][mine] if "selection" in a else None,
                 stats=dict(state["stats"]))


class RolloutSchedule:
  """Hands each step its rollout: sampled now (synchronous schedule, step 0, or after a
  resume without a pending rollout) or prefetched during the previous step's update.

  Args:
    produce: (rollout params, step) -> Rollout of that step (its PRNG key and prompts).
    to_rollout: (policy params, copy=bool) -> params for `produce` (a RolloutParams).
    data: the prompt iterator `produce` draws from (get_state / set_state).
    async_rollouts: prefetch the next step's rollout during each update.
    steps: the run's total steps (the last step prefetches nothing).
    restore: (recorded state) -> Rollout, for `set_state` (e.g. restore_rollout with the
      stage's sampler and tokenizer bound).
  """

  def __init__(self, produce: Callable[[Any, int], Rollout], to_rollout: Callable, data, *,
               async_rollouts: bool, steps: int, restore: Callable[[dict], Rollout]):
    self.produce = produce
    self.to_rollout = to_rollout
    self.data = data
    self.async_rollouts = async_rollouts
    self.steps = steps
    self.restore = restore
    self.pending: Optional[tuple[int, Rollout, dict]] = None  # (step, rollout, data state)

  def take(self, params, step: int) -> Rollout:
    """The rollout of `step`: the pending one when it is for this step, else sampled now
    with `params` (the current policy)."""
    if self.pending is not None:
      pending_step, ro, _ = self.pending
      self.pending = None
      if pending_step != step:
        raise RuntimeError(f"the pending rollout is for step {pending_step}, not {step}")
      return ro
    return self.produce(self.to_rollout(params), step)

  def prefetches(self, step: int) -> bool:
    """Whether `step` samples the next step's rollout during its update."""
    return self.async_rollouts and step + 1 < self.steps

  def prefetch(self, rollout_params, step: int) -> float:
    """Sample the rollout of `step` now (while the dispatched update runs); returns the
    seconds it took. `rollout_params` must not be donated by the update (copy=True)."""
    t0 = time.perf_counter()
    before = self.data.get_state()
    self.pending = (step, self.produce(rollout_params, step), before)
    return time.perf_counter() - t0

  def get_state(self) -> dict:
    """JSON-able schedule state for a checkpoint: the pending rollout, if any (a collective
    with several processes)."""
    if self.pending is None:
      return {"format": STATE_FORMAT, "pending": None}
    step, ro, before = self.pending
    return {"format": STATE_FORMAT, "pending": rollout_state(ro, step, before)}

  def set_state(self, state: dict) -> None:
    """Restore `get_state()` after the data iterator was restored to the checkpoint's
    position (the pending rollout's prompts are drawn again up to that position).

    Raises:
      ValueError: not a schedule state, or its rollout does not end at the data position.
    """
    self.pending = None
    if not state:  # a checkpoint of a run without this schedule state
      return
    if state.get("format") != STATE_FORMAT:
      raise ValueError(f"not a {STATE_FORMAT} state in the checkpoint: {str(state)[:200]}")
    rec = state.get("pending")
    if rec is None:
      return
    after = self.data.get_state()
    ro = self.restore(rec)
    if self.data.get_state() != after:
      raise ValueError("the checkpoint's pending rollout does not end at its data position "
                       "(was the data config changed?)")
    self.pending = (int(rec["step"]), ro, rec["data_state"])
