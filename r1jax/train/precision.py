"""Mixed precision: the dtype each part of a training step computes and stores in.

Two model keys of every stage config (r1jax/configs/common.py `add_model`) say it:

  dtype        compute dtype: activations and the inputs of every matmul (the update's
               forward and backward, the sampler, the reference forward).
  param_dtype  master weights: what the optimizer updates and checkpoints store. The
               optimizer state follows it (optax keeps Adam's moments in the params' dtype).

Float32 whatever the two: log-probs, entropies and KL (the fused log-prob accumulates and
returns float32, r1jax.kernels.logprob), the losses, the gradient accumulation over
micro-batches (r1jax.train.trainer), and the gradient the optimizer sees (the transpose of
the cast brings the compute copy's gradient back to the masters' dtype).

Named configurations (`policy_name`):
  float32     dtype = param_dtype = float32: the default, and what CPU tests use.
  bf16_mixed  dtype = bfloat16, param_dtype = float32 (`--config.dtype=bfloat16`): bf16
              compute with float32 master weights and optimizer state (Micikevicius et al.
              2018, "Mixed Precision Training"); bf16 keeps float32's exponent range, so no
              loss scaling (Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning
              Training"). The TPU / GPU configuration.
  bf16        both bfloat16: weights and Adam moments in bf16, where an update smaller
              than 2^-8 of a weight is lost (training stages log a warning).

Where the casts happen:
  update     `compute_params(loss_fn, dtype)`: inside the jitted update and under the
             gradient, the loss sees a compute-dtype copy of the masters; under FSDP the
             weight all-gathers then move compute-dtype (half-size) shards.
  reference  the frozen reference policy is kept in the compute dtype (`cast_copy`): it
             never trains, so it needs no master.
  sampler    each rollout decodes from a compute-dtype copy of the policy (`cast_floating`;
             decode reads every weight per token).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from absl import logging

POLICIES = {("float32", "float32"): "float32", ("bfloat16", "float32"): "bf16_mixed",
            ("bfloat16", "bfloat16"): "bf16"}


def policy_name(dtype: str, param_dtype: str) -> str:
  """"float32" | "bf16_mixed" | "bf16" for the (compute, master) dtype names, else
  "<dtype> compute / <param_dtype> params"."""
  return POLICIES.get((str(dtype), str(param_dtype)),
                      f"{dtype} compute / {param_dtype} params")


def describe(dtype: str, param_dtype: str, *, training: bool = True) -> str:
  """One log line for a run's precision; warns (absl) when a training run keeps its
  master weights in less than float32."""
  name = policy_name(dtype, param_dtype)
  if training and jnp.dtype(param_dtype).itemsize < 4:
    logging.warning("param_dtype=%s: master weights and optimizer state in %s lose updates "
                    "smaller than their precision; mixed precision keeps param_dtype=float32 "
                    "(--config.dtype=bfloat16 alone)", param_dtype, param_dtype)
  return (f"precision {name}: compute (activations, matmul inputs, sampler and reference "
          f"weights) {dtype}; master weights and optimizer state {param_dtype}; log-probs, "
          f"losses and gradient accumulation float32")


def _is_float(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.floating)


def cast_floating(tree: Any, dtype) -> Any:
  """`tree` with its floating leaves in `dtype` (others unchanged). Leaves already in
  `dtype` are returned as they are (no copy). ShapeDtypeStructs keep their sharding.

  Works inside jit (a convert per leaf) and outside (an eager cast that keeps each
  array's sharding)."""
  dtype = jnp.dtype(dtype)

  def cast(x):
    if x is None or not _is_float(x) or x.dtype == dtype:
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, dtype, sharding=getattr(x, "sharding", None))
    return x.astype(dtype)

  return jax.tree.map(cast, tree)


def cast_copy(tree: Any, dtype) -> Any:
  """A copy of `tree` in its own buffers with floating leaves in `dtype` (a frozen copy
  that must survive the donation of the original, e.g. the reference policy)."""
  dtype = jnp.dtype(dtype)
  return jax.tree.map(lambda x: x.astype(dtype) if _is_float(x) and x.dtype != dtype
                      else x.copy(), tree)


def compute_params(loss_fn: Callable, dtype) -> Callable:
  """`loss_fn(params, *args)` that first casts the params' floating leaves to `dtype`.

  Taken as the Trainer's loss, the cast runs inside the jitted update and under
  `value_and_grad`: the forward and backward compute in `dtype`, and the gradient flows
  back through the cast to the master params in their own dtype. The identity wrapper
  when the params are already in `dtype`."""
  @functools.wraps(loss_fn)
  def wrapped(params, *args, **kwargs):
    return loss_fn(cast_floating(params, dtype), *args, **kwargs)
  return wrapped
