"""rl.fused_loss (r1jax/losses/grpo_fused.py): the GRPO stage's loss with its gradients
formed in the forward pass equals the unfused stage loss (log-probs, then grpo_loss, then
autodiff) in value, metrics and every parameter gradient, also sharded over 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from r1jax import configs, models, sharding
from r1jax.losses import grpo as G
from r1jax.stages import grpo as stage
from r1jax.train import trainer as trainer_lib

CFG = models.tiny_config()
KERNEL = dict(chunk_size=5)  # 2 x 2 x 6 = 24 tokens: chunks of 5 and a remainder of 4


def _batch(seed, B=2, Gn=2, P=8, N=6):
  rng = np.random.RandomState(seed)
  prompts = rng.randint(3, CFG.vocab_size, (B, P)).astype(np.int32)
  lengths = rng.randint(2, P + 1, B).astype(np.int32)
  comp = rng.randint(3, CFG.vocab_size, (B, Gn, N)).astype(np.int32)
  clen = rng.randint(1, N + 1, (B, Gn))
  mask = (np.arange(N) < clen[..., None]).astype(np.float32)
  w, denom = G.loss_weights(mask.reshape(B * Gn, N), "sequence_mean_token_mean", N)
  lp = lambda s: -rng.uniform(0.5, 6, comp.shape).astype(np.float32) * s
  batch = {"prompt_tokens": prompts, "prompt_lengths": lengths, "completion": comp,
           "weights": w.reshape(mask.shape), "metric_weights": (G.token_mean_weights(
               mask.reshape(B * Gn, N))).reshape(mask.shape),
           "advantages": rng.normal(size=(B, Gn)).astype(np.float32),
           "ref_logp": lp(1.0), "old_logp": lp(1.0), "sampler_logp": lp(1.0)}
  return jax.tree.map(jnp.asarray, batch), denom


@pytest.fixture(scope="module")
def params():
  return models.init_params(CFG, jax.random.key(0))


@pytest.mark.parametrize("mu,correction", [(2, "tis")])  # mu = 1: the sharded test below
def test_fused_stage_loss_equals_unfused(params, mu, correction, monkeypatch):
  from r1jax.losses import grpo_fused
  calls = []
  real = grpo_fused.fused_grpo_loss
  monkeypatch.setattr(grpo_fused, "fused_grpo_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
  batch, denom = _batch(0)
  out = []
  for fused in (False, True):
    gcfg = G.GRPOConfig(beta=0.04, entropy_coef=0.01, epsilon_high=0.28, fused=fused,
                        offpolicy_correction=correction, offpolicy_cap=1.5)
    loss_fn = stage.make_loss_fn(CFG, gcfg, temperature=0.9, kernel=KERNEL, remat=False,
                                 num_iterations=mu)
    f = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    out.append(jax.device_get(f(params, batch, denom)))
  ((l0, m0), g0), ((l1, m1), g1) = out
  assert calls, "rl.fused_loss did not take the fused path"
  assert float(l0) != 0 and set(m0) == set(m1)
  np.testing.assert_allclose(l1, l0, rtol=2e-5, atol=1e-7)
  for k in m0:
    np.testing.assert_allclose(m1[k], m0[k], rtol=2e-5, atol=1e-6, err_msg=k)
  if correction == "tis":
    assert float(m0["offpolicy/capped_frac"]) > 0  # the cap really acts
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g0)):
    assert np.abs(b).max() > 0, path
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6 * np.abs(b).max(),
                               err_msg=jax.tree_util.keystr(path))


def test_fused_sharded_update_equals_unfused_single_device(params):
  assert len(jax.devices()) == 8
  B, Gn = 8, 2
  batch, denom = _batch(3, B=B, Gn=Gn)
  results = []
  for fused, shape, devices in ((False, {"data": 1}, jax.devices()[:1]),
                                (True, {"data": 2, "fsdp": 2, "tensor": 2}, None)):
    loss_fn = stage.make_loss_fn(CFG, G.GRPOConfig(beta=0.04, fused=fused), temperature=1.0,
                                 kernel=KERNEL, remat=True, num_iterations=1)
    tr = trainer_lib.Trainer(sharding.make_mesh(shape, devices), models.param_logical_axes(CFG),
                             loss_fn, optax.sgd(1.0), 2)
    state = tr.init_state(jax.tree.map(np.asarray, params))
    state, m = tr.update(state, jax.tree.map(np.asarray, batch), denom)
    results.append((jax.device_get(state.params), jax.device_get(m)))
  (p0, m0), (p1, m1) = results
  np.testing.assert_allclose(m1["loss"], m0["loss"], rtol=1e-5)
  np.testing.assert_allclose(m1["grad_norm"], m0["grad_norm"], rtol=1e-4)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p0)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fused_refuses_sequence_coupled_objectives(tmp_path):
  with pytest.raises(ValueError, match="rl.fused_loss"):
    G.GRPOConfig(fused=True, policy_loss="gspo")
  with pytest.raises(ValueError, match="rl.fused_loss"):
    G.GRPOConfig(fused=True, offpolicy_correction="mis")
  c = configs.load("grpo:gspo")
  c.rl.fused_loss = True
  with pytest.raises(ValueError, match=r"rl.fused_loss=True needs per-token.*'gspo'"):
    stage.validate_config(c)
  c = configs.load("grpo")
  c.rl.fused_loss = True
  assert stage.validate_config(c).grpo.fused
