"""Reward shaping by completion length: DAPO's soft overlong punishment.

Yu et al. 2025, "DAPO" (arXiv:2503.14476), Eq. 13, with L_max the completion limit and
L_cache the punishment buffer before it:

  R_length(y) = 0                              if |y| <= L_max - L_cache
              = ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
              = -1                             if L_max < |y|

added to the rule reward (scaled by a penalty factor, 1 in the paper). A completion cut at
the limit has |y| = L_max and gets the full -1. See docs/method.md "Rewards".
"""

from __future__ import annotations

import numpy as np


def overlong_penalty(lengths: np.ndarray, max_len: int, buffer: int,
                     factor: float = 1.0) -> np.ndarray:
  """DAPO Eq. 13 length penalty, times `factor`.

  Args:
    lengths: int array (any shape) of completion lengths |y| in tokens.
    max_len: L_max in tokens (rl.max_new_tokens), >= 1.
    buffer: L_cache in tokens (rl.overlong_buffer), 0 <= buffer <= max_len; 0 gives zeros.
    factor: the penalty at and beyond the limit (rl.overlong_penalty), >= 0.

  Returns:
    float32 array of lengths' shape, in [-factor, 0].

  Raises:
    ValueError: bad max_len / buffer / factor, or negative lengths.
  """
  if max_len < 1:
    raise ValueError(f"rl.max_new_tokens must be >= 1, got {max_len}")
  if not 0 <= buffer <= max_len:
    raise ValueError(f"rl.overlong_buffer must be in [0, rl.max_new_tokens={max_len}], got "
                     f"{buffer}")
  if factor < 0:
    raise ValueError(f"rl.overlong_penalty must be >= 0, got {factor}")
  n = np.asarray(lengths, np.float64)
  if (n < 0).any():
    raise ValueError("completion lengths must be >= 0")
  if buffer == 0:
    return np.zeros(n.shape, np.float32)
  start = max_len - buffer
  soft = (start - n) / buffer
  pen = np.where(n <= start, 0.0, np.where(n <= max_len, soft, -1.0))
  return (factor * pen).astype(np.float32)
