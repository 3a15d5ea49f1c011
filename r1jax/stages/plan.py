"""Pre-flight plan of a GRPO step: compile it for the configured mesh, run nothing.

  python -m r1jax.main --config=configs/grpo.py --config.stage=plan [--config.plan.hbm_gib=16]

Lowers and compiles the three programs of a GRPO step (r1jax.stages.grpo) on the devices of
`mesh` with abstract arguments (nothing is allocated or run):

  rollout      sampling.generate: prefill and decode of prompts_per_step x num_generations
               completions of max_new_tokens (prompts at the bucket of data.max_prompt_tokens);
  ref_forward  the reference policy's log-probs (rl.beta > 0) - pi_old's too when mu > 1;
  update       Trainer.jit_update: micro-batched forward, backward and AdamW step.

and prints per device, from XLA (r1jax.compiled): parameter, optimizer-state and batch
bytes; each program's temporary bytes (activations, gradients, KV cache) and its peak
(arguments + outputs + temporaries - donated); the step's peak with what stays resident
between programs (policy state, reference copy, the sampler's copy); FLOPs per step (XLA's
cost analysis, and the matmul FLOPs with loops counted); and the collectives (count and
bytes per step).

With plan.hbm_gib > 0 it also searches micro-batch size (rl.micro_batch_prompts), remat and
the log-prob chunk (kernels.logprob_chunk_size) for the first setting, in an order meant
as fastest first, whose step peak fits in that many GiB per device: the largest
micro-batch first, remat only when needed, then smaller chunks; and prints the chosen
`--config.` overrides (ValueError when none fits).

Peaks are those of XLA's buffer assignment; what a backend's allocator adds (fragmentation,
its own reserve) is not counted. The sampler's KV-cache layout is left to XLA here (the
stage pins it to the batch axes), so a rollout under tensor parallelism may differ.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from r1jax import compiled as compiled_lib
from r1jax import models
from r1jax import sampling
from r1jax import sharding as shd
from r1jax.kernels import logprob as kernel_lib
from r1jax.losses import grpo as grpo_lib
from r1jax.stages import grpo as grpo_stage
from r1jax.train import precision
from r1jax.train import settings as settings_lib
from r1jax.train import trainer as trainer_lib

GIB = 2 ** 30
PROGRAMS = ("rollout", "ref_forward", "update")


@dataclasses.dataclass(frozen=True)
class Knobs:
  """The settings the plan may choose."""
  micro_batch_prompts: int
  remat: bool
  logprob_chunk_size: int

  def overrides(self) -> str:
    return (f"--config.rl.micro_batch_prompts={self.micro_batch_prompts} "
            f"--config.remat={self.remat} "
            f"--config.kernels.logprob_chunk_size={self.logprob_chunk_size}")


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                      tree, shardings)


def _batch(B: int, G: int, P: int, N: int, rl) -> dict[str, np.ndarray]:
  """Zeros shaped as the update's batch (grpo_rollout.build_batch plus the loss weights)."""
  z = lambda *s: np.zeros(s, np.float32)
  batch = {"prompt_tokens": np.zeros((B, P), np.int32), "prompt_lengths": np.ones((B,), np.int32),
           "completion": np.zeros((B, G, N), np.int32), "advantages": z(B, G),
           "weights": z(B, G, N), "metric_weights": z(B, G, N),
           "sampler_logp": z(B, G, N)}
  if rl.beta > 0:
    batch["ref_logp"] = z(B, G, N)
  if rl.num_iterations > 1:
    batch["old_logp"] = z(B, G, N)
  return batch


