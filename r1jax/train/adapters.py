"""What a stage trains: the whole model (full fine-tuning) or LoRA adapters on a frozen base.

  policy = adapters.TrainedPolicy.create(loaded.config, s.lora, config.param_dtype)
  trainer = policy.trainer(mesh, loss_fn, optimizer, num_micro, rules)
  state, ref_params = policy.init(trainer, loaded.params, seed, reference=beta > 0)
  full = policy.params(state.params)          # the policy's params (base + adapters)
  state, m = trainer.update(state, batch, denom, policy.frozen)

With LoRA (r1jax.models.lora) the Trainer's params are the adapters only, so the optimizer
state covers only them and checkpoints hold only them; the base is the Trainer's frozen
input, sharded once. The reference policy is that same base with adapters off
(`base_cfg`), so a KL penalty costs no second copy of the weights; with full fine-tuning the
reference is a copy of the starting params (the policy's buffers are donated to each update).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import numpy as np

from r1jax import models
from r1jax.models import lora as lora_lib
from r1jax.models import peft_format
from r1jax.models.config import LoraConfig, ModelConfig
from r1jax.train import trainer as trainer_lib

PEFT_DIR = "peft_adapter"


@dataclasses.dataclass
class TrainedPolicy:
  """The policy's configs and, with LoRA, its frozen base.

  Attributes:
    cfg: the policy's ModelConfig (with `lora` when training adapters).
    base_cfg: the model with adapters off (the reference policy's config); == cfg without
      LoRA.
    frozen: the sharded base params with LoRA (pass to Trainer.update), else None.
  """
  cfg: ModelConfig
  base_cfg: ModelConfig
  frozen: Any = None

  @classmethod
  def create(cls, cfg: ModelConfig, lora: Optional[LoraConfig],
             param_dtype: str) -> "TrainedPolicy":
    """From the loaded model's config; `param_dtype` is the adapters' storage dtype (the base
    keeps the dtype it was loaded in)."""
    if lora is None:
      return cls(cfg, cfg)
    return cls(cfg.replace(lora=lora, param_dtype=param_dtype), cfg)

  @property
  def is_lora(self) -> bool:
    return self.cfg.lora is not None

  def trainer(self, mesh, loss_fn, optimizer, num_micro: int, rules) -> trainer_lib.Trainer:
    """A Trainer of the trained params; `loss_fn(params, mb, denominator)` takes the
    policy's full params either way."""
    if not self.is_lora:
      return trainer_lib.Trainer(mesh, models.param_logical_axes(self.cfg), loss_fn, optimizer,
                                 num_micro, rules=rules)
    base_axes, adapter_axes = lora_lib.logical_axes(self.cfg)
    return trainer_lib.Trainer(mesh, adapter_axes, lora_lib.adapter_loss(loss_fn), optimizer,
                               num_micro, rules=rules, frozen_axes=base_axes)

  def init(self, trainer: trainer_lib.Trainer, params, seed: int, *,
           reference: bool) -> tuple[trainer_lib.TrainState, Any]:
    """(initial TrainState, reference params or None).

    Full fine-tuning: the state starts from `params`; the reference (when asked) is a
    sharded copy of them. LoRA: `params` (the base) become `self.frozen`, the state holds
    fresh adapters (B = 0, so the starting policy is the base) from `seed`, and the
    reference is the base itself.
    """
    if not self.is_lora:
      # The reference gets its own buffers: the policy's are donated to each update.
      ref = (jax.tree.map(lambda x: x.copy(), trainer.shard_params(params)) if reference
             else None)
      return trainer.init_state(params), ref
    self.frozen = trainer.shard_frozen(params)
    adapters = lora_lib.init_adapters(self.cfg, jax.random.fold_in(jax.random.key(seed), 7))
    return trainer.init_state(adapters), (self.frozen if reference else None)

  def params(self, trained):
    """The policy's full params from the trained ones (base + adapters with LoRA)."""
    return lora_lib.combine(self.frozen, trained) if self.is_lora else trained

  def logical_axes(self):
    """Logical axes of `params(...)`."""
    return models.param_logical_axes(self.cfg)

  def dropout_seeds(self, seed: int, step: int, rows: int) -> Optional[np.ndarray]:
    """Per-row LoRA dropout seeds [rows] int32 of a step (None without LoRA dropout): a
    function of (seed, step, row) only, so a resumed run draws the same masks."""
    if not self.is_lora or self.cfg.lora.dropout == 0:
      return None
    ss = np.random.SeedSequence([int(seed), int(step), 1237])
    return (ss.generate_state(rows, np.uint32) >> 1).astype(np.int32)

  def export_adapters(self, trained, run_dir: str, base_model: str) -> dict:
    """Write the adapters as a PEFT directory run_dir/peft_adapter (process 0; a no-op
    without LoRA); returns {"peft_dir": path} or {}."""
    if not self.is_lora:
      return {}
    from r1jax.train import loop
    out = os.path.join(os.path.abspath(run_dir), PEFT_DIR)
    host = loop.host_params(trained)
    if jax.process_index() == 0:
      peft_format.save_adapters(self.cfg, host, out, base_model=base_model)
    return {"peft_dir": out}
