"""Loss-level options of losses/grpo.py and losses/offpolicy.py against NumPy references
written here: GSPO (sequence ratio and clip, its gradient by finite differences), the
entropy bonus, token-level truncated IS and sequence-level masked IS with their mismatch
metrics, exact micro-batch accumulation with every option, and config validation."""

import itertools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.losses import grpo as G
from r1jax.losses import offpolicy


# ---------------------------------------------------------------------- NumPy references
def np_is_weights(old, sampler, mask, mode, cap, low):
  """Per-token off-policy weights by loops (1 for "none")."""
  S, T = old.shape
  w = np.ones((S, T))
  for i in range(S):
    toks = [t for t in range(T) if mask[i, t]]
    if mode == "tis":
      for t in toks:
        w[i, t] = min(np.exp(old[i, t] - sampler[i, t]), cap)
    elif mode == "mis":
      rho = np.exp(sum(old[i, t] - sampler[i, t] for t in toks))
      for t in toks:
        w[i, t] = rho if low <= rho <= cap else 0.0
  return w


def np_loss(logp, old, ref, adv, mask, cfg, sampler=None, ent=None):
  """-w^IS min(r A, clip(r) A) + beta KL - c H per token, aggregated by loops. r is the
  token ratio ("grpo") or the sequence's geometric-mean ratio ("gspo")."""
  S, T = logp.shape
  w = np_is_weights(old, sampler if sampler is not None else old, mask,
                    cfg.offpolicy_correction, cfg.offpolicy_cap, cfg.offpolicy_mis_low)
  seq_terms = []
  for i in range(S):
    toks = [t for t in range(T) if mask[i, t]]
    if cfg.policy_loss == "gspo" and toks:
      s_i = np.exp(np.mean([logp[i, t] - old[i, t] for t in toks]))
    terms = []
    for t in toks:
      r = s_i if cfg.policy_loss == "gspo" else np.exp(logp[i, t] - old[i, t])
      obj = min(r * adv[i], np.clip(r, 1 - cfg.epsilon_low, 1 + cfg.epsilon_high) * adv[i])
      term = -w[i, t] * obj
      if cfg.beta > 0:
        lr = ref[i, t] - logp[i, t]
        term += cfg.beta * {"k1": -lr, "k2": 0.5 * lr * lr,
                            "k3": np.exp(lr) - lr - 1}[cfg.kl_estimator]
      if cfg.entropy_coef > 0:
        term -= cfg.entropy_coef * ent[i, t]
      terms.append(term)
    seq_terms.append(terms)
  if cfg.aggregation == "sequence_mean_token_mean":
    means = [np.mean(t) for t in seq_terms if t]
    return sum(means) / len(means)
  flat = [x for t in seq_terms for x in t]
  if cfg.aggregation == "token_mean":
    return sum(flat) / len(flat)
  return sum(flat) / (S * cfg.max_completion_len)


def np_gspo_objective(logp, old, adv, mask, eps_low, eps_high):
  """The paper's sequence-level GSPO loss: -1/G sum_i min(s_i A_i, clip(s_i) A_i)."""
  out = []
  for i in range(logp.shape[0]):
    n = mask[i].sum()
    if n == 0:
      continue
    s = np.exp(((logp[i] - old[i]) * mask[i]).sum() / n)
    out.append(-min(s * adv[i], np.clip(s, 1 - eps_low, 1 + eps_high) * adv[i]))
  return np.mean(out)


def _batch(seed, S=8, T=9, spread=0.3, mismatch=0.3):
  rng = np.random.RandomState(seed)
  logp = -rng.uniform(0.05, 3, (S, T))
  old = logp + rng.normal(0, spread, (S, T))
  ref = logp + rng.normal(0, 0.5, (S, T))
  sampler = old + rng.normal(0, mismatch, (S, T))
  adv = rng.normal(0, 1, S)
  ent = rng.uniform(0, 3, (S, T))
  lengths = rng.randint(1, T + 1, S)
  lengths[0] = T
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
  return logp, old, ref, sampler, adv, ent, mask


def _loss(cfg, logp, old, ref, sampler, adv, ent, mask, mw=None):
  w, denom = G.loss_weights(mask, cfg.aggregation, cfg.max_completion_len)
  j = lambda x: None if x is None else jnp.asarray(x, jnp.float32)
  return G.grpo_loss(j(logp), j(old), j(ref), j(adv), j(w), denom, cfg, j(ent), j(mw),
                     sampler_logp=j(sampler))


