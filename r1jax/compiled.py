"""What XLA compiled: per-device FLOPs, memory and collectives of a compiled program.

Reads `jax.stages.Compiled` objects (from `jax.jit(f).lower(...).compile()`): XLA's cost
analysis (FLOPs of the per-device SPMD program), its buffer assignment (argument, output
and temporary bytes per device) and, from the HLO text, the collectives with their
per-device result shapes, and the matmul FLOPs with loops counted and split by operand
dtype.

XLA's cost analysis counts the body of a while loop once, whatever its trip count (a
`lax.map` of 8 matmuls reports the FLOPs of one), so it cannot compare two programs
whose loops run different numbers of times (e.g. a token-chunked loss on 1 device vs on
8). `matmul_flops` multiplies each loop body by the trip count that XLA itself annotates
(`known_trip_count`) and counts dot products only (2 x output elements x contracted
size), which is what dominates a transformer step. A loop whose trip count XLA cannot
know (a decode loop that stops early) counts `unknown_trip_count` times.

The HLO parser reads both the optimized HLO (`compiled.as_text()`) and the HLO that JAX
hands to XLA (`lowered.as_text(dialect="hlo")`). The latter says in which dtype the
program asks each matmul to run: an accelerator compiler keeps bf16 dots in bf16, while
XLA's CPU backend may upcast them to f32 in its optimized HLO (it cannot run every bf16
dot natively), so dtype checks read the HLO before optimization.

`accelerator_mesh` gives an abstract mesh of a named accelerator (TPU, NVIDIA GPU) for
lowering and exporting a program on a machine that has none.

Used by the compiled-program tests (tests/test_compiled.py), the pre-flight plan
(r1jax.stages.plan) and tools that report what a step costs without running it.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Any, Optional

import jax
import numpy as np

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
               "collective-permute")

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# "%name = <types> op(" with op a collective, optionally the async "-start" form.
_INSTR = re.compile(r"=\s*(?P<types>.*?)\s(?P<op>" + "|".join(COLLECTIVES) +
                    r")(?:-start)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+[0-9]*)\[(?P<dims>[0-9,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective of a compiled program: its op and per-device result array."""
  op: str  # one of COLLECTIVES
  dtype: str  # HLO element type, e.g. "f32", "bf16"
  shape: tuple[int, ...]  # result shape on one device

  @property
  def elements(self) -> int:
    return math.prod(self.shape)

  @property
  def nbytes(self) -> int:
    return self.elements * _BYTES.get(self.dtype, 4)


def _collective_arrays(line: str):
  """(op, [(dtype, shape)]) of a collective instruction line, else None."""
  m = _INSTR.search(line)
  if not m:
    return None
  arrays = [(a["dtype"], tuple(int(d) for d in a["dims"].split(",") if d))
            for a in _ARRAY.finditer(m["types"])]
  if not arrays:
    return None
  if "-start(" in line[m.start():m.end() + 1]:
    arrays = [max(arrays, key=lambda a: math.prod(a[1]))]
  return m["op"], arrays


def collectives(hlo_text: str) -> list[Collective]:
  """Collectives of optimized HLO text (`compiled.as_text()`), one per instruction (loop
  bodies once; see `program_stats` for counts with trip counts).

  The result of an async `*-start` (a tuple of operand and result buffers) counts as its
  largest array; a variadic collective (a tuple of results) as one entry per array.
  """
  out = []
  for line in hlo_text.splitlines():
    found = _collective_arrays(line)
    if found:
      out.extend(Collective(found[0], dt, shape) for dt, shape in found[1])
  return out


# A computation header: "ENTRY %main.6 (a: f32[2]) -> f32[2] {" (optimized HLO) or
# "closed_call.2 {" (the HLO JAX emits before optimization).
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s*(?:\(.*\)\s*->\s*.*)?\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.*?)\s"
                          r"(?P<op>[a-z][\w\-]*)\((?P<args>[^)]*)\)(?P<attrs>.*)$")