def build_programs(config, cfg: models.ModelConfig, mesh, knobs: Knobs) -> dict[str, Any]:
  """{program: (jitted function, abstract arguments, state bytes)} of one GRPO step of
  `config` under `knobs` on `mesh` (nothing allocated).

  Also returns under "resident" the per-device bytes that live through the whole step:
  {"params", "opt_state", "reference", "sampler_params"} (a sampler copy is counted only
  when it is a separate buffer: another dtype or layout than the masters).
  """
  s = grpo_stage.validate_config(config)
  rl = config.rl
  rules, sampler_rules = s.parallel.train_rules, s.parallel.sampling_rules
  B, G = s.prompts_per_step, s.num_generations
  if B % knobs.micro_batch_prompts:
    raise ValueError(f"rl.micro_batch_prompts={knobs.micro_batch_prompts} must divide "
                     f"rl.prompts_per_step={B}")
  num_micro = B // knobs.micro_batch_prompts
  P = sampling.bucket_length(int(config.data.max_prompt_tokens), 32)  # the stage's bucket
  N = int(rl.max_new_tokens)
  kcfg = config.kernels.copy_and_resolve_references()
  kcfg.logprob_chunk_size = knobs.logprob_chunk_size
  kernel = kernel_lib.kwargs_from_config(
      kcfg, mesh, shd.batch_sharding(mesh, 1, rules).spec[0],
      weight_spec=shd.logical_to_spec(("embed", "vocab"), (cfg.hidden_size, cfg.vocab_size),
                                      mesh, rules))
  optimizer = trainer_lib.make_optimizer(settings_lib.optimizer_config(
      config, decay_steps=config.steps, updates_per_step=rl.num_iterations))[0]
  loss_fn = precision.compute_params(
      grpo_stage.make_loss_fn(cfg, s.grpo, temperature=rl.temperature, kernel=kernel,
                              remat=knobs.remat, num_iterations=rl.num_iterations), cfg.dtype)
  trainer = trainer_lib.Trainer(mesh, models.param_logical_axes(cfg), loss_fn, optimizer,
                                num_micro, rules=rules)
  state = trainer.abstract_init(models.param_shapes(cfg))
  batch = _batch(B, G, P, N, rl)
  batch_sh = {k: shd.batch_sharding(mesh, v.ndim, rules) for k, v in batch.items()}
  out: dict[str, Any] = {}
  update = trainer.jit_update(batch)
  out["update"] = (update, (state, _abstract(batch, batch_sh),
                            jax.ShapeDtypeStruct((), jnp.float32, sharding=shd.replicated(mesh)),
                            None))
  compute = precision.cast_floating(state.params, cfg.dtype)
  if rl.beta > 0 or rl.num_iterations > 1:
    fn = grpo_stage.make_logprob_fn(cfg, mesh, num_micro, temperature=rl.temperature,
                                    kernel=kernel, rules=rules)
    keys = ("prompt_tokens", "prompt_lengths", "completion")
    out["ref_forward"] = (fn, (compute, _abstract({k: batch[k] for k in keys},
                                                  {k: batch_sh[k] for k in keys})))
  # The rollout: the sampler's layout of a compute-dtype copy of the policy.
  if sampler_rules != rules:
    sh = shd.tree_shardings(trainer.param_axes, compute, mesh, sampler_rules)
    sampler_params = _abstract(compute, sh)
  else:
    sampler_params = compute
  divisible = B % shd.batch_divisor(mesh, sampler_rules) == 0
  ids_sh = (shd.batch_sharding(mesh, 2, sampler_rules) if divisible else shd.replicated(mesh))
  len_sh = (shd.batch_sharding(mesh, 1, sampler_rules) if divisible else shd.replicated(mesh))
  N_bucket = sampling.bucket_length(N, 16)
  gen = lambda params, ids, lengths, key, limit: sampling.generate(
      params, ids, lengths, key, limit, cfg=cfg, num_samples=G, cache_len=N_bucket,
      temperature=float(rl.temperature), top_p=float(rl.top_p), top_k=int(rl.top_k),
      stop_ids=(0,), pad_id=0)
  out["rollout"] = (jax.jit(gen), (
      sampler_params, jax.ShapeDtypeStruct((B, P), jnp.int32, sharding=ids_sh),
      jax.ShapeDtypeStruct((B,), jnp.int32, sharding=len_sh), jax.random.key(0),
      jax.ShapeDtypeStruct((), jnp.int32)))
  separate_sampler = sampler_rules != rules or jnp.dtype(cfg.dtype) != jnp.dtype(cfg.param_dtype)
  out["resident"] = {
      "params": compiled_lib.tree_bytes(state.params),
      "opt_state": compiled_lib.tree_bytes(state.opt_state),
      "reference": compiled_lib.tree_bytes(compute) if rl.beta > 0 else 0,
      "sampler_params": compiled_lib.tree_bytes(sampler_params) if separate_sampler else 0,
      "batch": compiled_lib.tree_bytes(_abstract(batch, batch_sh))}
  return out


