"""What XLA compiles for the GRPO update, the reference forward and the SFT update on 8 fake
devices under the dp, fsdp and fsdp_tp presets (nothing is run):

- per-device FLOPs (cost analysis) at most 1.25 x the 1-device FLOPs / 8;
- no all-gather of a [tokens, D]- or [tokens, V]-sized array (optimized HLO);
- per-device temporary memory falls from 1 to 8 devices (printed);
- jax.export of the whole jitted update for TPU and CUDA with the Pallas log-prob;
- with dtype=bfloat16 (mixed precision): bf16 dots, bf16 weights into the all-gathers,
  float32 params and optimizer state.

The programs are built from the public pieces as the stages build them (Trainer,
grpo.make_loss_fn / make_logprob_fn, losses.sft). `python tests/test_compiled.py` prints the
table of FLOPs ratios and largest all-gathers as JSON (the same harness ran on the code
before the data-parallel log-prob for docs/scaling.md).
"""

import functools
import json
import os
import re
import sys

if __name__ == "__main__":
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from ml_collections import ConfigDict

from r1jax import models
from r1jax import sharding as shd
from r1jax.kernels import logprob as kernel_lib
from r1jax.losses import grpo as grpo_lib
from r1jax.losses import sft as sft_lib
from r1jax.models.config import tiny_config
from r1jax.stages import grpo as grpo_stage
from r1jax.train import precision
from r1jax.train import trainer as trainer_lib

# A vocabulary large against the model (as in real LMs, where the head is 10-20% of the
# FLOPs), and more tokens per micro-batch than vocabulary entries, so that a gathered
# [tokens, D] or [tokens, V] array is larger than any parameter.
CFG = tiny_config(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16)
B, G, P, N = 8, 4, 16, 32  # GRPO: prompts, samples per prompt, prompt / completion length
SFT_ROWS, SFT_LEN = 8, 128
GRPO_TOKENS = B * G * N  # 1024 completion tokens through the LM head
SFT_TOKENS = SFT_ROWS * SFT_LEN  # 1024
MESHES = {"dp": {"data": 8, "fsdp": 1, "tensor": 1},
          "fsdp": {"data": 1, "fsdp": 8, "tensor": 1},
          "fsdp_tp": {"data": 1, "fsdp": 4, "tensor": 2}}
PROGRAMS = ("grpo_update", "ref_forward", "sft_update")
FLOPS_SLACK = 1.25


def _grpo_batch():
  rng = np.random.default_rng(0)
  comp = rng.integers(3, CFG.vocab_size, (B, G, N)).astype(np.int32)
  mask = (np.arange(N)[None, None] < rng.integers(N // 2, N + 1, (B, G))[..., None])
  weights, denom = grpo_lib.loss_weights(mask.reshape(B * G, N).astype(np.float32),
                                         "sequence_mean_token_mean", N)
  batch = {"prompt_tokens": rng.integers(3, CFG.vocab_size, (B, P)).astype(np.int32),
           "prompt_lengths": rng.integers(P // 2, P + 1, B).astype(np.int32),
           "completion": comp,
           "weights": weights.reshape(B, G, N).astype(np.float32),
           "metric_weights": grpo_lib.token_mean_weights(mask.astype(np.float32)),
           "advantages": rng.normal(size=(B, G)).astype(np.float32),
           "ref_logp": -rng.uniform(0.5, 6, (B, G, N)).astype(np.float32)}
  return batch, float(denom)


def _sft_batch():
  rng = np.random.default_rng(1)
  tokens = rng.integers(3, CFG.vocab_size, (SFT_ROWS, SFT_LEN + 1)).astype(np.int32)
  return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:],
          "loss_mask": (rng.random((SFT_ROWS, SFT_LEN)) < 0.7).astype(np.float32),
          "positions": np.broadcast_to(np.arange(SFT_LEN, dtype=np.int32),
                                       (SFT_ROWS, SFT_LEN)).copy(),
          "segment_ids": np.ones((SFT_ROWS, SFT_LEN), np.int32)}


def _mesh(preset, n):
  shape = MESHES[preset] if n == 8 else {"data": 1, "fsdp": 1, "tensor": 1}
  return shd.make_mesh(shape, jax.devices()[:n])


def _kernel(mesh, impl="chunked"):
  kcfg = kernel_lib.default_config()
  kcfg.logprob_impl = impl
  kcfg.logprob_chunk_size = 128
  return kernel_lib.kwargs_from_config(kcfg, mesh, shd.batch_sharding(mesh, 1).spec[0])


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                      tree, shardings)


