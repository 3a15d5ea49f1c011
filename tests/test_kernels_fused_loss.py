"""The fused GRPO loss option (r1jax/kernels/logprob_fused_loss.py): gradients formed in
the forward pass equal the unfused loss (fused log-probs, then losses.grpo.grpo_loss, then
autodiff) to float32 rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.kernels import logprob as K
from r1jax.kernels.logprob_fused_loss import fused_loss
from r1jax.losses import grpo as grpo_lib

N, D, V = 50, 72, 300  # 50 tokens in chunks of 16: a 2-token remainder chunk


def _case(seed, dtype=jnp.float32):
  k = jax.random.split(jax.random.key(seed), 6)
  h = jax.random.normal(k[0], (N, D)).astype(dtype)
  w = (jax.random.normal(k[1], (D, V)) / np.sqrt(D)).astype(dtype)
  y = jax.random.randint(k[2], (N,), 0, V)
  lp = K.fused_logprob(h, w, y, impl="naive").logprob
  mask = jax.random.bernoulli(k[3], 0.8, (N,)).astype(jnp.float32)
  aux = {"old": lp + 0.3 * jax.random.normal(k[4], (N,)),  # some ratios clip
         "ref": lp - 0.5 * jax.random.normal(k[5], (N,)),
         "adv": jnp.where(jnp.arange(N) % 3 == 0, -1.0, 0.7),
         "weights": mask / 7.0}
  return h, w, y, aux


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 3e-2)])
def test_fused_grpo_loss_equals_unfused(dtype, tol):
  cfg = grpo_lib.GRPOConfig(beta=0.05, entropy_coef=0.01, epsilon_high=0.28)
  denom = 3.0
  h, w, y, aux = _case(0, dtype)

  def grpo(lp, ent, a):
    return grpo_lib.grpo_loss(lp[None], a["old"][None], a["ref"][None], a["adv"][None],
                              a["weights"][None], denom, cfg, entropy=ent[None])[0]

  def unfused(h, w):
    o = K.fused_logprob(h, w, y, temperature=0.9, return_entropy=True, impl="naive")
    return grpo(o.logprob, o.entropy, aux)

  fused = lambda h, w: fused_loss(h, w, y, aux, grpo, temperature=0.9, chunk_size=16)
  want, (rh, rw) = jax.value_and_grad(unfused, argnums=(0, 1))(h, w)
  got, (gh, gw) = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(h, w)
  assert gh.dtype == dtype and gw.dtype == dtype
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
  for a, b in ((gh, rh), (gw, rw)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, atol=tol * max(1e-3, np.abs(b).max()), rtol=tol)
  # Scaling the loss scales the fused gradients (the backward only multiplies).
  g2 = jax.grad(lambda h, w: 2.0 * fused(h, w), argnums=1)(h, w)
  np.testing.assert_allclose(np.asarray(g2, np.float32), 2 * np.asarray(gw, np.float32),
                             rtol=1e-6, atol=1e-6)


def test_fused_loss_errors():
  h, w, y, aux = _case(1)
  with pytest.raises(ValueError, match="expected"):
    fused_loss(h, w.T, y, aux, lambda lp, e, a: jnp.sum(lp))
  with pytest.raises(ValueError, match="temperature"):
    fused_loss(h, w, y, aux, lambda lp, e, a: jnp.sum(lp), temperature=0.0)
