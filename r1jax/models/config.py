"""Model configuration shared by the Llama, Qwen2 and Qwen3 decoder families, and the
LoRA adapter settings a model may carry (see r1jax.models.lora)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

import jax.numpy as jnp

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")
# LoRA target names (config `lora.targets`) -> (module path in a decoder block, HF module name).
LORA_TARGETS = {
    "q": (("attn", "q_proj"), "self_attn.q_proj"),
    "k": (("attn", "k_proj"), "self_attn.k_proj"),
    "v": (("attn", "v_proj"), "self_attn.v_proj"),
    "o": (("attn", "o_proj"), "self_attn.o_proj"),
    "gate": (("mlp", "gate_proj"), "mlp.gate_proj"),
    "up": (("mlp", "up_proj"), "mlp.up_proj"),
    "down": (("mlp", "down_proj"), "mlp.down_proj"),
}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style RoPE frequency scaling ("rope_type": "llama3" in HF configs).

  Source: Meta Llama 3.1 reference code (`apply_scaling`), as implemented by
  `transformers.modeling_rope_utils._compute_llama3_parameters`.
  """
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Low-rank adapters on the projections (Hu et al. 2021, "LoRA", eq. 3):
  h = x W + (alpha / rank) * dropout(x) A B, with A [in, rank], B [rank, out].

  Attributes:
    rank: r >= 1.
    alpha: scaling numerator; the update is scaled by alpha / rank.
    dropout: dropout rate on the adapter's input, in [0, 1) (training forward only).
    targets: projections that get adapters, a tuple of names from LORA_TARGETS
      (q, k, v, o, gate, up, down), in that canonical order.
  """
  rank: int = 16
  alpha: float = 32.0
  dropout: float = 0.0
  targets: tuple = ("q", "k", "v", "o", "gate", "up", "down")

  def __post_init__(self):
    if int(self.rank) < 1:
      raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
    if not 0.0 <= float(self.dropout) < 1.0:
      raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
    targets = tuple(self.targets)
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown or not targets:
      raise ValueError(f"lora.targets has unknown or no names {unknown or list(targets)}; known: "
                       f"{','.join(LORA_TARGETS)}")
    object.__setattr__(self, "targets", tuple(t for t in LORA_TARGETS if t in targets))

  @property
  def scale(self) -> float:
    return float(self.alpha) / int(self.rank)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a decoder-only transformer (Llama / Qwen2 / Qwen3 family).

  Attributes:
    architecture: "llama", "qwen2" (q/k/v bias) or "qwen3" (per-head RMSNorm of q and k
      before RoPE, `qk_norm`; Qwen3 technical report 2025, section 2).
    vocab_size: number of token ids V.
    hidden_size: model width D.
    intermediate_size: SwiGLU hidden width F.
    num_layers: number of decoder blocks L.
    num_heads: query heads H.
    num_kv_heads: key/value heads K (H % K == 0; grouped-query attention).
    head_dim: per-head width Dh (usually D // H).
    rope_theta: RoPE base frequency.
    rope_scaling: optional Llama-3 frequency scaling.
    rms_norm_eps: epsilon of RMSNorm.
    attention_bias: q/k/v projections carry a bias (Qwen2).
    tie_word_embeddings: LM head shares the token embedding matrix.
    max_position_embeddings: longest context the checkpoint was trained for.
    bos_token_id / eos_token_id / pad_token_id: special ids from the checkpoint (may be None).
    dtype: compute dtype name ("float32", "bfloat16", "float16").
    param_dtype: storage dtype name of the params.
    lora: LoRA adapters on the projections (None = a plain model); see r1jax.models.lora.
  """
  architecture: str = "llama"
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 32
  head_dim: int = 128
  rope_theta: float = 10000.0
  rope_scaling: Optional[RopeScaling] = None
  rms_norm_eps: float = 1e-6
  attention_bias: bool = False
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 4096
  bos_token_id: Optional[int] = None
  eos_token_id: Optional[int] = None
  pad_token_id: Optional[int] = None
  dtype: str = "float32"
  param_dtype: str = "float32"
  lora: Optional[LoraConfig] = None

  def __post_init__(self):
    if self.architecture not in SUPPORTED_ARCHITECTURES:
      raise ValueError(
          f"unsupported architecture {self.architecture!r}; supported: {SUPPORTED_ARCHITECTURES}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    for name in ("dtype", "param_dtype"):
      jnp.dtype(getattr(self, name))  # raises TypeError on an unknown dtype name

  @property
  def qk_norm(self) -> bool:
    """Per-head RMSNorm of queries and keys before RoPE (Qwen3)."""
    return self.architecture == "qwen3"

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def jnp_param_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **kw) -> "ModelConfig":
    if isinstance(kw.get("rope_scaling"), dict):
      kw["rope_scaling"] = RopeScaling(**kw["rope_scaling"])
    if isinstance(kw.get("lora"), dict):
      kw["lora"] = LoraConfig(**kw["lora"])
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    d = dict(d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
    if isinstance(d.get("rope_scaling"), dict):
      d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    if isinstance(d.get("lora"), dict):
      d["lora"] = LoraConfig(**dict(d["lora"], targets=tuple(d["lora"].get("targets", ()))))
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2)

  def num_params(self) -> int:
    """Number of parameters of the base model (embedding counted once when tied; LoRA
    adapters not counted)."""
    D, F, V, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_layers
    q = D * self.num_heads * self.head_dim
    kv = 2 * D * self.num_kv_heads * self.head_dim
    bias = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.attention_bias else 0
    qk_norm = 2 * self.head_dim if self.qk_norm else 0
    per_layer = q + kv + bias + q + 3 * D * F + 2 * D + qk_norm
    return V * D * (1 if self.tie_word_embeddings else 2) + L * per_layer + D


def tiny_config(**kw) -> ModelConfig:
  """A small random-init config for tests (fast on CPU)."""
  base = dict(architecture="llama", vocab_size=256, hidden_size=64, intermediate_size=128,
              num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0,
              rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=512,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)
  base.update(kw)
  return ModelConfig.from_dict(base)
