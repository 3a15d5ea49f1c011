"""Multi-process runs (jax.distributed on localhost CPU, gloo collectives) equal the
single-process run for GRPO, SFT and the reward model; sharding presets and rules;
per-process data shards."""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from r1jax import models
from r1jax import sharding as shd

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "main_with_test_rewards.py")


# ---------------------------------------------------------------------- rules and presets
def test_presets_shard_params_as_documented():
  cfg = models.tiny_config()
  axes, shapes = models.param_logical_axes(cfg), models.param_shapes(cfg)
  q = lambda sh: sh["layers"]["attn"]["q_proj"]["kernel"].spec
  mesh = shd.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  dp = shd.tree_shardings(axes, shapes, mesh, shd.rules_for("dp"))
  assert all(s.spec == jax.sharding.PartitionSpec(*([None] * len(s.spec)))
             for s in jax.tree.leaves(dp))
  fsdp = shd.tree_shardings(axes, shapes, mesh, shd.rules_for("fsdp"))
  assert "fsdp" in q(fsdp) and "tensor" not in q(fsdp)
  tp = shd.tree_shardings(axes, shapes, mesh, shd.rules_for("fsdp_tp"))
  assert "fsdp" in q(tp) and "tensor" in q(tp)
  # Overrides on top of a preset; an empty right side replicates.
  ov = shd.tree_shardings(axes, shapes, mesh, shd.rules_for("fsdp_tp", "embed=;mlp=tensor"))
  assert "fsdp" not in q(ov)
  assert shd.batch_divisor(mesh, shd.rules_for("dp")) == 4
  with pytest.raises(ValueError, match="preset"):
    shd.rules_for("zero3")
  with pytest.raises(ValueError, match="mesh axes"):
    shd.parse_rules("embed=pipeline")
  with pytest.raises(ValueError, match="logical=mesh_axis"):
    shd.parse_rules("embed")


def test_initialize_distributed_is_a_no_op_without_a_coordinator(monkeypatch):
  for k in ("R1JAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS", "R1JAX_DISTRIBUTED_AUTO"):
    monkeypatch.delenv(k, raising=False)
  assert shd.initialize_distributed(None) is False
  assert shd.initialize_distributed({"coordinator_address": "", "auto": False}) is False
  with pytest.raises(ValueError, match="process_id"):
    shd.initialize_distributed({"coordinator_address": "localhost:1", "num_processes": 2,
                                "process_id": 2})


def test_process_shards_of_the_prompt_stream_are_disjoint_blocks():
  from r1jax.data import PromptData
  data = PromptData({"tasks": "chain_sum", "train_size": 40, "eval_size": 2},
                    "smollm2-135m-instruct")
  whole = data.train_iterator(6)
  shards = [data.train_iterator(6, shard_index=i, shard_count=3) for i in range(3)]
  for _ in range(8):  # past an epoch: reshuffled epochs stay aligned too
    want = [e["id"] for e in next(whole)]
    got = [[e["id"] for e in next(s)] for s in shards]
    assert sum(got, []) == want and all(len(g) == 2 for g in got)
  # The state is the global batch index: it restores on any shard count.
  other = data.train_iterator(6, shard_index=1, shard_count=2)
  other.set_state(whole.get_state())
  assert [e["id"] for e in next(other)] == [e["id"] for e in next(whole)][3:]
  with pytest.raises(ValueError, match="evenly"):
    data.train_iterator(6, shard_index=0, shard_count=4)


# ---------------------------------------------------------------------- 2 processes
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  for k in ("R1JAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS"):
    env.pop(k, None)
  return env


COMMON = ["--config=configs/grpo.py:tiny", "--config.steps=3", "--config.rl.num_iterations=2",
          "--config.rewards.spec=test_length:1.0,format:0.5", "--config.eval.at_start=False",
          "--config.checkpoint.every_steps=0", "--config.mesh.data=1", "--config.mesh.fsdp=-1",
          "--config.sharding.preset=fsdp", "--config.data.train_size=40",
          "--config.data.eval_size=0",
          # lr large enough that the mu=2 ratio term stands well above float32 noise
          "--config.optim.learning_rate=1e-3"]


