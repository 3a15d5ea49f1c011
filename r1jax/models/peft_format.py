"""LoRA adapters in the PEFT layout: `adapter_config.json` + `adapter_model.safetensors`, the
directory `peft.PeftModel.from_pretrained(base_model, directory)` loads onto the Hugging Face
base model (the base exported by hf_format.save_pretrained, or the original checkpoint).

Tensor names are those PeftModel.save_pretrained writes, e.g.
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` [r, in] and
`...q_proj.lora_B.weight` [out, r], the Linear layout of A and B with
h = W x + (lora_alpha / r) B A x (Hu et al. 2021, eq. 3). r1jax keeps A [L, *in, r] and
B [L, r, *out] per projection (r1jax.models.lora); the two layouts map by reshape and
transpose.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Union

import jax
import numpy as np

from r1jax.models import lora as lora_lib
from r1jax.models.config import LORA_TARGETS, LoraConfig, ModelConfig
from r1jax.models.layout import listing

PathLike = Union[str, "os.PathLike[str]"]
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model.model.layers.{i}."
_HF_TO_TARGET = {hf.rsplit(".", 1)[-1]: t for t, (_, hf) in LORA_TARGETS.items()}


def tensor_names(cfg: ModelConfig) -> dict[str, tuple[tuple[str, ...], int, str]]:
  """PEFT tensor name -> (r1jax adapter path, layer, "a" | "b") for a LoRA config."""
  out = {}
  for t in cfg.lora.targets:
    path, hf = LORA_TARGETS[t]
    for i in range(cfg.num_layers):
      for which, key in (("A", "lora_a"), ("B", "lora_b")):
        out[PREFIX.format(i=i) + f"{hf}.lora_{which}.weight"] = (("layers",) + path + (key,), i,
                                                                 which)
  return out


def adapter_config(cfg: ModelConfig, base_model: str = "") -> dict:
  """adapter_config.json of a LoRA config (the fields PEFT's LoraConfig reads)."""
  lc = cfg.lora
  return {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
      "r": int(lc.rank), "lora_alpha": float(lc.alpha), "lora_dropout": float(lc.dropout),
      "target_modules": [LORA_TARGETS[t][1].rsplit(".", 1)[-1] for t in lc.targets],
      "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
      "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
      "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
      "alpha_pattern": {}, "revision": None,
  }


def save_adapters(cfg: ModelConfig, adapters: dict, out_dir: PathLike, *,
                  base_model: str = "", dtype: str = "float32") -> pathlib.Path:
  """Write the adapters as a PEFT directory.

  Args:
    cfg: the LoRA model's config (cfg.lora set).
    adapters: the adapter tree (`lora.split(params)[1]`; host or device arrays).
    out_dir: directory to write (created; the two adapter files in it are replaced).
    base_model: `base_model_name_or_path` recorded in the config (e.g. the HF export).
    dtype: tensor dtype in the file: float32 | bfloat16 | float16.

  Returns:
    The output directory.

  Raises:
    ValueError: cfg has no lora, an unsupported dtype, or adapters shaped unlike the config.
  """
  import jax.numpy as jnp
  from safetensors.numpy import save_file
  if cfg.lora is None:
    raise ValueError("save_adapters: the config has no lora settings")
  if dtype not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"unsupported adapter dtype {dtype!r}; use float32, bfloat16 or float16")
  host = jax.device_get(adapters)
  want = lora_lib.split(_shapes(cfg))[1]
  tensors = {}
  for name, (path, i, which) in tensor_names(cfg).items():
    try:
      x, shape = _get(host, path), _get(want, path).shape
    except KeyError:
      raise ValueError(f"adapters lack {'/'.join(path)}") from None
    if tuple(np.shape(x)) != tuple(shape):
      raise ValueError(f"adapter {'/'.join(path)} has shape {np.shape(x)}, the config implies "
                       f"{tuple(shape)}")
    x = np.asarray(x[i], np.float32)
    r = cfg.lora.rank
    # A [*in, r] -> [r, in]; B [r, *out] -> [out, r]
    x = x.reshape(-1, r).T if which == "A" else x.reshape(r, -1).T
    tensors[name] = np.ascontiguousarray(x.astype(jnp.dtype(dtype)))
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
  (out / CONFIG_FILE).write_text(json.dumps(adapter_config(cfg, base_model), indent=2) + "\n")
  return out


