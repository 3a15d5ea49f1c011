"""Evaluation: pass@k, pass@1 from k samples, cons@N (DeepSeek-R1, section 3; docs/method.md "Evaluation")."""
from r1jax.eval.metrics import (length_gap, majority_vote, mean_interval, normalize_answer,
                                paired_test, pass_at_1, pass_at_k)
