"""Preemption: a real run killed with SIGTERM saves a checkpoint and exits cleanly, and the
resumed run's steps equal those of an uninterrupted run (data order and PRNG stream)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_distributed import MAIN, ROOT, _env, _train_rows, restore_state

STEPS = 8
COMMON = ["--config=configs/grpo.py:tiny", f"--config.steps={STEPS}",
          "--config.rewards.spec=test_length:1.0,format:0.5", "--config.eval.at_start=False",
          "--config.data.train_size=40", "--config.data.eval_size=0",
          # Only the SIGTERM save and the final one: the resume must start from the former.
          "--config.checkpoint.every_steps=0",
          # FSDP over 2 devices: the checkpoint holds sharded params and optimizer state.
          "--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.sharding.preset=fsdp",
          "--config.optim.learning_rate=1e-3"]


def _start(run_dir, *extra):
  return subprocess.Popen([sys.executable, MAIN, *COMMON, f"--config.run_dir={run_dir}", *extra],
                          cwd=ROOT, env=_env(2), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _rows_written(run_dir) -> int:
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  return sum('"loss"' in line for line in open(path))


@pytest.mark.slow  # three CLI runs of the tiny model: about 80-110 s on a 2-core CI box
def test_sigterm_saves_and_resume_continues_exactly(tmp_path):
  full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
  full = _start(full_dir)
  cut = _start(cut_dir)
  try:
    deadline = time.time() + 240
    while _rows_written(cut_dir) < 2:  # SIGTERM once step 2 is logged
      assert cut.poll() is None, cut.communicate()[0][-3000:]
      assert time.time() < deadline, "the run did not reach step 2"
      time.sleep(0.02)
    cut.send_signal(signal.SIGTERM)
    out = cut.communicate(timeout=120)[0]
    assert cut.returncode == 0, out[-3000:]
    assert "will save a checkpoint and stop" in out and "stopping at step" in out
    saved = [int(x) for x in os.listdir(cut_dir / "checkpoints") if x.isdigit()]
    assert len(saved) == 1 and 2 <= saved[0] < STEPS, saved  # really cut mid-run
    k = saved[0]
    assert [r["step"] for r in _train_rows(cut_dir)] == list(range(1, k + 1))

    resumed = _start(cut_dir, "--config.resume=True")
    out = resumed.communicate(timeout=240)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert f"resumed from step {k}" in out
    out = full.communicate(timeout=240)[0]
    assert full.returncode == 0, out[-3000:]
  finally:
    for p in (full, cut):
      if p.poll() is None:
        p.kill()

  a, b = _train_rows(full_dir), _train_rows(cut_dir)
  assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, STEPS + 1))
  figures = {"killed_after_step": k, "steps": []}
  for ra, rb in zip(a, b):
    for key in ("loss", "reward", "grad_norm", "kl", "entropy", "response_len_mean", "lr"):
      assert ra[key] == rb[key], (ra["step"], key, ra[key], rb[key])
    figures["steps"].append({"step": ra["step"], "resumed": ra["step"] > k,
                             "loss_uninterrupted": ra["loss"], "loss_resumed": rb["loss"],
                             "reward_uninterrupted": ra["reward"], "reward_resumed": rb["reward"]})
  sa, sb = restore_state(full_dir), restore_state(cut_dir)
  for x, y in zip(_leaves(sa), _leaves(sb)):
    np.testing.assert_array_equal(x, y)  # params and optimizer state bit-identical
  print("KILL_RESUME_FIGURES " + json.dumps(figures))


def _leaves(tree):
  import jax
  return [np.asarray(v, np.float64) for v in jax.tree.leaves(tree)]