def read_config(directory: PathLike) -> LoraConfig:
  """The LoraConfig of a PEFT adapter directory.

  Raises:
    FileNotFoundError: no adapter_config.json.
    ValueError: not a plain LoRA adapter r1jax can run (DoRA, rsLoRA, per-layer ranks,
      biases, modules other than the seven projections), naming the field.
  """
  path = pathlib.Path(directory) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no PEFT adapter config")
  d = json.loads(path.read_text())
  checks = {"peft_type": "LORA", "use_dora": False, "use_rslora": False, "bias": "none",
            "fan_in_fan_out": False}
  for key, ok in checks.items():
    if d.get(key, ok) != ok:
      raise ValueError(f"{path}: {key}={d[key]!r} is not supported (need {ok!r})")
  for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
    if d.get(key):
      raise ValueError(f"{path}: {key} is not supported")
  modules = d.get("target_modules")
  if isinstance(modules, str) or not modules:
    raise ValueError(f"{path}: target_modules must be a list of projection names, got "
                     f"{modules!r}")
  unknown = [m for m in modules if m not in _HF_TO_TARGET]
  if unknown:
    raise ValueError(f"{path}: target_modules {unknown} are not supported (known: "
                     f"{sorted(_HF_TO_TARGET)})")
  return LoraConfig(rank=int(d["r"]), alpha=float(d["lora_alpha"]),
                    dropout=float(d.get("lora_dropout", 0.0)),
                    targets=tuple(_HF_TO_TARGET[m] for m in modules))


def load_adapters(directory: PathLike, cfg: ModelConfig) -> tuple[ModelConfig, dict]:
  """Read a PEFT adapter directory for the base model `cfg`.

  Returns:
    (cfg with `lora` from the adapter config, adapter tree in cfg.param_dtype).

  Raises:
    FileNotFoundError / ValueError: see read_config; missing, unexpected or misshaped tensors
      (naming them).
  """
  from safetensors.numpy import load_file
  directory = pathlib.Path(directory)
  cfg = cfg.replace(lora=read_config(directory))
  f = directory / WEIGHTS_FILE
  if not f.is_file():
    raise FileNotFoundError(f"{f}: no adapter weights (only safetensors adapters are read)")
  got = {re.sub(r"\.default\.weight$", ".weight", k): v for k, v in load_file(str(f)).items()}
  names = tensor_names(cfg)
  missing = [n for n in names if n not in got]
  extra = sorted(set(got) - set(names))
  if missing or extra:
    raise ValueError(f"{f}: missing tensors [{listing(missing)}], unexpected [{listing(extra)}]")
  shapes = lora_lib.split(_shapes(cfg))[1]
  out: dict = {}
  for name, (path, i, which) in names.items():
    shape = _get(shapes, path).shape[1:]
    r = cfg.lora.rank
    want = (r, int(np.prod(shape[:-1]))) if which == "A" else (int(np.prod(shape[1:])), r)
    x = got[name]
    if x.shape != want:
      raise ValueError(f"{f}: tensor {name} has shape {x.shape}, the base model implies {want}")
    leaf = out
    for k in path[:-1]:
      leaf = leaf.setdefault(k, {})
    if path[-1] not in leaf:
      leaf[path[-1]] = np.zeros((cfg.num_layers,) + shape, cfg.jnp_param_dtype)
    leaf[path[-1]][i] = x.astype(np.float32).T.reshape(shape)
  return cfg, out


def _shapes(cfg):
  from r1jax.models.decoder import param_shapes
  return param_shapes(cfg)


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree
