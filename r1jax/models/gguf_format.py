"""GGUF (llama.cpp) checkpoints: tensor names mapped onto HF names, Q/K rows un-permuted,
F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors dequantised with the `gguf` package, and the model
config read from the metadata.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Optional

import numpy as np

from r1jax.models.config import ModelConfig, RopeScaling
from r1jax.models.decoder import rope_inv_freq
from r1jax.models.layout import HF_ARCHS

GGUF_SUPPORTED_QTYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")


_GGUF_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                "output": "lm_head"}
_GGUF_BLOCK = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
               "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
               "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_HF_GLOBAL = {v: k for k, v in _GGUF_GLOBAL.items()}
_HF_BLOCK = {v: k for k, v in _GGUF_BLOCK.items()}


def gguf_to_hf(name: str) -> Optional[str]:
  m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
  if m and m.group(2) in _GGUF_BLOCK:
    return f"model.layers.{m.group(1)}.{_GGUF_BLOCK[m.group(2)]}.{m.group(3)}"
  m = re.fullmatch(r"(\w+)\.(weight|bias)", name)
  if m and m.group(1) in _GGUF_GLOBAL:
    return f"{_GGUF_GLOBAL[m.group(1)]}.{m.group(2)}"
  return None


def hf_to_gguf(name: str) -> str:
  m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
  if m and m.group(2) in _HF_BLOCK:
    return f"blk.{m.group(1)}.{_HF_BLOCK[m.group(2)]}.{m.group(3)}"
  m = re.fullmatch(r"(.+)\.(weight|bias)", name)
  if m and m.group(1) in _HF_GLOBAL:
    return f"{_HF_GLOBAL[m.group(1)]}.{m.group(2)}"
  return name


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's convert_hf_to_gguf `permute(w, n_head)` on the rows of Q/K.

  llama.cpp reorders each head's rows from rotate-half to interleaved pairs; r1jax (like
  transformers) uses rotate-half, so the original order is restored.
  """
  return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


class GGUFCheckpoint:
  """A llama.cpp GGUF file (memory-mapped), viewed under HF tensor names and layout."""

  def __init__(self, path: pathlib.Path):
    import gguf
    self.path = path
    try:
      self.reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises bare ValueError/struct errors on bad files
      raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e
    self.arch = self.field("general.architecture")
    self.tensors = {t.name: t for t in self.reader.tensors}
    self._gguf_name = {}  # HF name (or raw GGUF name when unknown) -> GGUF name
    for g in self.tensors:
      if g != "rope_freqs.weight":  # consumed by the config (Llama-3 RoPE scaling)
        self._gguf_name[gguf_to_hf(g) or g] = g
    self.unpermute_heads: dict[str, int] = {}  # set by the config reader (llama arch only)

  def field(self, key: str, default: Any = None) -> Any:
    f = self.reader.fields.get(key)
    if f is None:
      return default
    import gguf
    v = f.contents()
    if f.types == [gguf.GGUFValueType.FLOAT32]:
      v = float(str(np.float32(v)))  # shortest repr: 1e-05, not 9.999999747378752e-06
    return v

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    pass  # the reader's memmap is released when the object is dropped

  def names(self) -> list[str]:
    return list(self._gguf_name)

  def display(self, name: str) -> str:
    return self._gguf_name.get(name) or hf_to_gguf(name)

  def shape(self, name: str) -> tuple[int, ...]:
    # GGUF lists dimensions fastest-first; numpy order is the reverse.
    return tuple(int(d) for d in reversed(self.tensors[self._gguf_name[name]].shape))

  def check_type(self, name: str) -> None:
    t = self.tensors[self._gguf_name[name]]
    if t.tensor_type.name not in GGUF_SUPPORTED_QTYPES:
      raise ValueError(
          f"{self.path}: tensor {t.name} uses GGML type {t.tensor_type.name}, which is not "
          f"supported (supported: {', '.join(GGUF_SUPPORTED_QTYPES)})")

  def get(self, name: str) -> np.ndarray:
    import gguf
    t = self.tensors[self._gguf_name[name]]
    # np.asarray drops the memmap subclass, whose per-view bookkeeping slows dequantising.
    w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(self.shape(name))
    module = name.rsplit(".", 2)[-2] if name.startswith("model.layers.") else ""
    if module in self.unpermute_heads:
      w = unpermute(w, self.unpermute_heads[module])
    return w


