"""The one training loop (r1jax.train.loop) and the finite-update guard of the Trainer:
non-finite updates are skipped with params and optimizer state unchanged, counted, logged and
stop the run after N in a row keeping the last good checkpoint; resume True / auto / False."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax import sharding as shd
from r1jax.train import loop
from r1jax.train import trainer as trainer_lib

AXES = {"w": ("embed", "mlp")}


def _loss(params, mb, denominator):
  """Least squares; a row with x = NaN poisons the loss and the gradient."""
  pred = mb["x"] @ params["w"]
  loss = jnp.sum((pred - mb["y"]) ** 2) / denominator
  return loss, {"sq": loss}


def _trainer(num_micro=1):
  mesh = shd.make_mesh({"data": 1}, jax.devices()[:1])
  return trainer_lib.Trainer(mesh, AXES, _loss, optax.adam(0.1), num_micro)


def _batch(bad=False, seed=0):
  rng = np.random.RandomState(seed)
  x = rng.normal(size=(4, 3)).astype(np.float32)
  if bad:
    x[1, 2] = np.nan
  return {"x": x, "y": rng.normal(size=(4, 2)).astype(np.float32)}


def test_non_finite_update_is_skipped_with_state_unchanged():
  tr = _trainer(num_micro=2)
  state = tr.init_state({"w": np.ones((3, 2), np.float32)})
  state, m = tr.update(state, _batch(seed=1), 4.0)
  assert float(m["update_skipped"]) == 0.0 and int(state.step) == 1
  before = jax.device_get(state)
  state, m = tr.update(state, _batch(bad=True, seed=2), 4.0)
  after = jax.device_get(state)
  assert float(m["update_skipped"]) == 1.0 and not np.isfinite(float(m["loss"]))
  assert float(m["update_norm"]) == 0.0
  for a, b in zip(jax.tree.leaves(before.params) + jax.tree.leaves(before.opt_state),
                  jax.tree.leaves(after.params) + jax.tree.leaves(after.opt_state)):
    np.testing.assert_array_equal(a, b)  # params, Adam moments and count: bit for bit
  assert int(after.step) == 1  # steps count applied updates
  # The next finite batch updates exactly as if the bad one had never come.
  ref = _trainer(num_micro=2)
  rs = ref.init_state({"w": np.ones((3, 2), np.float32)})
  rs, _ = ref.update(rs, _batch(seed=1), 4.0)
  rs, _ = ref.update(rs, _batch(seed=3), 4.0)
  state, _ = tr.update(state, _batch(seed=3), 4.0)
  np.testing.assert_array_equal(jax.device_get(state.params["w"]), jax.device_get(rs.params["w"]))


class _Data:
  """A data iterator with the get_state / set_state the loop checkpoints."""

  def __init__(self, bad_steps=()):
    self.i, self.bad_steps = 0, set(bad_steps)

  def __next__(self):
    self.i += 1
    return _batch(bad=self.i in self.bad_steps, seed=self.i)

  def get_state(self):
    return {"i": self.i}

  def set_state(self, s):
    self.i = s["i"]


def _run(tmp_path, steps, bad_steps=(), **kw):
  tr = _trainer()
  state = tr.init_state({"w": np.ones((3, 2), np.float32)})
  data = _Data(bad_steps)

  def step_fn(state, step):
    state, m = tr.update(state, next(data), 4.0)
    return state, {k: float(v) for k, v in jax.device_get(m).items()}, None

  settings = loop.LoopSettings(run_dir=str(tmp_path), steps=steps, **kw)
  return loop.run(settings, trainer=tr, state=state, data=data, step_fn=step_fn,
                  config={"test": 1})


def _rows(tmp_path):
  return [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]


def test_loop_counts_skips_and_stops_after_too_many_keeping_the_last_good_checkpoint(tmp_path,
                                                                                    caplog):
  # Steps 3 and 5 are bad but not in a row: counted, the run finishes.
  state, res = _run(tmp_path / "a", 6, bad_steps=(3, 5), max_skipped_steps=2,
                    checkpoint_every=2)
  rows = _rows(tmp_path / "a")
  assert [r["update_skipped"] for r in rows] == [0, 0, 1, 0, 1, 0]
  assert [r["skipped_updates"] for r in rows] == [0, 0, 1, 1, 2, 2]
  assert rows[2]["loss"] is None  # NaN is written as null
  assert res["skipped_updates"] == 2 and res["finished"] and int(state.step) == 4
  assert any("step 3: non-finite loss or gradient" in r.getMessage() for r in caplog.records)
  # Steps 3, 4 and 5 bad in a row: stops at step 5 with a clear error; the checkpoint of
  # step 2 (the last good state) stays the latest.
  with pytest.raises(loop.NonFiniteUpdateError, match="3 consecutive steps up to step 5.*"
                     "last good checkpoint is step 2"):
    _run(tmp_path / "b", 8, bad_steps=(3, 4, 5), max_skipped_steps=3, checkpoint_every=2)
  ck = trainer_lib.Checkpointer(str(tmp_path / "b" / "checkpoints"))
  assert ck.latest_step() == 2
  ck.close()


def test_resume_true_needs_a_checkpoint_auto_does_not(tmp_path):
  with pytest.raises(FileNotFoundError, match="resume=True but .* has no checkpoint"):
    _run(tmp_path / "a", 2, resume=True)
  _, res = _run(tmp_path / "b", 2, resume="auto")  # nothing there: starts fresh
  assert res["finished"] and res["step"] == 2
  _, res = _run(tmp_path / "b", 3, resume="auto")  # now there is: continues at step 2
  assert [r["step"] for r in _rows(tmp_path / "b")] == [1, 2, 3]
  with pytest.raises(ValueError, match="already has checkpoints"):
    _run(tmp_path / "b", 3)
  assert loop.parse_resume("auto") == "auto" and loop.parse_resume("True") is True
  with pytest.raises(ValueError, match="resume must be"):
    loop.parse_resume("maybe")


def test_unwritable_run_dir_is_a_one_line_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(PermissionError, match="cannot be created"):
    loop.prepare_run_dir(str(blocker / "run"), False)
