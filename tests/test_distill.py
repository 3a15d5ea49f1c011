"""Logit distillation: chunked KL(teacher || student) vs a full-logits reference (values and
student gradients, with temperature), KL = 0 for teacher == student, vocabulary checks, the
config files, and a tiny distillation run whose loss falls."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import configs, models
from r1jax.data.sft_data import SFTExample, build_batch, pack_rows
from r1jax.losses import distill as distill_lib
from r1jax.losses import sft as sft_lib
from r1jax.models.config import tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))
V = 97
STUDENT = tiny_config(vocab_size=V, hidden_size=32, intermediate_size=64, num_heads=2,
                      num_kv_heads=1, max_position_embeddings=64)
TEACHER = tiny_config(vocab_size=V, max_position_embeddings=64)


@pytest.fixture(scope="module")
def params():
  init = jax.jit(models.init_params, static_argnums=0)
  return init(STUDENT, jax.random.key(0)), init(TEACHER, jax.random.key(1))


def _batch(seed=0):
  rng = np.random.RandomState(seed)
  exs = []
  for i, n in enumerate((9, 5, 14, 7)):
    ids = rng.randint(3, V, size=n).astype(np.int32)
    exs.append(SFTExample(f"e{i}", ids, np.arange(n) >= max(1, n // 3)))
  return build_batch(exs, pack_rows([len(e.ids) - 1 for e in exs], 24), 24, num_rows=2)


def _naive_kl(h_s, w_s, h_t, w_t, T):
  """Full [N, V] logits of both models, KL(p_t || p_s) per token."""
  ls = jax.nn.log_softmax(h_s @ w_s / T, axis=-1)
  lt = jax.nn.log_softmax(h_t @ w_t / T, axis=-1)
  return jnp.sum(jnp.exp(lt) * (lt - ls), axis=-1)


def _naive_loss(ps, pt, batch, denom, alpha, T):
  """(1 - alpha) * NLL + alpha * T^2 * KL from full logits of both models."""
  args = (batch["tokens"], batch["positions"], batch["segment_ids"])
  h_s = models.forward(ps, STUDENT, *args)
  h_t = models.forward(pt, TEACHER, *args)
  logits_s = models.logits(ps, STUDENT, h_s)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits_s, -1), batch["targets"][..., None],
                             -1)[..., 0]
  w = batch["loss_mask"]
  nll = -jnp.sum(logp * w) / denom
  kl = _naive_kl(h_s, models.lm_head_weight(ps, STUDENT), h_t,
                 models.lm_head_weight(pt, TEACHER), T)
  return (1 - alpha) * nll + alpha * T ** 2 * jnp.sum(kl * w) / denom


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_token_kl_matches_full_logits(T):
  k = jax.random.split(jax.random.key(2), 4)
  h_s, w_s = jax.random.normal(k[0], (37, 16)), jax.random.normal(k[1], (16, V))
  h_t, w_t = jax.random.normal(k[2], (37, 24)), jax.random.normal(k[3], (24, V))
  mask = (jnp.arange(37) % 5 != 0).astype(jnp.float32)
  f = lambda hs, ws: jnp.sum(distill_lib.token_kl(hs, ws, h_t, w_t, temperature=T,
                                                  chunk_size=8, mask=mask) * jnp.arange(37))
  g = lambda hs, ws: jnp.sum(_naive_kl(hs, ws, h_t, w_t, T) * mask * jnp.arange(37))
  kl = distill_lib.token_kl(h_s, w_s, h_t, w_t, temperature=T, chunk_size=8, mask=mask)
  np.testing.assert_allclose(kl, _naive_kl(h_s, w_s, h_t, w_t, T) * mask, rtol=1e-5, atol=1e-6)
  assert float(kl.min()) >= 0 and float(kl[0]) == 0.0
  got, want = jax.grad(f, (0, 1))(h_s, w_s), jax.grad(g, (0, 1))(h_s, w_s)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_loss_and_student_gradient_match_reference(params):
  ps, pt = params
  alpha, T = 0.5, 2.0
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  denom = sft_lib.loss_denominator(batch)
  fn = distill_lib.make_loss_fn(STUDENT, TEACHER, alpha=alpha, temperature=T, chunk_size=16,
                                kernel=dict(chunk_size=8))
  # jit: eager op-by-op dispatch of the backward pass is much slower than compiling it.
  (loss, m), grads = jax.jit(jax.value_and_grad(lambda p: fn(p, batch, denom, pt),
                                                has_aux=True))(ps)
  ref, ref_grads = jax.jit(jax.value_and_grad(
      lambda p: _naive_loss(p, pt, batch, denom, alpha, T)))(ps)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(loss, (1 - alpha) * m["nll"] + alpha * T ** 2 * m["kl"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_kl_is_zero_when_teacher_is_student(params):
  ps, _ = params
  batch = {k: jnp.asarray(v) for k, v in _batch(1).items()}
  fn = distill_lib.make_loss_fn(STUDENT, STUDENT, alpha=1.0, temperature=2.0, chunk_size=16)
  (loss, m), grads = jax.jit(jax.value_and_grad(lambda p: fn(p, batch, 1.0, ps),
                                                has_aux=True))(ps)
  assert abs(float(m["kl"])) < 1e-5 and abs(float(loss)) < 1e-4
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) < 1e-4


def test_vocabulary_mismatch_is_an_error():
  other = tiny_config(vocab_size=V + 1)
  with pytest.raises(ValueError, match="vocab_size=98 but the student has 97"):
    distill_lib.make_loss_fn(STUDENT, other, alpha=0.5, temperature=1.0)
  h = jnp.ones((4, 8))
  with pytest.raises(ValueError, match="vocabulary sizes differ"):
    distill_lib.token_kl(h, jnp.ones((8, V)), h, jnp.ones((8, V + 1)))


# ---------------------------------------------------------------------- the stage
def _load(name):
  return configs.load(name)


def _save_teacher(path, vocab_size, tok):
  cfg = tiny_config(vocab_size=vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                    pad_token_id=tok.pad_id, max_position_embeddings=512)
  p = models.init_params(cfg, jax.random.key(7))
  # A peaked teacher (random init is near uniform): the KL term then has something to teach.
  p["lm_head"] = p["lm_head"] * 30.0
  models.save_pretrained(cfg, p, path)
  return str(path)


@pytest.fixture(scope="module")
def tok():
  from r1jax.tokenizer import Tokenizer
  try:
    return Tokenizer.from_source("smollm2-135m-instruct")
  except FileNotFoundError as e:
    pytest.skip(str(e))


def test_configs_load_and_validate():
  from r1jax.stages import sft as stage
  for name in ("distill", "distill:tiny", "sft"):
    c = _load(name)
    assert c.stage == "sft"
    stage.validate_config(c)
  assert _load("sft").distill.teacher == "" and _load("distill").data.source == "jsonl"
  c = _load("distill:tiny")
  c.distill.alpha = 1.5
  with pytest.raises(ValueError, match="distill.alpha"):
    stage.validate_config(c)


def test_tiny_distill_run_learns(tmp_path, tok):
  from r1jax.stages import sft as stage
  c = _load("distill:tiny")
  c.run_dir = str(tmp_path / "run")
  c.distill.teacher = _save_teacher(tmp_path / "teacher", tok.vocab_size, tok)
  c.data.eval_size = 0  # no eval compilation: faster
  out = stage.run(c)
  ms = [json.loads(l) for l in open(os.path.join(c.run_dir, "metrics.jsonl"))]
  train = [m for m in ms if "loss" in m]
  assert [m["step"] for m in train] == list(range(1, c.steps + 1))
  losses, kls = [m["loss"] for m in train], [m["kl"] for m in train]
  assert losses[-1] < 0.9 * losses[0], losses
  assert kls[-1] < kls[0], kls
  np.testing.assert_allclose(
      train[0]["loss"], 0.5 * train[0]["nll"] + 0.5 * 4.0 * train[0]["kl"], rtol=1e-5)
  assert os.path.isfile(os.path.join(out["hf_dir"], "model.safetensors"))
  # A teacher with another vocabulary fails before any compute.
  bad = _load("distill:tiny")
  bad.run_dir = str(tmp_path / "bad")
  bad.distill.teacher = _save_teacher(tmp_path / "teacher97", V, tok)
  with pytest.raises(ValueError, match="shares the teacher's tokenizer"):
    stage.run(bad)
