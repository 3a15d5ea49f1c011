"""GRPO: loss vs a NumPy reference, exact accumulation, log-prob kernel reference,
grouped (shared-prompt) log-probs vs per-sequence forwards, sharded == single device,
exact resume, config validation."""

import itertools
import json
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

import reward_fixtures  # noqa: F401  registers the test_length reward
from r1jax.kernels.logprob import token_logprobs
from r1jax import models, sharding
from r1jax.losses import grpo as G
from r1jax.stages import grpo as stage
from r1jax.stages import grpo_rollout as rollouts
from r1jax.train import trainer as trainer_lib


# ---------------------------------------------------------------------- NumPy reference
def numpy_grpo_loss(logp, old, ref, adv, mask, cfg: G.GRPOConfig):
  """Straightforward per-sequence loops of DeepSeekMath eq. 3 and its variants."""
  S, T = logp.shape
  per_seq_sums, per_seq_counts, token_terms = [], [], []
  for i in range(S):
    terms = []
    for t in range(T):
      if not mask[i, t]:
        continue
      ratio = np.exp(logp[i, t] - old[i, t])
      obj = min(ratio * adv[i], np.clip(ratio, 1 - cfg.epsilon_low, 1 + cfg.epsilon_high) * adv[i])
      term = -obj
      if cfg.beta > 0:
        lr = ref[i, t] - logp[i, t]
        kl = {"k1": -lr, "k2": 0.5 * lr * lr, "k3": np.exp(lr) - lr - 1}[cfg.kl_estimator]
        term += cfg.beta * kl
      terms.append(term)
    per_seq_sums.append(sum(terms))
    per_seq_counts.append(len(terms))
    token_terms.extend(terms)
  if cfg.aggregation == "sequence_mean_token_mean":
    means = [s / c for s, c in zip(per_seq_sums, per_seq_counts) if c > 0]
    return sum(means) / len(means)
  if cfg.aggregation == "token_mean":
    return sum(token_terms) / len(token_terms)
  return sum(token_terms) / (S * cfg.max_completion_len)


def _random_batch(seed, S=6, T=9):
  rng = np.random.RandomState(seed)
  logp = -rng.uniform(0.05, 3, (S, T))
  old = logp + rng.normal(0, 0.3, (S, T))  # ratios well outside [0.8, 1.2] too
  ref = logp + rng.normal(0, 0.5, (S, T))
  adv = rng.normal(0, 1, S)
  lengths = rng.randint(1, T + 1, S)
  lengths[0] = T
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
  return logp, old, ref, adv, mask


CASES = list(itertools.product(G.AGGREGATIONS, [(0.2, 0.2), (0.2, 0.28)], G.KL_ESTIMATORS,
                               [0.0, 0.04]))


@pytest.mark.parametrize("aggregation,clip,kl,beta", CASES)
def test_loss_matches_numpy_reference(aggregation, clip, kl, beta):
  cfg = G.GRPOConfig(epsilon_low=clip[0], epsilon_high=clip[1], beta=beta, kl_estimator=kl,
                     aggregation=aggregation, max_completion_len=12)
  # crc32, not hash(): str hashes are salted per process (a different batch each run).
  logp, old, ref, adv, mask = _random_batch(
      zlib.crc32(repr((aggregation, clip, kl, beta)).encode()) % 1000)
  w, denom = G.loss_weights(mask, aggregation, cfg.max_completion_len)
  loss, metrics = G.grpo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref),
                              jnp.asarray(adv), jnp.asarray(w), denom, cfg)
  want = numpy_grpo_loss(logp, old, ref, adv, mask, cfg)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)
  assert 0 < float(metrics["clip_frac"]) < 1


@pytest.mark.parametrize("aggregation", G.AGGREGATIONS)
def test_gradient_accumulation_is_exact(aggregation):
  cfg = G.GRPOConfig(beta=0.04, aggregation=aggregation, max_completion_len=9)
  logp, old, ref, adv, mask = _random_batch(7, S=8)
  w, denom = G.loss_weights(mask, aggregation, 9)
  f = lambda lp, sl: G.grpo_loss(lp, jnp.asarray(old[sl]), jnp.asarray(ref[sl]),
                                 jnp.asarray(adv[sl]), jnp.asarray(w[sl]), denom, cfg)[0]
  full, g_full = jax.value_and_grad(f)(jnp.asarray(logp), slice(None))
  parts = [jax.value_and_grad(f)(jnp.asarray(logp[i:i + 2]), slice(i, i + 2))
           for i in range(0, 8, 2)]
  np.testing.assert_allclose(sum(float(p[0]) for p in parts), float(full), rtol=1e-6)
  np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), g_full, rtol=1e-6)
  # For token_mean a mean of micro-batch means would differ (unequal token counts).
  if aggregation == "token_mean":
    means = [numpy_grpo_loss(logp[i:i + 2], old[i:i + 2], ref[i:i + 2], adv[i:i + 2],
                             mask[i:i + 2], cfg) for i in range(0, 8, 2)]
    assert abs(np.mean(means) - float(full)) > 1e-6


