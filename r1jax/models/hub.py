"""The one way to get a model: `models.load(source) -> Loaded(config, params, tokenizer, info)`.

Sources, tried in this order:
  * "tiny-random": a small random model for tests and smoke runs (`tiny` sets its sizes; the
    tokenizer is `tokenizer` or the default model's; params from `seed`);
  * a training run directory (it has `checkpoints/`), or its checkpoints/ directory: the
    model source, tokenizer and tiny sizes come from the run's config.json (or `base` /
    `tokenizer` / `tiny` when it has none), the params from its orbax checkpoint (latest,
    or `step`); a LoRA run (its config has lora.rank > 0) checkpoints only the adapters:
    they are read onto the base model source and merged into its weights;
  * a default model name (r1jax.default_models), a .gguf file, or a Hugging Face model
    directory (r1jax.models.loading.from_pretrained).
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple, Optional

import jax
import orbax.checkpoint as ocp

from r1jax import sharding as shd
from r1jax.default_models import DEFAULT_MODEL
from r1jax.models import loading
from r1jax.models import lora as lora_lib
from r1jax.models.config import ModelConfig, tiny_config
from r1jax.models.decoder import init_params, param_shapes
from r1jax.tokenizer import Tokenizer

TINY = "tiny-random"
DTYPES = ("float32", "bfloat16", "float16")
CHECKPOINT_DIR = "checkpoints"


class Loaded(NamedTuple):
  """A loaded model.

  Attributes:
    config: ModelConfig (dtype / param_dtype as requested).
    params: param tree of host / single-device arrays (param_dtype), or None when loaded
      with params=False.
    tokenizer: r1jax Tokenizer (None when loaded with with_tokenizer=False).
    info: {"source": model source, "checkpoint": run directory or None, "step": checkpoint
      step or None, "description": one line for reports}.
  """
  config: ModelConfig
  params: Any
  tokenizer: Tokenizer
  info: dict


def check_dtype(value: str, key: str = "dtype") -> str:
  """`value` if it names a dtype r1jax computes or stores in.

  Raises:
    ValueError: naming `key` and the allowed values.
  """
  if value not in DTYPES:
    raise ValueError(f"{key}={value!r} is not supported; use one of {', '.join(DTYPES)}")
  return value


def is_run_dir(path: str) -> bool:
  """True for a training run directory (with checkpoints/) or such a checkpoints/ directory."""
  p = os.fspath(path)
  return (os.path.isdir(os.path.join(p, CHECKPOINT_DIR))
          or (os.path.basename(os.path.normpath(p)) == CHECKPOINT_DIR and os.path.isdir(p)))


def _run_config(run_dir: str) -> dict:
  for d in (run_dir, os.path.dirname(os.path.normpath(run_dir))):
    p = os.path.join(d, "config.json")
    if os.path.isfile(p):
      with open(p) as f:
        return json.load(f)
  return {}


def load(source: str, *, dtype: str = "float32", param_dtype: str = "float32",
         tokenizer: str = "", tiny: Optional[dict] = None, seed: int = 0,
         step: Optional[int] = None, base: str = "", params: bool = True,
         with_tokenizer: bool = True) -> Loaded:
  """Load model config, params and tokenizer from any source (see the module docstring).

  Args:
    source: "tiny-random", a run directory, a default model name, a .gguf path or an HF
      directory.
    dtype, param_dtype: compute and storage dtypes (float32 | bfloat16 | float16).
    tokenizer: tokenizer source ("" = the model's; for tiny-random the default model's).
    tiny: tiny-random sizes (hidden_size, num_layers, ...), for tiny-random and runs of it.
    seed: tiny-random init seed.
    step: checkpoint step of a run directory (None = the latest).
    base: model source of a run directory without config.json.
    params: False = config and tokenizer only (params None).
    with_tokenizer: False = no tokenizer (None; e.g. a distillation teacher's weights).

  Raises:
    FileNotFoundError: no such file, directory, checkpoint or default-model package.
    ValueError: a bad dtype, a malformed checkpoint, a run without a known model source, a
      tokenizer with more ids than the model's vocabulary.
  """
  check_dtype(dtype, "dtype")
  check_dtype(param_dtype, "param_dtype")
  source = os.fspath(source)
  if not source:
    raise ValueError("model source is empty: set --config.model")
  if source != TINY and is_run_dir(source):
    return _load_run(source, dtype=dtype, param_dtype=param_dtype, tokenizer=tokenizer,
                     tiny=tiny, step=step, base=base, params=params,
                     with_tokenizer=with_tokenizer)
  if source == TINY:
    tok = Tokenizer.from_source(tokenizer or DEFAULT_MODEL)
    cfg = tiny_config(vocab_size=tok.vocab_size, dtype=dtype, param_dtype=param_dtype,
                      bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                      pad_token_id=tok.pad_id, **dict(tiny or {}))
    p = init_params(cfg, jax.random.key(seed)) if params else None
    tok = tok if with_tokenizer else None
  else:
    if params:
      cfg, p = loading.from_pretrained(source, dtype=dtype, param_dtype=param_dtype)
    else:
      cfg, p = loading.load_config(source, dtype=dtype, param_dtype=param_dtype), None
    tok = Tokenizer.from_source(tokenizer or source) if with_tokenizer else None
  if tok is not None:
    _check_vocab(tok, cfg, tokenizer or source)
  return Loaded(cfg, p, tok, {"source": source, "checkpoint": None, "step": None,
                              "description": source})


def _load_run(run_dir, *, dtype, param_dtype, tokenizer, tiny, step, base, params,
              with_tokenizer) -> Loaded:
  run_cfg = _run_config(run_dir)
  model = run_cfg.get("model") or base
  if not model:
    raise ValueError(f"{run_dir} is a training run without config.json: name its model "
                     f"source (e.g. --config.model=...)")
  if is_run_dir(model):
    raise ValueError(f"{run_dir}: the run's model source {model} is itself a run directory")
  lcfg = lora_lib.from_config(run_cfg.get("lora"))
  # A LoRA run's base is read in the dtype it was trained on (lora.base_dtype).
  base_dtype = (lora_lib.base_dtype(run_cfg["lora"], run_cfg.get("param_dtype", param_dtype))
                if lcfg is not None and params else param_dtype)
  inner = load(model, dtype=dtype, param_dtype=base_dtype,
               tokenizer=tokenizer or run_cfg.get("tokenizer", ""),
               tiny=run_cfg.get("tiny_model") or tiny, params=params and lcfg is not None,
               seed=int(run_cfg.get("seed", 0)), with_tokenizer=with_tokenizer)
  if not params:
    p, step = None, latest_run_step(run_dir) if step is None else step
  elif lcfg is None:
    p, step = load_run_params(run_dir, inner.config, step)
  else:  # adapters from the checkpoint, merged into the base weights
    lora_cfg = inner.config.replace(lora=lcfg, param_dtype=param_dtype)
    adapters, step = load_run_params(run_dir, lora_cfg, step)
    _, merged = lora_lib.merge(lora_cfg, lora_lib.combine(inner.params, adapters), param_dtype)
    p = jax.tree.map(jax.numpy.asarray, merged)
  return Loaded(inner.config.replace(param_dtype=param_dtype), p, inner.tokenizer,
                {"source": model, "checkpoint": os.path.abspath(run_dir), "step": step,
                 "description": f"{run_dir} @ step {step}"})


def _check_vocab(tok: Tokenizer, cfg: ModelConfig, what: str) -> None:
  if tok.vocab_size > cfg.vocab_size:
    raise ValueError(f"tokenizer of {what} has {tok.vocab_size} ids, more than the model's "
                     f"vocab_size={cfg.vocab_size}")


def _checkpoint_dir(run_dir: str) -> str:
  d = os.path.join(run_dir, CHECKPOINT_DIR)
  return os.path.abspath(d if os.path.isdir(d) else run_dir)


def latest_run_step(run_dir: str) -> Optional[int]:
  """The latest checkpoint step of a run directory (None when it has none)."""
  mngr = ocp.CheckpointManager(_checkpoint_dir(run_dir), item_names=("state", "extra"))
  try:
    return mngr.latest_step()
  finally:
    mngr.close()


def load_run_params(run_dir: str, cfg: ModelConfig, step: Optional[int] = None):
  """Policy params of a training run's orbax checkpoint (latest, or `step`).

  Args:
    run_dir: the run directory (with checkpoints/) or its checkpoints/ directory itself.
    cfg: the ModelConfig the run trained (its shapes are checked); with `cfg.lora` the
      checkpoint holds only the adapters, and only they are returned.
    step: checkpoint step; None = the latest.

  Returns:
    (params tree on one device (the adapter tree for a LoRA config), step).

  Raises:
    FileNotFoundError: no checkpoint there.
    ValueError: the checkpoint's params do not match `cfg`.
  """
  directory = _checkpoint_dir(run_dir)
  mngr = ocp.CheckpointManager(directory, item_names=("state", "extra"))
  try:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {directory}")
    shapes = param_shapes(cfg)
    if cfg.lora is not None:
      shapes = lora_lib.split(shapes)[1]
    one = shd.replicated(shd.make_mesh({"data": 1}, jax.devices()[:1]))
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one), shapes)
    try:
      out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item={"params": target}, partial_restore=True)))
    except Exception as e:  # orbax raises several types for structure/shape mismatches
      raise ValueError(f"checkpoint {directory} step {step} does not match the model: "
                       f"{e}") from e
  finally:
    mngr.close()
  params = out["state"]["params"]
  for (path, a), want in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                             jax.tree.leaves(shapes)):
    if a.shape != want.shape:
      raise ValueError(f"checkpoint param {jax.tree_util.keystr(path)} has shape {a.shape}, "
                       f"the model expects {want.shape}")
  return params, step