def restore_state(run_dir):
  """The latest checkpoint's TrainState dict as NumPy, whatever topology wrote it."""
  import orbax.checkpoint as ocp
  d = os.path.join(run_dir, "checkpoints")
  path = os.path.abspath(os.path.join(d, str(max(int(x) for x in os.listdir(d) if x.isdigit())),
                                      "state"))
  ck = ocp.PyTreeCheckpointer()
  meta = ck.metadata(path)
  tree = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), tree)
  out = ck.restore(path, args=ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
  return jax.device_get(out)


def _train_rows(run_dir):
  rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
  return [r for r in rows if "loss" in r]


def _two_processes_and_one(tmp_path, common):
  """Runs `common` as 2 processes x 4 CPU devices and as 1 process x 8 devices; returns
  (single run_dir, multi run_dir, outputs, seconds)."""
  port = _free_port()
  multi, single = tmp_path / "multi", tmp_path / "single"
  t0 = time.perf_counter()
  procs = [subprocess.Popen(
      [sys.executable, MAIN, *common, f"--config.run_dir={multi}",
       f"--config.distributed.coordinator_address=localhost:{port}",
       "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
      cwd=ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  ref = subprocess.Popen([sys.executable, MAIN, *common, f"--config.run_dir={single}"],
                         cwd=ROOT, env=_env(8), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
  outs = []
  try:
    for p in procs + [ref]:
      outs.append(p.communicate(timeout=600)[0])
  finally:
    for p in procs + [ref]:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs + [ref], outs):
    assert p.returncode == 0, out[-3000:]
  assert "process 1 of 2" in outs[1]
  return single, multi, outs, time.perf_counter() - t0


def _max_param_diff(single, multi):
  sa, sb = restore_state(single), restore_state(multi)
  return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(sa["params"]),
                                                         jax.tree.leaves(sb["params"])))


@pytest.mark.slow  # three jax processes on a 2-core CI box: about 90 s
def test_two_processes_with_fsdp_equal_one_process(tmp_path):
  """2 processes x 4 CPU devices, FSDP over all 8, vs 1 process x 8 devices, same config."""
  multi_dir, single_dir, outs, seconds = _two_processes_and_one(tmp_path, COMMON)
  assert "stage grpo" in outs[0] and "stage grpo" not in outs[1]  # process 0 logs alone
  rm, rs = _train_rows(multi_dir), _train_rows(single_dir)
  assert [r["step"] for r in rm] == [r["step"] for r in rs] == [1, 2, 3]
  figures = {"seconds_both_runs": round(seconds, 1),
             "steps": [{"step": a["step"], "loss_single": a["loss"], "loss_multi": b["loss"],
                        "reward_single": a["reward"], "reward_multi": b["reward"],
                        "grad_norm_single": a["grad_norm"], "grad_norm_multi": b["grad_norm"]}
                       for a, b in zip(rs, rm)]}
  for a, b in zip(rs, rm):
    for k in ("reward", "reward_std_in_group", "response_len_mean", "truncation_rate"):
      assert a[k] == b[k], (k, a[k], b[k])  # same prompts, same samples, same rewards
    # Sums over 8 shards in another order: float32 rounding, nothing more.
    for k in ("loss", "grad_norm", "kl", "entropy", "clip_frac", "update_norm"):
      np.testing.assert_allclose(b[k], a[k], rtol=1e-3, atol=1e-6, err_msg=k)
  assert any(abs(r["loss"]) > 1e-6 for r in rs) and rs[-1]["grad_norm"] > 0
  figures["max_param_diff"] = _max_param_diff(single_dir, multi_dir)
  assert figures["max_param_diff"] < 1e-5
  print("TWO_PROCESS_FIGURES " + json.dumps(figures))


# Adam divides by sqrt(v) + eps: on a near-zero gradient a float32 rounding difference
# (the 8 shards summed in another order) can flip the sign of an lr-sized update. eps=1e-3
# keeps such updates small, so the params compare at the rounding level.
_SHARED = ["--config.eval.at_start=False", "--config.eval.every_steps=0",
           "--config.checkpoint.every_steps=0", "--config.mesh.data=1", "--config.mesh.fsdp=-1",
           "--config.sharding.preset=fsdp", "--config.optim.eps=1e-3"]
SUPERVISED = {
    # SFT: 8 packed rows a step, FSDP over the 8 devices; held-out loss at the end.
    "sft": ["--config=configs/sft.py:tiny", "--config.steps=4", *_SHARED],
    # Reward model: 8 pairs a step (one micro-batch), FSDP over the 8 devices.
    "reward_model": ["--config=configs/reward_model.py:tiny", "--config.steps=4", *_SHARED],
}


@pytest.mark.slow  # three jax processes each: about 60-120 s on a 2-core box
@pytest.mark.parametrize("stage", sorted(SUPERVISED))
def test_two_processes_equal_one_process_for_supervised_stages(tmp_path, stage):
  """SFT and the reward model on 2 processes (each trains on its block of the global batch,
  the loss denominator counts the global batch) equal the 1-process run."""
  multi_dir, single_dir, outs, seconds = _two_processes_and_one(tmp_path, SUPERVISED[stage])
  rm, rs = _train_rows(multi_dir), _train_rows(single_dir)
  assert [r["step"] for r in rm] == [r["step"] for r in rs] == [1, 2, 3, 4]
  figures = {"stage": stage, "seconds_all_runs": round(seconds, 1),
             "steps": [{"step": a["step"], "loss_single": a["loss"], "loss_multi": b["loss"],
                        "grad_norm_single": a["grad_norm"], "grad_norm_multi": b["grad_norm"]}
                       for a, b in zip(rs, rm)]}
  ea = [r for r in map(json.loads, open(single_dir / "metrics.jsonl")) if "eval/loss" in r]
  eb = [r for r in map(json.loads, open(multi_dir / "metrics.jsonl")) if "eval/loss" in r]
  figures["eval_loss_single_multi"] = [ea[-1]["eval/loss"], eb[-1]["eval/loss"]]
  figures["max_param_diff"] = _max_param_diff(single_dir, multi_dir)
  print("TWO_PROCESS_FIGURES " + json.dumps(figures))
  for a, b in zip(rs, rm):
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-3, atol=1e-6)
  # The loss moves (training happens) and the held-out evaluation agrees too.
  assert rs[-1]["loss"] != rs[0]["loss"]
  assert len(ea) == len(eb) == 1
  np.testing.assert_allclose(eb[0]["eval/loss"], ea[0]["eval/loss"], rtol=1e-4)
  assert figures["max_param_diff"] < 1e-5


def test_sampler_may_use_another_layout_than_the_trainer(tmp_path):
  """Trainer FSDP over 8 devices, sampler replicated (sampler_preset=dp): the loop reshards
  the params before the rollout. Its samples then equal those of an all-dp run (same
  sampler layout, same numerics) and its update matches up to float32 rounding."""
  from test_grpo import _tiny_config
  from r1jax.stages import grpo as stage
  rows = {}
  for name, preset, sampler_preset in (("dp", "dp", ""), ("fsdp_dp", "fsdp", "dp")):
    c = _tiny_config(tmp_path / name, steps=1, **{
        "mesh.data": 1, "mesh.fsdp": -1, "sharding.preset": preset,
        "sharding.sampler_preset": sampler_preset, "data.train_size": 40,
        "data.eval_size": 0, "checkpoint.every_steps": 0})
    stage.run(c)
    rows[name] = _train_rows(c.run_dir)[0]
  a, b = rows["dp"], rows["fsdp_dp"]
  assert a["reward"] == b["reward"] and a["response_len_mean"] == b["response_len_mean"]
  np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
