"""Decoder tests against a straightforward NumPy implementation and the cached path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import models
from r1jax.models import decoder
from r1jax.models.config import ModelConfig, RopeScaling, tiny_config


def numpy_forward(params, cfg: ModelConfig, tokens: np.ndarray) -> np.ndarray:
  """Naive float64 Llama/Qwen2 forward for one unpadded sequence: logits [T, V]."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  T = len(tokens)
  H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

  def rms(x, w):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.rms_norm_eps) * w

  inv = 1.0 / cfg.rope_theta ** (np.arange(0, Dh, 2) / Dh)
  if cfg.rope_scaling is not None:  # Llama 3.1 `apply_scaling`, written out per frequency
    rs = cfg.rope_scaling
    out = []
    for f in inv:
      wl = 2 * np.pi / f
      if wl < rs.original_max_position_embeddings / rs.high_freq_factor:
        out.append(f)
      elif wl > rs.original_max_position_embeddings / rs.low_freq_factor:
        out.append(f / rs.factor)
      else:
        sm = (rs.original_max_position_embeddings / wl - rs.low_freq_factor) / (
            rs.high_freq_factor - rs.low_freq_factor)
        out.append((1 - sm) * f / rs.factor + sm * f)
    inv = np.array(out)
  ang = np.arange(T)[:, None] * inv[None]  # [T, Dh/2]

  def rope(x):  # x [T, heads, Dh], rotate-half pairing (i, i + Dh/2)
    x1, x2 = x[..., :Dh // 2], x[..., Dh // 2:]
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)

  x = p["embedding"][tokens]
  lay = p["layers"]
  for l in range(cfg.num_layers):
    a = lay["attn"]
    h = rms(x, lay["attn_norm"]["scale"][l])
    q = np.einsum("td,dhk->thk", h, a["q_proj"]["kernel"][l])
    k = np.einsum("td,dhk->thk", h, a["k_proj"]["kernel"][l])
    v = np.einsum("td,dhk->thk", h, a["v_proj"]["kernel"][l])
    if cfg.attention_bias:
      q, k, v = q + a["q_proj"]["bias"][l], k + a["k_proj"]["bias"][l], v + a["v_proj"]["bias"][l]
    q, k = rope(q), rope(k)
    o = np.zeros((T, H, Dh))
    for head in range(H):
      kv = head // (H // K)
      s = q[:, head] @ k[:, kv].T / np.sqrt(Dh)
      s = np.where(np.tril(np.ones((T, T))) > 0, s, -np.inf)
      w = np.exp(s - s.max(-1, keepdims=True))
      o[:, head] = (w / w.sum(-1, keepdims=True)) @ v[:, kv]
    x = x + np.einsum("thk,hkd->td", o, a["o_proj"]["kernel"][l])
    h = rms(x, lay["mlp_norm"]["scale"][l])
    m = lay["mlp"]
    g = h @ m["gate_proj"]["kernel"][l]
    x = x + ((g / (1 + np.exp(-g))) * (h @ m["up_proj"]["kernel"][l])) @ m["down_proj"]["kernel"][l]
  x = rms(x, p["final_norm"]["scale"])
  w = p["embedding"].T if cfg.tie_word_embeddings else p["lm_head"]
  return x @ w


CONFIGS = {
    "llama": tiny_config(),
    "llama_tied": tiny_config(tie_word_embeddings=True),
    "qwen2_bias": tiny_config(architecture="qwen2", attention_bias=True),
    "llama3_rope": tiny_config(rope_scaling=RopeScaling(8.0, 1.0, 4.0, 32), rope_theta=500000.0),
    "mha": tiny_config(num_kv_heads=4),
}


def _params(cfg, seed=0):
  p = models.init_params(cfg, jax.random.key(seed))
  # Non-trivial norms and biases so that a wrong mapping cannot hide behind ones/zeros.
  leaves, tree = jax.tree.flatten_with_path(p)
  out = []
  for i, (path, x) in enumerate(leaves):
    name = jax.tree_util.keystr(path)
    if "scale" in name or "bias" in name:
      x = x + 0.1 * jax.random.normal(jax.random.key(100 + i), x.shape)
    out.append(x)
  return jax.tree.unflatten(tree, out)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_matches_numpy_reference(name):
  cfg = CONFIGS[name]
  params = _params(cfg)
  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, size=13)
  got = models.logits(params, cfg, models.forward(params, cfg, jnp.asarray(tokens)[None]))[0]
  want = numpy_forward(params, cfg, tokens)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-4)


def test_param_tree_axes_and_shapes():
  cfg = CONFIGS["qwen2_bias"]
  params = models.init_params(cfg, jax.random.key(0))
  axes = models.param_logical_axes(cfg)
  shapes = models.param_shapes(cfg)
  assert jax.tree.structure(params) == jax.tree.structure(
      axes, is_leaf=lambda x: isinstance(x, tuple))
  for a, x, s in zip(jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple)),
                     jax.tree.leaves(params), jax.tree.leaves(shapes)):
    assert len(a) == x.ndim and x.shape == s.shape
  n = sum(x.size for x in jax.tree.leaves(params))
  assert n == cfg.num_params()
  assert params["layers"]["attn"]["q_proj"]["kernel"].shape == (2, 64, 4, 16)
  assert axes["layers"]["attn"]["q_proj"]["kernel"] == ("layers", "embed", "q_heads", "head_dim")


