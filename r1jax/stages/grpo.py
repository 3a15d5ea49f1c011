"""Stage `grpo`: R1-Zero-style GRPO with rule-based rewards (R1_SPEC sections 2-4).

One step: prompts (grain) -> group rollouts (each prompt prefilled once, G samples) ->
rewards (process pool with timeouts) -> group advantages -> reference log-probs (when
beta > 0) -> mu jitted, sharded updates with exact gradient accumulation -> metrics,
samples, periodic held-out evaluation and orbax checkpoints (resumable, SIGTERM-safe).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from r1jax.kernels import logprob as kernel_lib
from r1jax.kernels.logprob import token_logprobs
from r1jax import models, sampling
from r1jax import sharding as shd
from r1jax.data import PromptData
from r1jax.data.pipeline import split_list
from r1jax.data.templates import response_prefix
from r1jax.losses import grpo as grpo_lib
from r1jax.models.config import ModelConfig, tiny_config
from r1jax.rewards import RewardComputer, format_ok
from r1jax.tokenizer import Tokenizer
from r1jax.train import trainer as trainer_lib
from r1jax.train.metrics import MetricsWriter, ProgressBar

DEFAULT_MODEL = "smollm2-135m-instruct"


# ---------------------------------------------------------------------- validation
def validate_config(config) -> None:
  """Reject bad values before any compute.

  Raises:
    ValueError: with the offending key and value.
  """
  rl = config.rl
  G = rl.num_generations
  if G < 2:
    raise ValueError(f"rl.num_generations must be >= 2 (GRPO compares samples within a group), got {G}")
  if rl.batch_size <= 0 or rl.batch_size % G:
    raise ValueError(f"rl.batch_size={rl.batch_size} is not a whole number of groups of "
                     f"rl.num_generations={G}")
  if rl.micro_batch_size <= 0 or rl.batch_size % rl.micro_batch_size:
    raise ValueError(f"rl.micro_batch_size={rl.micro_batch_size} must divide rl.batch_size="
                     f"{rl.batch_size}")
  if rl.micro_batch_size % G:
    raise ValueError(f"rl.micro_batch_size={rl.micro_batch_size} is not a whole number of "
                     f"groups of rl.num_generations={G} (micro-batches split by prompt)")
  if rl.num_iterations < 1:
    raise ValueError(f"rl.num_iterations (mu) must be >= 1, got {rl.num_iterations}")
  if rl.max_new_tokens < 1:
    raise ValueError(f"rl.max_new_tokens must be >= 1, got {rl.max_new_tokens}")
  if config.steps < 0:
    raise ValueError(f"steps must be >= 0, got {config.steps}")
  if config.eval.batch_size < 1:
    raise ValueError(f"eval.batch_size must be >= 1, got {config.eval.batch_size}")
  if rl.advantage_scaling not in grpo_lib.ADVANTAGE_SCALINGS:
    raise ValueError(f"rl.advantage_scaling must be one of {grpo_lib.ADVANTAGE_SCALINGS}, got "
                     f"{rl.advantage_scaling!r}")
  kernel_kwargs(config)
  if rl.max_resample_rounds < 0:
    raise ValueError(f"rl.max_resample_rounds must be >= 0, got {rl.max_resample_rounds}")
  if config.eval.temperature < 0:
    raise ValueError(f"eval.temperature must be >= 0, got {config.eval.temperature}")
  sampling.SamplingParams(temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k,
                          max_new_tokens=rl.max_new_tokens)
  grpo_config(config)
  from r1jax.rewards.registry import parse_reward_spec
  parse_reward_spec(config.rewards.spec)
  if config.rl.temperature == 0:
    raise ValueError("rl.temperature must be > 0: greedy rollouts give identical samples per group")
  shd.config_rules(config)
  shd.config_rules(config, "sampler")
  nproc = jax.process_count()
  if nproc > 1:
    if (rl.batch_size // G) % nproc:
      raise ValueError(f"{rl.batch_size // G} prompts per step (rl.batch_size / "
                       f"rl.num_generations) do not split over {nproc} processes")
    if rl.dynamic_sampling:
      raise ValueError("rl.dynamic_sampling is single-process only for now (the refill "
                       "decision would need every process's rewards)")


def grpo_config(config) -> grpo_lib.GRPOConfig:
  rl = config.rl
  return grpo_lib.GRPOConfig(epsilon_low=rl.epsilon_low, epsilon_high=rl.epsilon_high,
                             beta=rl.beta, kl_estimator=rl.kl_estimator,
                             aggregation=rl.loss_aggregation,
                             max_completion_len=rl.max_new_tokens)


# ---------------------------------------------------------------------- model + batch
def load_policy(config) -> tuple[ModelConfig, Any, Tokenizer]:
  """(model config, params on host, tokenizer) for config.model."""
  if config.model == "tiny-random":
    tok = Tokenizer.from_source(config.tokenizer or DEFAULT_MODEL)
    cfg = tiny_config(vocab_size=tok.vocab_size, dtype=config.dtype,
                      param_dtype=config.param_dtype, bos_token_id=tok.bos_id,
                      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
                      **config.tiny_model.to_dict())
    params = models.init_params(cfg, jax.random.key(config.seed))
    return cfg, params, tok
  cfg, params = models.from_pretrained(config.model, dtype=config.dtype,
                                       param_dtype=config.param_dtype)
  tok = Tokenizer.from_source(config.tokenizer or config.model)
  if tok.vocab_size > cfg.vocab_size:
    raise ValueError(f"tokenizer of {config.tokenizer or config.model} has {tok.vocab_size} ids, "
                     f"more than the model's vocab_size={cfg.vocab_size}")
  return cfg, params, tok


def build_batch(prompt_ids: np.ndarray, prompt_lengths: np.ndarray, out: sampling.SampleOutput,
                advantages: np.ndarray, mask_truncated: bool) -> dict[str, np.ndarray]:
  """Training arrays of a rollout batch, grouped by prompt (leading dim B).

  Args:
    prompt_ids: [B, P] int32 right-padded prompts; prompt_lengths [B].
    out: rollouts with tokens/logprobs [B, G, N], lengths/finished [B, G].
    advantages: [B, G] float32.
    mask_truncated: drop completions that hit the length limit from the loss.

  Returns dict: prompt_tokens [B, P], prompt_lengths [B], completion [B, G, N], mask
  [B, G, N] float32 (1 on real completion tokens), old_logp [B, G, N], advantages [B, G].
  """
  N = out.tokens.shape[-1]
  mask = (np.arange(N) < out.lengths[..., None]).astype(np.float32)
  if mask_truncated:
    mask = mask * out.finished[..., None]
  return {"prompt_tokens": prompt_ids.astype(np.int32),
          "prompt_lengths": prompt_lengths.astype(np.int32),
          "completion": out.tokens.astype(np.int32), "mask": mask,
          "old_logp": out.logprobs.astype(np.float32),
          "advantages": advantages.astype(np.float32)}


def kernel_kwargs(config, mesh=None) -> dict:
  """token_logprobs settings from config.kernels (impl, chunk, Pallas tiles), and the mesh
  axes that shard the tokens (for the Pallas kernels' shard_map).

  Raises:
    ValueError: unknown kernels.logprob_impl or a non-positive chunk size.
  """
  axes = None if mesh is None else shd.batch_sharding(mesh, 1).spec[0]
  return kernel_lib.kwargs_from_config(config.kernels, mesh, axes)


def completion_logprobs(params, cfg: ModelConfig, mb: dict, *, temperature: float,
                        kernel: dict, remat: bool):
  """Log-probs [b, G, N] and entropies [b, G, N] of the completion tokens of a (micro-)batch.

  Each prompt is run once for its G completions (models.forward_grouped), and only the N
  completion positions go through the LM head (kernels.logprob: no [tokens, V] logits;
  `kernel` = kernel_kwargs(config)).
  """
  hp, hc = models.forward_grouped(params, cfg, mb["prompt_tokens"], mb["prompt_lengths"],
                                  mb["completion"], remat=remat)
  h = models.completion_predictors(hp, mb["prompt_lengths"], hc)
  b, G, N, D = h.shape
  logp, ent = token_logprobs(h.reshape(b * G, N, D), models.lm_head_weight(params, cfg),
                             mb["completion"].reshape(b * G, N), temperature=temperature,
                             **kernel)
  return logp.reshape(b, G, N), ent.reshape(b, G, N)


def make_loss_fn(cfg: ModelConfig, gcfg: grpo_lib.GRPOConfig, *, temperature: float,
                 kernel: dict, remat: bool, num_iterations: int):
  """(params, micro-batch, denominator) -> (loss, metrics) for Trainer."""
  def loss_fn(params, mb, denominator):
    logp, entropy = completion_logprobs(params, cfg, mb, temperature=temperature,
                                        kernel=kernel, remat=remat)
    flat = lambda x: None if x is None else x.reshape(-1, x.shape[-1])
    # mu = 1: pi_old is the current policy (ratio = 1, gradient = policy gradient).
    old = mb["old_logp"] if num_iterations > 1 else logp
    return grpo_lib.grpo_loss(flat(logp), flat(old), flat(mb.get("ref_logp")),
                              mb["advantages"].reshape(-1), flat(mb["weights"]), denominator,
                              gcfg, flat(entropy), flat(mb.get("metric_weights")))
  return loss_fn


def make_ref_fn(cfg: ModelConfig, mesh, num_micro: int, *, temperature: float, kernel: dict):
  """Jitted (params, batch) -> completion log-probs [B, G, N], micro-batched like the update.

  Used for the reference policy (beta > 0) and for pi_old when mu > 1."""
  def ref(params, batch):
    micro = {k: trainer_lib._split_micro(batch[k], num_micro)
             for k in ("prompt_tokens", "prompt_lengths", "completion")}
    lp = jax.lax.map(lambda mb: completion_logprobs(params, cfg, mb, temperature=temperature,
                                                    kernel=kernel, remat=False)[0], micro)
    return trainer_lib._merge_micro(lp)
  return jax.jit(shd.with_activation_sharding(ref, mesh),
                 out_shardings=shd.batch_sharding(mesh, 3))


# ---------------------------------------------------------------------- evaluation
def evaluate(params, sampler: sampling.Sampler, tok: Tokenizer, rewards: RewardComputer,
             examples: list[dict], config, key, train_sp: sampling.SamplingParams,
             prefix: str = "") -> tuple[dict[str, float], list[dict]]:
  """Held-out accuracy and format rate, greedy and sampled (one sample per prompt)."""
  metrics, samples = {}, []
  for mode, temperature in (("greedy", 0.0), ("sampled", config.eval.temperature)):
    sp = dataclasses.replace(train_sp, temperature=temperature, top_p=1.0, top_k=0)
    acc, fmt, lens = [], [], []
    for i in range(0, len(examples), config.eval.batch_size):
      chunk = examples[i:i + config.eval.batch_size]
      out = sampler(params, [ex["prompt_ids"] for ex in chunk], jax.random.fold_in(key, i),
                    num_samples=1, sampling=sp)
      texts = [row[0] for row in sampling.decode_completions(tok, out, sp, prefix)]
      acc.extend(rewards.heldout_accuracy(texts, chunk).tolist())
      fmt.extend(format_ok(t) for t in texts)
      lens.extend(out.lengths[:, 0].tolist())
      if mode == "greedy" and i == 0:
        samples = [{"split": "eval", "question": ex["question"], "answer": ex["answer"],
                    "completion": t, "accuracy": float(a)}
                   for ex, t, a in zip(chunk[:config.log.num_samples], texts, acc)]
    metrics[f"accuracy_{mode}"] = float(np.mean(acc))
    metrics[f"format_rate_{mode}"] = float(np.mean(fmt))
    metrics[f"response_len_{mode}"] = float(np.mean(lens))
  metrics["num_examples"] = len(examples)
  return metrics, samples


# ---------------------------------------------------------------------- the loop
@dataclasses.dataclass
class Rollout:
  examples: list[dict]
  prompt_ids: np.ndarray
  prompt_lengths: np.ndarray
  out: sampling.SampleOutput
  texts: list[str]
  rewards: Any  # RewardResult
  seconds_rollout: float
  seconds_reward: float


def run(config) -> dict[str, Any]:
  """Run GRPO as configured; returns the last step's metrics (and eval metrics)."""
  validate_config(config)
  run_dir = os.path.abspath(config.run_dir)
  os.makedirs(run_dir, exist_ok=True)
  ckpt_dir = os.path.join(run_dir, "checkpoints")
  if not config.resume and os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise ValueError(f"{run_dir} already has checkpoints: pass --config.resume=True to continue "
                     f"that run, or choose another --config.run_dir")
  t_start = time.perf_counter()
  mesh = shd.make_mesh(config.mesh.to_dict())
  rules, sampler_rules = shd.config_rules(config), shd.config_rules(config, "sampler")
  # Several processes: each loads, samples and scores its own block of prompts; the update
  # runs on global arrays. Process 0 alone writes metrics, samples and plots.
  nproc, pidx = jax.process_count(), jax.process_index()
  is_main = pidx == 0
  logging.info("mesh %s, sharding rules %s, %d process(es)", dict(mesh.shape),
               config.sharding.preset if "sharding" in config else "default", nproc)
  rl = config.rl
  G, B = rl.num_generations, rl.batch_size // rl.num_generations
  S = rl.batch_size
  b = B // nproc  # prompts of this process per step
  prompts_per_micro = rl.micro_batch_size // G
  if prompts_per_micro % shd.batch_divisor(mesh, rules):
    raise ValueError(f"prompts per micro-batch ({prompts_per_micro} = rl.micro_batch_size / "
                     f"rl.num_generations) must be a multiple of the mesh's batch shards "
                     f"({shd.batch_divisor(mesh)})")
  num_micro = S // rl.micro_batch_size

  cfg, host_params, tok = load_policy(config)
  data = PromptData(config.data, tok)
  max_len = config.data.max_prompt_tokens + rl.max_new_tokens
  if max_len > cfg.max_position_embeddings:
    raise ValueError(f"data.max_prompt_tokens + rl.max_new_tokens = {max_len} exceeds the "
                     f"model's context of {cfg.max_position_embeddings} tokens")
  gcfg = grpo_config(config)
  optimizer, schedule = trainer_lib.make_optimizer(_optim_with_steps(config))
  loss_fn = make_loss_fn(cfg, gcfg, temperature=rl.temperature,
                         kernel=kernel_kwargs(config, mesh), remat=config.remat,
                         num_iterations=rl.num_iterations)
  trainer = trainer_lib.Trainer(mesh, models.param_logical_axes(cfg), loss_fn, optimizer,
                                num_micro, rules=rules)
  # The reference gets its own buffers: the policy's are donated to each update.
  ref_params = (jax.tree.map(lambda x: x.copy(), trainer.shard_params(host_params))
                if gcfg.beta > 0 else None)
  state = trainer.init_state(host_params)
  del host_params
  logprob_fn = make_ref_fn(cfg, mesh, num_micro, temperature=rl.temperature,
                          kernel=kernel_kwargs(config, mesh))
  ref_fn = logprob_fn if gcfg.beta > 0 else None
  sampler = sampling.Sampler(cfg, pad_id=tok.pad_id, min_prompt_bucket=32, mesh=mesh,
                             rules=sampler_rules)
  # The sampler may lay the same params out differently (e.g. replicated for decoding while
  # the trainer keeps them FSDP-sharded): an explicit reshard before each rollout.
  sampler_shardings = (shd.tree_shardings(trainer.param_axes, state.params, mesh, sampler_rules)
                       if sampler_rules != rules else None)
  sampler_params = lambda p: p if sampler_shardings is None else shd.reshard(p, sampler_shardings)
  stop_seqs = sampling.stop_sequences_for(tok, split_list(rl.stop_strings))
  sp = sampling.SamplingParams(temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k,
                               max_new_tokens=rl.max_new_tokens, stop_ids=tok.stop_ids,
                               stop_sequences=stop_seqs)
  # Text the template already wrote at the start of the response (e.g. "<think>"): the
  # rewards judge prefix + completion.
  prefix = response_prefix(config.data.template)
  from r1jax.rewards.registry import parse_reward_spec
  in_spec = {name for name, _ in parse_reward_spec(config.rewards.spec)}
  reward_kwargs = {"accuracy": {"partial_credit": config.rewards.get("partial_credit", False)},
                   "format": {"full": config.rewards.format_full,
                              "partial": config.rewards.format_partial},
                   "code": {"binary": config.rewards.code_binary,
                            "timeout_s": config.rewards.code_test_timeout_s,
                            "total_timeout_s": config.rewards.code_total_timeout_s}}
  # Only for functions of the spec (the pool rejects kwargs of absent functions).
  reward_kwargs = {k: v for k, v in reward_kwargs.items() if k in in_spec}
  rewards = RewardComputer(config.rewards.spec, num_workers=config.rewards.num_workers,
                           timeout_s=config.rewards.timeout_s, fn_kwargs=reward_kwargs)
  if config.rewards.get("helpfulness_rm") or config.rewards.get("harmlessness_rm"):
    # All-scenario RL (R1 stage 4): reward models score the prompts of kind "general".
    from r1jax.data import preference_data
    from r1jax.rewards.routing import routed_rewards_from_config
    rewards = routed_rewards_from_config(config.rewards, rewards,
                                         encode_fn=preference_data.encode_scoring_input)
  checkpointer = trainer_lib.Checkpointer(ckpt_dir, keep=config.checkpoint.keep)
  writer = MetricsWriter(run_dir) if is_main else _NullWriter()
  data_iter = data.train_iterator(B, shard_index=pidx, shard_count=nproc)
  state, start_step = trainer_lib.resume_run(config, checkpointer, trainer, state, data_iter,
                                             writer)
  writer.write_config(config.to_dict())
  logging.info("data: %s", json.dumps(data.summary())[:2000])
  eval_examples = data.eval_examples()
  base_key = jax.random.key(config.seed)
  guard = trainer_lib.PreemptionGuard()
  progress = ProgressBar(config.steps, initial=start_step,
                         keys=("reward", "accuracy", "format_rate", "response_len_mean", "step_s"),
                         disable=not is_main)
  last: dict[str, Any] = {}

  def run_eval(step):
    t0 = time.perf_counter()
    m, samples = evaluate(sampler_params(state.params), sampler, tok, rewards, eval_examples,
                          config,
                          jax.random.fold_in(jax.random.fold_in(base_key, 10 ** 9), step), sp,
                          prefix)
    m["seconds"] = time.perf_counter() - t0
    writer.write(step, m, prefix="eval/")
    writer.write_samples(step, samples)
    if is_main:
      progress.write(f"eval @ step {step}: " + ", ".join(
          f"{k}={v:.3f}" for k, v in m.items() if k.startswith(("accuracy", "format"))))
    last.update({f"eval/{k}": v for k, v in m.items()})

  def save(step):
    checkpointer.save(step, state, {"step": step, "seed": config.seed,
                                    "data_state": data_iter.get_state()})

  try:
    if config.eval.at_start and start_step == 0 and eval_examples:
      run_eval(0)
    step = start_step
    while step < config.steps:
      t0 = time.perf_counter()
      key = jax.random.fold_in(base_key, step)
      ro = _rollout_with_dynamic_sampling(sampler_params(state.params), sampler, sp, tok,
                                          rewards, data_iter, key, b, G, rl, prefix)
      # Advantages and loss weights need the whole batch: gather the (small) per-process
      # rewards and masks, compute globally, keep this process's rows.
      gro = _global_view(ro) if nproc > 1 else ro
      mine = slice(pidx * b, (pidx + 1) * b)
      adv = grpo_lib.group_advantages(gro.rewards.total.reshape(B, G), rl.advantage_scaling)
      batch = build_batch(ro.prompt_ids, ro.prompt_lengths, ro.out, adv[mine], rl.mask_truncated)
      mask = shd.process_allgather(batch.pop("mask"))
      weights, denom = grpo_lib.loss_weights(mask.reshape(B * G, -1), gcfg.aggregation,
                                             gcfg.max_completion_len)
      batch["weights"] = weights.reshape(mask.shape)[mine]
      batch["metric_weights"] = grpo_lib.token_mean_weights(mask)[mine]
      batch.pop("old_logp")  # the sampler's; recomputed below with the training forward
      t_ref = time.perf_counter()
      if ref_fn is not None:
        batch["ref_logp"] = ref_fn(ref_params, trainer.shard_batch(batch))
        jax.block_until_ready(batch["ref_logp"])
      if rl.num_iterations > 1:
        # pi_old = the policy before the first update, through the same numerics as the loss.
        batch["old_logp"] = logprob_fn(state.params, trainer.shard_batch(batch))
      t_update = time.perf_counter()
      ms = []
      for _ in range(rl.num_iterations):
        state, m = trainer.update(state, batch, denom)
        ms.append(m)
      m = jax.tree.map(lambda *x: np.mean(x), *jax.device_get(ms))  # mean over mu updates
      t_end = time.perf_counter()
      step += 1
      metrics = _step_metrics(gro, m, G, schedule((step - 1) * rl.num_iterations))
      metrics.update({"seconds/rollout": ro.seconds_rollout, "seconds/reward": ro.seconds_reward,
                      "seconds/reference": t_update - t_ref, "seconds/update": t_end - t_update,
                      "step_s": t_end - t0,
                      "rollout_tokens_per_s": float(gro.out.lengths.sum()) / ro.seconds_rollout})
      metrics.update({f"rewards/{k}": v for k, v in rewards.stats().items()})
      writer.write(step, metrics)
      progress.update(step, metrics)
      last = dict(metrics)
      if config.log.samples_every and step % config.log.samples_every == 0:
        writer.write_samples(step, _samples(ro, config.log.num_samples))
      is_last = step == config.steps
      stop = guard.should_stop()  # every process stops (and saves) at the same step
      # Save before evaluating: after a SIGTERM the grace period may not cover an eval.
      if is_last or stop or (config.checkpoint.every_steps and
                             step % config.checkpoint.every_steps == 0):
        save(step)
      if stop:
        logging.warning("stopping at step %d after a signal; resume with --config.resume=True",
                        step)
        break
      if eval_examples and (is_last or (config.eval.every_steps and
                                        step % config.eval.every_steps == 0)):
        run_eval(step)
    if start_step == config.steps and config.steps > 0:
      logging.info("nothing to do: the checkpoint is already at step %d", config.steps)
  finally:
    guard.restore()
    progress.close()
    writer.close()
    rewards.close()
    checkpointer.close()
  last["wall_s"] = time.perf_counter() - t_start
  if config.log.plot and is_main:
    _plot(run_dir)
  logging.info("done: %s", json.dumps({k: v for k, v in last.items()
                                       if isinstance(v, (int, float))})[:3000])
  return last


def _optim_with_steps(config):
  """Optimizer config in optimizer updates (mu per rollout step), not rollout steps."""
  o = config.optim.to_dict()
  mu = config.rl.num_iterations
  o["decay_steps"] = max(config.steps, 1) * mu
  o["warmup_steps"] = config.optim.warmup_steps * mu
  from ml_collections import ConfigDict
  return ConfigDict(o)


def _rollout(params, sampler, sp, tok, rewards, examples, key, G, prefix) -> Rollout:
  """Samples, texts and rewards of `examples` (this process's share of the step's prompts:
  the sampler runs on the global mesh, each process scores its own completions)."""
  t0 = time.perf_counter()
  ids, lengths = sampler.pad_prompts([ex["prompt_ids"] for ex in examples], process_local=True)
  out = sampler(params, (ids, lengths), key, num_samples=G, sampling=sp, process_local=True)
  t1 = time.perf_counter()
  texts = [t for row in sampling.decode_completions(tok, out, sp, prefix) for t in row]
  res = rewards(texts, [ex for ex in examples for _ in range(G)])
  return Rollout(examples, ids, lengths, out, texts, res, t1 - t0, time.perf_counter() - t1)


def _rollout_with_dynamic_sampling(params, sampler, sp, tok, rewards, data_iter, key, B, G,
                                   rl, prefix) -> Rollout:
  ro = _rollout(params, sampler, sp, tok, rewards, next(data_iter), key, G, prefix)
  if not rl.dynamic_sampling:
    return ro
  # DAPO dynamic sampling: keep groups whose rewards differ; refill from new prompts.
  pool = [ro]
  kept = _informative_groups(ro, G)
  rounds = 0
  while len(kept) < B and rounds < rl.max_resample_rounds:
    rounds += 1
    extra = _rollout(params, sampler, sp, tok, rewards, next(data_iter),
                     jax.random.fold_in(key, 1000 + rounds), G, prefix)
    pool.append(extra)
    kept += [(len(pool) - 1, b) for _, b in _informative_groups(extra, G)]
  if len(kept) < B:  # not enough informative groups: fill with uninformative ones
    used = set(kept)
    kept += [(p, b) for p in range(len(pool)) for b in range(B) if (p, b) not in used]
  kept = kept[:B]
  return _select_groups(pool, kept, G, sampler)


class _NullWriter:
  """Stands in for MetricsWriter on processes other than 0 (they write no run files)."""

  def __getattr__(self, name):
    return lambda *args, **kwargs: {}


def _global_view(ro: Rollout) -> Rollout:
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
  view = Rollout([], None, None, out, None, rewards, ro.seconds_rollout, ro.seconds_reward)
  view.format_flags = fmt
  return view


def _informative_groups(ro: Rollout, G: int) -> list[tuple[int, int]]:
  r = ro.rewards.total.reshape(-1, G)
  return [(0, b) for b in range(r.shape[0]) if np.ptp(r[b]) > 0]


def _select_groups(pool: list[Rollout], kept, G, sampler) -> Rollout:
  """Concatenate the chosen (rollout, group) pairs into one Rollout of B groups."""
  examples = [pool[p].examples[b] for p, b in kept]
  ids, lengths = sampler.pad_prompts([ex["prompt_ids"] for ex in examples])
  N = pool[0].out.tokens.shape[-1]
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


def _step_metrics(ro: Rollout, m: dict, G: int, lr) -> dict[str, float]:
  lengths = ro.out.lengths.reshape(-1)
  res = ro.rewards
  metrics = {"reward": float(res.total.mean()),
             "reward_std_in_group": float(res.total.reshape(-1, G).std(axis=1).mean()),
             "accuracy": float(res.per_function.get("accuracy", np.zeros(1)).mean()),
             "format_rate": float(np.mean(getattr(ro, "format_flags", None) if
                                          ro.texts is None else [format_ok(t) for t in ro.texts])),
             "response_len_mean": float(lengths.mean()),
             "response_len_max": float(lengths.max()),
             "truncation_rate": float(1.0 - ro.out.finished.mean()),
             "reward_timeouts": int(res.timed_out.sum()), "reward_errors": int(res.errors.sum()),
             "lr": float(lr)}
  for k, v in res.per_function.items():
    metrics[f"reward/{k}"] = float(v.mean())
  for k, v in m.items():
    metrics[k] = float(v)
  return metrics


def _samples(ro: Rollout, n: int) -> list[dict]:
  G = ro.out.tokens.shape[1]
  out = []
  for i in range(min(n, len(ro.texts))):
    ex = ro.examples[i // G]
    out.append({"split": "train", "question": ex["question"], "answer": ex["answer"],
                "completion": ro.texts[i], "reward": float(ro.rewards.total[i])})
  return out


def _plot(run_dir: str) -> None:
  try:
    import subprocess
    import sys
    tool = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "plot_run.py")
    if os.path.exists(tool):
      subprocess.run([sys.executable, tool, run_dir], check=False, capture_output=True)
  except Exception as e:  # a plot must never fail a finished run
    logging.warning("plotting failed: %s", e)
