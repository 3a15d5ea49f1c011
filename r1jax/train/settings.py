"""Typed settings of the blocks every stage config shares, validated before any compute.

  model = ModelSettings.from_config(config)      # model, tokenizer, dtypes, tiny sizes
  par = ParallelSettings.from_config(config)     # mesh shape, sharding rules
  loaded = model.load()                          # r1jax.models.load(...)
  mesh = par.mesh()

Each `from_config` raises ValueError naming the offending key, so a stage's
`validate_config` can build all its settings once, before a model is loaded.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from ml_collections import ConfigDict

from r1jax import models
from r1jax import sharding as shd


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """Where the model comes from (see r1jax.models.load)."""
  source: str
  tokenizer: str = ""
  dtype: str = "float32"
  param_dtype: str = "float32"
  tiny: tuple = ()
  seed: int = 0
  step: Optional[int] = None
  remat: bool = False

  @classmethod
  def from_config(cls, config, *, key: str = "model") -> "ModelSettings":
    """From model / tokenizer / dtype / param_dtype / tiny_model / seed / checkpoint_step /
    remat (missing keys take the defaults).

    Raises:
      ValueError: an empty model source or an unsupported dtype (naming the key).
    """
    source = str(config[key])
    if not source:
      raise ValueError(f"{key} is empty: name a model source (a default model name, a .gguf "
                       f"file, an HF directory, a run directory or tiny-random)")
    step = config.get("checkpoint_step", -1)
    tiny = config.get("tiny_model")
    return cls(source=source, tokenizer=str(config.get("tokenizer", "") or ""),
               dtype=models.check_dtype(config.get("dtype", "float32"), "dtype"),
               param_dtype=models.check_dtype(config.get("param_dtype", "float32"),
                                              "param_dtype"),
               tiny=tuple(sorted((tiny.to_dict() if tiny is not None else {}).items())),
               seed=int(config.get("seed", 0)), step=None if step is None or step < 0 else step,
               remat=bool(config.get("remat", False)))

  def load(self, *, params: bool = True, seed: Optional[int] = None,
           with_tokenizer: bool = True) -> models.Loaded:
    """r1jax.models.load with these settings (`seed` overrides the tiny-random init seed)."""
    return models.load(self.source, dtype=self.dtype, param_dtype=self.param_dtype,
                       tokenizer=self.tokenizer, tiny=dict(self.tiny),
                       seed=self.seed if seed is None else seed, step=self.step, params=params,
                       with_tokenizer=with_tokenizer)


@dataclasses.dataclass(frozen=True)
class ParallelSettings:
  """Mesh shape and logical-axis rules of the trainer and the sampler."""
  mesh_shape: tuple
  rules: tuple
  sampler_rules: tuple

  @classmethod
  def from_config(cls, config) -> "ParallelSettings":
    """From mesh / sharding (defaults when the config has none).

    Raises:
      ValueError: unknown mesh axes, presets or malformed rules.
    """
    mesh = config.get("mesh")
    shape = mesh.to_dict() if isinstance(mesh, ConfigDict) else dict(mesh or {"data": -1})
    unknown = set(shape) - set(shd.MESH_AXES) - {"dcn"}
    if unknown:
      raise ValueError(f"mesh has unknown axes {sorted(unknown)}; axes are {shd.MESH_AXES}")
    # mesh.dcn ({axis: slices}, sharding.make_mesh) is kept as a tuple: settings are frozen.
    shape = {k: tuple(dict(v).items()) if k == "dcn" else v for k, v in shape.items()}
    return cls(tuple(shape.items()), tuple(shd.config_rules(config).items()),
               tuple(shd.config_rules(config, "sampler").items()))

  def mesh(self):
    """The device mesh (all processes' devices).

    Raises:
      ValueError: the mesh does not fit the devices.
    """
    return shd.make_mesh({k: dict(v) if k == "dcn" else v for k, v in self.mesh_shape})

  @property
  def train_rules(self) -> dict:
    return dict(self.rules)

  @property
  def sampling_rules(self) -> dict:
    return dict(self.sampler_rules)


def optimizer_config(config, *, decay_steps: int, updates_per_step: int = 1) -> ConfigDict:
  """The `optim` block in optimizer updates: `decay_steps` (the run's steps) and warmup
  scaled by `updates_per_step` (GRPO's mu updates per rollout step)."""
  o = config.optim.to_dict()
  o["decay_steps"] = max(int(decay_steps), 1) * updates_per_step
  o["warmup_steps"] = int(config.optim.warmup_steps) * updates_per_step
  return ConfigDict(o)


def check_positive(config, *keys: str, minimum: int = 1) -> None:
  """Raise ValueError naming the first dotted key whose value is below `minimum`."""
  for key in keys:
    node = config
    for part in key.split("."):
      node = node[part]
    if node < minimum:
      raise ValueError(f"{key} must be >= {minimum}, got {node}")


def check_batch_split(batch: int, micro: int, divisor: int, *, batch_key: str,
                      micro_key: str, what: str = "rows") -> int:
  """Micro-batches per step; checks that `micro` divides `batch` and is a multiple of the
  mesh's batch shards `divisor`.

  Raises:
    ValueError: naming the keys.
  """
  if micro < 1 or batch % micro:
    raise ValueError(f"{micro_key}={micro} must divide {batch_key}={batch}")
  if micro % divisor:
    raise ValueError(f"{micro_key}={micro} {what} must be a multiple of the mesh's batch "
                     f"shards ({divisor})")
  return batch // micro


def make_sampler(parallel: ParallelSettings, cfg, params, *, pad_id: int, **kwargs):
  """(Sampler on the configured mesh, params placed with the sampler's rules): rollouts split
  over the mesh's batch axes whenever the batch divides them (see r1jax.sampling.Sampler).

  Raises:
    ValueError: the mesh does not fit the devices.
  """
  from r1jax import sampling
  mesh, rules = parallel.mesh(), parallel.sampling_rules
  params = shd.reshard(params, shd.tree_shardings(models.param_logical_axes(cfg), params, mesh,
                                                  rules))
  return sampling.Sampler(cfg, pad_id=pad_id, mesh=mesh, rules=rules, **kwargs), params


def check_supervised(config) -> None:
  """The checks the supervised stages (sft, reward_model) share: batch sizes, steps or
  epochs, sequence length and resume.

  Raises:
    ValueError: naming the key.
  """
  t = config.train
  check_positive(config, "train.batch_size", "eval.batch_size")
  if t.micro_batch_size < 1 or t.batch_size % t.micro_batch_size:
    raise ValueError(f"train.micro_batch_size={t.micro_batch_size} must divide "
                     f"train.batch_size={t.batch_size}")
  if config.steps < 0:
    raise ValueError(f"steps must be >= 0, got {config.steps}")
  if config.steps == 0 and config.num_epochs <= 0:
    raise ValueError(f"set steps > 0 or num_epochs > 0 (got steps={config.steps}, "
                     f"num_epochs={config.num_epochs})")
  check_positive(config, "data.seq_len", minimum=2)
  from r1jax.train import loop
  loop.parse_resume(config.resume)


def sampling_params(block, tok=None):
  """SamplingParams of a `sampling` config block (temperature, top_p, top_k, max_new_tokens,
  stop_strings); with a tokenizer, its stop ids and the stop strings' token sequences.

  Raises:
    ValueError: an out-of-range value.
  """
  from r1jax import sampling
  kw = dict(temperature=block.temperature, top_p=block.top_p, top_k=block.top_k,
            max_new_tokens=block.max_new_tokens)
  if tok is not None:
    stops = [x.strip() for x in str(block.get("stop_strings", "")).split(",") if x.strip()]
    kw.update(stop_ids=tok.stop_ids, stop_sequences=sampling.stop_sequences_for(tok, stops))
  return sampling.SamplingParams(**kw)