def test_gradients_flow_only_through_the_policy():
  cfg = G.GRPOConfig(beta=0.1)
  logp, old, ref, adv, mask = _random_batch(3)
  w, denom = G.loss_weights(mask, cfg.aggregation, 9)
  grads = jax.grad(lambda a, b, c: G.grpo_loss(a, b, c, jnp.asarray(adv), jnp.asarray(w),
                                               denom, cfg)[0], argnums=(0, 1, 2))(
      jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref))
  assert float(jnp.abs(grads[0]).sum()) > 0
  assert float(jnp.abs(grads[1]).sum()) == 0 and float(jnp.abs(grads[2]).sum()) == 0
  # Off-mask tokens get no gradient.
  assert float(jnp.abs(grads[0] * (1 - mask)).sum()) == 0


def test_group_advantages():
  r = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
  a = G.group_advantages(r, "group")
  s = np.std([1, 0, 0, 1], ddof=1)
  np.testing.assert_allclose(a[0], (np.array([1, 0, 0, 1]) - 0.5) / (s + 1e-4), rtol=1e-6)
  np.testing.assert_array_equal(a[1], 0)
  np.testing.assert_allclose(G.group_advantages(r, "none")[0], [0.5, -0.5, -0.5, 0.5])
  np.testing.assert_allclose(G.group_advantages(r, "batch")[0],
                             (np.array([1, 0, 0, 1]) - 0.5) / (r.std(ddof=1) + 1e-4), rtol=1e-6)
  with pytest.raises(ValueError):
    G.group_advantages(r, "nope")
  with pytest.raises(ValueError, match="G >= 2"):
    G.group_advantages(np.ones((3, 1)))


