"""LoRA adapters on the decoder's projections (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models", eq. 3): h = x W + (alpha / r) * dropout(x) A B, with the base W
frozen, A [in, r] initialised like PEFT (uniform +-1/sqrt(in)) and B [r, out] at zero, so a
fresh adapter leaves the model unchanged.

Design: the adapter runs *inside* each projection (`LoraDense`: x W + s (x A) B), not as a
param-space merge W + s A B inside the jitted forward. At scale this is the cheaper one:
  * memory: no merged [in, out] weight per layer and, in the backward pass, no full-size
    weight gradient dW = x^T dy (the merge needs it to get dA, dB; here dA, dB come from the
    small [tokens, r] activations); the base stays in whatever dtype and sharding it has;
  * compute: the frozen W needs only activation gradients, so the weight-gradient matmuls
    (about half of full fine-tuning's backward FLOPs in the projections) are gone; the
    adapter adds two rank-r matmuls per projection;
  * decoding: the sampler runs the same forward, paying two rank-r matvecs per step instead
    of re-merging A B into every weight at every step (or holding a merged copy).
Exporting merges once, on the host (`merge`).

Params: a LoRA model's config has `cfg.lora` (a LoraConfig) and its param tree is the base
tree plus `lora_a` [L, *in, r] and `lora_b` [L, r, *out] next to `kernel` in each targeted
projection (logical axes: the kernel's input axes + "lora_rank", and "lora_rank" + its output
axes, so adapters shard like their projection). `split` and `combine` move between that tree
and (base, adapters): training keeps the adapters as the trained params (the optimizer state
covers only them) and the base as the Trainer's frozen params, and the reference policy is
the base with adapters off (`base_config(cfg)` on the base tree), so a KL penalty costs no
second copy of the weights. PEFT files: r1jax.models.peft_format.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype

from r1jax.models.config import LORA_TARGETS, LoraConfig, ModelConfig

ADAPTER_KEYS = ("lora_a", "lora_b")
LORA_RANK_AXIS = "lora_rank"


def lora_targeted(cfg: ModelConfig, module_name: Optional[str]) -> bool:
  """Whether the projection `module_name` (e.g. "q_proj") carries an adapter under cfg."""
  if cfg.lora is None or not module_name:
    return False
  return any(LORA_TARGETS[t][0][-1] == module_name for t in cfg.lora.targets)


class LoraDense(nn.Module):
  """`nn.DenseGeneral` over the trailing `axis` of x (same `kernel`/`bias` params and
  numerics) plus the LoRA branch s * dropout(x) A B.

  Attributes:
    cfg: model config with `lora` set (rank r, scale s = alpha / r, dropout rate).
    features: output shape (e.g. (H, Dh) or (D,)).
    axis: contracted input axes, the trailing ones (-1,) or (-2, -1).
    kernel_axes: logical axes of the kernel (inputs then outputs).
    bias_axes: logical axes of the bias (None = no bias).
    kernel_init: initialiser of the kernel, with its logical partitioning.

  Input x [..., *in] in any float dtype; output [..., *features] in cfg.dtype. Dropout is
  applied only when the call has a "dropout" rng (the training forward).
  """
  cfg: Any
  features: tuple
  axis: Any
  kernel_axes: tuple
  bias_axes: Optional[tuple]
  kernel_init: Callable

  @nn.compact
  def __call__(self, x):
    cfg, lc = self.cfg, self.cfg.lora
    features = tuple(np.atleast_1d(self.features).tolist())
    n_in = len(np.atleast_1d(self.axis))
    in_shape = tuple(x.shape[-n_in:])
    pdt, r = cfg.jnp_param_dtype, int(lc.rank)
    kernel = self.param("kernel", self.kernel_init, in_shape + features, pdt)
    bias = None
    if self.bias_axes is not None:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                             self.bias_axes), features, pdt)
    in_axes, out_axes = tuple(self.kernel_axes[:n_in]), tuple(self.kernel_axes[n_in:])
    # PEFT's kaiming_uniform(a=sqrt(5)) on A: uniform with bound 1 / sqrt(fan_in).
    a_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform",
                                              in_axis=tuple(range(n_in)), out_axis=-1)
    a = self.param("lora_a", nn.with_logical_partitioning(a_init, in_axes + (LORA_RANK_AXIS,)),
                   in_shape + (r,), pdt)
    b = self.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros,
                                                          (LORA_RANK_AXIS,) + out_axes),
                   (r,) + features, pdt)

    contract = tuple(range(x.ndim - n_in, x.ndim))
    h = x
    if lc.dropout > 0 and self.has_rng("dropout"):
      keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - lc.dropout, x.shape)
      h = jnp.where(keep, x / (1.0 - lc.dropout), 0).astype(x.dtype)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=cfg.jnp_dtype)
    out = jax.lax.dot_general(x, kernel, ((contract, tuple(range(n_in))), ((), ())))
    if bias is not None:
      out = out + bias
    h, a, b = promote_dtype(h, a, b, dtype=cfg.jnp_dtype)
    z = jax.lax.dot_general(h, a, ((contract, tuple(range(n_in))), ((), ()))) * lc.scale
    return out + jax.lax.dot_general(z, b, (((z.ndim - 1,), (0,)), ((), ())))


# --------------------------------------------------------------------------- trees
def is_adapter_key(key: str) -> bool:
  return key in ADAPTER_KEYS


def split(tree: dict) -> tuple[dict, dict]:
  """(base, adapters) of a LoRA param tree (or of its logical-axes tree): adapters hold the
  `lora_a` / `lora_b` leaves under their paths, base everything else."""
  base, adapters = {}, {}
  for k, v in tree.items():
    if isinstance(v, dict):
      b, a = split(v)
      if b:
        base[k] = b
      if a:
        adapters[k] = a
    elif is_adapter_key(k):
      adapters[k] = v
    else:
      base[k] = v
  return base, adapters


def combine(base: dict, adapters: dict) -> dict:
  """The LoRA param tree from its base and adapter parts (inverse of `split`; no copies).

  Raises:
    ValueError: an adapter path that is not in the base, or a key in both.
  """
  out = dict(base)
  for k, v in adapters.items():
    if isinstance(v, dict):
      if not isinstance(base.get(k), dict):
        raise ValueError(f"adapter path {k!r} has no projection in the base params")
      out[k] = combine(base[k], v)
    else:
      if k in base:
        raise ValueError(f"key {k!r} is both a base param and an adapter")
      out[k] = v
  return out


def base_config(cfg: ModelConfig) -> ModelConfig:
  """The config of the base model (adapters off): `cfg` without `lora`."""
  return cfg.replace(lora=None)


def adapter_paths(cfg: ModelConfig) -> list[tuple[str, ...]]:
  """Param paths of the projections that carry adapters, e.g. ("layers", "attn", "q_proj")."""
  if cfg.lora is None:
    return []
  return [("layers",) + LORA_TARGETS[t][0] for t in cfg.lora.targets]


def logical_axes(cfg: ModelConfig) -> tuple[dict, dict]:
  """(base axes, adapter axes): the logical-axes trees of `split` of a LoRA model's params."""
  from r1jax.models.decoder import param_logical_axes
  return split(param_logical_axes(cfg))


def init_adapters(cfg: ModelConfig, key: jax.Array) -> dict:
  """Fresh adapters of a LoRA config (A uniform +-1/sqrt(fan_in) as PEFT, B = 0), without
  allocating the base params. Leaves [L, *in, r] and [L, r, *out] in cfg.param_dtype.

  Raises:
    ValueError: cfg has no `lora`.
  """
  if cfg.lora is None:
    raise ValueError("init_adapters: the config has no lora settings")
  from r1jax.models.decoder import param_shapes
  _, shapes = split(param_shapes(cfg))
  out = {}
  for i, (path, s) in enumerate(sorted(_leaves(shapes))):
    if path[-1] == "lora_a":
      bound = 1.0 / np.sqrt(np.prod(s.shape[1:-1]))  # [L, *in, r]: fan_in = prod(in)
      leaf = jax.random.uniform(jax.random.fold_in(key, i), s.shape, jnp.float32, -bound, bound)
    else:
      leaf = jnp.zeros(s.shape, jnp.float32)
    _set(out, path, leaf.astype(s.dtype))
  return out


def merge(cfg: ModelConfig, params: dict, dtype: Optional[str] = None
          ) -> tuple[ModelConfig, dict]:
  """Fold the adapters into the base weights: W + (alpha / r) A B, on the host.

  Args:
    cfg: the LoRA model's config.
    params: its param tree (base + adapters; host or device arrays).
    dtype: dtype name of the returned tree (None = each leaf keeps its own; the sum is
      computed in float32 either way).

  Returns:
    (base_config(cfg), merged params of the base's structure as NumPy arrays).

  Raises:
    ValueError: cfg has no `lora`, or the tree lacks a targeted projection's adapters.
  """
  if cfg.lora is None:
    raise ValueError("merge: the config has no lora settings")
  base, adapters = split(jax.device_get(params))
  cast = (lambda x: x) if dtype is None else (lambda x: x.astype(jnp.dtype(dtype)))
  merged = jax.tree.map(lambda x: cast(np.asarray(x)), base)
  s = cfg.lora.scale
  for path in adapter_paths(cfg):
    try:
      node, ad = _get(merged, path), _get(adapters, path)
      a, b = np.asarray(ad["lora_a"], np.float32), np.asarray(ad["lora_b"], np.float32)
    except KeyError as e:
      raise ValueError(f"merge: params lack the adapter {'/'.join(path)}/{e.args[0]}") from None
    w = _get(base, path)["kernel"]
    L, r = a.shape[0], a.shape[-1]
    delta = np.matmul(a.reshape(L, -1, r), b.reshape(L, r, -1)).reshape(w.shape)
    node["kernel"] = (np.asarray(w, np.float32) + s * delta).astype(node["kernel"].dtype)
  return base_config(cfg), merged