OPTIONS = [dict(policy_loss="gspo", epsilon_low=0.02, epsilon_high=0.03),
           dict(offpolicy_correction="tis", offpolicy_cap=1.5),
           dict(offpolicy_correction="mis", offpolicy_cap=2.0, offpolicy_mis_low=0.5),
           dict(entropy_coef=0.01),
           dict(policy_loss="gspo", offpolicy_correction="mis", offpolicy_cap=3.0,
                offpolicy_mis_low=0.0, entropy_coef=0.02, epsilon_low=0.05,
                epsilon_high=0.05)]


@pytest.mark.parametrize("opts,aggregation,beta",
                         list(itertools.product(OPTIONS, G.AGGREGATIONS, [0.0, 0.04])))
def test_loss_options_match_numpy_reference(opts, aggregation, beta):
  cfg = G.GRPOConfig(aggregation=aggregation, beta=beta, max_completion_len=12, **opts)
  seed = zlib.crc32(repr((sorted(opts.items()), aggregation, beta)).encode()) % 1000
  logp, old, ref, sampler, adv, ent, mask = _batch(seed)
  loss, m = _loss(cfg, logp, old, ref, sampler, adv, ent, mask, G.token_mean_weights(mask))
  want = np_loss(logp, old, ref, adv, mask, cfg, sampler, ent)
  np.testing.assert_allclose(float(loss), want, rtol=2e-5, atol=1e-6)
  # The option changes the loss (the reference without it differs).
  base = G.GRPOConfig(aggregation=aggregation, beta=beta, max_completion_len=12)
  assert abs(np_loss(logp, old, ref, adv, mask, base, sampler, ent) - want) > 1e-4
  assert np.isfinite([float(v) for v in m.values()]).all()


def test_gspo_gradient_is_the_sequence_level_gradient():
  """jax.grad of the token-form GSPO loss == finite differences of the paper's
  sequence-level objective (float64 NumPy), clipped sequences included."""
  cfg = G.GRPOConfig(policy_loss="gspo", beta=0.0, epsilon_low=0.03, epsilon_high=0.04)
  logp, old, _, _, adv, _, mask = _batch(11, spread=0.05)
  w, denom = G.loss_weights(mask, cfg.aggregation, cfg.max_completion_len)
  g = jax.grad(lambda lp: G.grpo_loss(lp, jnp.asarray(old, jnp.float32), None,
                                      jnp.asarray(adv, jnp.float32), jnp.asarray(w), denom,
                                      cfg)[0])(jnp.asarray(logp, jnp.float32))
  f = lambda lp: np_gspo_objective(lp, old, adv, mask, 0.03, 0.04)
  num = np.zeros_like(logp)
  h = 1e-6
  for i, t in itertools.product(*map(range, logp.shape)):
    e = np.zeros_like(logp)
    e[i, t] = h
    num[i, t] = (f(logp + e) - f(logp - e)) / (2 * h)
  np.testing.assert_allclose(np.asarray(g), num, rtol=1e-3, atol=1e-6)
  s = np.exp(((logp - old) * mask).sum(1) / mask.sum(1))
  clipped = ((s > 1.04) & (adv > 0)) | ((s < 0.97) & (adv < 0))
  assert clipped.any() and (~clipped).any()  # both branches are exercised
  assert np.all(num[clipped] == 0) and np.abs(num[~clipped & (mask.sum(1) > 0)]).sum() > 0


def test_gspo_with_per_token_advantages_equals_gspo_when_constant():
  cfg = G.GRPOConfig(policy_loss="gspo", beta=0.0, epsilon_low=0.03, epsilon_high=0.04)
  logp, old, _, _, adv, _, mask = _batch(12, spread=0.05)
  w, denom = G.loss_weights(mask, cfg.aggregation, cfg.max_completion_len)
  f = lambda a: jax.value_and_grad(
      lambda lp: G.grpo_loss(lp, jnp.asarray(old, jnp.float32), None, a, jnp.asarray(w),
                             denom, cfg)[0])(jnp.asarray(logp, jnp.float32))
  l1, g1 = f(jnp.asarray(adv, jnp.float32))
  l2, g2 = f(jnp.asarray(np.repeat(adv[:, None], logp.shape[1], 1), jnp.float32))
  np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6)
  np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-9)


