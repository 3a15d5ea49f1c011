"""All-scenario rewards (R1 stage 4): rule rewards for reasoning prompts, reward models for
general ones (DeepSeek-R1, Guo et al. 2025, Sec. 2.3.4; docs/method.md, "Rewards").

Each example has a kind, "reasoning" (default) or "general", read from `example["kind"]` or
`example["metadata"]["kind"]` (a JSONL prompt record's top-level "kind" lands there; see
r1jax.data.sources). Reasoning examples are scored by the inner rule-based RewardComputer
(accuracy / format / language...). General examples are scored by up to two preference
reward models, both optional:
  helpfulness   on the final summary only: the text after the last summary marker
                ("</think>" by default; the whole response when there is no marker);
  harmlessness  on the whole response, reasoning included;
total = helpfulness_weight * r_help + harmlessness_weight * r_harm.

The reward models run in JAX in the trainer process (not in the reward worker pool, which
would need its own copy of the model per worker): `RewardModelScorer` tokenises (prompt,
response) with the encoder it is given, which must be the one the reward_model stage trained
with (r1jax.data.preference_data.encode_scoring_input; passed in, so that this module does
not depend on the data layer), sorts by length, pads rows to a fixed batch and lengths to
power-of-two buckets (few compiles), and runs a jitted scoring forward on this process's
devices.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from absl import logging

from r1jax import sharding as shd
from r1jax.models import reward_model as rm_lib
from r1jax.rewards.pool import RewardResult

KINDS = ("reasoning", "general")
# The per_function names of the reward-model scores (general prompts only).
REWARD_MODEL_NAMES = ("helpfulness", "harmlessness")
DEFAULT_SUMMARY_MARKERS = ("</think>",)


def example_kind(example: dict, default: str = "reasoning") -> str:
  """The kind of an example: example["kind"], else metadata["kind"] when it is one of
  KINDS (JSONL prompt records are validated by r1jax.data.sources; other sources such as
  reasoning-gym may carry an unrelated "kind" in their metadata), else `default`.

  Raises:
    ValueError: a top-level example["kind"] other than "reasoning" / "general".
  """
  kind = example.get("kind")
  if kind is None:
    meta_kind = (example.get("metadata") or {}).get("kind")
    kind = meta_kind if meta_kind in KINDS else default
  if kind not in KINDS:
    raise ValueError(f"example {example.get('id', '?')!r} has kind {kind!r}; expected one of "
                     f"{KINDS}")
  return kind


def final_summary(text: str, markers: Sequence[str] = DEFAULT_SUMMARY_MARKERS) -> str:
  """The summary part of an R1-format response: the text after the last occurrence of any
  marker, stripped; the whole text when no marker occurs (the R1 output format
  `|special_token|<reasoning>|special_token|<summary>`, Guo et al. 2025, Sec. 2.3.1)."""
  best = -1
  cut = 0
  for m in markers:
    i = text.rfind(m)
    if m and i > best:
      best, cut = i, i + len(m)
  return (text[cut:] if best >= 0 else text).strip()


class RewardModelScorer:
  """Batched, jitted scoring with a saved reward model (r1jax.models.reward_model).

  Args:
    path: a reward model directory (the reward_model stage's run_dir/reward_model).
    encode_fn: (tokenizer, prompt, response, input_format) -> (ids [n] int32, number of
      leading prompt tokens): the reward_model stage's input encoding
      (r1jax.data.preference_data.encode_scoring_input).
    batch_size: sequences per jitted call (rounded up to a multiple of the batch shards).
    max_len: token limit per sequence (0 = the RM's training seq_len). Longer inputs lose
      prompt tokens from the left, then response tokens from the left (the score is read at
      the end); counted in `stats`.
    mesh: devices to run on (default: a data-parallel mesh over this process's devices, so
      processes never wait on each other); params are laid out by `rules`.
    rules: logical-axis rules (default r1jax.sharding.DEFAULT_RULES).
    dtype: compute/param dtype override (None = as saved).
    min_bucket: smallest padded length.
  Raises:
    FileNotFoundError / ValueError: as r1jax.models.reward_model.load_reward_model.
  """

  def __init__(self, path: str, *, encode_fn: Callable, batch_size: int = 16, max_len: int = 0,
               mesh=None, rules: Optional[dict] = None, dtype: Optional[str] = None,
               min_bucket: int = 16):
    self.path = path
    self.encode_fn = encode_fn
    self.cfg, params, self.tokenizer, meta = rm_lib.load_reward_model(path, dtype=dtype)
    self.fmt = meta["input_format"]
    self.max_len = int(max_len or meta["max_len"])
    if self.max_len > self.cfg.max_position_embeddings:
      raise ValueError(f"rm max_len={self.max_len} exceeds the reward model's context of "
                       f"{self.cfg.max_position_embeddings} tokens")
    self.mesh = mesh if mesh is not None else shd.make_mesh({"data": -1}, jax.local_devices())
    self.rules = dict(rules if rules is not None else shd.DEFAULT_RULES)
    div = shd.batch_divisor(self.mesh, self.rules)
    self.batch_size = -(-max(int(batch_size), 1) // div) * div
    self.min_bucket = int(min_bucket)
    shardings = shd.tree_shardings(rm_lib.reward_logical_axes(self.cfg), params, self.mesh,
                                   self.rules)
    self.params = shd.reshard(params, shardings)
    self._row_sharding = shd.batch_sharding(self.mesh, 1, self.rules)
    self._tok_sharding = shd.batch_sharding(self.mesh, 2, self.rules)
    self._score = jax.jit(functools.partial(rm_lib.score, cfg=self.cfg),
                          out_shardings=shd.replicated(self.mesh))
    self.stats = {"scored": 0, "truncated": 0}

  def encode(self, prompt: str, response: str) -> np.ndarray:
    """Token ids [n <= max_len] int32 of one (prompt, response) input."""
    ids, _ = self.encode_fn(self.tokenizer, prompt, response, self.fmt)
    # Too long: keep the last max_len tokens (the prompt goes first; the score is read at
    # the end).
    fit = ids[max(0, len(ids) - self.max_len):]
    if len(fit) < len(ids):
      self.stats["truncated"] += 1
    return fit

  def _bucket(self, n: int) -> int:
    b = self.min_bucket
    while b < n:
      b *= 2
    return min(b, self.max_len)

  def score_texts(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """Scores of N (prompt, response) pairs.

    Args:
      prompts: N user prompts.
      responses: N response texts.
    Returns:
      [N] float32 scores.
    Raises:
      ValueError: different numbers of prompts and responses.
    """
    if len(prompts) != len(responses):
      raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    seqs = [self.encode(p, r) for p, r in zip(prompts, responses)]
    out = np.zeros(len(seqs), np.float32)
    order = np.argsort([len(s) for s in seqs], kind="stable")  # similar lengths share a bucket
    pad = self.tokenizer.pad_id
    for start in range(0, len(seqs), self.batch_size):
      idx = order[start:start + self.batch_size]
      T = self._bucket(max(len(seqs[i]) for i in idx))
      tokens = np.full((self.batch_size, T), pad, np.int32)
      lengths = np.zeros(self.batch_size, np.int32)
      for row, i in enumerate(idx):
        tokens[row, :len(seqs[i])] = seqs[i]
        lengths[row] = len(seqs[i])
      r = self._score(self.params, tokens=jax.device_put(tokens, self._tok_sharding),
                      lengths=jax.device_put(lengths, self._row_sharding))
      out[idx] = np.asarray(jax.device_get(r))[:len(idx)]
    self.stats["scored"] += len(seqs)
    return out

  def close(self) -> None:
    """Drop the device buffers."""
    self.params = None


class RoutedRewards:
  """Per-example routing of rewards: rule rewards for reasoning examples, reward models for
  general ones. Called like r1jax.rewards.RewardComputer.

  Args:
    rule_rewards: the inner RewardComputer (anything with `__call__(completions, examples)
      -> RewardResult`, `names` and `close()`).
    helpfulness: RewardModelScorer judging the final summary (None = not used).
    harmlessness: RewardModelScorer judging the whole response (None = not used).
    helpfulness_weight, harmlessness_weight: weights in the total of general examples.
    summary_markers: the summary is the text after the last of these.
    default_kind: kind of examples without one.
  Raises:
    ValueError: neither reward model given, or a bad default_kind.
  """

  def __init__(self, rule_rewards, *, helpfulness: Optional[RewardModelScorer] = None,
               harmlessness: Optional[RewardModelScorer] = None,
               helpfulness_weight: float = 1.0, harmlessness_weight: float = 1.0,
               summary_markers: Sequence[str] = DEFAULT_SUMMARY_MARKERS,
               default_kind: str = "reasoning"):
    if helpfulness is None and harmlessness is None:
      raise ValueError("RoutedRewards needs a helpfulness and/or a harmlessness reward model")
    if default_kind not in KINDS:
      raise ValueError(f"default_kind must be one of {KINDS}, got {default_kind!r}")
    self.rules = rule_rewards
    self.scorers = {name: (s, float(w)) for name, s, w in
                    (("helpfulness", helpfulness, helpfulness_weight),
                     ("harmlessness", harmlessness, harmlessness_weight)) if s is not None}
    self.summary_markers = tuple(summary_markers)
    self.default_kind = default_kind
    self.rule_names = list(getattr(rule_rewards, "names", []))
    self.names = self.rule_names + list(self.scorers)

  def __call__(self, completions: Sequence[str], examples: Sequence[dict]) -> RewardResult:
    """Score N completions, each by the rewards of its example's kind.

    Args:
      completions: N generated texts.
      examples: N example dicts ("question", "answer", "task", "metadata", optional "kind").
    Returns:
      RewardResult: total [N]; per_function has every rule function (0 on general rows)
      and "helpfulness" / "harmlessness" (unweighted RM scores, 0 on reasoning rows);
      timed_out / errors from the rule rewards.
    Raises:
      ValueError: len(completions) != len(examples), or an unknown kind.
    """
    if len(completions) != len(examples):
      raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
    n = len(completions)
    kinds = [example_kind(ex, self.default_kind) for ex in examples]
    rule_idx = [i for i, k in enumerate(kinds) if k == "reasoning"]
    gen_idx = [i for i, k in enumerate(kinds) if k == "general"]
    total = np.zeros(n, np.float32)
    per_function = {name: np.zeros(n, np.float32) for name in self.names}
    timed_out, errors = np.zeros(n, bool), np.zeros(n, bool)
    if rule_idx:
      res = self.rules([completions[i] for i in rule_idx], [examples[i] for i in rule_idx])
      total[rule_idx] = res.total
      for name, v in res.per_function.items():
        per_function.setdefault(name, np.zeros(n, np.float32))[rule_idx] = v
      timed_out[rule_idx], errors[rule_idx] = res.timed_out, res.errors
    if gen_idx:
      prompts = [examples[i].get("question", "") for i in gen_idx]
      for name, (scorer, weight) in self.scorers.items():
        if name == "helpfulness":
          texts = [final_summary(completions[i], self.summary_markers) for i in gen_idx]
        else:
          texts = [completions[i] for i in gen_idx]
        r = scorer.score_texts(prompts, texts)
        per_function[name][gen_idx] = r
        total[gen_idx] += weight * r
    return RewardResult(total.astype(np.float32), per_function, timed_out, errors)

  def heldout_accuracy(self, completions: Sequence[str], examples: Sequence[dict]
                       ) -> np.ndarray:
    """[N] float32 held-out correctness by the rule pool's shared scorer
    (RewardComputer.heldout_accuracy), for every kind of example."""
    return self.rules.heldout_accuracy(completions, examples)

  def stats(self) -> dict[str, Any]:
    """The rule pool's counters plus the scorers' (scored / truncated inputs)."""
    out = dict(self.rules.stats()) if hasattr(self.rules, "stats") else {}
    for name, (scorer, _) in self.scorers.items():
      out.update({f"{name}/{k}": v for k, v in scorer.stats.items()})
    return out

  def close(self) -> None:
    """Close the rule pool and release the reward models. Idempotent."""
    self.rules.close()
    for scorer, _ in self.scorers.values():
      scorer.close()


def routed_rewards_from_config(rewards_config, rule_rewards, *, encode_fn: Callable,
                               mesh=None, rules=None, dtype: Optional[str] = None
                               ) -> RoutedRewards:
  """RoutedRewards from a GRPO config's `rewards` block.

  Reads helpfulness_rm / harmlessness_rm (directories, "" = unused), helpfulness_weight,
  harmlessness_weight, summary_markers (comma-separated), rm_batch_size, rm_max_len,
  default_kind (all but the paths optional).

  Args:
    rewards_config: the ConfigDict block.
    rule_rewards: the RewardComputer of the rule rewards.
    encode_fn, mesh, rules, dtype: passed to RewardModelScorer.
  Raises:
    ValueError: neither path set, or bad values; FileNotFoundError: a path that is not a
      reward model directory.
  """
  get = lambda k, d: rewards_config.get(k, d)  # noqa: E731
  kw = dict(encode_fn=encode_fn, batch_size=int(get("rm_batch_size", 16)),
            max_len=int(get("rm_max_len", 0)), mesh=mesh, rules=rules, dtype=dtype)
  paths = {name: str(get(f"{name}_rm", "") or "") for name in ("helpfulness", "harmlessness")}
  try:
    scorers = {name: RewardModelScorer(p, **kw) if p else None for name, p in paths.items()}
  except Exception:
    rule_rewards.close()  # do not leave the reward worker processes behind
    raise
  markers = [m.strip() for m in str(get("summary_markers", "</think>")).split(",") if m.strip()]
  logging.info("all-scenario rewards: rules %s for reasoning prompts, reward models %s for "
               "general prompts", getattr(rule_rewards, "names", "?"),
               {k: v for k, v in paths.items() if v})
  return RoutedRewards(rule_rewards, helpfulness=scorers["helpfulness"],
                       harmlessness=scorers["harmlessness"],
                       helpfulness_weight=float(get("helpfulness_weight", 1.0)),
                       harmlessness_weight=float(get("harmlessness_weight", 1.0)),
                       summary_markers=markers or DEFAULT_SUMMARY_MARKERS,
                       default_kind=str(get("default_kind", "reasoning")))
