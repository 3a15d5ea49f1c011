"""Hugging Face checkpoints: safetensors reading (single file or sharded, mmap), the model
config from config.json, and the export `save_pretrained` (a directory that
`transformers.AutoModelForCausalLM.from_pretrained` loads and that round-trips through
`loading.from_pretrained` bit for bit in the export dtype).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.models.config import ModelConfig, RopeScaling
from r1jax.models.decoder import Params, param_shapes
from r1jax.models.layout import HF_ARCHS, layout, tree_get

PathLike = Union[str, "os.PathLike[str]"]
EXPORT_DTYPES = ("float32", "bfloat16", "float16")


class SafetensorsCheckpoint:
  """HF safetensors (single file or sharded with an index), read lazily via mmap."""

  def __init__(self, directory: pathlib.Path):
    from safetensors import safe_open
    self.path = directory
    self._stack = contextlib.ExitStack()
    index = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    if index.is_file():
      weight_map = json.loads(index.read_text())["weight_map"]
      files = sorted(set(weight_map.values()))
      for f in files:
        if not (directory / f).is_file():
          raise FileNotFoundError(f"{directory / f}: shard listed in {index.name} is missing")
    elif single.is_file():
      files, weight_map = [single.name], None
    else:
      raise FileNotFoundError(
          f"{directory}: no model.safetensors or model.safetensors.index.json (only safetensors "
          "checkpoints are supported; re-save .bin checkpoints with safe_serialization=True)")
    self._handles = {f: self._stack.enter_context(safe_open(str(directory / f), framework="np"))
                     for f in files}
    if weight_map is None:
      weight_map = {n: single.name for n in self._handles[single.name].keys()}
    self._where = weight_map

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._stack.close()

  def names(self) -> list[str]:
    return list(self._where)

  def display(self, name: str) -> str:
    return name

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handles[self._where[name]].get_slice(name).get_shape())

  def check_type(self, name: str) -> None:
    dt = self._handles[self._where[name]].get_slice(name).get_dtype()
    if dt not in ("F32", "F16", "BF16", "F64"):
      raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {dt}")

  def get(self, name: str) -> np.ndarray:
    return self._handles[self._where[name]].get_tensor(name)


def hf_rope(d: dict, path: pathlib.Path) -> tuple[float, Optional[RopeScaling]]:
  """RoPE theta and scaling from an HF config (transformers 4 keys or 5 `rope_parameters`)."""
  rp = d.get("rope_parameters") or {}
  if isinstance(rp.get("full_attention"), dict):  # per-layer-type form
    rp = rp["full_attention"]
  theta = d.get("rope_theta", rp.get("rope_theta", 10000.0))
  scaling = d.get("rope_scaling") or rp
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type == "default":
    return float(theta), None
  if rope_type == "llama3":
    try:
      return float(theta), RopeScaling(
          factor=float(scaling["factor"]), low_freq_factor=float(scaling["low_freq_factor"]),
          high_freq_factor=float(scaling["high_freq_factor"]),
          original_max_position_embeddings=int(scaling["original_max_position_embeddings"]))
    except KeyError as e:
      raise ValueError(f"{path}: llama3 rope scaling lacks {e.args[0]!r}") from None
  raise ValueError(f"{path}: unsupported rope type {rope_type!r} (supported: default, llama3)")


def config_from_hf(d: dict, path: pathlib.Path) -> ModelConfig:
  model_type = d.get("model_type")
  archs = d.get("architectures") or []
  arch = model_type if model_type in HF_ARCHS else None
  if model_type is None:
    arch = next((a for a, cls in HF_ARCHS.items() if cls in archs), None)
  if arch is None:
    raise ValueError(f"{path}: unsupported model_type {model_type!r} (architectures {archs}); "
                     f"supported: {sorted(HF_ARCHS)}")
  if d.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{path}: unsupported hidden_act {d['hidden_act']!r} (only silu)")
  if d.get("mlp_bias"):
    raise ValueError(f"{path}: mlp_bias=true is not supported")
  if arch in ("llama", "qwen3") and d.get("attention_bias"):
    # HF Llama / Qwen3 then also bias o_proj, which the r1jax decoder does not have.
    raise ValueError(f"{path}: {arch} with attention_bias=true (o_proj bias) is not supported")
  if arch in ("qwen2", "qwen3") and d.get("use_sliding_window"):
    raise ValueError(f"{path}: {arch} with use_sliding_window=true is not supported")
  try:
    D, H = int(d["hidden_size"]), int(d["num_attention_heads"])
    theta, scaling = hf_rope(d, path)
    eos = d.get("eos_token_id")
    if isinstance(eos, list):  # several stop ids: keep the first (ModelConfig holds one)
      eos = eos[0] if eos else None
    if "layer_types" in d and set(d["layer_types"] or ()) - {"full_attention"}:
      raise ValueError(f"{path}: layer_types {sorted(set(d['layer_types']))} are not supported "
                       "(only full_attention)")
    return ModelConfig(
        architecture=arch, vocab_size=int(d["vocab_size"]), hidden_size=D,
        intermediate_size=int(d["intermediate_size"]), num_layers=int(d["num_hidden_layers"]),
        num_heads=H, num_kv_heads=int(d.get("num_key_value_heads") or H),
        head_dim=int(d.get("head_dim") or D // H), rope_theta=theta, rope_scaling=scaling,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), attention_bias=arch == "qwen2",
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        max_position_embeddings=int(d.get("max_position_embeddings",
                                          2048 if arch == "llama" else 32768)),
        bos_token_id=d.get("bos_token_id"), eos_token_id=eos, pad_token_id=d.get("pad_token_id"))
  except KeyError as e:
    raise ValueError(f"{path}: config.json lacks required key {e.args[0]!r}") from None


def read_hf_config(directory: pathlib.Path) -> ModelConfig:
  try:
    d = json.loads((directory / "config.json").read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{directory / 'config.json'}: invalid JSON ({e})") from None
  return config_from_hf(d, directory)


def parse_size(size: Union[int, str, None]) -> Optional[int]:
  """"2GB" -> 2e9, "500MiB" -> 500 * 2**20, 1000 -> 1000 (bytes)."""
  if size is None or isinstance(size, int):
    return size
  m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(I?)B?\s*", size.upper())
  if not m:
    raise ValueError(f"cannot parse size {size!r} (examples: 2GB, 500MiB, 1000000)")
  base = 1024 if m.group(3) else 1000
  return int(float(m.group(1)) * base ** " KMGT".index(m.group(2) or " "))


def hf_config_dict(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
  rs = cfg.rope_scaling
  d = {
      "architectures": [HF_ARCHS[cfg.architecture]],
      "model_type": cfg.architecture,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_position_embeddings,
      "rms_norm_eps": cfg.rms_norm_eps,
      # transformers-4 keys; transformers 5 converts them to `rope_parameters`.
      "rope_theta": cfg.rope_theta,
      "rope_scaling": None if rs is None else {"rope_type": "llama3", **dataclasses.asdict(rs)},
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "bos_token_id": cfg.bos_token_id,
      "eos_token_id": cfg.eos_token_id,
      "pad_token_id": cfg.pad_token_id,
      "torch_dtype": dtype,
      "initializer_range": 0.02,
      "use_cache": True,
  }
  if cfg.architecture == "llama":
    d.update(attention_bias=False, mlp_bias=False)
  else:
    d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
  if cfg.architecture == "qwen3":
    d.update(attention_bias=False, layer_types=["full_attention"] * cfg.num_layers)
  return d


def save_pretrained(cfg: ModelConfig, params: Params, out_dir: PathLike, *,
                    dtype: str = "float32",
                    max_shard_bytes: Union[int, str, None] = None) -> pathlib.Path:
  """Export as a Hugging Face model directory (Llama / Qwen2 / Qwen3 ForCausalLM).

  Writes config.json and model.safetensors, or model-0000k-of-0000n.safetensors plus
  model.safetensors.index.json when the tensors exceed `max_shard_bytes`. Existing files
  with those names in `out_dir` are replaced (stale shards removed). A qwen2 config
  without attention_bias is written with zero q/k/v biases (HF Qwen2 always has them), so
  it re-imports with attention_bias=True and the same outputs.

  Args:
    cfg: the model config.
    params: param tree shaped as `param_shapes(cfg)` (any float dtype, any device).
    out_dir: directory to write (created if needed).
    dtype: tensor dtype in the files: "float32", "bfloat16" or "float16".
    max_shard_bytes: shard size limit in bytes (int, or a string like "2GB"/"500MiB");
      None writes a single file.

  Returns:
    The output directory path.

  Raises:
    ValueError: unsupported dtype; params missing, extra or shaped unlike the config; a
      llama or qwen3 config with attention_bias (HF would also bias o_proj); or a config
      with LoRA adapters (merge them first: r1jax.models.lora.merge).
  """
  if dtype not in EXPORT_DTYPES:
    raise ValueError(f"unsupported export dtype {dtype!r}; supported: {EXPORT_DTYPES}")
  if cfg.architecture in ("llama", "qwen3") and cfg.attention_bias:
    raise ValueError(f"cannot export {cfg.architecture} with attention_bias: HF would add an "
                     "o_proj bias; use architecture='qwen2' instead")
  if cfg.lora is not None:
    raise ValueError("cannot export a config with LoRA adapters as plain weights: merge them "
                     "first (r1jax.models.lora.merge) or write them with "
                     "r1jax.models.peft_format.save_adapters")
  limit = parse_size(max_shard_bytes)
  shapes = param_shapes(cfg)
  host = jax.device_get(params)  # one host copy; slices below are views
  want = {jax.tree_util.keystr(k): v.shape for k, v in
          jax.tree_util.tree_leaves_with_path(shapes)}
  got = {jax.tree_util.keystr(k): np.shape(v) for k, v in
         jax.tree_util.tree_leaves_with_path(host)}
  if set(want) != set(got):
    raise ValueError(f"params do not match the config: missing {sorted(set(want) - set(got))}, "
                     f"unexpected {sorted(set(got) - set(want))}")
  for k, shape in want.items():
    if tuple(got[k]) != tuple(shape):
      raise ValueError(f"param {k} has shape {tuple(got[k])}, but the config implies "
                       f"{tuple(shape)}")

  # Qwen2 in HF always has q/k/v biases: write zeros when the config has none.
  entries = layout(cfg, with_bias=cfg.architecture == "qwen2" or cfg.attention_bias)
  np_dtype = jnp.dtype(dtype)
  items = []  # (hf name, bytes, thunk producing the HF-layout array); built lazily per shard
  for e in entries:
    nbytes = int(np.prod(e.hf_shape)) * np_dtype.itemsize
    for i in (range(cfg.num_layers) if e.per_layer else [None]):
      if e.path[-1] == "bias" and not cfg.attention_bias:
        make = lambda e=e: np.zeros(e.hf_shape, np_dtype)
      else:
        make = lambda e=e, i=i: e.from_param(tree_get(host, e.path)[() if i is None else i])
      items.append((e.hf_name.format(i=i), nbytes, make))

  shards: list[list] = [[]]
  used = 0
  for item in items:
    if limit is not None and shards[-1] and used + item[1] > limit:
      shards.append([])
      used = 0
    shards[-1].append(item)
    used += item[1]

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  for old in [out / "model.safetensors", out / "model.safetensors.index.json",
              *out.glob("model-*-of-*.safetensors")]:
    if old.is_file():
      old.unlink()
  from safetensors.numpy import save_file
  n = len(shards)
  weight_map = {}
  for k, shard in enumerate(shards):
    fname = "model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
    # One shard materialised at a time; contiguous copies in the export dtype.
    tensors = {name: np.ascontiguousarray(np.asarray(make()).astype(np_dtype, copy=False))
               for name, _, make in shard}
    save_file(tensors, str(out / fname), metadata={"format": "pt"})
    weight_map.update({name: fname for name in tensors})
    del tensors
  if n > 1:
    index = {"metadata": {"total_size": sum(item[1] for item in items)},
             "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
  (out / "config.json").write_text(json.dumps(hf_config_dict(cfg, dtype), indent=2) + "\n")
  return out