def test_mu_one_gspo_ratio_is_one_and_gradient_is_policy_gradient():
  cfg = G.GRPOConfig(policy_loss="gspo", beta=0.0)
  logp, _, _, _, adv, _, mask = _batch(13)
  w, denom = G.loss_weights(mask, cfg.aggregation, cfg.max_completion_len)
  lp = jnp.asarray(logp, jnp.float32)
  (loss, m), g = jax.value_and_grad(
      lambda x: G.grpo_loss(x, x, None, jnp.asarray(adv, jnp.float32), jnp.asarray(w), denom,
                            cfg), has_aux=True)(lp)
  np.testing.assert_allclose(float(m["ratio_mean"]), 1.0, rtol=1e-6)
  # d/dlogp of -A * (mask / n_i) / S': the REINFORCE gradient with per-sequence token means.
  want = -adv[:, None] * mask / mask.sum(1, keepdims=True) / (mask.sum(1) > 0).sum()
  np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5, atol=1e-8)


def test_entropy_bonus_gradient_and_requirement():
  cfg = G.GRPOConfig(entropy_coef=0.05, beta=0.0, aggregation="token_mean")
  logp, old, _, _, adv, ent, mask = _batch(14)
  w, denom = G.loss_weights(mask, cfg.aggregation, cfg.max_completion_len)
  g = jax.grad(lambda e: G.grpo_loss(jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32),
                                     None, jnp.asarray(adv, jnp.float32), jnp.asarray(w), denom,
                                     cfg, e)[0])(jnp.asarray(ent, jnp.float32))
  np.testing.assert_allclose(np.asarray(g), -0.05 * mask / mask.sum(), rtol=1e-6, atol=1e-9)
  with pytest.raises(ValueError, match="entropy"):
    _loss(cfg, logp, old, None, None, adv, None, mask)


# ---------------------------------------------------------------------- off-policy
@pytest.mark.parametrize("mode,cap,low", [("tis", 1.3, 0.0), ("mis", 2.0, 0.5),
                                          ("mis", 1.5, 0.0)])
