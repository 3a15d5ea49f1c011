"""Stage entry points, dispatched on `config.stage` by r1jax.main (and r1jax.run).

Each stage module has run(config); the training stages run on r1jax.train.loop, and every
stage gets its model from r1jax.models.load. No stage imports another stage."""

from __future__ import annotations

import importlib

# stage name -> module with a `run(config)` function
STAGES = {
    "generate": "r1jax.stages.generate",
    "grpo": "r1jax.stages.grpo",
    "eval": "r1jax.stages.eval",
    "sft": "r1jax.stages.sft",
    "pipeline": "r1jax.stages.pipeline",
    "rejection_sampling": "r1jax.stages.rejection_sampling",
    "reward_model": "r1jax.stages.reward_model",
    "preference_pairs": "r1jax.stages.preference_pairs",
    # Pre-flight: compile a GRPO config's step for its mesh and report memory / FLOPs.
    "plan": "r1jax.stages.plan",
}


def run(config):
  """Run the stage named by `config.stage`; returns the stage's result.

  Raises:
    ValueError: the stage is unknown.
  """
  name = config.stage
  if name not in STAGES:
    raise ValueError(f"unknown stage {name!r}; known stages: {sorted(STAGES)}")
  return importlib.import_module(STAGES[name]).run(config)
