"""The one table between Hugging Face tensors and r1jax params, both ways.

Every checkpoint is read through a common view of Hugging Face tensor names in HF layout
(Linear weights [out, in]); `layout(cfg)` lists, per HF tensor, the r1jax param path, shapes
and the transforms to and from the param layout. Used by the readers (loading.py) and the
exporter (hf_format.save_pretrained).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional

import numpy as np

from r1jax.models.config import ModelConfig

HF_ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "qwen3": "Qwen3ForCausalLM"}
# Non-parameter buffers some older HF checkpoints carry; they are recomputed, not loaded.
IGNORED_HF = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One HF tensor (per layer when `per_layer`) and the r1jax param it maps to."""
  hf_name: str  # "{i}" stands for the layer index
  path: tuple[str, ...]  # key path in the param tree
  hf_shape: tuple[int, ...]  # shape in the HF checkpoint (one layer)
  to_param: Callable[[np.ndarray], np.ndarray]  # HF layout -> r1jax layout (one layer)
  from_param: Callable[[np.ndarray], np.ndarray]  # inverse
  per_layer: bool


def layout(cfg: ModelConfig, *, with_bias: Optional[bool] = None) -> list[Entry]:
  """The HF tensors of `cfg`, in checkpoint order, with their layout conversions."""
  D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  with_bias = cfg.attention_bias if with_bias is None else with_bias
  same = (lambda w: w, lambda w: w)
  transpose = (lambda w: w.T, lambda w: w.T)

  def proj(n):  # Linear [n*Dh, D] <-> DenseGeneral kernel [D, n, Dh]
    return (lambda w: w.T.reshape(D, n, Dh), lambda k: k.reshape(D, n * Dh).T)

  def bias(n):  # [n*Dh] <-> [n, Dh]
    return (lambda b: b.reshape(n, Dh), lambda b: b.reshape(n * Dh))

  lay = "model.layers.{i}."
  attn = ("layers", "attn")
  e = [Entry("model.embed_tokens.weight", ("embedding",), (V, D), *same, False),
       Entry(lay + "input_layernorm.weight", ("layers", "attn_norm", "scale"), (D,), *same, True)]
  for name, n in (("q_proj", H), ("k_proj", K), ("v_proj", K)):
    e.append(Entry(lay + f"self_attn.{name}.weight", attn + (name, "kernel"), (n * Dh, D),
                    *proj(n), True))
    if with_bias:
      e.append(Entry(lay + f"self_attn.{name}.bias", attn + (name, "bias"), (n * Dh,),
                      *bias(n), True))
  if cfg.qk_norm:  # Qwen3: per-head RMSNorm weights [Dh]
    e += [Entry(lay + f"self_attn.{n}.weight", attn + (n, "scale"), (Dh,), *same, True)
          for n in ("q_norm", "k_norm")]
  e += [
      Entry(lay + "self_attn.o_proj.weight", attn + ("o_proj", "kernel"), (D, H * Dh),
             lambda w: w.T.reshape(H, Dh, D), lambda k: k.reshape(H * Dh, D).T, True),
      Entry(lay + "post_attention_layernorm.weight", ("layers", "mlp_norm", "scale"), (D,),
             *same, True),
      Entry(lay + "mlp.gate_proj.weight", ("layers", "mlp", "gate_proj", "kernel"), (F, D),
             *transpose, True),
      Entry(lay + "mlp.up_proj.weight", ("layers", "mlp", "up_proj", "kernel"), (F, D),
             *transpose, True),
      Entry(lay + "mlp.down_proj.weight", ("layers", "mlp", "down_proj", "kernel"), (D, F),
             *transpose, True),
      Entry("model.norm.weight", ("final_norm", "scale"), (D,), *same, False),
  ]
  if not cfg.tie_word_embeddings:
    e.append(Entry("lm_head.weight", ("lm_head",), (V, D), *transpose, False))
  return e


def tree_get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def tree_set(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def listing(names: list[str], limit: int = 8) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