def build(program, preset, n=8, impl="chunked", platform=None, dtype="float32"):
  """(jitted function, abstract arguments) of `program` on n devices under `preset`; with
  `platform`, on an abstract mesh of that accelerator (see accelerator_mesh). `dtype` is
  the compute dtype (train/precision: "bfloat16" = bf16 mixed precision, float32
  masters); nothing is allocated (Trainer.abstract_init)."""
  concrete = _mesh(preset, n)
  mesh = concrete if platform is None else accelerator_mesh(concrete, platform)
  cfg = CFG.replace(dtype=dtype)
  rules = shd.rules_for(preset)
  kernel = _kernel(mesh, impl)
  if impl != "chunked":
    kernel["interpret"] = False  # the real kernel, lowered for an accelerator
  optimizer = trainer_lib.make_optimizer(ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=0, schedule="constant", decay_steps=1,
      end_lr_factor=0.0, weight_decay=0.0, b1=0.9, b2=0.99, eps=1e-8,
      max_grad_norm=1.0)))[0]
  if program == "sft_update":
    loss_fn = sft_lib.make_loss_fn(cfg, kernel=kernel)
    batch, denom = _sft_batch(), 1000.0
  else:
    loss_fn = grpo_stage.make_loss_fn(cfg, grpo_lib.GRPOConfig(beta=0.04), temperature=0.9,
                                      kernel=kernel, remat=False, num_iterations=1)
    batch, denom = _grpo_batch()
  # As the stages do: the update computes on a compute-dtype copy of the masters.
  loss_fn = precision.compute_params(loss_fn, dtype)
  trainer = trainer_lib.Trainer(mesh, models.param_logical_axes(cfg), loss_fn, optimizer, 1,
                                rules=rules)
  state = trainer.abstract_init(models.param_shapes(cfg))
  batch_sh = {k: shd.batch_sharding(mesh, np.ndim(v), rules) for k, v in batch.items()}
  if program == "ref_forward":
    fn = grpo_stage.make_logprob_fn(cfg, mesh, 1, temperature=0.9, kernel=kernel, rules=rules)
    # The stage keeps the reference in the compute dtype.
    return fn, (precision.cast_floating(state.params, dtype), _abstract(batch, batch_sh))
  fn = trainer.jit_update(batch)  # the update exactly as Trainer.update jits it
  args = (state, _abstract(batch, batch_sh),
          jax.ShapeDtypeStruct((), jnp.float32, sharding=shd.replicated(mesh)), None)
  return fn, args


def analyse(program, preset, n=8):
  """Per-device figures of the compiled program: matmul FLOPs with loops counted
  (r1jax.compiled.matmul_flops), XLA's cost-analysis FLOPs (loop bodies once), temporary
  bytes, and every all-gather as (elements, shape). One device: the same program for
  every preset."""
  return _analyse(program, "dp" if n == 1 else preset, n)


@functools.lru_cache(maxsize=None)
def _analyse(program, preset, n):
  from r1jax import compiled as compiled_lib
  fn, args = build(program, preset, n)
  compiled = fn.lower(*args).compile()
  hlo = compiled.as_text()
  return {"flops": compiled_lib.matmul_flops(hlo), "xla_flops": compiled_lib.flops(compiled),
          "temp_bytes": compiled_lib.memory(compiled)["temp_bytes"],
          "all_gathers": [(c.elements, c.shape) for c in compiled_lib.collectives(hlo)
                          if c.op == "all-gather"]}


def _tokens(program):
  return SFT_TOKENS if program == "sft_update" else GRPO_TOKENS


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("preset", list(MESHES))
def test_per_device_flops_and_no_token_gathers(program, preset):
  one, eight = analyse(program, preset, 1), analyse(program, preset, 8)
  ratio = eight["flops"] / one["flops"]
  print(f"\n{program} {preset}: per-device matmul FLOPs {eight['flops']:.4g} = {ratio:.4f} x "
        f"1-device {one['flops']:.4g} (XLA cost analysis, loop bodies once: "
        f"{eight['xla_flops'] / one['xla_flops']:.4f}); temp bytes 1 device "
        f"{one['temp_bytes']}, 8 devices {eight['temp_bytes']}")
  assert one["flops"] > 1e6 and not one["all_gathers"]
  assert ratio <= FLOPS_SLACK / 8, (program, preset, ratio)
  # The smallest [tokens, D] array: anything at least that large is hidden states or
  # logits (every parameter is smaller: V x D < tokens x D).
  limit = _tokens(program) * CFG.hidden_size
  assert CFG.vocab_size * CFG.hidden_size < limit
  big = [(e, s) for e, s in eight["all_gathers"] if e >= limit]
  assert not big, f"{program} {preset}: all-gathers of token-sized arrays {big}"
  assert eight["temp_bytes"] < one["temp_bytes"], (one["temp_bytes"], eight["temp_bytes"])


