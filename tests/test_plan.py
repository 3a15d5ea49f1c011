"""The plan stage (r1jax/stages/plan.py) on the tiny GRPO config and 8 fake devices.

- the state it reports per device equals what the params and Adam's moments take (counted
  here from the model config, independently of XLA), for float32 and bf16 mixed precision;
- its step peak is the largest program peak plus what stays resident, its FLOPs positive;
- with plan.hbm_gib it picks the first setting (micro-batch, remat, chunk) that fits,
  every setting tried before it does not, and nothing fitting is a ValueError.

How close the predicted peak comes to a real step's memory is measured by
tools/plan_vs_rss.py (docs/scaling.md), not here.
"""

import math

import jax
import pytest

from r1jax import configs
from r1jax import models
from r1jax.stages import grpo as grpo_stage
from r1jax.stages import plan


def _config(**sets):
  c = configs.load("configs/grpo.py:tiny")
  c.stage = "plan"
  c.mesh.data = 8
  for k, v in sets.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def _model(c):
  return grpo_stage.validate_config(c).model.load(params=False, with_tokenizer=False).config


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_plan_reports_state_and_peaks(dtype, capsys):
  c = _config(dtype=dtype)
  a = plan.run(c)["configured"]
  out = capsys.readouterr().out
  assert "optimizer state" in out and "step: peak" in out
  cfg = _model(c)
  # Data parallelism (mesh data=8): every device holds the whole model.
  n = sum(math.prod(x.shape) for x in jax.tree.leaves(models.param_shapes(cfg)))
  res = a["resident"]
  assert res["params"] == 4 * n
  assert 8 * n <= res["opt_state"] <= 8 * n + 64  # mu, nu in float32 + step counters
  half = 2 * n if dtype == "bfloat16" else 4 * n
  assert res["reference"] == half
  assert res["sampler_params"] == (half if dtype == "bfloat16" else 0)
  progs = a["programs"]
  assert set(progs) == {"rollout", "ref_forward", "update"}
  for p in progs.values():
    assert p["temp_bytes"] > 0 and p["flops"] > 0 and p["matmul_flops"] > 0
    assert p["peak_bytes"] == (p["argument_bytes"] + p["output_bytes"] + p["temp_bytes"]
                               - p["alias_bytes"])
  assert progs["update"]["alias_bytes"] >= res["params"] + 8 * n  # the state is donated
  assert a["step_peak_bytes"] == max(p["step_bytes"] for p in progs.values())
  assert a["step_growth_bytes"] == (a["step_peak_bytes"] - res["params"] - res["opt_state"]
                                    - res["reference"])


@pytest.mark.slow  # compiles up to a dozen programs
def test_plan_search_picks_first_setting_that_fits():
  c = _config(**{"rl.prompts_per_step": 16, "rl.micro_batch_prompts": 16})
  cfg = _model(c)
  mesh = grpo_stage.validate_config(c).parallel.mesh()
  first, tried = plan.search(c, cfg, mesh, float("inf"))
  assert len(tried) == 1 and first["knobs"] == {"micro_batch_prompts": 16, "remat": False,
                                                "logprob_chunk_size": 256}
  budget = first["step_peak_bytes"] - 1
  chosen, tried = plan.search(c, cfg, mesh, budget)
  for a in tried[:-1]:
    assert a["step_peak_bytes"] > budget
  assert chosen is tried[-1] and chosen["step_peak_bytes"] <= budget
  assert chosen["knobs"] != first["knobs"]
  with pytest.raises(ValueError, match="plan.hbm_gib"):
    plan.run(_config(**{"plan.hbm_gib": 1e-6}))


def test_config_keys_for_mesh_dcn_and_on_indivisible_reach_the_mesh_and_rules():
  """mesh.dcn and sharding.on_indivisible of every stage config flow through the settings:
  dcn all 1 = one slice (jax.make_mesh's mesh), dcn asking for slices this single process
  does not have fails naming them, and the indivisibility policy lands in the rules."""
  from r1jax import sharding as shd
  from r1jax.train import settings as settings_lib
  c = _config()
  assert c.mesh.dcn.to_dict() == {"data": 1, "fsdp": 1, "tensor": 1}
  assert c.sharding.on_indivisible == "error" and c.plan.hbm_gib == 0
  par = settings_lib.ParallelSettings.from_config(c)
  mesh = par.mesh()
  want = shd.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  assert [d.id for d in mesh.devices.flat] == [d.id for d in want.devices.flat]
  assert par.train_rules[shd.ON_INDIVISIBLE] == ("error",)
  c = _config(**{"mesh.dcn.data": 2, "sharding.on_indivisible": "replicate"})
  par = settings_lib.ParallelSettings.from_config(c)
  assert par.train_rules[shd.ON_INDIVISIBLE] == ("replicate",)
  assert par.sampling_rules[shd.ON_INDIVISIBLE] == ("replicate",)
  with pytest.raises(ValueError, match="slices"):
    par.mesh()
