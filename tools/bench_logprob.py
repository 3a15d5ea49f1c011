"""Benchmark of the fused per-token log-prob (r1jax/kernels/logprob.py) against the naive
log_softmax of full [N, V] logits, measured in the same run.

For each N x D x V it compiles forward and forward+backward (d hidden, d lm_head) of each
implementation and reports
  - peak memory: XLA's buffer assignment of the compiled program (arguments + outputs +
    temporaries, from `compiled.memory_analysis()`; nothing has to run, so it is reported
    even where the naive program would not fit in memory);
  - time (median of --reps runs after a warm-up) where the work fits --max-tflop and the
    program fits --max-mem-gb; TFLOP/s counted as 2NDV forward and 8NDV forward+backward;
  - ratios against naive (memory, time).
On CPU the implementations are naive and chunked; on a GPU/TPU also pallas.

--baseline REV also runs each implementation as the kernel module was at git revision REV
(`git show REV:r1jax/kernels/logprob.py`, loaded next to the current one), named
IMPL@REV, with ratios against it: a regression check of changed paths in the same run.
--devices K runs on K fake CPU devices (or the first K accelerators) with the tokens
split over them (`--mesh dp|fsdp|fsdp_tp`, the presets' layouts): the data-parallel path,
where the time is that of all K devices' work on the machine's cores.

  python tools/bench_logprob.py                        # the issue's grid (CPU: times where cheap)
  python tools/bench_logprob.py --n 4096 --d 576 --v 49152 --impls naive,chunked
  python tools/bench_logprob.py --n 4096 --d 576 --v 49152 --impls naive,chunked,fused_loss
  python tools/bench_logprob.py --n 4096 --d 576 --v 49152 --impls chunked --baseline b2bb1ea
  python tools/bench_logprob.py --n 4096 --d 576 --v 49152 --impls chunked --baseline b2bb1ea \
      --devices 8 --mesh fsdp_tp

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

if __name__ == "__main__" and "--devices" in sys.argv:  # before jax is imported
  _k = sys.argv[sys.argv.index("--devices") + 1]
  os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={_k}")

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax import sharding as shd
from r1jax.kernels import logprob as K
from r1jax.kernels.logprob_fused_loss import fused_loss

ROOT = pathlib.Path(__file__).resolve().parents[1]
MESHES = {"dp": ({"data": -1, "fsdp": 1, "tensor": 1}, ("data",), P()),
          "fsdp": ({"data": 1, "fsdp": -1, "tensor": 1}, ("fsdp",), P("fsdp", None)),
          "fsdp_tp": ({"data": 1, "fsdp": -1, "tensor": 2}, ("fsdp",), P("fsdp", "tensor"))}


def load_baseline(rev: str):
  """The kernel module as it was at git revision `rev`, imported under another name."""
  src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:r1jax/kernels/logprob.py"],
                       check=True, capture_output=True, text=True).stdout
  path = pathlib.Path(tempfile.mkdtemp()) / f"logprob_{rev}.py"
  path.write_text(src)
  spec = importlib.util.spec_from_file_location(f"logprob_{rev}", path)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mod  # dataclasses look their module up
  spec.loader.exec_module(mod)
  return mod


def _parse_ints(s):
  return [int(x) for x in s.split(",") if x]


def _layout(layout):
  """(mesh, kwargs for fused_logprob, shardings of h, w, y) of a --mesh layout; no mesh:
  (None, {}, None)."""
  if layout is None:
    return None, {}, None
  shape, axes, w_spec = MESHES[layout]
  mesh = shd.make_mesh(shape)
  sh = (NamedSharding(mesh, P(axes, None)), NamedSharding(mesh, w_spec),
        NamedSharding(mesh, P(axes)))
  return mesh, {"mesh": mesh, "token_axes": axes}, sh


def _compiled(impl, n, d, v, dtype, chunk, backward, module=K, layout=None):
  _, kw, sh = _layout(layout)
  sh = sh or (None, None, None)
  args = (jax.ShapeDtypeStruct((n, d), dtype, sharding=sh[0]),
          jax.ShapeDtypeStruct((d, v), dtype, sharding=sh[1]),
          jax.ShapeDtypeStruct((n,), jnp.int32, sharding=sh[2]))

  def fwd(h, w, y):
    o = module.fused_logprob(h, w, y, impl=impl, chunk_size=chunk, return_entropy=True, **kw)
    return o.logprob, o.entropy

  if impl == "fused_loss":  # the same loss with its gradients formed in the forward
    f = lambda h, w, y: fused_loss(h, w, y, {}, lambda lp, e, _: jnp.sum(lp) + 0.01 * jnp.sum(e),
                                   chunk_size=chunk)
    fn = jax.jit(jax.grad(f, argnums=(0, 1)) if backward else f)
  elif backward:
    def loss(h, w, y):
      lp, ent = fwd(h, w, y)
      return jnp.sum(lp) + 0.01 * jnp.sum(ent)
    fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
  else:
    fn = jax.jit(fwd)
  return fn, fn.lower(*args).compile()


def _memory(compiled):
  """(peak, temp) bytes: arguments + outputs + temporaries, and temporaries alone (the
  working memory beyond the inputs and the outputs, which every implementation shares)."""
  m = compiled.memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes -
          m.alias_size_in_bytes)
  return int(peak), int(m.temp_size_in_bytes)


def _time(fns, n, d, v, dtype, reps, layout=None):
  """Median seconds of each fn in `fns`, timed in interleaved rounds (fn1, fn2, ...; fn1,
  ...) after a warm-up, so that load from other jobs hits every variant alike."""
  k = jax.random.split(jax.random.key(0), 3)
  h = jax.random.normal(k[0], (n, d), dtype)
  w = (jax.random.normal(k[1], (d, v), jnp.float32) / d ** 0.5).astype(dtype)
  y = jax.random.randint(k[2], (n,), 0, v)
  sh = _layout(layout)[2]
  if sh is not None:
    h, w, y = (jax.device_put(x, s) for x, s in zip((h, w, y), sh))
  for fn in fns:
    jax.block_until_ready(fn(h, w, y))
  times = [[] for _ in fns]
  for _ in range(reps):
    for fn, t in zip(fns, times):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(h, w, y))
      t.append(time.perf_counter() - t0)
  del h, w, y
  return [statistics.median(t) for t in times]


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--n", default="4096,16384")
  ap.add_argument("--d", default="576,1536,4096")
  ap.add_argument("--v", default="49152,151936")
  ap.add_argument("--impls", default="", help="default: naive,chunked (+pallas off CPU); "
                  "fused_loss = the loss with its gradients formed in the forward "
                  "(rl.fused_loss; its fwd already computes them)")
  ap.add_argument("--dtype", default="", help="default: float32 on CPU, bfloat16 elsewhere")
  ap.add_argument("--chunk", type=int, default=256,
                  help="tokens per chunk (chunked / bwd); the configs' default is 256")
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--max-tflop", type=float, default=-1.0,
                  help="time only where 8NDV <= this (default: 3 on CPU, unlimited else)")
  ap.add_argument("--max-mem-gb", type=float, default=-1.0,
                  help="time only programs whose peak fits (default: 60%% of RAM / device)")
  ap.add_argument("--baseline", default="", help="git revision to compare with (IMPL@REV)")
  ap.add_argument("--devices", type=int, default=0,
                  help="split the tokens over this many (fake CPU) devices; see --mesh")
  ap.add_argument("--mesh", default="dp", choices=sorted(MESHES))
  a = ap.parse_args()
  layout = a.mesh if a.devices > 1 else None
  baseline = load_baseline(a.baseline) if a.baseline else None

  backend = jax.default_backend()
  dev = jax.devices()[0]
  impls = a.impls.split(",") if a.impls else (
      ["naive", "chunked"] + ([] if backend == "cpu" else ["pallas"]))
  dtype = jnp.dtype(a.dtype or ("float32" if backend == "cpu" else "bfloat16"))
  max_tflop = a.max_tflop if a.max_tflop >= 0 else (3.0 if backend == "cpu" else 1e9)
  if a.max_mem_gb >= 0:
    max_mem = a.max_mem_gb * 2 ** 30
  else:
    stats = dev.memory_stats() if backend != "cpu" else None
    total = (stats or {}).get("bytes_limit") or (
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    max_mem = 0.6 * total

  print(f"device: {dev.device_kind} ({backend}) x {max(a.devices, 1)}"
        f"{f' ({layout} layout)' if layout else ''}, dtype {dtype.name}, chunk {a.chunk}, "
        f"timing where 8NDV <= {max_tflop:g} TFLOP and peak <= {max_mem / 2**30:.1f} GiB")
  print(f"{'N':>6} {'D':>5} {'V':>7} {'impl':>8} | {'fwd MiB':>9} {'f+b MiB':>9} "
        f"{'f+b tmp':>9} | {'fwd ms':>9} {'f+b ms':>9} | {'fwd TF/s':>8} {'f+b TF/s':>8} | "
        f"mem/naive tmp/naive time/naive")
  results = []
  for n in _parse_ints(a.n):
    for d in _parse_ints(a.d):
      for v in _parse_ints(a.v):
        rows = {}
        variants = [(impl, impl, K) for impl in impls]
        if baseline is not None:
          variants += [(f"{impl}@{a.baseline}", impl, baseline) for impl in impls
                       if impl not in ("naive", "fused_loss")]
        for name, impl, module in variants:
          rows[name] = {"n": n, "d": d, "v": v, "impl": name, "dtype": dtype.name,
                        "devices": max(a.devices, 1), "layout": layout}
        for phase, bwd in (("fwd", False), ("fwd_bwd", True)):
          flop = (8 if bwd else 2) * n * d * v
          timed = []
          for name, impl, module in variants:
            r = rows[name]
            fn, comp = _compiled(impl, n, d, v, dtype, a.chunk, bwd, module, layout)
            r[f"{phase}_peak_bytes"], r[f"{phase}_temp_bytes"] = _memory(comp)
            r[f"{phase}_s"] = None
            if flop / 1e12 <= max_tflop and r[f"{phase}_peak_bytes"] <= max_mem:
              timed.append((name, fn))
            del comp
          for (name, _), s in zip(timed, _time([f for _, f in timed], n, d, v, dtype, a.reps,
                                                layout)):
            rows[name][f"{phase}_s"] = s
            rows[name][f"{phase}_tflops"] = flop / s / 1e12
          del timed
        if baseline is not None:  # the changed paths against the same impl at --baseline
          for impl in impls:
            new, old = rows.get(impl), rows.get(f"{impl}@{a.baseline}")
            if new is None or old is None:
              continue
            for ph in ("fwd", "fwd_bwd"):
              new[f"{ph}_temp_ratio_vs_baseline"] = (new[f"{ph}_temp_bytes"] /
                                                     max(old[f"{ph}_temp_bytes"], 1))
              new[f"{ph}_peak_ratio_vs_baseline"] = (new[f"{ph}_peak_bytes"] /
                                                     old[f"{ph}_peak_bytes"])
              if new[f"{ph}_s"] and old[f"{ph}_s"]:
                new[f"{ph}_time_ratio_vs_baseline"] = new[f"{ph}_s"] / old[f"{ph}_s"]
            print(f"{impl} vs {impl}@{a.baseline}: " + ", ".join(
                f"{k.replace('_ratio_vs_baseline', '')} x{v:.3f}" for k, v in new.items()
                if k.endswith("_ratio_vs_baseline")), flush=True)
        base = rows.get("naive")
        for impl, r in rows.items():
          if base is not None:
            r["fwd_bwd_mem_ratio_vs_naive"] = r["fwd_bwd_peak_bytes"] / base["fwd_bwd_peak_bytes"]
            r["fwd_bwd_temp_ratio_vs_naive"] = r["fwd_bwd_temp_bytes"] / base["fwd_bwd_temp_bytes"]
            r["fwd_mem_ratio_vs_naive"] = r["fwd_peak_bytes"] / base["fwd_peak_bytes"]
            for ph in ("fwd", "fwd_bwd"):
              if r[f"{ph}_s"] and base[f"{ph}_s"]:
                r[f"{ph}_time_ratio_vs_naive"] = r[f"{ph}_s"] / base[f"{ph}_s"]
          fmt_ms = lambda s: f"{1e3 * s:9.1f}" if s else f"{'-':>9}"
          fmt_tf = lambda k: f"{r[k]:8.3f}" if r.get(k) else f"{'-':>8}"
          tr = r.get("fwd_bwd_time_ratio_vs_naive")
          print(f"{n:>6} {d:>5} {v:>7} {impl:>8} | {r['fwd_peak_bytes'] / 2**20:9.0f} "
                f"{r['fwd_bwd_peak_bytes'] / 2**20:9.0f} {r['fwd_bwd_temp_bytes'] / 2**20:9.0f} | "
                f"{fmt_ms(r['fwd_s'])} {fmt_ms(r['fwd_bwd_s'])} | {fmt_tf('fwd_tflops')} "
                f"{fmt_tf('fwd_bwd_tflops')} | "
                f"{r.get('fwd_bwd_mem_ratio_vs_naive', float('nan')):9.3f} "
                f"{r.get('fwd_bwd_temp_ratio_vs_naive', float('nan')):9.3f}  "
                f"{'-' if tr is None else f'{tr:.2f}'}", flush=True)
          results.append(r)
  goal = [r for r in results if r["n"] == 16384 and r["v"] == 151936 and r["impl"] != "naive"]
  summary = {"device": dev.device_kind, "backend": backend, "dtype": dtype.name,
             "chunk": a.chunk, "devices": max(a.devices, 1), "layout": layout,
             "baseline": a.baseline or None, "results": results,
             "goal_mem_ratio_n16384_v151936": {f"{r['impl']}_d{r['d']}":
                                               r.get("fwd_bwd_mem_ratio_vs_naive")
                                               for r in goal},
             "goal_temp_ratio_n16384_v151936": {f"{r['impl']}_d{r['d']}":
                                                r.get("fwd_bwd_temp_ratio_vs_naive")
                                                for r in goal}}
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
