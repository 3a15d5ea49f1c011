"""Scalar reward model: the decoder with a linear score head on the last real token.

    r(x, y) = w . h_L(x ++ y)[last real token] + b

with h_L the decoder's final hidden states (after the last RMSNorm), w a [D] vector and b a
scalar (Ouyang et al. 2022, "Training language models to follow instructions with human
feedback", section 3.5; Stiennon et al. 2020, "Learning to summarize from human feedback").
R1 stage 4 (DeepSeek-R1, section 2.3.4) uses such models for the helpfulness and harmlessness
rewards of general prompts.

Params are a plain dict {"decoder": <decoder params>, "score_head": {"kernel": [D],
"bias": []}}; `reward_logical_axes` gives the matching logical axes so the Trainer and the
scorer shard it like the policy. Sequences are right-padded; the score is read at index
length - 1, so it does not depend on how much padding follows (causal attention).

A trained model is saved as a directory (`save_reward_model`): params.safetensors (the
flattened tree, float32), reward_model.json (model config + scoring format) and the
tokenizer files; `load_reward_model` reads it back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.models import decoder as decoder_lib
from r1jax.models.config import ModelConfig

Params = dict[str, Any]

PARAMS_FILE = "params.safetensors"
META_FILE = "reward_model.json"
_FORMAT = "r1jax.reward_model/1"


def init_score_head(cfg: ModelConfig, key: jax.Array) -> Params:
  """Score head params {"kernel": [D] param_dtype, normal std 1/sqrt(D), "bias": [] zero}.

  The 1/sqrt(D) scale makes initial scores O(1) on unit-RMS hidden states.
  """
  D = cfg.hidden_size
  kernel = jax.random.normal(key, (D,), jnp.float32) / np.sqrt(D)
  return {"kernel": kernel.astype(cfg.jnp_param_dtype),
          "bias": jnp.zeros((), cfg.jnp_param_dtype)}


def init_reward_params(cfg: ModelConfig, key: jax.Array,
                       decoder_params: Optional[Params] = None) -> Params:
  """Reward-model params; the decoder part is `decoder_params` (e.g. a pretrained / SFT
  policy) or a random init.

  Returns:
    {"decoder": decoder params, "score_head": init_score_head(...)}.
  """
  k_dec, k_head = jax.random.split(key)
  if decoder_params is None:
    decoder_params = decoder_lib.init_params(cfg, k_dec)
  return {"decoder": decoder_params, "score_head": init_score_head(cfg, k_head)}


def reward_logical_axes(cfg: ModelConfig) -> Params:
  """Logical axes tree of `init_reward_params` (the head's vector lies on `embed`)."""
  return {"decoder": decoder_lib.param_logical_axes(cfg),
          "score_head": {"kernel": ("embed",), "bias": ()}}


def reward_param_shapes(cfg: ModelConfig) -> Params:
  """ShapeDtypeStructs of the reward-model params (no allocation)."""
  dt = cfg.jnp_param_dtype
  return {"decoder": decoder_lib.param_shapes(cfg),
          "score_head": {"kernel": jax.ShapeDtypeStruct((cfg.hidden_size,), dt),
                         "bias": jax.ShapeDtypeStruct((), dt)}}


def score(params: Params, cfg: ModelConfig, tokens: jax.Array, lengths: jax.Array, *,
          remat: bool = False) -> jax.Array:
  """Scalar rewards of right-padded sequences.

  Args:
    params: {"decoder", "score_head"} (init_reward_params).
    cfg: the decoder's config.
    tokens: [B, T] int32 token ids, right-padded (padding ids are never attended).
    lengths: [B] int32 real tokens per row (0 = an empty padding row, scored from slot 0).
    remat: recompute each decoder block in the backward pass.
  Returns:
    [B] float32 scores, read at the last real token (index lengths - 1).
  """
  T = tokens.shape[1]
  segment_ids = (jnp.arange(T)[None] < lengths[:, None]).astype(jnp.int32)
  hidden = decoder_lib.forward(params["decoder"], cfg, tokens, None, segment_ids, remat=remat)
  last = jnp.clip(lengths - 1, 0, T - 1)
  h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)
  head = params["score_head"]
  return h @ head["kernel"].astype(jnp.float32) + head["bias"].astype(jnp.float32)