def test_all_gather_parser_and_cost_helpers():
  """r1jax.compiled against a program whose collectives are known: an explicit all-gather
  of a [8, 16] array split over 8 devices, and a psum."""
  from r1jax import compiled as compiled_lib
  mesh = shd.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  P = jax.sharding.PartitionSpec

  @functools.partial(jax.shard_map, mesh=mesh, in_specs=P("data", None),
                     out_specs=(P(), P()), check_vma=False)
  def f(x):
    return jax.lax.all_gather(x, "data", tiled=True), jax.lax.psum(x, "data")

  c = jax.jit(f).lower(jax.ShapeDtypeStruct((64, 16), jnp.float32)).compile()
  colls = compiled_lib.collectives(c.as_text())
  ops = {x.op: x for x in colls}
  assert ops["all-gather"].shape == (64, 16) and ops["all-gather"].dtype == "f32"
  assert ops["all-gather"].nbytes == 64 * 16 * 4
  assert ops["all-reduce"].shape == (8, 16)
  s = compiled_lib.summary(c)
  assert s["largest_collective"]["all-gather"]["elements"] == 64 * 16
  assert s["temp_bytes"] >= 0 and s["argument_bytes"] == 8 * 16 * 4


# ---------------------------------------------------------------------- precision
# bf16 mixed precision: at least this share of the update's dot FLOPs run on bf16 operands
# (the rest: float32 log-prob / loss pieces). Measured 0.92 on this model.
MIN_BF16_DOT_SHARE = 0.85


def _gather_inputs_in_bf16(hlo: str, gather) -> bool:
  """Whether the operand of the all-gather instruction line `gather` is computed through a
  bf16 value: a convert to bf16 in the fusion (or the instruction) that defines it."""
  operand = re.search(r"all-gather\(%?([\w.\-]+)", gather)[1]
  define = re.search(rf"^\s*%?{re.escape(operand)} = (.*)$", hlo, re.M)[1]
  callee = re.search(r"calls=%?([\w.\-]+)", define)
  if not callee:
    return "bf16" in define
  body = re.search(rf"^%?{re.escape(callee[1])} .*?^}}", hlo, re.M | re.S)[0]
  # Either the fusion rounds to bf16 itself (JAX 0.10's XLA) or it reads the stored bf16
  # compute copy and widens it for the gather (JAX 0.12's XLA).
  return bool(re.search(r"= bf16\[[^\]]*\][^=]* convert\(", body) or
              re.search(r"^\s*%?[\w.\-]+ = bf16\[[^\]]*\]\{[^}]*\} parameter\(", body, re.M))