def analyse(config, cfg, mesh, knobs: Knobs, cache: Optional[dict] = None) -> dict[str, Any]:
  """Compile the step's programs and read XLA's figures (per device; see module docstring).

  Returns {"knobs", "resident": {...}, "programs": {name: compiled.summary + "step_bytes"},
  "step_peak_bytes", "step_growth_bytes" (the peak less what is resident between steps:
  policy state and reference), "step_flops", "step_matmul_flops"}; rollout FLOPs count
  every decode loop at the whole completion budget (an upper bound: samples stop early). A program's `step_bytes` is its
  peak plus what stays resident outside its arguments while it runs:
    rollout:     policy state + reference (+ its own params when they are a copy);
    ref_forward: policy state (its params argument is the reference);
    update:      reference (its state argument is the policy, donated).
  `cache` (a dict kept across calls with the same config and mesh) reuses the summaries of
  programs whose knobs did not change: the rollout depends on none, the reference forward
  on the micro-batch and chunk, the update on all three.
  """
  cache = {} if cache is None else cache
  depends = {"rollout": (), "ref_forward": (knobs.micro_batch_prompts, knobs.logprob_chunk_size),
             "update": dataclasses.astuple(knobs)}
  progs = build_programs(config, cfg, mesh, knobs)
  res = progs.pop("resident")
  state = res["params"] + res["opt_state"]
  outside = {"rollout": state + res["reference"] - (0 if res["sampler_params"] else res["params"]),
             "ref_forward": state, "update": res["reference"]}
  report: dict[str, Any] = {}
  n_decode = sampling.bucket_length(int(config.rl.max_new_tokens), 16)
  for name in PROGRAMS:
    if name not in progs:
      continue
    key = (name, depends[name])
    if key not in cache:
      fn, args = progs[name]
      compiled = fn.lower(*args).compile()
      # Decode loops stop early, so XLA knows no trip count: count the whole budget.
      cache[key] = compiled_lib.summary(
          compiled, unknown_trip_count=n_decode if name == "rollout" else 1)
    summ = dict(cache[key])
    summ["step_bytes"] = summ["peak_bytes"] + outside[name]
    report[name] = summ
  mu = int(config.rl.num_iterations)
  times = {"rollout": 1, "ref_forward": (int(config.rl.beta > 0) + int(mu > 1)), "update": mu}
  peak = max(r["step_bytes"] for r in report.values())
  return {"knobs": dataclasses.asdict(knobs), "resident": res, "programs": report,
          "step_peak_bytes": peak, "step_growth_bytes": peak - state - res["reference"],
          "step_flops": sum(r["flops"] * times[n] for n, r in report.items()),
          "step_matmul_flops": sum(r["matmul_flops"] * times[n] for n, r in report.items())}


