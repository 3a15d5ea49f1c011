"""GRPO rollouts: group sampling, rewards, DAPO dynamic sampling, and the step's metrics.

Used by the `grpo` stage (r1jax/stages/grpo.py). A `Rollout` holds one step's prompts (this
process's share), their G completions each, the decoded texts and the rewards. With several
processes each one samples and scores its own block of prompts; `global_view` gathers what
advantages and metrics need (rewards, lengths, format flags) from all of them, and dynamic
sampling decides on the gathered rewards (r1jax.losses.dynamic_sampling.plan_refill), so
every process takes the same number of rollout rounds.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from r1jax import sampling
from r1jax import sharding as shd
from r1jax.eval.metrics import length_gap
from r1jax.losses import dynamic_sampling
from r1jax.rewards import format_ok
from r1jax.rewards.routing import REWARD_MODEL_NAMES, example_kind


@dataclasses.dataclass
class Rollout:
  """One step's samples: `examples` (B dicts), prompt ids [B, P] and lengths [B], the
  sampler output (tokens [B, G, N] ...), texts [B * G] (response prefix + completion), the
  RewardResult of the B * G texts, and the seconds spent sampling and scoring.
  `format_flags` [B * G] and `general_flags` [B * G] (the sample's prompt is of kind
  "general") are set on a global view (whose texts and examples are not gathered).
  `rounds`: rollout rounds drawn from the data (1 + dynamic-sampling refills);
  `selection`: [B, 2] int (round, row of that round's prompts) of each kept group (None =
  round 0's rows in order); `stats`: dynamic-sampling metrics (same on every process)."""
  examples: list[dict]
  prompt_ids: Any
  prompt_lengths: Any
  out: sampling.SampleOutput
  texts: Any
  rewards: Any  # RewardResult
  seconds_rollout: float
  seconds_reward: float
  format_flags: Any = None
  rounds: int = 1
  selection: Any = None
  stats: dict = dataclasses.field(default_factory=dict)
  general_flags: Any = None


def build_batch(prompt_ids: np.ndarray, prompt_lengths: np.ndarray, out: sampling.SampleOutput,
                advantages: np.ndarray, mask_truncated: bool) -> dict[str, np.ndarray]:
  """Training arrays of a rollout batch, grouped by prompt (leading dim B).

  Args:
    prompt_ids: [B, P] int32 right-padded prompts; prompt_lengths [B].
    out: rollouts with tokens/logprobs [B, G, N], lengths/finished [B, G].
    advantages: [B, G] float32.
    mask_truncated: drop completions that hit the length limit from the loss.

  Returns dict: prompt_tokens [B, P], prompt_lengths [B], completion [B, G, N], mask
  [B, G, N] float32 (1 on real completion tokens; 0 on tool-message tokens when `out`
  has a `tool_mask`), sampler_logp [B, G, N] (the sampler's log-probs of the tokens: the
  off-policy correction's mu), advantages [B, G].
  """
  N = out.tokens.shape[-1]
  mask = (np.arange(N) < out.lengths[..., None]).astype(np.float32)
  if mask_truncated:
    mask = mask * out.finished[..., None]
  tool_mask = getattr(out, "tool_mask", None)  # tool rollouts (r1jax.tool_rollout)
  if tool_mask is not None:  # tool messages are not actions: no loss, KL or entropy
    mask = mask * ~np.asarray(tool_mask, bool)
  return {"prompt_tokens": prompt_ids.astype(np.int32),
          "prompt_lengths": prompt_lengths.astype(np.int32),
          "completion": out.tokens.astype(np.int32), "mask": mask,
          "sampler_logp": out.logprobs.astype(np.float32),
          "advantages": advantages.astype(np.float32)}


def rollout(params, sampler, sp, tok, rewards, examples, key, G, prefix) -> Rollout:
  """Samples, texts and rewards of `examples` (this process's share of the step's prompts:
  the sampler runs on the global mesh, each process scores its own completions)."""
  t0 = time.perf_counter()
  ids, lengths = sampler.pad_prompts([ex["prompt_ids"] for ex in examples], process_local=True)
  out = sampler(params, (ids, lengths), key, num_samples=G, sampling=sp, process_local=True)
  t1 = time.perf_counter()
  texts = [t for row in sampling.decode_completions(tok, out, sp, prefix) for t in row]
  res = rewards(texts, [ex for ex in examples for _ in range(G)])
  return Rollout(examples, ids, lengths, out, texts, res, t1 - t0, time.perf_counter() - t1)


def rollout_with_dynamic_sampling(params, sampler, sp, tok, rewards, data_iter, key, B, G,
                                  rl, prefix) -> Rollout:
  """`rollout` of this process's next B prompts; with rl.dynamic_sampling (DAPO, Yu et al.
  2025, section 3.2), groups whose rewards are all equal are replaced by informative groups
  of fresh prompts, up to rl.max_resample_rounds extra rollouts (then uninformative groups
  fill the rest).

  The refill decision and the kept groups come from `dynamic_sampling.plan_refill` on the
  rewards gathered from all processes, split into rl.dynamic_sampling_blocks blocks (0 = one
  per process) that each keep their own quota: every process computes the same plan, takes
  the same number of rounds (the sampler is a collective) and keeps groups of its own rows.
  """
  ro = rollout(params, sampler, sp, tok, rewards, next(data_iter), key, G, prefix)
  if not rl.dynamic_sampling:
    return ro
  nproc, pidx = jax.process_count(), jax.process_index()
  blocks = int(rl.get("dynamic_sampling_blocks", 0)) or nproc
  pool = [ro]
  gathered = [shd.process_allgather(ro.rewards.total.reshape(B, G))]
  plan = dynamic_sampling.plan_refill(np.stack(gathered), blocks)
  while plan.refill and len(pool) <= rl.max_resample_rounds:
    extra = rollout(params, sampler, sp, tok, rewards, next(data_iter),
                    jax.random.fold_in(key, 1000 + len(pool)), G, prefix)
    pool.append(extra)
    gathered.append(shd.process_allgather(extra.rewards.total.reshape(B, G)))
    plan = dynamic_sampling.plan_refill(np.stack(gathered), blocks)
  mine = blocks // nproc  # this process's blocks: rows [j * size, (j + 1) * size) of its B
  size = B // mine
  kept = [(int(r), j * size + int(row)) for j in range(mine)
          for r, row in plan.selection[pidx * mine + j]]
  out = select_groups(pool, kept, G, sampler)
  out.rounds, out.selection = len(pool), np.asarray(kept, np.int64)
  chosen = plan.informative[plan.selection[..., 0], np.arange(blocks)[:, None],
                            plan.selection[..., 1]]
  out.stats = {"dynamic_sampling/rounds": len(pool),
               "dynamic_sampling/informative_frac": float(chosen.mean()),
               "dynamic_sampling/first_round_informative_frac":
                   float(plan.informative[0].mean())}
  return out


def global_view(ro: Rollout) -> Rollout:
  """The step's whole rollout as far as metrics and advantages need it (rewards, lengths,
  finished flags, format flags), gathered from all processes in process order."""
  g = shd.process_allgather
  res = ro.rewards
  rewards = dataclasses.replace(res, total=g(res.total),
                                per_function={k: g(v) for k, v in res.per_function.items()},
                                timed_out=g(res.timed_out), errors=g(res.errors))
  out = sampling.SampleOutput(None, g(ro.out.lengths), None, g(ro.out.finished),
                              ro.out.num_steps)
  fmt = g(np.asarray([format_ok(t) for t in ro.texts], bool))
  G = len(ro.texts) // max(len(ro.examples), 1)
  general = g(np.repeat(np.asarray([example_kind(ex) == "general" for ex in ro.examples],
                                   bool), G))
  return Rollout([], None, None, out, None, rewards, ro.seconds_rollout, ro.seconds_reward, fmt,
                 ro.rounds, None, ro.stats, general)


def informative_groups(ro: Rollout, G: int) -> list[tuple[int, int]]:
  """(0, b) for each group b of `ro` whose rewards are not all equal."""
  r = ro.rewards.total.reshape(-1, G)
  return [(0, b) for b in range(r.shape[0]) if np.ptp(r[b]) > 0]


def select_groups(pool: list[Rollout], kept, G, sampler) -> Rollout:
  """Concatenate the chosen (rollout, group) pairs into one Rollout of len(kept) groups."""
  examples = [pool[p].examples[b] for p, b in kept]
  # process_local: every process pads to the same length (a collective with several).
  ids, lengths = sampler.pad_prompts([ex["prompt_ids"] for ex in examples], process_local=True)
  pick = lambda f: np.stack([getattr(pool[p].out, f)[b] for p, b in kept])
  out = sampling.SampleOutput(pick("tokens"), pick("lengths"), pick("logprobs"), pick("finished"),
                              max(int(r.out.num_steps) for r in pool))
  texts = [pool[p].texts[b * G + g] for p, b in kept for g in range(G)]
  res0 = pool[0].rewards
  sel = lambda arrs: np.concatenate([arrs(pool[p])[b * G:(b + 1) * G] for p, b in kept])
  res = dataclasses.replace(
      res0, total=sel(lambda r: r.rewards.total),
      per_function={k: sel(lambda r, k=k: r.rewards.per_function[k]) for k in res0.per_function},
      timed_out=sel(lambda r: r.rewards.timed_out), errors=sel(lambda r: r.rewards.errors))
  return Rollout(examples, ids, lengths, out, texts, res,
                 sum(r.seconds_rollout for r in pool), sum(r.seconds_reward for r in pool))


def length_breakdown(lengths, finished, accuracy=None, suffix: str = "") -> dict[str, float]:
  """Mean response length (tokens) of the finished samples (stopped by a stop token or
  string, not cut at max_new_tokens) and of the correct ones (accuracy >= 1); a key is left
  out when no sample qualifies.

  The mean over all samples mixes reasoning length with rambling cut at the budget: a base
  model that never closes its answer is "long" at step 0, so learning to stop lowers the
  mean even while the reasoning of the finished responses grows (R1-Zero's signature,
  DeepSeek-R1 figure 3, is about the latter).

  Args:
    lengths: [N] completion lengths in tokens.
    finished: [N] bool.
    accuracy: [N] accuracy reward per sample, or None.
  """
  lengths = np.asarray(lengths, np.float64).reshape(-1)
  out = {}
  fin = np.asarray(finished, bool).reshape(-1)
  if fin.any():
    out[f"response_len_finished{suffix}"] = float(lengths[fin].mean())
  if accuracy is not None:
    ok = np.asarray(accuracy, np.float64).reshape(-1) >= 1.0
    if ok.any():
      out[f"response_len_correct{suffix}"] = float(lengths[ok].mean())
  return out


def kind_breakdown(ro: Rollout, G: int) -> dict[str, float]:
  """Per-kind means of a rollout that mixes reasoning and general prompts (all-scenario RL):
  the rule rewards and accuracy over the reasoning rows only, the reward-model scores over
  the general rows only (the all-row means above average in the rows a reward does not
  score, as zeros). Keys: general_fraction, reward_reasoning, reward_general,
  accuracy_reasoning, reward_reasoning/<rule>, reward_general/<reward model>. Kinds come from
  the examples, or from `general_flags` on a global view. Empty when the rollout has one
  kind, or neither."""
  n = ro.rewards.total.shape[0]
  flags = getattr(ro, "general_flags", None)
  if flags is not None and len(flags) == n:
    general = np.asarray(flags, bool)
  elif ro.examples and len(ro.examples) * G == n:
    general = np.repeat([example_kind(ex) == "general" for ex in ro.examples], G)
  else:
    return {}
  if general.all() or not general.any():
    return {}
  res, out = ro.rewards, {"general_fraction": float(general.mean())}
  out["reward_reasoning"] = float(res.total[~general].mean())
  out["reward_general"] = float(res.total[general].mean())
  if "accuracy" in res.per_function:
    out["accuracy_reasoning"] = float(res.per_function["accuracy"][~general].mean())
  for k, v in res.per_function.items():
    rows = general if k in REWARD_MODEL_NAMES else ~general
    out[f"reward_{'general' if k in REWARD_MODEL_NAMES else 'reasoning'}/{k}"] = \
        float(np.asarray(v)[rows].mean())
  return out


def step_metrics(ro: Rollout, m: dict, G: int, lr) -> dict[str, float]:
  """Metrics of a step from its (global) rollout and the update's metrics `m`."""
  lengths = ro.out.lengths.reshape(-1)
  res = ro.rewards
  flags = ro.format_flags if ro.texts is None else [format_ok(t) for t in ro.texts]
  metrics = {"reward": float(res.total.mean()),
             "reward_std_in_group": float(res.total.reshape(-1, G).std(axis=1).mean()),
             "accuracy": float(res.per_function.get("accuracy", np.zeros(1)).mean()),
             "format_rate": float(np.mean(flags)),
             "response_len_mean": float(lengths.mean()),
             "response_len_max": float(lengths.max()),
             "truncation_rate": float(1.0 - ro.out.finished.mean()),
             "reward_timeouts": int(res.timed_out.sum()), "reward_errors": int(res.errors.sum()),
             "lr": float(lr)}
  acc = res.per_function.get("accuracy")
  metrics.update(length_breakdown(lengths, ro.out.finished.reshape(-1), acc))
  if acc is not None:
    # The length signal of the advantage: right minus wrong, within groups (tokens).
    gap = length_gap(lengths.reshape(-1, G), np.asarray(acc).reshape(-1, G))
    metrics["mixed_group_frac"] = gap["mixed_frac"]
    if "len_gap" in gap:
      metrics["response_len_gap"] = gap["len_gap"]
  for k, v in res.per_function.items():
    metrics[f"reward/{k}"] = float(v.mean())
  metrics.update(kind_breakdown(ro, G))
  metrics.update(ro.stats)
  for k, v in m.items():
    metrics[k] = float(v)
  return metrics


def samples(ro: Rollout, n: int) -> list[dict]:
  """The first `n` completions of a rollout as samples.jsonl records."""
  G = ro.out.tokens.shape[1]
  out = []
  for i in range(min(n, len(ro.texts))):
    ex = ro.examples[i // G]
    out.append({"split": "train", "question": ex["question"], "answer": ex["answer"],
                "completion": ro.texts[i], "reward": float(ro.rewards.total[i])})
  return out