def test_importance_weights_and_mismatch_metrics_match_numpy(mode, cap, low):
  _, old, _, sampler, _, _, mask = _batch(21, T=5, mismatch=0.4)
  w, corrected = offpolicy.importance_weights(jnp.asarray(old, jnp.float32),
                                              jnp.asarray(sampler, jnp.float32),
                                              jnp.asarray(mask), mode, cap, low)
  want = np_is_weights(old, sampler, mask, mode, cap, low) * mask
  np.testing.assert_allclose(np.asarray(w), want, rtol=1e-5, atol=1e-7)
  valid = mask > 0
  diff = old - sampler
  if mode == "tis":
    want_frac = np.mean(np.exp(diff[valid]) > cap)
  else:
    rho = np.array([np.exp(diff[i][valid[i]].sum()) for i in range(len(mask))])
    out = (rho < low) | (rho > cap)
    want_frac = sum(valid[i].sum() for i in range(len(mask)) if out[i]) / valid.sum()
  assert 0 < want_frac < 1  # the case exercises both kept and corrected tokens
  m = offpolicy.mismatch_metrics(jnp.asarray(old, jnp.float32), jnp.asarray(sampler, jnp.float32),
                                 jnp.asarray(mask), jnp.asarray(G.token_mean_weights(mask)),
                                 mode, cap, low)
  key = "offpolicy/capped_frac" if mode == "tis" else "offpolicy/masked_frac"
  np.testing.assert_allclose(float(m[key]), want_frac, rtol=1e-6)
  np.testing.assert_allclose(float(m["offpolicy/logp_diff_abs"]), np.abs(diff[valid]).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(float(m["offpolicy/is_weight"]), want[valid].mean(), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(corrected) & ~valid, False)


def test_mismatch_summary_max_and_mean():
  _, old, _, sampler, _, _, mask = _batch(22)
  sampler = np.where(mask > 0, sampler, old + 50.0)  # padding far off: must not count
  s = offpolicy.mismatch_summary(jnp.asarray(old, jnp.float32),
                                 jnp.asarray(sampler, jnp.float32), jnp.asarray(mask))
  d = (old - sampler)[mask > 0]
  np.testing.assert_allclose(float(s["offpolicy/logp_diff_abs_max"]), np.abs(d).max(), rtol=1e-5)
  np.testing.assert_allclose(float(s["offpolicy/logp_diff_abs"]), np.abs(d).mean(), rtol=1e-5)
  np.testing.assert_allclose(float(s["offpolicy/logp_diff"]), d.mean(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["tis", "mis"])
def test_no_mismatch_means_no_correction(mode):
  cfg = G.GRPOConfig(offpolicy_correction=mode, beta=0.04)
  plain = G.GRPOConfig(beta=0.04)
  logp, old, ref, _, adv, ent, mask = _batch(23)
  a, ma = _loss(cfg, logp, old, ref, old, adv, ent, mask)
  b, _ = _loss(plain, logp, old, ref, None, adv, ent, mask)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
  np.testing.assert_allclose(float(ma["offpolicy/logp_diff_abs"]), 0.0, atol=1e-7)
  with pytest.raises(ValueError, match="sampler"):
    _loss(cfg, logp, old, ref, None, adv, ent, mask)


def test_masked_padding_stays_finite_with_every_option():
  cfg = G.GRPOConfig(policy_loss="gspo", offpolicy_correction="mis", entropy_coef=0.01,
                     beta=0.04)
  logp, old, ref, sampler, adv, ent, mask = _batch(24)
  logp = np.where(mask > 0, logp, -200.0)
  sampler = np.where(mask > 0, sampler, 300.0)
  ent = np.where(mask > 0, ent, np.nan)
  w, denom = G.loss_weights(mask, cfg.aggregation, cfg.max_completion_len)
  f = lambda lp, e: G.grpo_loss(lp, jnp.asarray(old, jnp.float32), jnp.asarray(ref, jnp.float32),
                                jnp.asarray(adv, jnp.float32), jnp.asarray(w), denom, cfg, e,
                                sampler_logp=jnp.asarray(sampler, jnp.float32))[0]
  loss, grads = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(logp, jnp.float32),
                                                      jnp.asarray(ent, jnp.float32))
  assert np.isfinite(float(loss)) and all(np.isfinite(np.asarray(g)).all() for g in grads)
  np.testing.assert_allclose(float(loss), np_loss(logp, old, ref, adv, mask, cfg, sampler,
                                                  np.nan_to_num(ent)), rtol=2e-5)


@pytest.mark.parametrize("opts,aggregation", list(itertools.product(OPTIONS, G.AGGREGATIONS)))
def test_micro_batches_add_up_exactly_with_every_option(opts, aggregation):
  cfg = G.GRPOConfig(aggregation=aggregation, beta=0.04, max_completion_len=9, **opts)
  logp, old, ref, sampler, adv, ent, mask = _batch(31)
  w, denom = G.loss_weights(mask, aggregation, 9)
  mw = G.token_mean_weights(mask)
  j = lambda x: jnp.asarray(x, jnp.float32)

  def f(lp, sl):
    return G.grpo_loss(lp, j(old[sl]), j(ref[sl]), j(adv[sl]), j(w[sl]), denom, cfg,
                       j(ent[sl]), j(mw[sl]), sampler_logp=j(sampler[sl]))

  (full, m_full), g_full = jax.value_and_grad(f, has_aux=True)(j(logp), slice(None))
  parts = [jax.value_and_grad(f, has_aux=True)(j(logp[i:i + 2]), slice(i, i + 2))
           for i in range(0, 8, 2)]
  np.testing.assert_allclose(sum(float(p[0][0]) for p in parts), float(full), rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), g_full, rtol=1e-5,
                             atol=1e-8)
  for k in m_full:
    np.testing.assert_allclose(sum(float(p[0][1][k]) for p in parts), float(m_full[k]),
                               rtol=1e-5, atol=1e-7, err_msg=k)


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs,key", [
    (dict(policy_loss="ppo"), "rl.policy_loss"),
    (dict(entropy_coef=-0.1), "rl.entropy_coef"),
    (dict(offpolicy_correction="is"), "rl.offpolicy_correction"),
    (dict(offpolicy_cap=0.0), "rl.offpolicy_cap"),
    (dict(offpolicy_mis_low=2.0, offpolicy_cap=2.0), "rl.offpolicy_mis_low"),
    (dict(offpolicy_mis_low=-0.1), "rl.offpolicy_mis_low"),
    (dict(aggregation="mean"), "rl.loss_aggregation"),
    (dict(kl_estimator="k4"), "rl.kl_estimator"),
    (dict(beta=-1.0), "rl.beta"),
    (dict(epsilon_low=1.0), "rl.epsilon_low"),
    (dict(max_completion_len=0), "rl.max_new_tokens"),
])
def test_config_errors_name_the_key_in_one_line(kwargs, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")) as e:
    G.GRPOConfig(**kwargs)
  assert "\n" not in str(e.value)
