"""What XLA compiled: per-device FLOPs, memory and collectives of a compiled program.

Reads `jax.stages.Compiled` objects (from `jax.jit(f).lower(...).compile()`): XLA's cost
analysis (FLOPs of the per-device SPMD program), its buffer assignment (argument, output
and temporary bytes per device) and, from the optimized HLO text, the collectives with
their per-device result shapes and the matmul FLOPs with loops counted.

XLA's cost analysis counts the body of a while loop once, whatever its trip count (a
`lax.map` of 8 matmuls reports the FLOPs of one), so it cannot compare two programs
whose loops run different numbers of times (e.g. a token-chunked loss on 1 device vs on
8). `matmul_flops` multiplies each loop body by the trip count that XLA itself annotates
(`known_trip_count`) and counts dot products only (2 x output elements x contracted
size), which is what dominates a transformer step.
Used by the compiled-program tests (tests/test_compiled.py) and by tools that report what
a step costs without running it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

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


def collectives(hlo_text: str) -> list[Collective]:
  """Collectives of optimized HLO text (`compiled.as_text()`), one per instruction.

  The result of an async `*-start` (a tuple of operand and result buffers) counts as its
  largest array; a variadic collective (a tuple of results) as one entry per array.
  """
  out = []
  for line in hlo_text.splitlines():
    m = _INSTR.search(line)
    if not m:
      continue
    arrays = [(a["dtype"], tuple(int(d) for d in a["dims"].split(",") if d))
              for a in _ARRAY.finditer(m["types"])]
    if not arrays:
      continue
    if "-start(" in line[m.start():m.end() + 1]:
      arrays = [max(arrays, key=lambda a: math.prod(a[1]))]
    out.extend(Collective(m["op"], dt, shape) for dt, shape in arrays)
  return out


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.*?)\s"
                          r"(?P<op>[a-z][\w\-]*)\((?P<args>[^)]*)\)(?P<attrs>.*)$")
_CALLEE = re.compile(r"(?:calls|to_apply|body|called_computations|branch_computations)="
                     r"(?:\{(?P<many>[^}]*)\}|%?(?P<one>[\w.\-]+))")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def matmul_flops(hlo_text: str) -> float:
  """Per-device FLOPs of the dot products of optimized HLO text, every loop body counted
  as many times as XLA's `known_trip_count` says (once when XLA does not know it).

  A conditional counts its most expensive branch.
  """
  comps: dict[str, list] = {}
  entry = None
  current = None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m and "=" not in line.split("(")[0]:
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
  cache: dict[str, float] = {}

  def shape_of(typ):
    a = _ARRAY.search(typ)
    return tuple(int(d) for d in a["dims"].split(",") if d) if a else ()

  def total(name):
    if name in cache:
      return cache[name]
    cache[name] = 0.0  # recursion guard
    shapes = {i["name"]: shape_of(i["type"]) for i in comps.get(name, [])}
    f = 0.0
    for i in comps.get(name, []):
      if i["op"] == "dot":
        lhs = i["args"].split(",")[0].strip().lstrip("%")
        dims = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", i["attrs"])
        k = math.prod(shapes.get(lhs, ())[int(d)] for d in dims[1].split(",") if d) \
            if dims else 1
        f += 2.0 * math.prod(shape_of(i["type"])) * k
      callees = []
      for c in _CALLEE.finditer(i["attrs"]):
        names = c["many"].split(",") if c["many"] else [c["one"]]
        callees.append((c.group(0).split("=")[0], [n.strip().lstrip("%") for n in names]))
      for kind, names in callees:
        costs = [total(n) for n in names if n]
        if not costs:
          continue
        if kind == "body":
          trip = _TRIP.search(i["attrs"])
          f += costs[0] * (int(trip[1]) if trip else 1)
        elif kind == "branch_computations":
          f += max(costs)
        else:
          f += sum(costs)
    cache[name] = f
    return f

  return total(entry) if entry else 0.0


def flops(compiled: Any) -> float:
  """Per-device FLOPs of a compiled program (XLA cost analysis; 0 when unavailable)."""
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):  # older JAX: one dict per program
    ca = ca[0] if ca else {}
  return float((ca or {}).get("flops", 0.0))


def memory(compiled: Any) -> dict[str, int]:
  """Per-device bytes from XLA's buffer assignment: argument, output, temp, alias."""
  ma = compiled.memory_analysis()
  return {"argument_bytes": int(ma.argument_size_in_bytes),
          "output_bytes": int(ma.output_size_in_bytes),
          "temp_bytes": int(ma.temp_size_in_bytes),
          "alias_bytes": int(getattr(ma, "alias_size_in_bytes", 0))}


def summary(compiled: Any) -> dict[str, Any]:
  """FLOPs, memory and the largest collective of each kind (elements per device)."""
  colls = collectives(compiled.as_text())
  largest: dict[str, Any] = {}
  for c in colls:
    if c.op not in largest or c.elements > largest[c.op]["elements"]:
      largest[c.op] = {"shape": list(c.shape), "dtype": c.dtype, "elements": c.elements}
  return {"flops": flops(compiled), "matmul_flops": matmul_flops(compiled.as_text()),
          **memory(compiled), "num_collectives": len(colls),
          "largest_collective": largest}