# ---------------------------------------------------------------------- save / load
def _flatten(tree: Params, prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, name + "/"))
    else:
      out[name] = np.asarray(jax.device_get(v), np.float32)
  return out


def _unflatten(flat: dict[str, np.ndarray]) -> Params:
  out: Params = {}
  for name, v in flat.items():
    node = out
    *path, last = name.split("/")
    for p in path:
      node = node.setdefault(p, {})
    node[last] = v
  return out


def save_reward_model(out_dir: str | os.PathLike, cfg: ModelConfig, params: Params, tokenizer,
                      *, fmt: str, max_len: int, extra: Optional[dict] = None) -> Path:
  """Write a reward model directory loadable by `load_reward_model`.

  Args:
    out_dir: directory (created; existing files of the same names replaced).
    cfg: decoder config.
    params: reward-model params (any devices / float dtype; stored as float32).
    tokenizer: r1jax Tokenizer (its save_pretrained files are written next to the params).
    fmt: how (prompt, response) became tokens: "chat" or "raw" (r1jax.data.preference_data).
    max_len: the training sequence length (the scorer's default limit).
    extra: JSON-serialisable facts to keep (training step, eval accuracy...).
  Returns:
    the directory path.
  """
  from safetensors.numpy import save_file
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  save_file(_flatten(params), str(out / PARAMS_FILE))
  tokenizer.save_pretrained(out)
  meta = {"format": _FORMAT, "model_config": cfg.to_dict(), "input_format": fmt,
          "max_len": int(max_len), "extra": extra or {}}
  (out / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
  return out


def load_reward_model(path: str | os.PathLike, *, dtype: Optional[str] = None
                      ) -> tuple[ModelConfig, Params, Any, dict]:
  """Read a `save_reward_model` directory.

  Args:
    path: the directory (e.g. <reward_model run_dir>/reward_model).
    dtype: compute/param dtype override ("float32" | "bfloat16" | "float16"; None = as saved).
  Returns:
    (ModelConfig, params on host as numpy arrays, Tokenizer, metadata dict with
    "input_format" and "max_len").
  Raises:
    FileNotFoundError: not a reward model directory.
    ValueError: unknown format or params that do not match the saved config.
  """
  from safetensors.numpy import load_file
  from r1jax.tokenizer import Tokenizer
  d = Path(path).expanduser()
  if not (d / META_FILE).is_file() or not (d / PARAMS_FILE).is_file():
    raise FileNotFoundError(f"{d} is not a reward model directory (no {META_FILE} and "
                            f"{PARAMS_FILE}; train one with the reward_model stage)")
  meta = json.loads((d / META_FILE).read_text())
  if meta.get("format") != _FORMAT:
    raise ValueError(f"{d / META_FILE}: unknown format {meta.get('format')!r}")
  cfg = ModelConfig.from_dict(meta["model_config"])
  if dtype:
    cfg = cfg.replace(dtype=dtype, param_dtype=dtype)
  params = _unflatten(load_file(str(d / PARAMS_FILE)))
  want = reward_param_shapes(cfg)
  got_struct, want_struct = jax.tree.structure(params), jax.tree.structure(want)
  if got_struct != want_struct:
    raise ValueError(f"{d / PARAMS_FILE}: params do not match the saved model config")
  for path_, a, s in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                         jax.tree.leaves(params), jax.tree.leaves(want)):
    if a.shape != s.shape:
      raise ValueError(f"{d / PARAMS_FILE}: {jax.tree_util.keystr(path_[0])} has shape "
                       f"{a.shape}, the config expects {s.shape}")
  params = jax.tree.map(lambda a, s: a.astype(s.dtype), params, want)
  return cfg, params, Tokenizer.from_source(d), meta