def test_token_logprobs_reference_matches_full_logits():
  rng = np.random.RandomState(0)
  h = jnp.asarray(rng.normal(size=(3, 11, 16)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(16, 50)), jnp.float32)
  y = jnp.asarray(rng.randint(0, 50, (3, 11)))

  def naive(h, w):
    lg = jnp.einsum("btd,dv->btv", h, w) / 0.7
    lp = jax.nn.log_softmax(lg, -1)
    return (jnp.take_along_axis(lp, y[..., None], -1)[..., 0],
            -jnp.sum(jnp.exp(lp) * lp, -1))

  got = token_logprobs(h, w, y, temperature=0.7, chunk_size=4)  # 11 = 4 + 4 + 3 (padding)
  want = naive(h, w)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-4)
  f1 = lambda h, w: jnp.sum(token_logprobs(h, w, y, temperature=0.7, chunk_size=4)[0] ** 2)
  f2 = lambda h, w: jnp.sum(naive(h, w)[0] ** 2)
  for a, b in zip(jax.grad(f1, (0, 1))(h, w), jax.grad(f2, (0, 1))(h, w)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- model-level
CFG = models.tiny_config()


@pytest.fixture(scope="module")
def params():
  return models.init_params(CFG, jax.random.key(0))


def _rollout_batch(seed, B=4, Gn=2, P=8, N=6):
  rng = np.random.RandomState(seed)
  prompts = rng.randint(3, CFG.vocab_size, (B, P)).astype(np.int32)
  lengths = rng.randint(2, P + 1, B).astype(np.int32)
  for b in range(B):
    prompts[b, lengths[b]:] = 0
  comp = rng.randint(3, CFG.vocab_size, (B, Gn, N)).astype(np.int32)
  clen = rng.randint(1, N + 1, (B, Gn)).astype(np.int32)
  return prompts, lengths, comp, clen


def test_grouped_completion_logprobs_match_per_sequence_forward(params):
  prompts, lengths, comp, _ = _rollout_batch(1)
  mb = {"prompt_tokens": jnp.asarray(prompts), "prompt_lengths": jnp.asarray(lengths),
        "completion": jnp.asarray(comp)}
  logp, ent = stage.completion_logprobs(params, CFG, mb, temperature=0.9, kernel=dict(chunk_size=4),
                                        remat=True)
  B, Gn, N = comp.shape
  for b in range(B):
    for g in range(Gn):
      seq = np.concatenate([prompts[b, :lengths[b]], comp[b, g]])
      lg = models.logits(params, CFG, models.forward(params, CFG, jnp.asarray(seq)[None]))[0]
      lp = jax.nn.log_softmax(lg / 0.9, -1)[lengths[b] - 1:-1]
      want = np.take_along_axis(np.asarray(lp), comp[b, g][:, None], -1)[:, 0]
      np.testing.assert_allclose(logp[b, g], want, atol=2e-5)


def _trainer(mesh, num_micro, loss_fn):
  import optax
  return trainer_lib.Trainer(mesh, models.param_logical_axes(CFG), loss_fn,
                             optax.adamw(1e-2), num_micro)


def _train_batch(seed):
  prompts, lengths, comp, clen = _rollout_batch(seed, B=8, Gn=2)
  mask = (np.arange(comp.shape[-1]) < clen[..., None]).astype(np.float32)
  w, denom = G.loss_weights(mask.reshape(16, -1), "sequence_mean_token_mean", 6)
  rng = np.random.RandomState(seed)
  batch = {"prompt_tokens": prompts, "prompt_lengths": lengths, "completion": comp,
           "weights": w.reshape(mask.shape),
           "advantages": rng.normal(size=(8, 2)).astype(np.float32),
           "ref_logp": -rng.uniform(0.5, 6, comp.shape).astype(np.float32)}
  return batch, denom


def test_sharded_update_equals_single_device(params):
  assert len(jax.devices()) == 8
  gcfg = G.GRPOConfig(beta=0.04)
  loss_fn = stage.make_loss_fn(CFG, gcfg, temperature=1.0, kernel=dict(chunk_size=4), remat=False,
                               num_iterations=1)
  batch, denom = _train_batch(2)
  results = []
  for shape, devices in (({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]),
                         ({"data": 2, "fsdp": 2, "tensor": 2}, None)):
    mesh = sharding.make_mesh(shape, devices)
    tr = _trainer(mesh, 2, loss_fn)
    state = tr.init_state(jax.tree.map(np.asarray, params))
    state, m = tr.update(state, batch, denom)
    if devices is None:  # params really are sharded over the 8 devices
      q = state.params["layers"]["attn"]["q_proj"]["kernel"]
      assert len(q.sharding.device_set) == 8 and q.sharding.spec != jax.sharding.PartitionSpec()
    results.append((jax.device_get(state.params), jax.device_get(m)))
  (p1, m1), (p8, m8) = results
  assert float(m1["grad_norm"]) > 0
  np.testing.assert_allclose(float(m1["loss"]), float(m8["loss"]), rtol=1e-5, atol=1e-7)
  for a, b, p0 in zip(jax.tree.leaves(p1), jax.tree.leaves(p8), jax.tree.leaves(params)):
    # Adam moves every param by ~lr = 1e-2; sharded float sums differ by ~1e-7 relative,
    # which Adam's normalisation can amplify on near-zero gradients.
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
    assert np.abs(np.asarray(a) - np.asarray(p0)).max() > 1e-3  # the update did something


def test_micro_batches_equal_one_big_batch(params):
  gcfg = G.GRPOConfig(beta=0.04, aggregation="token_mean")
  loss_fn = stage.make_loss_fn(CFG, gcfg, temperature=1.0, kernel=dict(chunk_size=4), remat=False,
                               num_iterations=1)
  batch, _ = _train_batch(4)
  mask = (batch["weights"] > 0).astype(np.float32)
  w, denom = G.loss_weights(mask.reshape(16, -1), "token_mean", 6)
  batch["weights"] = w.reshape(mask.shape)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  grads = []
  for M in (1, 4):
    tr = _trainer(mesh, M, loss_fn)
    state = tr.init_state(jax.tree.map(np.asarray, params))
    _, m = tr.update(state, batch, denom)
    grads.append(jax.device_get(m))
  np.testing.assert_allclose(grads[0]["loss"], grads[1]["loss"], rtol=1e-5)
  np.testing.assert_allclose(grads[0]["grad_norm"], grads[1]["grad_norm"], rtol=1e-4)


# ---------------------------------------------------------------------- the stage
def _tiny_config(tmp_path, **overrides):
  from r1jax import configs
  c = configs.load("grpo:tiny")
  c.run_dir = str(tmp_path / "run")
  c.rewards.spec = "test_length:1.0,format:0.5"
  c.eval.at_start = False
  c.checkpoint.every_steps = 1
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def test_resume_gives_the_same_next_step(tmp_path):
  a = _tiny_config(tmp_path / "a", steps=3)
  stage.run(a)
  b = _tiny_config(tmp_path / "b", steps=2)
  stage.run(b)
  b.steps = 3
  b.resume = True
  stage.run(b)
  ma = [json.loads(l) for l in open(os.path.join(a.run_dir, "metrics.jsonl"))]
  mb = [json.loads(l) for l in open(os.path.join(b.run_dir, "metrics.jsonl"))]
  train = lambda ms: [m for m in ms if "loss" in m]
  assert [m["step"] for m in train(mb)] == [1, 2, 3]
  assert train(ma)[-1]["grad_norm"] > 0
  for key in ("loss", "reward", "grad_norm", "kl", "response_len_mean"):
    assert train(ma)[-1][key] == train(mb)[-1][key], key
  # Final params are bit-identical.
  pa = _restore_params(a.run_dir)
  pb = _restore_params(b.run_dir)
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(x, y)


def _restore_params(run_dir):
  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"), item_names=("state", "extra"))
  out = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), extra=ocp.args.JsonRestore()))
  return out["state"][0] if isinstance(out["state"], (list, tuple)) else out["state"]["params"]


