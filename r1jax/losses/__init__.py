"""Losses: pure functions of (log-probs, batch) -> (loss, metrics)."""
from r1jax.losses.grpo import (GRPOConfig, grpo_loss, group_advantages, kl_penalty,
                               loss_weights, token_mean_weights)
