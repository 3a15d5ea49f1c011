"""Device mesh and logical-axis sharding rules.

Params carry logical axis names (`r1jax.models.param_logical_axes`), activations are
constrained by logical name at the decoder's layer boundaries (`constrain`), and the rules
below map those names to the mesh axes ("data", "fsdp", "tensor"). A rule whose mesh axis
does not divide the dimension never applies silently: by default it is an error naming
the array and the rule (`on_indivisible="error"`); `"replicate"` keeps that dimension
replicated and logs it (e.g. SmolLM2's 9 query / 3 KV heads on a tensor axis of 2).
Activation constraints leave such a dimension to XLA instead (unconstrained).

Meshes come from `jax.make_mesh` (device order that follows the TPU/GPU topology), or for
multi-slice TPU / multi-node runs from `mesh_utils.create_hybrid_device_mesh` (`dcn`: the
part of each axis that crosses the slower data-centre network).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

Rules = dict[str, tuple[str, ...]]

# What a rule does when its mesh axis does not divide the dimension
# (config `sharding.on_indivisible`; stored in a rules dict under this key so that it
# travels with the rules).
ON_INDIVISIBLE = "on_indivisible"
ON_INDIVISIBLE_POLICIES = ("error", "replicate")

# logical axis -> mesh axes (in order; each must divide what is left of the dim)
DEFAULT_RULES: Rules = {
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
    # Hidden states [batch, length, D] between layers: replicated over tensor (Megatron).
    "activation_embed": (),
}

# Named layouts (`config.sharding.preset`). The mesh sizes (`config.mesh`) say how many
# devices each axis has; a preset says which logical axes may use which mesh axis.
#   dp:      params, optimizer state and KV cache replicated; batch over data x fsdp.
#   fsdp:    params / optimizer state split on `embed` over fsdp (ZeRO-3 style: gathered
#            per layer inside the jit); batch over data x fsdp; no tensor parallelism.
#   fsdp_tp: fsdp plus Megatron-style tensor parallelism: heads, MLP and vocab over
#            tensor (KV cache heads too). The default; with fsdp = tensor = 1 it is dp.
PRESETS: dict[str, Rules] = {
    "dp": {**{k: () for k in DEFAULT_RULES}, "batch": ("data", "fsdp")},
    "fsdp": {**DEFAULT_RULES, "vocab": (), "q_heads": (), "kv_heads": (), "mlp": ()},
    "fsdp_tp": dict(DEFAULT_RULES),
}

# Mesh shapes that go with each preset on n devices (tools and docs; any mesh works).
PRESET_MESHES: dict[str, dict[str, int]] = {
    "dp": {"data": -1, "fsdp": 1, "tensor": 1},
    "fsdp": {"data": 1, "fsdp": -1, "tensor": 1},
    "fsdp_tp": {"data": 1, "fsdp": -1, "tensor": 2},
}


def parse_rules(spec: str) -> Rules:
  """Rule overrides from a config string.

  Format: "logical=mesh1+mesh2;logical2=;..." (an empty right side = replicated), e.g.
  "mlp=tensor;embed=fsdp+data".

  Raises:
    ValueError: malformed entry or an unknown mesh axis.
  """
  out: Rules = {}
  for part in str(spec).replace(",", ";").split(";"):
    part = part.strip()
    if not part:
      continue
    if "=" not in part:
      raise ValueError(f"sharding rule {part!r} is not 'logical=mesh_axis[+mesh_axis]'")
    name, axes = (x.strip() for x in part.split("=", 1))
    mesh_axes = tuple(a.strip() for a in axes.split("+") if a.strip())
    bad = [a for a in mesh_axes if a not in MESH_AXES]
    if not name or bad:
      raise ValueError(f"sharding rule {part!r}: mesh axes must be among {MESH_AXES}")
    out[name] = mesh_axes
  return out


def rules_for(preset: str, overrides: str = "") -> Rules:
  """Rules of a preset ("dp" | "fsdp" | "fsdp_tp") with `parse_rules(overrides)` on top.

  Raises:
    ValueError: unknown preset or malformed overrides.
  """
  if preset not in PRESETS:
    raise ValueError(f"sharding preset must be one of {sorted(PRESETS)}, got {preset!r}")
  return {**PRESETS[preset], **parse_rules(overrides)}


def config_rules(config, which: str = "train") -> Rules:
  """Rules of a stage config's `sharding` block (defaults when the config has none).

  Args:
    config: a stage ConfigDict; reads sharding.preset / sharding.rules, for
      which="sampler" sharding.sampler_preset / sharding.sampler_rules ("" = as train),
      and sharding.on_indivisible ("error" when absent; see `logical_to_spec`).

  Raises:
    ValueError: unknown preset or policy, malformed rules.
  """
  sc = config.get("sharding") if hasattr(config, "get") else None
  if sc is None:
    return dict(DEFAULT_RULES)
  if which == "sampler" and (sc.get("sampler_preset") or sc.get("sampler_rules")):
    rules = rules_for(sc.get("sampler_preset") or sc.preset, sc.get("sampler_rules", ""))
  else:
    rules = rules_for(sc.preset, sc.get("rules", ""))
  return with_policy(rules, sc.get(ON_INDIVISIBLE, "error"))


def with_policy(rules: Rules, on_indivisible: str) -> Rules:
  """A copy of `rules` whose indivisible-dimension policy is `on_indivisible`.

  Raises:
    ValueError: a policy not in ON_INDIVISIBLE_POLICIES.
  """
  if on_indivisible not in ON_INDIVISIBLE_POLICIES:
    raise ValueError(f"sharding.on_indivisible must be one of {ON_INDIVISIBLE_POLICIES}, "
                     f"got {on_indivisible!r}")
  return {**rules, ON_INDIVISIBLE: (on_indivisible,)}


def _mesh_sizes(shape, n: int, what: str = "mesh") -> list[int]:
  if isinstance(shape, dict):
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
      raise ValueError(f"unknown {what} axes {sorted(unknown)}; axes are {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  else:
    sizes = [int(s) for s in shape]
  if len(sizes) != len(MESH_AXES):
    raise ValueError(f"{what} needs {len(MESH_AXES)} sizes {MESH_AXES}, got {sizes}")
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one {what} axis may be -1, got {sizes}")
  if -1 in sizes:
    rest = math.prod(s for s in sizes if s != -1)
    if n % rest:
      raise ValueError(f"{what} {dict(zip(MESH_AXES, sizes))} does not divide {n} devices")
    sizes[sizes.index(-1)] = n // rest
  if any(s < 1 for s in sizes):
    raise ValueError(f"{what} sizes must be >= 1 (or one -1), got {sizes}")
  if math.prod(sizes) != n:
    raise ValueError(f"{what} {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                     f"devices, have {n}")
  return sizes


def make_mesh(shape: dict[str, Any] | Sequence[int], devices=None) -> Mesh:
  """Mesh over `devices` (default: all) with axes (data, fsdp, tensor), from jax.make_mesh
  (topology-aware device order on TPU; process order, then device id, elsewhere).

  Args:
    shape: sizes per axis, e.g. {"data": -1, "fsdp": 1, "tensor": 1}; one -1 takes the
      remaining devices. For multi-slice TPU (or multi-node GPU) runs, an optional "dcn"
      entry {axis: slices} says how much of each axis crosses the slower data-centre
      network (DCN), e.g. {"data": -1, "fsdp": 16, "dcn": {"data": 2}} on 2 slices of 16
      chips: the mesh then comes from mesh_utils.create_hybrid_device_mesh (ICI axes
      inside a slice, DCN axes across slices; slices are the devices' `slice_index`, or
      their processes where devices have none).

  Raises:
    ValueError: the sizes do not multiply to the device count, or the DCN sizes do not
      divide them.
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = dict(shape) if isinstance(shape, dict) else shape
  dcn = shape.pop("dcn", None) if isinstance(shape, dict) else None
  sizes = _mesh_sizes(shape, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if dcn and math.prod(_dcn_sizes(dcn)) > 1:
    grid = hybrid_device_grid(sizes, dcn, devices)
    return Mesh(grid, MESH_AXES, axis_types=auto)
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=auto, devices=devices)


