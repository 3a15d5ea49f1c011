"""Trainer core (sharded update, optax, orbax checkpoints) and metrics writers."""
