"""DAPO dynamic sampling across processes: which groups to keep, and whether to refill.

Yu et al. 2025, "DAPO" (arXiv:2503.14476), Sec. 3.2 (the constraint
0 < |{o_i | o_i correct}| < G of the DAPO objective) and Algorithm 1: groups whose G rewards are all equal give zero advantage and no gradient,
so they are dropped and new prompts are sampled until the batch is full of informative
groups.

With several processes each process samples and scores its own block of prompts, but the
sampler runs on the global mesh, so every process must take the same number of refill
rounds. `plan_refill` therefore decides from the *gathered* rewards (process order), takes
no process index and is deterministic: every process computes the same plan and then uses
its own row of `selection`. Each process keeps its own quota of groups (no rollout moves
between processes); one more round is needed while any process lacks informative groups.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RefillPlan:
  """The refill decision over R rollout rounds so far, P processes, b groups per process.

  informative: [R, P, b] bool, groups whose rewards are not all equal.
  needed: [P] int, informative groups each process still lacks for its quota of b.
  num_needed: total informative groups still missing (sum of `needed`).
  refill: another rollout round is needed (num_needed > 0); every process gets the same.
  selection: [P, b, 2] int (round, row within the process's block) of the groups to train
    on, in batch order: informative groups in (round, row) order, then, if there are not
    enough (the last allowed round is done), uninformative ones in the same order.
  """
  informative: np.ndarray
  needed: np.ndarray
  num_needed: int
  refill: bool
  selection: np.ndarray


def plan_refill(rewards: np.ndarray, num_processes: int = 1) -> RefillPlan:
  """Decide, identically on every process, which groups to keep and whether to refill.

  Args:
    rewards: gathered rewards, [B_global, G] for one round or [R, B_global, G] for R rounds
      (round r = the r-th rollout of this step), rows in process order: process p holds rows
      p * b .. (p + 1) * b - 1 of each round, b = B_global / num_processes (its quota).
    num_processes: P, the number of processes the rows are split over.

  Returns:
    RefillPlan.

  Raises:
    ValueError: bad shape, non-finite rewards, or B_global not divisible by num_processes.
  """
  r = np.asarray(rewards, np.float64)
  if r.ndim == 2:
    r = r[None]
  if r.ndim != 3 or r.shape[0] < 1 or r.shape[2] < 2:
    raise ValueError(f"rewards must be [B_global, G] or [R, B_global, G] with G >= 2, got "
                     f"shape {np.shape(rewards)}")
  if not np.isfinite(r).all():
    raise ValueError("rewards must be finite for the dynamic sampling decision")
  R, B, G = r.shape
  if num_processes < 1 or B % num_processes:
    raise ValueError(f"{B} groups per round do not split over {num_processes} processes")
  b = B // num_processes
  informative = (r.max(axis=2) > r.min(axis=2)).reshape(R, num_processes, b)
  selection = np.zeros((num_processes, b, 2), np.int64)
  needed = np.zeros(num_processes, np.int64)
  rounds, rows = np.meshgrid(np.arange(R), np.arange(b), indexing="ij")
  order = np.stack([rounds.reshape(-1), rows.reshape(-1)], axis=1)  # (round, row) order
  for p in range(num_processes):
    inf = informative[:, p].reshape(-1)
    picked = np.concatenate([order[inf], order[~inf]])[:b]
    selection[p] = picked
    needed[p] = max(0, b - int(inf.sum()))
  num_needed = int(needed.sum())
  return RefillPlan(informative, needed, num_needed, num_needed > 0, selection)