def _dcn_sizes(dcn) -> list[int]:
  if isinstance(dcn, dict):
    unknown = set(dcn) - set(MESH_AXES)
    if unknown:
      raise ValueError(f"unknown mesh.dcn axes {sorted(unknown)}; axes are {MESH_AXES}")
    return [int(dcn.get(a, 1)) for a in MESH_AXES]
  return [int(s) for s in dcn]


def hybrid_device_grid(sizes: Sequence[int], dcn, devices) -> np.ndarray:
  """[data, fsdp, tensor] array of `devices` for a multi-slice mesh: axis i has sizes[i]
  devices of which dcn[i] are slices (granules) and sizes[i] / dcn[i] devices inside one.

  Raises:
    ValueError: a DCN size that does not divide its axis, or slices that do not match.
  """
  from jax.experimental import mesh_utils
  dcn_sizes = _dcn_sizes(dcn)
  if any(d < 1 or s % d for s, d in zip(sizes, dcn_sizes)):
    raise ValueError(f"mesh.dcn {dict(zip(MESH_AXES, dcn_sizes))} must divide the mesh "
                     f"{dict(zip(MESH_AXES, sizes))} axis by axis")
  ici = [s // d for s, d in zip(sizes, dcn_sizes)]
  by_process = not hasattr(devices[0], "slice_index")
  return mesh_utils.create_hybrid_device_mesh(ici, dcn_sizes, devices,
                                              process_is_granule=by_process)


_logged_fallbacks: set = set()


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Rules = DEFAULT_RULES, *, on_indivisible: Optional[str] = None,
                    what: str = "array") -> P:
  """PartitionSpec for an array with logical `axes` and `shape` on `mesh`.

  Each mesh axis (of size > 1) is used at most once per array, in rule order.

  Args:
    on_indivisible: what to do when a rule's mesh axis does not divide its dimension:
      "error" (raise), "replicate" (leave the dimension unsplit by that axis, logged once),
      "unconstrained" (the dimension becomes P.UNCONSTRAINED: XLA chooses; for activation
      constraints). None = the policy stored in `rules` (see with_policy), else "error".
    what: name of the array for messages.

  Raises:
    ValueError: an indivisible dimension under "error".
  """
  policy = on_indivisible or rules.get(ON_INDIVISIBLE, ("error",))[0]
  used: set[str] = set()
  spec = []
  for i, (name, dim) in enumerate(zip(axes, shape)):
    chosen = []
    size = 1
    entry: Any = None
    for m in rules.get(name, ()) if name else ():
      n = mesh.shape.get(m, 1)
      if m in used or n == 1:
        continue
      if dim % (size * n) == 0:
        chosen.append(m)
        size *= n
        continue
      msg = (f"sharding rule {name}={'+'.join(rules[name])}: mesh axis {m!r} (size {n}) "
             f"does not divide dim {i} (size {dim}) of {what} with logical axes "
             f"{tuple(axes)}")
      if policy == "error":
        raise ValueError(f"{msg}. Change the rule (e.g. sharding.rules=\"{name}=\") or set "
                         f"sharding.on_indivisible=\"replicate\"")
      if policy == "unconstrained":
        entry = P.UNCONSTRAINED
        break
      if policy != "replicate":
        raise ValueError(f"unknown on_indivisible policy {policy!r}")
      key = (name, dim, m, mesh.shape[m])
      if key not in _logged_fallbacks:
        _logged_fallbacks.add(key)
        logging.warning("%s: replicated over %r (sharding.on_indivisible=replicate)", msg, m)
    used.update(chosen)
    if entry is None:
      entry = tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None)
    spec.append(entry)
  return P(*spec)


