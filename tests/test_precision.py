"""Mixed precision (r1jax/train/precision.py): bf16 compute with float32 master weights.

- the GRPO loss and its gradient with dtype=bfloat16 (params float32) stay within stated
  tolerances of the float32 run on the tiny model, and do differ from it (bf16 was used);
- the gradient reaches the masters in float32 through the cast;
- cast helpers leave non-float leaves, ShapeDtypeStruct shardings and same-dtype leaves alone.

The compiled update's dtypes (bf16 dots, float32 optimizer state) are checked in
tests/test_compiled.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import models
from r1jax.kernels import logprob as kernel_lib
from r1jax.losses import grpo as grpo_lib
from r1jax.models.config import tiny_config
from r1jax.stages import grpo as grpo_stage
from r1jax.train import precision

CFG = tiny_config(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16)
B, G, P, N = 2, 4, 12, 16

# bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2% per operation): a loss that
# is a mean over tokens moves by well under 1%, and each parameter's gradient by a few %
# (measured on this model: loss 3e-4, gradients 0.5-1.4% relative L2 error per leaf).
LOSS_RTOL = 1e-2
GRAD_RTOL = 5e-2
MIN_COSINE = 0.999


def _batch():
  rng = np.random.default_rng(0)
  mask = (np.arange(N)[None, None] < rng.integers(N // 2, N + 1, (B, G))[..., None])
  mask = mask.astype(np.float32)
  w, denom = grpo_lib.loss_weights(mask.reshape(B * G, N), "sequence_mean_token_mean", N)
  return {"prompt_tokens": rng.integers(3, CFG.vocab_size, (B, P)).astype(np.int32),
          "prompt_lengths": rng.integers(P // 2, P + 1, B).astype(np.int32),
          "completion": rng.integers(3, CFG.vocab_size, (B, G, N)).astype(np.int32),
          "weights": np.asarray(w).reshape(B, G, N),
          "metric_weights": np.asarray(grpo_lib.token_mean_weights(mask)),
          "advantages": rng.normal(size=(B, G)).astype(np.float32),
          "ref_logp": -rng.uniform(4, 7, (B, G, N)).astype(np.float32)}, float(denom)


def _loss_and_grad(params, dtype):
  cfg = CFG.replace(dtype=dtype)
  loss = grpo_stage.make_loss_fn(cfg, grpo_lib.GRPOConfig(beta=0.04), temperature=1.0,
                                 kernel=kernel_lib.kwargs_from_config(kernel_lib.default_config()),
                                 remat=False, num_iterations=1)
  # As the stages build the update's loss.
  fn = jax.jit(jax.value_and_grad(precision.compute_params(loss, dtype), has_aux=True))
  batch, denom = _batch()
  return fn(params, batch, denom)


def test_bf16_loss_and_gradients_close_to_float32():
  params = models.init_params(CFG, jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  (l32, m32), g32 = _loss_and_grad(params, "float32")
  (l16, m16), g16 = _loss_and_grad(params, "bfloat16")
  # Loss, metrics and gradients (of the float32 masters) are float32 in both runs.
  assert l16.dtype == jnp.float32 and m16["kl"].dtype == jnp.float32
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
  assert abs(float(l16) - float(l32)) <= LOSS_RTOL * abs(float(l32))
  assert abs(float(m16["kl"]) - float(m32["kl"])) <= LOSS_RTOL * abs(float(m32["kl"]))
  flat = lambda g: jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])
  a, b = flat(g32), flat(g16)
  err = float(jnp.linalg.norm(b - a) / jnp.linalg.norm(a))
  cosine = float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
  assert cosine >= MIN_COSINE, cosine
  for path, x, y in zip(jax.tree_util.tree_leaves_with_path(g32), jax.tree.leaves(g32),
                        jax.tree.leaves(g16)):
    rel = float(jnp.linalg.norm(y - x) / jnp.linalg.norm(x))
    assert rel <= GRAD_RTOL, (jax.tree_util.keystr(path[0]), rel)
  # The bf16 run did compute in bf16 (an identical result would mean it silently did not).
  assert err > 1e-4, err


def test_compute_params_casts_forward_and_returns_master_gradient():
  w = jnp.array([1.0 + 2.0 ** -12, 3.0], jnp.float32)  # 1 + 2^-12 rounds to 1 in bf16
  seen = []

  def loss(p, x):
    seen.append(p["w"].dtype)
    return jnp.sum(p["w"] * x).astype(jnp.float32)

  value, grad = jax.value_and_grad(precision.compute_params(loss, "bfloat16"))(
      {"w": w}, jnp.array([2.0, 1.0], jnp.bfloat16))
  assert seen == [jnp.bfloat16]
  assert float(value) == 2.0 * 1.0 + 3.0  # the bf16 copy lost the 2^-12
  assert grad["w"].dtype == jnp.float32
  np.testing.assert_array_equal(grad["w"], [2.0, 1.0])


def test_cast_helpers():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  tree = {"f": jnp.ones((2,), jnp.float32), "i": jnp.arange(3), "none": None,
          "s": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sh)}
  out = precision.cast_floating(tree, "bfloat16")
  assert out["f"].dtype == jnp.bfloat16 and out["i"].dtype == tree["i"].dtype
  assert out["none"] is None
  assert out["s"].dtype == jnp.bfloat16 and out["s"].sharding == sh
  same = precision.cast_floating({"f": tree["f"]}, "float32")
  assert same["f"] is tree["f"]  # no copy when already in the dtype
  copy = precision.cast_copy({"f": tree["f"], "i": tree["i"]}, "float32")
  assert copy["f"] is not tree["f"] and copy["i"] is not tree["i"]
  np.testing.assert_array_equal(copy["f"], tree["f"])


@pytest.mark.parametrize("dtype,param_dtype,name", [
    ("float32", "float32", "float32"), ("bfloat16", "float32", "bf16_mixed"),
    ("bfloat16", "bfloat16", "bf16"), ("float16", "float32", "float16 compute / float32 params")])
def test_policy_names(dtype, param_dtype, name):
  assert precision.policy_name(dtype, param_dtype) == name
  assert name in precision.describe(dtype, param_dtype)