def test_config_validation_errors(tmp_path):
  with pytest.raises(ValueError, match="micro_batch_prompts"):
    stage.validate_config(_tiny_config(tmp_path, **{"rl.micro_batch_prompts": 3}))
  with pytest.raises(ValueError, match="prompts_per_step"):
    stage.validate_config(_tiny_config(tmp_path, **{"rl.prompts_per_step": 0}))
  with pytest.raises(ValueError, match="aggregation"):
    stage.validate_config(_tiny_config(tmp_path, **{"rl.loss_aggregation": "mean"}))
  with pytest.raises(ValueError, match="temperature"):
    stage.validate_config(_tiny_config(tmp_path, **{"rl.temperature": 0.0}))
  with pytest.raises(ValueError, match="unknown"):
    stage.validate_config(_tiny_config(tmp_path, **{"rewards.spec": "accuracy:1,nope:2"}))
  with pytest.raises(ValueError, match="num_generations"):
    stage.validate_config(_tiny_config(tmp_path, **{"rl.num_generations": 1}))


def test_existing_run_dir_needs_resume(tmp_path):
  c = _tiny_config(tmp_path, steps=1)
  c.rewards.spec = "format:1.0"
  stage.run(c)
  with pytest.raises(ValueError, match="resume"):
    stage.run(c)


def test_cli_rejects_unknown_keys_before_compute():
  import subprocess
  import sys
  r = subprocess.run([sys.executable, "-m", "r1jax.main", "--config=configs/grpo.py:tiny",
                      "--config.rl.num_generation=8"], capture_output=True, text=True,
                     cwd=os.path.join(os.path.dirname(__file__), ".."), timeout=120)
  assert r.returncode != 0
  assert "unknown config key" in r.stderr and "num_generation" in r.stderr


def test_dynamic_sampling_keeps_informative_groups_and_refills():
  from r1jax import sampling
  from r1jax.rewards.pool import RewardResult

  class FakeSampler:
    def pad_prompts(self, prompts, process_local=False):
      ids = np.zeros((len(prompts), 4), np.int32)
      return ids, np.array([len(p) for p in prompts], np.int32)

  def ro(tag, rewards):
    B, Gn = rewards.shape
    out = sampling.SampleOutput(np.full((B, Gn, 3), tag), np.ones((B, Gn), np.int32),
                                np.zeros((B, Gn, 3), np.float32), np.ones((B, Gn), bool), 3)
    r = rewards.reshape(-1).astype(np.float32)
    res = RewardResult(total=r, per_function={"accuracy": r}, timed_out=np.zeros(r.size, bool),
                       errors=np.zeros(r.size, bool))
    return rollouts.Rollout([{"prompt_ids": [tag], "q": (tag, b)} for b in range(B)], None, None,
                         out, [f"{tag}-{i}" for i in range(r.size)], res, 1.0, 0.5)

  first = ro(1, np.array([[1, 1], [0, 1], [0, 0]]))  # only group 1 is informative
  second = ro(2, np.array([[1, 0], [1, 1], [0, 1]]))  # groups 0 and 2 are
  assert rollouts.informative_groups(first, 2) == [(0, 1)]
  kept = [(0, 1)] + [(1, b) for _, b in rollouts.informative_groups(second, 2)]
  merged = rollouts.select_groups([first, second], kept, 2, FakeSampler())
  assert [e["q"] for e in merged.examples] == [(1, 1), (2, 0), (2, 2)]
  np.testing.assert_array_equal(merged.rewards.total, [0, 1, 1, 0, 0, 1])
  assert merged.texts == ["1-2", "1-3", "2-0", "2-1", "2-4", "2-5"]
  assert merged.out.tokens[:, 0, 0].tolist() == [1, 2, 2]
  assert merged.seconds_rollout == 2.0


