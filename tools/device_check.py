"""Device check: what a person with a GPU or TPU runs once to see r1jax's hot paths on it.

    python tools/device_check.py            # real shapes on the default backend's devices
    python tools/device_check.py --small    # small shapes (runs on CPU too, Pallas interpreted)

Sections (each reports its figures or its error; the last line is one JSON object):
  env       JAX version, backend, device kind and count.
  matmul    a measured bf16 matmul peak ([M, K] x [K, M], f32 accumulation): the yardstick
            for the TFLOP/s below.
  kernels   fused log-prob at N=16384, D in {1536, 4096}, V=151936 in bf16 (--small:
            N=256, D in {64, 96}, V=1000):
            - correctness of pallas, chunked and naive against an f32 reference written
              here (row blocks of f32 logits, log_softmax; its autodiff for gradients):
              max |d logp|, max |d entropy|, relative error of d hidden and d lm_head;
            - forward and forward+backward time, TFLOP/s (2NDV and 8NDV) and peak memory
              (XLA's buffer assignment of the compiled program; arguments + outputs +
              temporaries) of each implementation.
  grpo      one GRPO step of the default model (SmolLM2-135M-Instruct; --small: a tiny
            random model): rollouts from the sampler, reference log-probs and one policy
            update with the configured kernel, on all devices (data parallel), timed after
            a first (compiling) step.

Nothing here is a pass/fail test; read the errors and ratios. Source of the methods: the
fused log-prob of r1jax/kernels/logprob.py and the GRPO update of r1jax/stages/grpo.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.kernels import logprob as K


def _timed(fn, *args, reps=3):
  """Median seconds of fn(*args) over reps runs after one warm-up (compile) run."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _peak_bytes(compiled):
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes -
             getattr(m, "alias_size_in_bytes", 0))


def _section(name, fn, out):
  t0 = time.perf_counter()
  try:
    out[name] = fn()
  except Exception as e:  # report and go on: one failing part must not hide the others
    out[name] = {"error": f"{type(e).__name__}: {e}"[:2000],
                 "traceback": traceback.format_exc()[-4000:]}
  out[name]["seconds"] = round(time.perf_counter() - t0, 2)
  print(f"[{name}] {json.dumps(out[name])[:3000]}", flush=True)


# ---------------------------------------------------------------------- env, matmul
def env():
  d = jax.devices()
  return {"jax": jax.__version__, "backend": jax.default_backend(), "device_kind":
          d[0].device_kind, "device_count": len(d), "process_count": jax.process_count()}


def matmul_peak(m, reps):
  k = jax.random.split(jax.random.key(0), 2)
  a = jax.random.normal(k[0], (m, m), jnp.bfloat16)
  b = jax.random.normal(k[1], (m, m), jnp.bfloat16)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  s = _timed(f, a, b, reps=reps)
  return {"shape": [m, m, m], "seconds": s, "tflops": 2 * m ** 3 / s / 1e12}