_CALLEE = re.compile(r"(?:calls|to_apply|body|called_computations|branch_computations)="
                     r"(?:\{(?P<many>[^}]*)\}|%?(?P<one>[\w.\-]+))")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def _parse(hlo_text: str):
  """({computation name: [instruction matches]}, entry name)."""
  comps: dict[str, list] = {}
  entry = None
  current = None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m and "=" not in line.split("(")[0] and not line.startswith("HloModule"):
      current = comps.setdefault(m["name"], [])
      if line.startswith("ENTRY"):
        entry = m["name"]
      continue
    if line.strip() == "}":
      current = None
      continue
    if current is not None:
      m = _INSTRUCTION.match(line)
      if m:
        current.append(m)
  return comps, entry


def _shape_dtype(typ: str):
  a = _ARRAY.search(typ)
  return (tuple(int(d) for d in a["dims"].split(",") if d), a["dtype"]) if a else ((), "")


def program_stats(hlo_text: str, *, unknown_trip_count: int = 1) -> collections.Counter:
  """Per-execution totals of an HLO module, every loop body counted as many times as
  XLA's `known_trip_count` says (`unknown_trip_count` when XLA does not know it), a
  conditional as its most expensive branch (by matmul FLOPs).

  Returns a Counter with keys
    ("flops", "<lhs dtype>x<rhs dtype>"): dot FLOPs (2 x output elements x contracted
      size) by operand dtypes, e.g. ("flops", "bf16xbf16");
    ("bytes", op) / ("count", op): per-device result bytes / executions of each
      collective op (optimized HLO only: collectives appear after SPMD partitioning).
  """
  comps, entry = _parse(hlo_text)
  cache: dict[str, collections.Counter] = {}

  def flops_of(c):
    return sum(v for k, v in c.items() if k[0] == "flops")

  def total(name):
    if name in cache:
      return cache[name]
    cache[name] = collections.Counter()  # recursion guard
    types = {i["name"]: _shape_dtype(i["type"]) for i in comps.get(name, [])}
    out = collections.Counter()
    for i in comps.get(name, []):
      if i["op"] == "dot":
        operands = [a.strip().lstrip("%") for a in i["args"].split(",")]
        lhs, rhs = (types.get(o, ((), "?")) for o in (operands + ["", ""])[:2])
        dims = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", i["attrs"])
        k = math.prod(lhs[0][int(d)] for d in dims[1].split(",") if d) if dims else 1
        out["flops", f"{lhs[1]}x{rhs[1]}"] += 2.0 * math.prod(_shape_dtype(i["type"])[0]) * k
      found = _collective_arrays(f"= {i['type']} {i['op']}(")
      if found and not i["op"].endswith("-done"):
        op, arrays = found
        out["bytes", op] += sum(math.prod(s) * _BYTES.get(dt, 4) for dt, s in arrays)
        out["count", op] += 1
      for c in _CALLEE.finditer(i["attrs"]):
        kind = c.group(0).split("=")[0]
        names = [n.strip().lstrip("%") for n in
                 (c["many"].split(",") if c["many"] else [c["one"]]) if n.strip()]
        costs = [total(n) for n in names]
        if not costs:
          continue
        if kind == "body":
          trip = _TRIP.search(i["attrs"])
          n = int(trip[1]) if trip else unknown_trip_count
          out.update({k: v * n for k, v in costs[0].items()})
        elif kind == "branch_computations":
          out.update(max(costs, key=flops_of))
        elif kind != "to_apply" or i["op"] in ("call", "conditional"):
          # to_apply of a reduce / scatter / sort runs per element: no dots in there.
          for cost in costs:
            out.update(cost)
    cache[name] = out
    return out

  return total(entry) if entry else collections.Counter()


def matmul_flops(hlo_text: str, *, unknown_trip_count: int = 1) -> float:
  """Per-device FLOPs of the dot products of HLO text, every loop body counted as many
  times as XLA's `known_trip_count` says (`unknown_trip_count` when XLA does not know it).

  A conditional counts its most expensive branch.
  """
  return float(sum(matmul_flops_by_dtype(hlo_text, unknown_trip_count=unknown_trip_count)
                   .values()))


def matmul_flops_by_dtype(hlo_text: str, *, unknown_trip_count: int = 1) -> dict[str, float]:
  """Dot FLOPs (loops counted, as matmul_flops) by operand dtypes, e.g.
  {"bf16xbf16": 3.1e9, "f32xf32": 2e6}. Read the HLO before optimization
  (`lowered.as_text(dialect="hlo")`) to see the dtypes the program asks for (module
  docstring); that HLO carries no trip counts yet (its loops count `unknown_trip_count`
  times), so compare shares of it, not totals."""
  stats = program_stats(hlo_text, unknown_trip_count=unknown_trip_count)
  return {k[1]: float(v) for k, v in stats.items() if k[0] == "flops"}


