"""Device mesh and logical-axis sharding rules.

Params carry logical axis names (`r1jax.models.param_logical_axes`); the rules below map
them to the mesh axes ("data", "fsdp", "tensor"). A mesh axis is used for a dimension only
when it divides that dimension (e.g. SmolLM2's 3 KV heads stay replicated on a tensor
axis of 2), so one code path serves 1 CPU, 8 fake CPU devices, a GPU and a TPU pod.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (tried in order, all that divide the dim are used)
DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "q_heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "head_dim": (),
    "layers": (),
    "norm": (),
    "length": (),
}


def make_mesh(shape: dict[str, int] | Sequence[int], devices=None) -> Mesh:
  """Mesh over `devices` (default: all) with axes (data, fsdp, tensor).

  Args:
    shape: sizes per axis, e.g. {"data": -1, "fsdp": 1, "tensor": 1}; one -1 takes the
      remaining devices.

  Raises:
    ValueError: the sizes do not multiply to the device count.
  """
  devices = list(devices if devices is not None else jax.devices())
  if isinstance(shape, dict):
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
      raise ValueError(f"unknown mesh axes {sorted(unknown)}; axes are {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  else:
    sizes = [int(s) for s in shape]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
  if -1 in sizes:
    rest = math.prod(s for s in sizes if s != -1)
    if len(devices) % rest:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide {len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // rest
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"have {len(devices)}")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: dict[str, tuple[str, ...]] = DEFAULT_RULES) -> P:
  """PartitionSpec for an array with logical `axes` and `shape` on `mesh`.

  Each mesh axis is used at most once per array, and only where it divides the dim.
  """
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape):
    chosen = []
    size = 1
    for m in rules.get(name, ()) if name else ():
      n = mesh.shape[m]
      if m in used or n == 1:
        continue
      if dim % (size * n) == 0:
        chosen.append(m)
        size *= n
    used.update(chosen)
    spec.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
  return P(*spec)


def tree_shardings(axes_tree: Any, shapes_tree: Any, mesh: Mesh,
                   rules: dict[str, tuple[str, ...]] = DEFAULT_RULES) -> Any:
  """NamedShardings for a tree of arrays (or ShapeDtypeStructs) given a tree of logical axes."""
  is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)
  return jax.tree.map(
      lambda ax, s: NamedSharding(mesh, logical_to_spec(ax, s.shape, mesh, rules)),
      axes_tree, shapes_tree, is_leaf=is_axes)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Sharding of a batch array: leading dim over (data, fsdp), the rest replicated."""
  lead = tuple(a for a in ("data", "fsdp") if mesh.shape[a] > 1)
  first = lead if len(lead) > 1 else (lead[0] if lead else None)
  return NamedSharding(mesh, P(first, *([None] * (ndim - 1))))


def batch_divisor(mesh: Mesh) -> int:
  """Number of shards of the batch dimension."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def describe(shardings: Any) -> str:
  """One line per distinct PartitionSpec, for logs."""
  specs = {}
  for path, s in jax.tree_util.tree_flatten_with_path(shardings)[0]:
    specs.setdefault(str(s.spec), []).append(jax.tree_util.keystr(path))
  return "\n".join(f"{k}: {len(v)} arrays (e.g. {v[0]})" for k, v in specs.items())
