"""Evaluation: pass@k, pass@1 from k samples, cons@N (R1_SPEC section 6)."""
from r1jax.eval.metrics import majority_vote, normalize_answer, pass_at_1, pass_at_k