def llama3_scaling_from_factors(factors: np.ndarray, theta: float, head_dim: int,
                                 original_ctx: int, path: pathlib.Path) -> Optional[RopeScaling]:
  """Recover Llama-3 RoPE scaling from llama.cpp's `rope_freqs.weight` [Dh/2] (the per
  frequency divisors it stores instead of the HF rope_scaling parameters)."""
  factors = np.asarray(factors, np.float32).reshape(-1)
  if np.all(factors == 1):
    return None
  # Llama 3.1/3.2 use low/high_freq_factor 1/4; the factor is the largest divisor.
  rs = RopeScaling(factor=float(factors.max()), low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=original_ctx)
  probe = ModelConfig(head_dim=head_dim, rope_theta=theta)
  expected = rope_inv_freq(probe) / rope_inv_freq(probe.replace(rope_scaling=rs))
  if expected.shape != factors.shape or not np.allclose(expected, factors, rtol=1e-3):
    raise ValueError(f"{path}: rope_freqs.weight does not match Llama-3 RoPE scaling "
                     f"(tried {rs}); other scalings are not supported")
  return rs


def config_from_gguf(ck: GGUFCheckpoint) -> ModelConfig:
  arch, path = ck.arch, ck.path
  if arch not in HF_ARCHS:
    raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported "
                     f"(supported: {sorted(HF_ARCHS)})")

  def get(key, default=KeyError):
    v = ck.field(f"{arch}.{key}")
    if v is None:
      if default is KeyError:
        raise ValueError(f"{path}: GGUF metadata lacks {arch}.{key}")
      return default
    return v

  D, H = int(get("embedding_length")), int(get("attention.head_count"))
  K = get("attention.head_count_kv", H)
  if isinstance(K, list):  # per-layer list in some files; must be uniform here
    if len(set(K)) != 1:
      raise ValueError(f"{path}: per-layer head_count_kv {K} is not supported")
    K = K[0]
  head_dim = int(get("attention.key_length", D // H))
  if int(get("attention.value_length", head_dim)) != head_dim:
    raise ValueError(f"{path}: value_length != key_length is not supported")
  rot = int(get("rope.dimension_count", head_dim))
  if rot != head_dim:
    raise ValueError(f"{path}: partial rotary embeddings (rope.dimension_count={rot}, "
                     f"head_dim={head_dim}) are not supported")
  scaling_type = get("rope.scaling.type", "none")
  if scaling_type != "none" and float(get("rope.scaling.factor", 1.0)) != 1.0:
    raise ValueError(f"{path}: GGUF rope scaling {scaling_type!r} is not supported")
  theta = float(get("rope.freq_base", 10000.0))
  scaling = None
  if "rope_freqs.weight" in ck.tensors:
    import gguf
    t = ck.tensors["rope_freqs.weight"]
    scaling = llama3_scaling_from_factors(
        gguf.quants.dequantize(t.data, t.tensor_type), theta, head_dim,
        int(get("rope.scaling.original_context_length", 8192)), path)
  vocab = get("vocab_size", None)
  if vocab is None:  # the embedding is authoritative; the token list may be shorter
    tokens = ck.reader.fields.get("tokenizer.ggml.tokens")
    if "token_embd.weight" in ck.tensors:
      vocab = int(ck.tensors["token_embd.weight"].shape[-1])
    elif tokens is not None:
      vocab = len(tokens.data)
    else:
      raise ValueError(f"{path}: cannot determine the vocabulary size")
  if arch == "llama":  # llama.cpp permutes Q/K rows for llama only (not qwen2 / qwen3)
    ck.unpermute_heads = {"q_proj": H, "k_proj": int(K)}
  return ModelConfig(
      architecture=arch, vocab_size=int(vocab), hidden_size=D,
      intermediate_size=int(get("feed_forward_length")), num_layers=int(get("block_count")),
      num_heads=H, num_kv_heads=int(K), head_dim=head_dim, rope_theta=theta,
      rope_scaling=scaling, rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
      attention_bias="blk.0.attn_q.bias" in ck.tensors,
      tie_word_embeddings="output.weight" not in ck.tensors,
      max_position_embeddings=int(get("context_length", 2048)),
      bos_token_id=ck.field("tokenizer.ggml.bos_token_id"),
      eos_token_id=ck.field("tokenizer.ggml.eos_token_id"),
      pad_token_id=ck.field("tokenizer.ggml.padding_token_id"))