# ---------------------------------------------------------------------- kernels
def reference(h, w, y, block):
  """f32 log-probs and entropies, row block by row block (independent of the kernels)."""
  n, d = h.shape
  hs = h.astype(jnp.float32).reshape(n // block, block, d)
  ys = y.reshape(n // block, block)

  def one(args):
    hb, yb = args
    logits = jnp.dot(hb, w.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    logsm = jax.nn.log_softmax(logits, axis=-1)
    lp = jnp.take_along_axis(logsm, yb[:, None], axis=-1)[:, 0]
    return lp, -jnp.sum(jnp.exp(logsm) * logsm, axis=-1)

  lp, ent = jax.lax.map(one, (hs, ys))
  return lp.reshape(n), ent.reshape(n)


def _objective(lp, ent, coef):
  return jnp.sum(coef[0] * lp) + jnp.sum(coef[1] * ent)


def kernels(n, ds, v, impls, reps, chunk, max_naive_gib):
  out = {"n": n, "v": v, "dtype": "bfloat16", "chunk": chunk, "results": []}
  for d in ds:
    k = jax.random.split(jax.random.key(d), 4)
    h = jax.random.normal(k[0], (n, d), jnp.float32).astype(jnp.bfloat16)
    w = (jax.random.normal(k[1], (d, v), jnp.float32) / d ** 0.5).astype(jnp.bfloat16)
    y = jax.random.randint(k[2], (n,), 0, v)
    coef = jax.random.normal(k[3], (2, n), jnp.float32)
    block = next(b for b in (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1) if n % b == 0)
    ref = jax.jit(lambda h, w, y: reference(h, w, y, block))
    ref_lp, ref_ent = ref(h, w, y)
    ref_grad = jax.jit(jax.grad(lambda h, w: _objective(*reference(h, w, y, block), coef),
                                argnums=(0, 1)))
    rh, rw = ref_grad(h.astype(jnp.float32), w.astype(jnp.float32))
    for name in impls:
      r = {"d": d, "impl": name}
      # IMPL:BACKWARD, e.g. pallas:chunked = Pallas forward, vocabulary-chunked XLA backward.
      impl, _, backward = name.partition(":")
      kw = dict(impl=impl, backward=backward or "auto", chunk_size=chunk,
                return_entropy=True)
      try:
        fwd = jax.jit(lambda h, w, y: K.fused_logprob(h, w, y, **kw)[:2])
        grad = jax.jit(jax.grad(
            lambda h, w: _objective(*K.fused_logprob(h, w, y, **kw)[:2], coef),
            argnums=(0, 1)))
        cf = fwd.lower(h, w, y).compile()
        cb = grad.lower(h, w).compile()
        r["fwd_peak_bytes"], r["fwd_bwd_peak_bytes"] = _peak_bytes(cf), _peak_bytes(cb)
        if impl == "naive" and r["fwd_bwd_peak_bytes"] > max_naive_gib * 2 ** 30:
          r["skipped"] = f"naive fwd+bwd needs {r['fwd_bwd_peak_bytes'] / 2**30:.1f} GiB"
          out["results"].append(r)
          continue
        lp, ent = fwd(h, w, y)
        r["max_abs_err_logp"] = float(jnp.max(jnp.abs(lp - ref_lp)))
        r["max_abs_err_entropy"] = float(jnp.max(jnp.abs(ent - ref_ent)))
        gh, gw = grad(h, w)
        rel = lambda a, b: float(jnp.linalg.norm(a.astype(jnp.float32) - b) /
                                 jnp.maximum(jnp.linalg.norm(b), 1e-30))
        r["rel_err_dhidden"], r["rel_err_dlm_head"] = rel(gh, rh), rel(gw, rw)
        r["fwd_s"] = _timed(fwd, h, w, y, reps=reps)
        r["fwd_bwd_s"] = _timed(grad, h, w, reps=reps)
        r["fwd_tflops"] = 2 * n * d * v / r["fwd_s"] / 1e12
        r["fwd_bwd_tflops"] = 8 * n * d * v / r["fwd_bwd_s"] / 1e12
      except Exception as e:
        r["error"] = f"{type(e).__name__}: {e}"[:1500]
      out["results"].append(r)
      print(f"  kernel {json.dumps(r)}", flush=True)
  return out


# ---------------------------------------------------------------------- GRPO step
def grpo_step(small, prompts, samples, prompt_len, new_tokens, impl, reps):
  from ml_collections import ConfigDict

  from r1jax import models, sampling
  from r1jax import sharding as shd
  from r1jax.losses import grpo as grpo_lib
  from r1jax.stages import grpo as stage
  from r1jax.stages import grpo_rollout
  from r1jax.train import trainer as trainer_lib

  if small:
    cfg = models.tiny_config()
    params = models.init_params(cfg, jax.random.key(0))
    name = "tiny-random"
  else:
    name = "smollm2-135m-instruct"
    cfg, params = models.from_pretrained(name, dtype="bfloat16", param_dtype="float32")
  n_dev = jax.device_count()
  mesh = shd.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  B = max(prompts, n_dev) // n_dev * n_dev  # prompts: a multiple of the data shards
  rng = np.random.default_rng(0)
  ids = rng.integers(3, cfg.vocab_size, (B, prompt_len)).astype(np.int32)
  lengths = np.full((B,), prompt_len, np.int32)
  sampler = sampling.Sampler(cfg, pad_id=cfg.pad_token_id or 0, mesh=mesh)
  sp = sampling.SamplingParams(temperature=1.0, max_new_tokens=new_tokens)
  kcfg = K.default_config()
  kcfg.logprob_impl = impl
  kernel = K.kwargs_from_config(kcfg, mesh, shd.batch_sharding(mesh, 1).spec[0])
  gcfg = grpo_lib.GRPOConfig(beta=0.04, max_completion_len=new_tokens)
  optimizer = trainer_lib.make_optimizer(ConfigDict(dict(
      learning_rate=1e-6, warmup_steps=0, schedule="constant", decay_steps=1,
      end_lr_factor=0.0, weight_decay=0.0, b1=0.9, b2=0.99, eps=1e-8, max_grad_norm=1.0)))[0]
  loss_fn = stage.make_loss_fn(cfg, gcfg, temperature=1.0, kernel=kernel, remat=True,
                               num_iterations=1)
  trainer = trainer_lib.Trainer(mesh, models.param_logical_axes(cfg), loss_fn, optimizer, 1,
                                rules=shd.rules_for("dp"))
  state = trainer.init_state(params)
  ref_params = jax.tree.map(lambda x: x.copy(), state.params)
  ref_fn = stage.make_logprob_fn(cfg, mesh, 1, temperature=1.0, kernel=kernel,
                                  rules=shd.rules_for("dp"))
  out = {"model": name, "devices": n_dev, "prompts": B, "samples": samples,
         "prompt_len": prompt_len, "max_new_tokens": new_tokens, "impl": K.resolve_impl(impl),
         "steps": []}
  for step in range(1 + reps):
    t0 = time.perf_counter()
    ro = sampler(state.params, (ids, lengths), jax.random.key(step), num_samples=samples,
                 sampling=sp)
    t1 = time.perf_counter()
    adv = rng.normal(size=(B, samples)).astype(np.float32)
    batch = grpo_rollout.build_batch(ids, lengths, ro, adv, mask_truncated=False)
    mask = batch.pop("mask")
    w, denom = grpo_lib.loss_weights(mask.reshape(B * samples, -1), gcfg.aggregation,
                                     new_tokens)
    batch["weights"] = w.reshape(mask.shape)
    batch["metric_weights"] = grpo_lib.token_mean_weights(mask)
    batch.pop("sampler_logp")  # build_batch key of the sampler's log-probs
    batch["ref_logp"] = ref_fn(ref_params, trainer.shard_batch(batch))
    jax.block_until_ready(batch["ref_logp"])
    t2 = time.perf_counter()
    state, m = trainer.update(state, batch, denom)
    m = jax.device_get(m)
    t3 = time.perf_counter()
    tokens = int(np.asarray(ro.lengths).sum())
    out["steps"].append({"rollout_s": t1 - t0, "reference_s": t2 - t1, "update_s": t3 - t2,
                         "completion_tokens": tokens, "loss": float(m["loss"]),
                         "grad_norm": float(m["grad_norm"])})
    print(f"  grpo step {step}: {json.dumps(out['steps'][-1])}", flush=True)
  last = out["steps"][-1]
  out["finite"] = all(np.isfinite([s["loss"], s["grad_norm"]]).all() for s in out["steps"])
  out["update_tokens_per_s"] = (B * samples * (prompt_len + new_tokens)) / last["update_s"]
  if jax.default_backend() != "cpu":
    stats = jax.devices()[0].memory_stats() or {}
    out["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--small", action="store_true", help="small shapes (CPU, interpret mode)")
  ap.add_argument("--sections", default="env,matmul,kernels,grpo")
  ap.add_argument("--reps", type=int, default=0, help="timed repetitions (default 5; small 2)")
  ap.add_argument("--impls", default="pallas,pallas:chunked,chunked,naive",
                  help="IMPL or IMPL:BACKWARD (kernels.logprob_backward)")
  ap.add_argument("--chunk", type=int, default=1024, help="log-prob chunk (tokens)")
  ap.add_argument("--max-naive-gib", type=float, default=0.0,
                  help="skip naive where its fwd+bwd needs more (default: 80%% of device "
                       "memory where known, else 64)")
  a = ap.parse_args(argv)
  reps = a.reps or (2 if a.small else 5)
  sections = a.sections.split(",")
  impls = a.impls.split(",")
  if a.small:
    n, ds, v, m = 256, (64, 96), 1000, 512
    g = dict(prompts=2, samples=2, prompt_len=8, new_tokens=8)
  else:
    n, ds, v, m = 16384, (1536, 4096), 151936, 8192
    g = dict(prompts=8, samples=8, prompt_len=128, new_tokens=512)
  limit = a.max_naive_gib
  if not limit:
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    limit = 0.8 * (stats or {}).get("bytes_limit", 80 * 2 ** 30) / 2 ** 30
  out = {"small": a.small}
  if "env" in sections:
    _section("env", env, out)
  if "matmul" in sections:
    _section("matmul", lambda: matmul_peak(m, reps), out)
  if "kernels" in sections:
    _section("kernels", lambda: kernels(n, ds, v, impls, reps, a.chunk, limit), out)
    peak = out.get("matmul", {}).get("tflops")
    for r in out["kernels"].get("results", []):
      for ph in ("fwd", "fwd_bwd"):
        if peak and r.get(f"{ph}_tflops"):
          r[f"{ph}_fraction_of_matmul_peak"] = r[f"{ph}_tflops"] / peak
  if "grpo" in sections:
    _section("grpo", lambda: grpo_step(a.small, impl="auto", reps=1, **g), out)
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