def flops(compiled: Any) -> float:
  """Per-device FLOPs of a compiled program (XLA cost analysis; 0 when unavailable)."""
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):  # older JAX: one dict per program
    ca = ca[0] if ca else {}
  return float((ca or {}).get("flops", 0.0))


def memory(compiled: Any) -> dict[str, int]:
  """Per-device bytes from XLA's buffer assignment: argument, output, temp, alias, and
  `peak_bytes` = argument + output + temp - alias (donated arguments reused as outputs
  counted once)."""
  ma = compiled.memory_analysis()
  out = {"argument_bytes": int(ma.argument_size_in_bytes),
         "output_bytes": int(ma.output_size_in_bytes),
         "temp_bytes": int(ma.temp_size_in_bytes),
         "alias_bytes": int(getattr(ma, "alias_size_in_bytes", 0))}
  out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                       - out["alias_bytes"])
  return out


def summary(compiled: Any, *, unknown_trip_count: int = 1) -> dict[str, Any]:
  """FLOPs, memory, the largest collective of each kind (elements per device) and the
  collectives' per-device bytes and counts per execution (loops counted)."""
  hlo = compiled.as_text()
  colls = collectives(hlo)
  largest: dict[str, Any] = {}
  for c in colls:
    if c.op not in largest or c.elements > largest[c.op]["elements"]:
      largest[c.op] = {"shape": list(c.shape), "dtype": c.dtype, "elements": c.elements}
  stats = program_stats(hlo, unknown_trip_count=unknown_trip_count)
  per_op = {op: {"count": int(stats["count", op]), "bytes": int(stats["bytes", op])}
            for op in COLLECTIVES if stats["count", op]}
  return {"flops": flops(compiled),
          "matmul_flops": float(sum(v for k, v in stats.items() if k[0] == "flops")),
          **memory(compiled), "num_collectives": len(colls),
          "largest_collective": largest, "collectives": per_op}


def tree_bytes(tree: Any) -> int:
  """Per-device bytes of a tree of arrays or ShapeDtypeStructs: each leaf's shard shape
  (its sharding's, the whole shape without one) times its item size; None leaves are 0."""
  total = 0
  for x in jax.tree.leaves(tree):
    sharding = getattr(x, "sharding", None)
    shape = tuple(x.shape)
    if sharding is not None:
      shape = sharding.shard_shape(shape)
    total += math.prod(shape) * np.dtype(x.dtype).itemsize
  return int(total)


# ---------------------------------------------------------------------- accelerators
# jax.export platform -> (AbstractDevice platform, default device kind).
PLATFORMS = {"tpu": ("tpu", "TPU v5p"), "cuda": ("gpu", "NVIDIA H100"),
             "rocm": ("gpu", "AMD Instinct MI300X")}


def accelerator_mesh(mesh: Any, platform: str, device_kind: Optional[str] = None):
  """An abstract mesh of `mesh`'s axes (a Mesh, or {axis: size}) on accelerators of
  `platform` ("tpu" | "cuda" | "rocm") and `device_kind` (default: PLATFORMS' kind, as
  jax.Device.device_kind spells it, e.g. "TPU v5p", "NVIDIA H100").

  Lowering under it (`jax.sharding.use_abstract_mesh`, then `jax.export` for `platform`)
  is how JAX >= 0.11 lets Pallas' Triton lowering know its GPU (compute capability) on a
  machine that has none; Mosaic reads the TPU generation from it likewise. Nothing can be
  compiled or run on it.

  Raises:
    ValueError: an unknown platform.
  """
  if platform not in PLATFORMS:
    raise ValueError(f"platform must be one of {sorted(PLATFORMS)}, got {platform!r}")
  plat, kind = PLATFORMS[platform]
  shape = dict(mesh.shape) if hasattr(mesh, "axis_names") else dict(mesh)
  device = jax.sharding.AbstractDevice(device_kind=device_kind or kind, num_cores=None,
                                       platform=plat)
  names = tuple(shape)
  return jax.sharding.AbstractMesh(tuple(shape.values()), names,
                                   (jax.sharding.AxisType.Auto,) * len(names),
                                   abstract_device=device)