def test_masked_positions_cannot_make_the_loss_nan():
  cfg = G.GRPOConfig(beta=0.04, kl_estimator="k3")
  logp, old, ref, adv, mask = _random_batch(5)
  logp = np.where(mask > 0, logp, -200.0)  # padding log-probs far from ref/old: exp(>88) = inf
  w, denom = G.loss_weights(mask, cfg.aggregation, 9)
  f = lambda lp: G.grpo_loss(lp, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv),
                             jnp.asarray(w), denom, cfg)[0]
  loss, grad = jax.value_and_grad(f)(jnp.asarray(logp, jnp.float32))
  assert np.isfinite(float(loss)) and np.isfinite(np.asarray(grad)).all()
  np.testing.assert_allclose(float(loss), numpy_grpo_loss(logp, old, ref, adv, mask, cfg),
                             rtol=1e-5)


@pytest.mark.parametrize("aggregation", G.AGGREGATIONS)
def test_reported_statistics_are_token_means(aggregation):
  cfg = G.GRPOConfig(aggregation=aggregation, max_completion_len=20)
  logp, _, ref, adv, mask = _random_batch(6)
  ent = np.random.RandomState(0).uniform(0, 3, logp.shape)
  w, denom = G.loss_weights(mask, aggregation, 20)
  _, m = G.grpo_loss(jnp.asarray(logp), jnp.asarray(logp), jnp.asarray(ref), jnp.asarray(adv),
                     jnp.asarray(w), denom, cfg, jnp.asarray(ent),
                     jnp.asarray(G.token_mean_weights(mask)))
  np.testing.assert_allclose(float(m["entropy"]), ent[mask > 0].mean(), rtol=1e-5)
  np.testing.assert_allclose(float(m["ratio_mean"]), 1.0, rtol=1e-6)


def test_length_breakdown_separates_finished_and_correct_responses():
  """Hand-computed: lengths 96 (cut at the budget), 20 and 40 (stopped); 20 is correct."""
  got = rollouts.length_breakdown([96, 20, 40], [False, True, True], [0.0, 1.0, 0.0])
  assert got == {"response_len_finished": 30.0, "response_len_correct": 20.0}
  got = rollouts.length_breakdown(np.array([[96, 96]]), np.array([[False, False]]),
                                  np.zeros(2), suffix="_greedy")
  assert got == {}  # nothing finished, nothing correct: no key (not a misleading 0)
  assert rollouts.length_breakdown([5, 7], [True, True]) == {"response_len_finished": 6.0}


def test_step_metrics_length_gap_within_groups():
  """Hand-computed: groups of 2; group 0 right 30 vs wrong 10 (+20), group 1 all wrong, group
  2 right 4 vs wrong 12 (-8): response_len_gap = +6 over the 2 mixed groups of 3."""
  from types import SimpleNamespace
  from r1jax.rewards.pool import RewardResult
  acc = np.array([0, 1, 0, 0, 1, 0], np.float32)
  res = RewardResult(acc, {"accuracy": acc}, np.zeros(6, bool), np.zeros(6, bool))
  out = SimpleNamespace(lengths=np.array([[10, 30], [7, 9], [4, 12]]),
                        finished=np.ones((3, 2), bool))
  ro = SimpleNamespace(out=out, rewards=res, texts=None, format_flags=[True] * 6,
                       examples=[{}] * 3, stats={})
  m = rollouts.step_metrics(ro, {}, 2, 1e-5)
  assert m["response_len_gap"] == pytest.approx(6.0)
  assert m["mixed_group_frac"] == pytest.approx(2 / 3)