def test_bf16_update_dots_and_float32_optimizer_state():
  """The GRPO update with dtype=bfloat16 (float32 masters) on 8 devices under fsdp:
  - the dots JAX asks XLA for are bf16 x bf16 (HLO before optimization);
  - in the optimized HLO every FSDP weight all-gather moves the bf16-rounded compute copy
    (on TPU / GPU the gather itself is bf16; XLA's CPU backend, which runs bf16 dots and
    collectives in float32, converts the bf16 values back to float32 around them, so
    its optimized HLO shows float32 dots and gathers of bf16-rounded values);
  - the compiled program's params and Adam moments are float32 in and out;
  - the float32 update asks for no bf16 dot."""
  from r1jax import compiled as compiled_lib
  param_shapes = {tuple(x.shape[-2:]) for x in jax.tree.leaves(models.param_shapes(CFG))
                  if len(x.shape) >= 2}

  def weight_gathers(hlo):
    out = [line for line in hlo.splitlines() if " all-gather(" in line]
    return [line for line in out
            if any(c.op == "all-gather" and tuple(c.shape[-2:]) in param_shapes
                   for c in compiled_lib.collectives(line))]

  fn, args = build("grpo_update", "fsdp", 8, dtype="bfloat16")
  lowered = fn.lower(*args)
  by_dtype = compiled_lib.matmul_flops_by_dtype(lowered.as_text(dialect="hlo"))
  share = by_dtype.get("bf16xbf16", 0.0) / sum(by_dtype.values())
  print(f"\nbf16 update dot FLOPs by operand dtypes (before optimization): {by_dtype}")
  assert share >= MIN_BF16_DOT_SHARE, by_dtype
  compiled = lowered.compile()
  hlo = compiled.as_text()
  gathers = weight_gathers(hlo)
  rounded = [g for g in gathers if _gather_inputs_in_bf16(hlo, g)]
  # All but one: the LM head, whose float32 master XLA gathers for the fused log-prob
  # (replicated over the fsdp axis) and converts after the gather (a known cost, noted in
  # docs/scaling.md "Mixed precision"); every decoder weight is gathered as bf16.
  assert len(gathers) >= 8 and len(rounded) >= len(gathers) - 1, (len(rounded), len(gathers))
  state_out = compiled.out_info[0]
  for tree in (state_out.params, args[0].params):
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(tree))
  moments = [x for x in jax.tree.leaves(state_out.opt_state) if x.ndim >= 1]
  assert len(moments) == 2 * len(jax.tree.leaves(args[0].params))  # Adam's mu and nu
  assert all(x.dtype == jnp.float32 for x in moments)
  # The float32 update asks for float32 dots only (lowering, no compile).
  fn, args = build("grpo_update", "fsdp", 8)
  assert set(compiled_lib.matmul_flops_by_dtype(fn.lower(*args).as_text(dialect="hlo"))) \
      == {"f32xf32"}
  # The gather check on hand-written HLO: a bf16 round trip inside the fusion, or none.
  for via, expect in (("bf16", True), ("f32", False)):
    hlo = (f"%fused.1 (p: f32[8,4]) -> f32[8,4] {{\n  %p = f32[8,4]{{1,0}} parameter(0)\n"
           f"  %c.1 = {via}[8,4]{{1,0}} convert(%p)\n  ROOT %c.2 = f32[8,4]{{1,0}} convert(%c.1)\n"
           f"}}\n\nENTRY %main (a: f32[8,4]) -> f32[64,4] {{\n"
           f"  %f = f32[8,4]{{1,0}} fusion(%a), kind=kLoop, calls=%fused.1\n"
           f"  ROOT %all-gather.1 = f32[64,4]{{1,0}} all-gather(%f), dimensions={{0}}\n}}\n")
    line = [x for x in hlo.splitlines() if "all-gather(" in x][0]
    assert _gather_inputs_in_bf16(hlo, line) is expect


# ---------------------------------------------------------------------- export
# platform -> (the custom call of its Pallas kernel, the log-prob impl that selects it)
TARGETS = {"tpu": ("tpu_custom_call", "pallas_tpu"),
           "cuda": ("__gpu$xla.gpu.triton", "pallas_gpu")}


def accelerator_mesh(mesh, platform):
  """An abstract mesh of `mesh`'s shape on accelerators of `platform`'s default kind
  (r1jax.compiled.accelerator_mesh: TPU v5p, NVIDIA H100)."""
  from r1jax import compiled as compiled_lib
  return compiled_lib.accelerator_mesh(mesh, platform)


@pytest.mark.parametrize("platform", list(TARGETS))
def test_full_update_exports_for_accelerators(platform):
  """jax.export of the whole jitted GRPO update (fsdp_tp on 8 devices) for TPU and CUDA
  with the Pallas log-prob selected: the Mosaic / Triton kernel is in the exported module
  (compiling it needs the accelerator)."""
  call, impl = TARGETS[platform]
  fn, args = build("grpo_update", "fsdp_tp", 8, impl=impl, platform=platform)
  amesh = args[0].params["embedding"].sharding.mesh
  with jax.sharding.use_abstract_mesh(amesh):
    exp = export.export(fn, platforms=[platform],
                        disabled_checks=[export.DisabledSafetyCheck.custom_call(call)])(*args)
  assert call in exp.mlir_module()
  assert exp.nr_devices == 8


def main():
  table = {}
  for program in PROGRAMS:
    for preset in MESHES:
      one, eight = analyse(program, preset, 1), analyse(program, preset, 8)
      gathers = sorted(eight["all_gathers"], reverse=True)
      table[f"{program}/{preset}"] = {
          "flops_ratio": round(eight["flops"] / one["flops"], 4),
          "xla_flops_ratio": round(eight["xla_flops"] / one["xla_flops"], 4),
          "ideal": 1 / 8, "temp_bytes_1": one["temp_bytes"],
          "temp_bytes_8": eight["temp_bytes"],
          "largest_all_gather": list(gathers[0][1]) if gathers else None,
          "tokens_x_D": [_tokens(program), CFG.hidden_size]}
      print(program, preset, table[f"{program}/{preset}"], flush=True)
  print(json.dumps({"jax": jax.__version__, "table": table}))


if __name__ == "__main__":
  sys.exit(main())