def tree_shardings(axes_tree: Any, shapes_tree: Any, mesh: Mesh,
                   rules: Rules = DEFAULT_RULES) -> Any:
  """NamedShardings for a tree of arrays (or ShapeDtypeStructs) given a tree of logical axes.

  Raises:
    ValueError: a rule that does not divide a dimension (policy "error"), naming the leaf.
  """
  is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)
  flat_axes, treedef = jax.tree_util.tree_flatten_with_path(axes_tree, is_leaf=is_axes)
  flat_shapes = treedef.flatten_up_to(shapes_tree)
  out = [NamedSharding(mesh, logical_to_spec(ax, s.shape, mesh, rules,
                                             what=jax.tree_util.keystr(path)))
         for (path, ax), s in zip(flat_axes, flat_shapes)]
  return jax.tree_util.tree_unflatten(treedef, out)


# ---------------------------------------------------------------------- activations
_ACTIVATION_CONTEXT: contextvars.ContextVar = contextvars.ContextVar(
    "r1jax_activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """Within this context (at trace time), `constrain` pins activations to `rules` on `mesh`;
  outside it `constrain` is the identity (single device, sampler, tests)."""
  token = _ACTIVATION_CONTEXT.set((mesh, dict(rules)))
  try:
    yield
  finally:
    _ACTIVATION_CONTEXT.reset(token)


def with_activation_sharding(fn, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """`fn` whose body is traced under activation_sharding(mesh, rules) (wrap a loss_fn or a
  function that a jit traces)."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with activation_sharding(mesh, rules):
      return fn(*args, **kwargs)
  return wrapped


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint of activation `x` by logical `axes` under the active
  activation_sharding context (identity without one). Dimensions a rule cannot split are
  left unconstrained (XLA decides), never silently replicated."""
  ctx = _ACTIVATION_CONTEXT.get()
  if ctx is None:
    return x
  mesh, rules = ctx
  spec = logical_to_spec(axes, x.shape, mesh, rules, on_indivisible="unconstrained")
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def batch_sharding(mesh: Mesh, ndim: int, rules: Rules = DEFAULT_RULES) -> NamedSharding:
  """Sharding of a batch array: leading dim over the `batch` rule's mesh axes (default
  data x fsdp), the rest replicated."""
  lead = tuple(a for a in rules.get("batch", ()) if mesh.shape[a] > 1)
  first = lead if len(lead) > 1 else (lead[0] if lead else None)
  return NamedSharding(mesh, P(first, *([None] * (ndim - 1))))


def batch_divisor(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
  """Number of shards of the batch dimension."""
  return math.prod(mesh.shape[a] for a in rules.get("batch", ()))


# Logical axes of the sampler's KV cache arrays (r1jax.models.decoder.KVCache).
KV_PROMPT_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")        # [L, B, P, K, Dh]
KV_COMPLETION_AXES = ("layers", "batch", None, "length", "kv_heads", "head_dim")  # [L, B, G, N, K, Dh]


def reshard(tree: Any, shardings: Any) -> Any:
  """Explicit resharding (e.g. trainer layout -> sampler layout of the same params).

  A no-op (no copy) for leaves already laid out as asked. Works on global arrays of a
  multi-process mesh (XLA moves the data between devices and hosts).
  """
  def put(x, s):
    if getattr(x, "sharding", None) == s:
      return x
    if (isinstance(x, jax.Array) and x.is_fully_addressable and not s.is_fully_addressable):
      x = np.asarray(x)  # a process-local array: every process holds the full value
    return jax.device_put(x, s)
  return jax.tree.map(put, tree, shardings)


# ---------------------------------------------------------------------- multi-process
def initialize_distributed(cfg=None) -> bool:
  """`jax.distributed.initialize` from a `distributed` config block or the environment.

  Must run before any JAX device use. Sources, first non-empty wins:
    coordinator_address: cfg, $R1JAX_COORDINATOR_ADDRESS, $JAX_COORDINATOR_ADDRESS;
    num_processes: cfg (> 0), $R1JAX_NUM_PROCESSES, $JAX_NUM_PROCESSES;
    process_id: cfg (>= 0), $R1JAX_PROCESS_ID, $JAX_PROCESS_ID.
  With cfg.auto=True (or $R1JAX_DISTRIBUTED_AUTO=1) and no explicit address, JAX's cluster
  auto-detection (TPU pods, SLURM, Open MPI, Kubernetes...) supplies everything. On CPU the
  cross-process collectives use `cfg.cpu_collectives` (default gloo).

  Args:
    cfg: ConfigDict/mapping with coordinator_address, num_processes, process_id, auto,
      cpu_collectives, initialization_timeout_s (all optional); None = environment only.

  Returns:
    True when the multi-controller runtime was started (or already was), False for a
    plain single-process run.

  Raises:
    ValueError: an address without num_processes / process_id, or a bad process id.
  """
  get = (lambda k, d: cfg.get(k, d)) if cfg is not None else (lambda k, d: d)
  env = lambda *names: next((os.environ[n] for n in names if os.environ.get(n)), "")
  address = get("coordinator_address", "") or env("R1JAX_COORDINATOR_ADDRESS",
                                                  "JAX_COORDINATOR_ADDRESS")
  num = int(get("num_processes", 0) or 0) or int(env("R1JAX_NUM_PROCESSES",
                                                     "JAX_NUM_PROCESSES") or 0)
  pid = int(get("process_id", -1))
  if pid < 0:
    pid = int(env("R1JAX_PROCESS_ID", "JAX_PROCESS_ID") or -1)
  auto = bool(get("auto", False)) or env("R1JAX_DISTRIBUTED_AUTO") in ("1", "true", "True")
  if jax.distributed.is_initialized():
    return True
  if not address and not auto:
    return False
  if address and not auto and (num < 1 or not 0 <= pid < num):
    raise ValueError(f"distributed.coordinator_address={address!r} needs num_processes >= 1 and "
                     f"0 <= process_id < num_processes (got {num}, {pid})")
  # Only the CPU backend reads this (harmless elsewhere); without it CPU processes cannot
  # all-reduce across processes.
  jax.config.update("jax_cpu_collectives_implementation", get("cpu_collectives", "gloo"))
  kwargs = {}
  if address:
    kwargs.update(coordinator_address=address, num_processes=num, process_id=pid)
  timeout = int(get("initialization_timeout_s", 0) or 0)
  if timeout:
    kwargs["initialization_timeout"] = timeout
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def is_main_process() -> bool:
  """True on process 0 (the one that logs and writes run files)."""
  return jax.process_index() == 0


def process_allgather(x: np.ndarray) -> np.ndarray:
  """[n, ...] host arrays of every process concatenated in process order ([P*n, ...]).

  Identity in a single-process run. Uses JAX's own collectives (no side channel).
  """
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def global_batch(x: np.ndarray, sharding: NamedSharding, *, process_local: bool) -> jax.Array:
  """A global array from host data.

  Args:
    x: [n, ...] host array.
    sharding: target sharding (leading dim = batch).
    process_local: x holds only this process's rows (the global batch is the processes'
      rows concatenated in process order); False: x is the whole array, same on every process.
  """
  if jax.process_count() == 1 or not process_local:
    return jax.device_put(x, sharding)
  shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
  return jax.make_array_from_process_local_data(sharding, x, shape)


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a global array sharded on its leading dim, in global order
  (the inverse of `global_batch(..., process_local=True)`); the whole array when it is
  fully addressable or replicated."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(jax.device_get(x))
  pieces = {}
  for s in x.addressable_shards:
    start = s.index[0].start or 0 if s.index else 0
    pieces.setdefault(start, s.data)  # replicas (e.g. over tensor) hold the same rows
  return np.concatenate([np.asarray(pieces[k]) for k in sorted(pieces)])


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def describe(shardings: Any) -> str:
  """One line per distinct PartitionSpec, for logs."""
  specs = {}
  for path, s in jax.tree_util.tree_flatten_with_path(shardings)[0]:
    specs.setdefault(str(s.spec), []).append(jax.tree_util.keystr(path))
  return "\n".join(f"{k}: {len(v)} arrays (e.g. {v[0]})" for k, v in specs.items())