def test_padding_and_packing_do_not_change_real_tokens():
  cfg = CONFIGS["llama"]
  params = _params(cfg)
  rng = np.random.RandomState(1)
  a, b = rng.randint(3, 200, size=5), rng.randint(3, 200, size=7)
  ref_a = models.forward(params, cfg, jnp.asarray(a)[None])[0]
  ref_b = models.forward(params, cfg, jnp.asarray(b)[None])[0]
  # Right padding with segment 0.
  toks = np.zeros((1, 9), np.int32)
  toks[0, :5] = a
  seg = (np.arange(9) < 5).astype(np.int32)[None]
  got = models.forward(params, cfg, jnp.asarray(toks), segment_ids=jnp.asarray(seg))[0, :5]
  np.testing.assert_allclose(got, ref_a, atol=1e-5)
  # Left padding with explicit positions.
  toks = np.zeros((1, 9), np.int32)
  toks[0, 4:] = a
  pos = np.maximum(np.arange(9) - 4, 0)[None]
  seg = (np.arange(9) >= 4).astype(np.int32)[None]
  got = models.forward(params, cfg, jnp.asarray(toks), jnp.asarray(pos), jnp.asarray(seg))[0, 4:]
  np.testing.assert_allclose(got, ref_a, atol=1e-5)
  # Two sequences packed in one row (segments 1 and 2, positions restart).
  toks = np.concatenate([a, b])[None]
  pos = np.concatenate([np.arange(5), np.arange(7)])[None]
  seg = np.array([1] * 5 + [2] * 7)[None]
  got = models.forward(params, cfg, jnp.asarray(toks), jnp.asarray(pos), jnp.asarray(seg))[0]
  np.testing.assert_allclose(got[:5], ref_a, atol=1e-5)
  np.testing.assert_allclose(got[5:], ref_b, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "qwen2_bias", "llama_tied"])
def test_cached_decode_equals_full_forward(name):
  """Prefill (shared by G samples) + one-token decode steps give the full forward's logits."""
  cfg = CONFIGS[name]
  params = _params(cfg)
  B, G, P, N = 2, 3, 8, 6
  rng = np.random.RandomState(2)
  lengths = np.array([8, 5], np.int32)
  prompts = rng.randint(3, cfg.vocab_size, size=(B, P)).astype(np.int32)
  prompts[1, 5:] = 0  # right padding of the shorter prompt
  conts = rng.randint(3, cfg.vocab_size, size=(B, G, N)).astype(np.int32)

  last, cache = models.prefill(params, cfg, jnp.asarray(prompts), jnp.asarray(lengths), G, N)
  step_logits = []
  for t in range(N):
    pos = jnp.broadcast_to(jnp.asarray(lengths)[:, None] + t, (B, G))
    h, cache = models.decode_step(params, cfg, jnp.asarray(conts[:, :, t]), pos, cache,
                                  jnp.int32(t))
    step_logits.append(models.logits(params, cfg, h))
  for b in range(B):
    for g in range(G):
      seq = np.concatenate([prompts[b, :lengths[b]], conts[b, g]])
      full = models.logits(params, cfg, models.forward(params, cfg, jnp.asarray(seq)[None]))[0]
      L = lengths[b]
      np.testing.assert_allclose(models.logits(params, cfg, last[b]), full[L - 1], atol=1e-4)
      for t in range(N):
        np.testing.assert_allclose(step_logits[t][b, g], full[L + t], atol=1e-4)


def test_bfloat16_compute_runs_close_to_float32():
  cfg = CONFIGS["llama"]
  params = _params(cfg)
  tokens = jnp.asarray(np.random.RandomState(3).randint(0, 256, size=(2, 9)))
  f32 = models.logits(params, cfg, models.forward(params, cfg, tokens))
  cfg16 = cfg.replace(dtype="bfloat16")
  h16 = models.forward(params, cfg16, tokens)
  assert h16.dtype == jnp.bfloat16
  bf = models.logits(params, cfg16, h16)
  assert bf.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(bf - f32))) < 0.1 * float(jnp.max(jnp.abs(f32)))


def test_remat_gives_same_gradients():
  cfg = CONFIGS["llama"]
  params = _params(cfg)
  tokens = jnp.asarray(np.random.RandomState(4).randint(0, 256, size=(2, 7)))

  def loss(p, remat):
    return jnp.sum(models.forward(p, cfg, tokens, remat=remat) ** 2)

  g1 = jax.grad(loss)(params, False)
  g2 = jax.grad(loss)(params, True)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-4)


def test_config_validation():
  with pytest.raises(ValueError, match="unsupported architecture"):
    tiny_config(architecture="gpt2")
  with pytest.raises(ValueError, match="num_kv_heads"):
    tiny_config(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="unknown ModelConfig fields"):
    ModelConfig.from_dict({"hidden_sizes": 3})
  cfg = tiny_config(rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 64})
  assert ModelConfig.from_dict(cfg.to_dict()) == cfg