def adapter_loss(loss_fn: Callable) -> Callable:
  """A Trainer loss over (adapters, micro-batch, denominator, base) from a loss over the
  full LoRA params (params, micro-batch, denominator): gradients reach only the adapters."""
  def fn(adapters, mb, denominator, base):
    return loss_fn(combine(base, adapters), mb, denominator)
  return fn


def _leaves(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _leaves(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


# --------------------------------------------------------------------------- config block
def from_config(block) -> Optional[LoraConfig]:
  """LoraConfig of a stage config's `lora` block (None when absent or rank = 0).

  Block (a ConfigDict or a dict, e.g. from a run's config.json) keys: rank (0 = off),
  alpha, dropout, targets ("q,k,v,o,gate,up,down"), base_dtype (read by `base_dtype`).

  Raises:
    ValueError: a bad value, naming the key.
  """
  rank = int((block or {}).get("rank", 0) or 0)
  if rank == 0:
    return None
  if rank < 0:
    raise ValueError(f"lora.rank must be >= 0 (0 = off), got {rank}")
  targets = block.get("targets", ",".join(LORA_TARGETS))
  if isinstance(targets, str):
    targets = [t.strip() for t in targets.split(",") if t.strip()]
  return LoraConfig(rank=rank, alpha=float(block.get("alpha", 2 * rank)),
                    dropout=float(block.get("dropout", 0.0)), targets=tuple(targets))


def base_dtype(block, param_dtype: str) -> str:
  """Storage dtype of the frozen base params: `lora.base_dtype`, or param_dtype when empty.

  Raises:
    ValueError: an unsupported dtype name (naming lora.base_dtype).
  """
  value = str((block.get("base_dtype", "") if block is not None else "") or param_dtype)
  if value not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"lora.base_dtype={value!r} is not supported; use float32, bfloat16 or "
                     f"float16 (or '' for param_dtype)")
  return value
