"""Training: the one loop (loop.py), the sharded jitted update and checkpoints (trainer.py),
typed settings of the shared config blocks (settings.py), run logging (metrics.py) and the
curves of a run (plots.py)."""