def candidates(config, mesh, rules) -> list[Knobs]:
  """Settings in the order the search tries them (fastest first): micro-batches from the
  largest that the mesh's batch shards divide down, no remat before remat, the configured
  log-prob chunk before halvings of it (down to 64 tokens; only chunks smaller than a
  device's completion tokens per micro-batch, as larger ones change nothing)."""
  B = int(config.rl.prompts_per_step)
  div = shd.batch_divisor(mesh, rules)
  micro = [m for m in range(B, 0, -1) if B % m == 0 and m % div == 0]
  if not micro:
    raise ValueError(f"rl.prompts_per_step={B} has no micro-batch that the mesh's {div} "
                     f"batch shards divide")
  chunk = int(config.kernels.logprob_chunk_size)
  G, N = int(config.rl.num_generations), int(config.rl.max_new_tokens)
  out = []
  for m, remat in itertools.product(micro, (False, True)):
    tokens = m // div * G * N
    out += [Knobs(m, remat, c) for c in (chunk, chunk // 2, chunk // 4)
            if c == chunk or 64 <= c < tokens]
  return out


def search(config, cfg, mesh, hbm_bytes: float) -> tuple[Optional[dict], list[dict]]:
  """First candidate (see `candidates`) whose step peak fits `hbm_bytes`: (its analysis or
  None, every analysis tried, in order). Within one micro-batch size and remat, smaller
  chunks are skipped once halving the chunk did not lower the peak."""
  rules = settings_lib.ParallelSettings.from_config(config).train_rules
  tried, cache, stale = [], {}, set()
  for k in candidates(config, mesh, rules):
    group = (k.micro_batch_prompts, k.remat)
    if group in stale:
      continue
    a = analyse(config, cfg, mesh, k, cache)
    logging.info("plan: %s -> step peak %.3f GiB", k, a["step_peak_bytes"] / GIB)
    if tried and tried[-1]["knobs"]["micro_batch_prompts"] == k.micro_batch_prompts \
        and tried[-1]["knobs"]["remat"] == k.remat \
        and a["step_peak_bytes"] >= tried[-1]["step_peak_bytes"]:
      stale.add(group)  # a smaller chunk did not lower the peak: the head is not the peak
    tried.append(a)
    if a["step_peak_bytes"] <= hbm_bytes:
      return a, tried
  return None, tried


def format_report(a: dict, hbm_gib: float = 0.0) -> str:
  """Human-readable table of one `analyse` result (per device)."""
  g = lambda b: f"{b / GIB:8.3f} GiB"
  r = a["resident"]
  lines = [f"plan (per device) for {a['knobs']}",
           f"  parameters        {g(r['params'])}",
           f"  optimizer state   {g(r['opt_state'])}",
           f"  reference copy    {g(r['reference'])}",
           f"  sampler copy      {g(r['sampler_params'])}",
           f"  update batch      {g(r['batch'])}"]
  for name, p in a["programs"].items():
    colls = ", ".join(f"{op} x{c['count']} {c['bytes'] / 2**20:.1f} MiB"
                      for op, c in p["collectives"].items()) or "none"
    lines += [f"  {name}:",
              f"    arguments {g(p['argument_bytes'])}  outputs {g(p['output_bytes'])}  "
              f"donated {g(p['alias_bytes'])}",
              f"    temporaries (activations, gradients, caches) {g(p['temp_bytes'])}",
              f"    program peak {g(p['peak_bytes'])}   step peak while it runs "
              f"{g(p['step_bytes'])}",
              f"    FLOPs {p['flops']:.3e} (XLA), matmul FLOPs {p['matmul_flops']:.3e} "
              f"(loops counted)",
              f"    collectives: {colls}"]
  lines.append(f"  step: peak {g(a['step_peak_bytes'])} (growth over the resident state "
               f"{g(a['step_growth_bytes'])}), FLOPs {a['step_flops']:.3e}, "
               f"matmul FLOPs {a['step_matmul_flops']:.3e}")
  if hbm_gib:
    lines.append(f"  fits {hbm_gib} GiB: {a['step_peak_bytes'] <= hbm_gib * GIB}")
  return "\n".join(lines)


def run(config) -> dict[str, Any]:
  """The plan stage: print the plan of the configured GRPO step (and, with plan.hbm_gib,
  the chosen settings); returns the analysis (with "chosen" when searched).

  Raises:
    ValueError: not a GRPO config, a bad value, or nothing fits plan.hbm_gib.
  """
  if "rl" not in config:
    raise ValueError("the plan stage plans GRPO steps: use --config=configs/grpo.py "
                     "(or another config with an `rl` block)")
  s = grpo_stage.validate_config(config)
  hbm = float(config.get("plan", {}).get("hbm_gib", 0.0) or 0.0)
  if hbm < 0:
    raise ValueError(f"plan.hbm_gib must be >= 0, got {hbm}")
  mesh = s.parallel.mesh()
  cfg = s.model.load(params=False, with_tokenizer=False).config
  logging.info("%s", precision.describe(cfg.dtype, cfg.param_dtype))
  knobs = Knobs(s.micro_batch_prompts, bool(config.remat),
                int(config.kernels.logprob_chunk_size))
  a = analyse(config, cfg, mesh, knobs)
  print(format_report(a, hbm))
  result = {"configured": a}
  if hbm:
    chosen, _ = search(config, cfg, mesh, hbm * GIB)
    if chosen is None:
      raise ValueError(f"plan.hbm_gib={hbm}: no micro-batch size, remat or log-prob chunk "
                       f"fits the step; use more devices (mesh.fsdp), bf16 "
                       f"(--config.dtype=bfloat16) or smaller rl.max_new_tokens")
    print(format_report(chosen, hbm))
    result["chosen"] = chosen
    print(f"plan: fits {hbm} GiB per device with: {Knobs(**chosen['knobs']).overrides()}")
  print(json.dumps({"mesh": dict(mesh.shape), "model_params": cfg.num_params(),
                    "dtype": cfg.dtype, "param_dtype": cfg.param_dtype,
                    "step_peak_bytes": a["step_peak_bytes"], "step_flops": a["step_flops"],
                    **({"chosen": result["chosen"]["knobs"]} if hbm else {})}))
  return result
