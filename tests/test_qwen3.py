"""Qwen3 dense models against transformers' own output (no torch needed here).

References (tools/qwen3_lora_reference.py, committed under tests/data): two tiny random
checkpoints written by `Qwen3ForCausalLM(Qwen3Config(...)).save_pretrained` (head_dim 16 !=
hidden 32 / 4 heads, rope_theta 1e6, q/k norm weights perturbed from 1; untied and tied LM
head), transformers' float32 logits on fixed ids, and its greedy continuations. GGUF files are
written here with the `gguf` package's writer, under the tensor names gguf-py maps the HF
names to for arch qwen3.
"""
import json
import pathlib

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import models, sampling
from r1jax.models import from_pretrained, load_config, save_pretrained

DATA = pathlib.Path(__file__).parent / "data"
REF = np.load(DATA / "qwen3_lora_ref.npz")
CKPTS = ("qwen3_tiny", "qwen3_tiny_tied")


def r1_logits(cfg, params, ids):
  return np.asarray(models.logits(params, cfg, models.forward(params, cfg, jnp.asarray(ids))))


@pytest.mark.parametrize("name", CKPTS)
def test_config_from_transformers_checkpoint(name):
  hf = json.loads((DATA / name / "config.json").read_text())
  cfg = load_config(DATA / name)
  assert cfg.architecture == "qwen3" and cfg.qk_norm
  assert cfg.head_dim == hf["head_dim"] == 16 != cfg.hidden_size // cfg.num_heads
  assert cfg.rope_theta == hf["rope_parameters"]["rope_theta"] == 1e6
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.num_layers) == (4, 2, 2)
  assert cfg.tie_word_embeddings == (name == "qwen3_tiny_tied") == hf["tie_word_embeddings"]
  assert not cfg.attention_bias


@pytest.mark.parametrize("name", CKPTS)
def test_logits_and_greedy_match_transformers(name):
  cfg, params = from_pretrained(DATA / name)
  assert params["layers"]["attn"]["q_norm"]["scale"].shape == (2, 16)
  assert ("lm_head" in params) == (not cfg.tie_word_embeddings)
  want = REF[f"{name}_logits"]
  got = r1_logits(cfg, params, REF["ids"])
  assert np.abs(want).max() > 1.0  # not a degenerate comparison
  assert np.abs(got - want).max() < 2e-5
  # Greedy continuation through the sampler's prefill + cached decode path.
  greedy = REF[f"{name}_greedy"]
  out = sampling.Sampler(cfg, pad_id=0)(
      params, [REF["ids"][0].tolist()], jax.random.key(0),
      sampling=sampling.SamplingParams(temperature=0, max_new_tokens=len(greedy)))
  assert out.tokens[0, 0].tolist() == greedy.tolist()


def test_qk_norm_is_applied():
  # The same weights without the q/k norms give other logits: the parity above needs them.
  cfg, params = from_pretrained(DATA / "qwen3_tiny")
  attn = dict(params["layers"]["attn"])
  attn["q_norm"] = {"scale": jnp.ones_like(attn["q_norm"]["scale"])}
  p2 = dict(params, layers=dict(params["layers"], attn=attn))
  diff = np.abs(r1_logits(cfg, p2, REF["ids"]) - REF["qwen3_tiny_logits"]).max()
  assert diff > 1e-2


@pytest.mark.parametrize("name", CKPTS)
def test_export_roundtrip(name, tmp_path):
  from safetensors.numpy import load_file
  cfg, params = from_pretrained(DATA / name)
  out = save_pretrained(cfg, params, tmp_path / "hf")
  d = json.loads((out / "config.json").read_text())
  assert d["model_type"] == "qwen3" and d["architectures"] == ["Qwen3ForCausalLM"]
  assert d["head_dim"] == 16 and not d["attention_bias"]
  cfg2, params2 = from_pretrained(out)
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(a, b)
  # The same tensors, names and values as the file transformers wrote.
  ours, theirs = load_file(str(out / "model.safetensors")), load_file(
      str(DATA / name / "model.safetensors"))
  assert set(ours) == set(theirs)
  for k in theirs:
    np.testing.assert_array_equal(ours[k], theirs[k])


# --------------------------------------------------------------------------- GGUF
def gguf_name(hf: str) -> str:
  """HF tensor name -> llama.cpp name, from gguf-py's own table for arch qwen3."""
  return gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, 2).get_name(hf, try_suffixes=(".weight",))


def write_qwen3_gguf(path, cfg, tensors, drop=()):
  arch = "qwen3"
  w = gguf.GGUFWriter(str(path), arch)
  w.add_uint32(f"{arch}.block_count", cfg.num_layers)
  w.add_uint32(f"{arch}.context_length", cfg.max_position_embeddings)
  w.add_uint32(f"{arch}.embedding_length", cfg.hidden_size)
  w.add_uint32(f"{arch}.feed_forward_length", cfg.intermediate_size)
  w.add_uint32(f"{arch}.attention.head_count", cfg.num_heads)
  w.add_uint32(f"{arch}.attention.head_count_kv", cfg.num_kv_heads)
  w.add_uint32(f"{arch}.attention.key_length", cfg.head_dim)
  w.add_uint32(f"{arch}.attention.value_length", cfg.head_dim)
  w.add_float32(f"{arch}.rope.freq_base", cfg.rope_theta)
  w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
  w.add_uint32("tokenizer.ggml.bos_token_id", cfg.bos_token_id)
  w.add_uint32("tokenizer.ggml.eos_token_id", cfg.eos_token_id)
  w.add_uint32("tokenizer.ggml.padding_token_id", cfg.pad_token_id)
  for hf, x in tensors.items():
    if gguf_name(hf) not in drop:
      w.add_tensor(gguf_name(hf), np.ascontiguousarray(x))  # qwen3: no Q/K row permutation
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


@pytest.mark.parametrize("name", CKPTS)
def test_gguf_loads_the_same_params(name, tmp_path):
  from safetensors.numpy import load_file
  cfg, params = from_pretrained(DATA / name)
  path = tmp_path / f"{name}.gguf"
  write_qwen3_gguf(path, cfg, load_file(str(DATA / name / "model.safetensors")))
  assert "blk.1.attn_k_norm.weight" in {t.name for t in gguf.GGUFReader(str(path)).tensors}
  cfg2, params2 = from_pretrained(path)
  assert cfg2 == cfg
  assert jax.tree.structure(params2) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(a, b)


def test_gguf_without_qk_norm_is_rejected(tmp_path):
  from safetensors.numpy import load_file
  cfg = load_config(DATA / "qwen3_tiny")
  path = tmp_path / "bad.gguf"
  write_qwen3_gguf(path, cfg, load_file(str(DATA / "qwen3_tiny" / "model.safetensors")),
                   drop=("blk.0.attn_q_norm.weight",))
  with pytest.raises(ValueError, match="blk.0.attn_q_norm.weight"):
    from_pretrained(path)


def test_unsupported_qwen3_variants(tmp_path):
  hf = json.loads((DATA / "qwen3_tiny" / "config.json").read_text())
  for key, value, match in (("attention_bias", True, "attention_bias"),
                            ("use_sliding_window", True, "use_sliding_window"),
                            ("layer_types", ["sliding_attention"] * 2, "layer_types")):
    d = tmp_path / key
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(hf, **{key: value})))
    with pytest.raises(ValueError, match=match):
      load_config(d)
  cfg, params = from_pretrained(DATA / "qwen3_tiny")
  with pytest.raises(ValueError, match="o_proj bias"):
    save_pretrained(cfg.replace(attention_bias=True), params, tmp_path / "out")
