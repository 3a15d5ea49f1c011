"""Stage `grpo`: R1-Zero-style GRPO with rule-based rewards (DeepSeek-R1, section 2.2;
DeepSeekMath, section 4.1; docs/method.md "GRPO objective" and "Rewards").

One step: prompts (grain; each process its block) -> group rollouts (each prompt prefilled
once, G samples; DAPO dynamic sampling decided on gathered rewards; r1jax.stages.grpo_rollout)
-> rewards (process pool with timeouts) -> DAPO overlong shaping and the advantage estimator
(grpo | rloo | reinforce_pp) on the gathered rewards -> reference log-probs (when beta > 0)
-> mu jitted, sharded updates with exact gradient accumulation (GRPO or GSPO policy loss,
entropy bonus, off-policy correction against the sampler's log-probs) -> metrics (with the
sampler-vs-trainer mismatch) and samples. With rl.async_rollouts the next step's rollout is
sampled during the update (r1jax.stages.grpo_async). With lora.rank > 0 only LoRA adapters train
and the reference is the frozen base with adapters off (r1jax.train.adapters). Resume, held-out evaluation,
checkpoints, the collective stop and the finite-update guard come from the loop
(r1jax.train.loop).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from r1jax import models, sampling
from r1jax import sharding as shd
from r1jax import tool_rollout_stage as tools_lib
from r1jax.data import PromptData
from r1jax.data.pipeline import split_list
from r1jax.data.templates import response_prefix
from r1jax.kernels import logprob as kernel_lib
from r1jax.kernels.logprob import token_logprobs
from r1jax.losses import advantages as adv_lib
from r1jax.losses import grpo as grpo_lib
from r1jax.losses import grpo_fused as fused_lib
from r1jax.losses import offpolicy
from r1jax.models import lora as lora_lib
from r1jax.models.config import LoraConfig, ModelConfig
from r1jax.rewards import RewardComputer, format_ok, registry
from r1jax.rewards.routing import RoutedRewards, example_kind
from r1jax.stages import grpo_async
from r1jax.stages import grpo_rollout as ro_lib
from r1jax.tokenizer import Tokenizer
from r1jax.train import adapters as adapters_lib
from r1jax.train import loop
from r1jax.train import precision
from r1jax.train import settings as settings_lib
from r1jax.train import trainer as trainer_lib


# ---------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Settings:
  """The validated settings of a GRPO run (built once by validate_config).

  Batch sizes are in prompts: a step samples prompts_per_step x num_generations sequences;
  a micro-batch of the update holds micro_batch_prompts prompts (their G samples each).
  rollout_devices > 0 puts the rollout on a sub-mesh of that many devices (rollout_mesh
  its shape); rollout_dtype "" samples in the model's dtype.
  """
  model: settings_lib.ModelSettings
  parallel: settings_lib.ParallelSettings
  grpo: grpo_lib.GRPOConfig
  advantages: adv_lib.AdvantageConfig
  prompts_per_step: int
  num_generations: int
  micro_batch_prompts: int
  reward_spec: tuple
  reward_kwargs: dict
  async_rollouts: bool = False
  rollout_devices: int = 0
  rollout_mesh: tuple = ()
  rollout_dtype: str = ""
  lora: Optional[LoraConfig] = None

  @property
  def num_micro(self) -> int:
    return self.prompts_per_step // self.micro_batch_prompts


def import_reward_modules(spec: str) -> None:
  """Import the comma-separated modules of rewards.modules (their r1jax.rewards.register
  calls make their functions nameable in rewards.spec).

  Raises:
    ValueError: a module that cannot be imported (naming rewards.modules).
  """
  import importlib
  for name in split_list(spec):
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise ValueError(f"rewards.modules: cannot import {name!r} ({e})") from e


def reward_kwargs(rc) -> dict:
  """Keyword arguments of the built-in reward functions from the `rewards` block."""
  return {"accuracy": {"partial_credit": rc.partial_credit},
          "format": {"full": rc.format_full, "partial": rc.format_partial},
          "code": {"binary": rc.code_binary, "timeout_s": rc.code_test_timeout_s,
                   "total_timeout_s": rc.code_total_timeout_s}}


def validate_config(config) -> Settings:
  """Check every value and build the typed settings, before any compute.

  Raises:
    ValueError: with the offending key and value.
  """
  rl = config.rl
  G = rl.num_generations
  if G < 2:
    raise ValueError(f"rl.num_generations must be >= 2 (GRPO compares samples within a group), got {G}")
  settings_lib.check_positive(config, "rl.prompts_per_step", "rl.num_iterations",
                              "rl.max_new_tokens", "eval.batch_size")
  settings_lib.check_positive(config, "steps", "rl.max_resample_rounds", minimum=0)
  if rl.micro_batch_prompts < 1 or rl.prompts_per_step % rl.micro_batch_prompts:
    raise ValueError(f"rl.micro_batch_prompts={rl.micro_batch_prompts} must divide "
                     f"rl.prompts_per_step={rl.prompts_per_step}")
  acfg = adv_lib.AdvantageConfig(estimator=rl.advantage_estimator, scaling=rl.advantage_scaling,
                                 overlong_buffer=rl.overlong_buffer,
                                 overlong_penalty=rl.overlong_penalty,
                                 max_completion_len=rl.max_new_tokens)
  kernel_lib.kwargs_from_config(config.kernels)
  if config.eval.temperature < 0:
    raise ValueError(f"eval.temperature must be >= 0, got {config.eval.temperature}")
  if rl.temperature == 0:
    raise ValueError("rl.temperature must be > 0: greedy rollouts give identical samples per group")
  sampling.SamplingParams(temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k,
                          max_new_tokens=rl.max_new_tokens)
  gcfg = grpo_lib.GRPOConfig(epsilon_low=rl.epsilon_low, epsilon_high=rl.epsilon_high,
                             beta=rl.beta, kl_estimator=rl.kl_estimator,
                             aggregation=rl.loss_aggregation, max_completion_len=rl.max_new_tokens,
                             policy_loss=rl.policy_loss, entropy_coef=rl.entropy_coef,
                             offpolicy_correction=rl.offpolicy_correction,
                             offpolicy_cap=rl.offpolicy_cap,
                             offpolicy_mis_low=rl.offpolicy_mis_low,
                             fused=rl.get("fused_loss", False))
  import_reward_modules(config.rewards.get("modules", ""))
  spec = tuple(registry.parse_reward_spec(config.rewards.spec))
  names = {name for name, _ in spec}
  kwargs = {k: v for k, v in reward_kwargs(config.rewards).items() if k in names}
  loop.parse_resume(config.resume)
  tools_lib.validate(config)  # tool rollouts (issue 17): no-op without tools.enabled
  if tools_lib.enabled(config) and (rl.async_rollouts or rl.rollout_dtype):
    raise ValueError("tools.enabled works with the synchronous schedule in the training dtype "
                     "only: set rl.async_rollouts=False and rl.rollout_dtype=''")
  nproc = jax.process_count()
  if rl.prompts_per_step % nproc:
    raise ValueError(f"rl.prompts_per_step={rl.prompts_per_step} does not split over {nproc} "
                     f"processes")
  blocks = rl.dynamic_sampling_blocks
  if blocks < 0 or (blocks and (blocks % nproc or rl.prompts_per_step % blocks)):
    raise ValueError(f"rl.dynamic_sampling_blocks={blocks} must be 0 or a multiple of the "
                     f"{nproc} process(es) that divides rl.prompts_per_step="
                     f"{rl.prompts_per_step}")
  if not isinstance(rl.async_rollouts, bool):
    raise ValueError(f"rl.async_rollouts must be True or False, got {rl.async_rollouts!r}")
  settings_lib.check_positive(config, "rl.rollout_devices", minimum=0)
  rollout_dtype = str(rl.rollout_dtype or "")
  if rollout_dtype:
    models.check_dtype(rollout_dtype, "rl.rollout_dtype")
  model = settings_lib.ModelSettings.from_config(config)
  lora = lora_lib.from_config(config.get("lora"))
  if lora is not None:  # the frozen base is loaded in lora.base_dtype
    model = dataclasses.replace(model, param_dtype=lora_lib.base_dtype(config.lora,
                                                                      model.param_dtype))
  return Settings(model, settings_lib.ParallelSettings.from_config(config), gcfg, acfg,
                  int(rl.prompts_per_step), int(G), int(rl.micro_batch_prompts), spec, kwargs,
                  async_rollouts=rl.async_rollouts, rollout_devices=int(rl.rollout_devices),
                  rollout_mesh=tuple(rl.rollout_mesh.to_dict().items()),
                  rollout_dtype=rollout_dtype, lora=lora)


# ---------------------------------------------------------------------- the loss
def completion_hidden(params, cfg: ModelConfig, mb: dict, *, remat: bool) -> jax.Array:
  """[b, G, N, D] hidden states that predict the completion tokens of a (micro-)batch (each
  prompt run once for its G completions: models.forward_grouped)."""
  # LoRA dropout (training forward only): one key per micro-batch from its first row's seed.
  rng = jax.random.key(mb["lora_seed"][0]) if "lora_seed" in mb else None
  hp, hc = models.forward_grouped(params, cfg, mb["prompt_tokens"], mb["prompt_lengths"],
                                  mb["completion"], remat=remat, dropout_rng=rng)
  return models.completion_predictors(hp, mb["prompt_lengths"], hc)


def completion_logprobs(params, cfg: ModelConfig, mb: dict, *, temperature: float,
                        kernel: dict, remat: bool):
  """Log-probs [b, G, N] and entropies [b, G, N] of the completion tokens of a (micro-)batch.

  Only the N completion positions go through the LM head (kernels.logprob: no [tokens, V]
  logits; `kernel` = kernels.logprob.kwargs_from_config(config.kernels, ...)).
  """
  h = completion_hidden(params, cfg, mb, remat=remat)
  b, G, N, D = h.shape
  logp, ent = token_logprobs(h.reshape(b * G, N, D), models.lm_head_weight(params, cfg),
                             mb["completion"].reshape(b * G, N), temperature=temperature,
                             **kernel)
  return logp.reshape(b, G, N), ent.reshape(b, G, N)


def make_loss_fn(cfg: ModelConfig, gcfg: grpo_lib.GRPOConfig, *, temperature: float,
                 kernel: dict, remat: bool, num_iterations: int):
  """(params, micro-batch, denominator) -> (loss, metrics) for Trainer.

  The micro-batch holds prompt_tokens, prompt_lengths, completion, advantages, weights and
  optionally metric_weights, ref_logp (beta > 0), old_logp (pi_old when mu > 1) and
  sampler_logp (the sampler's log-probs: off-policy correction and mismatch metrics)."""
  def loss_fn(params, mb, denominator):
    flat = lambda x: None if x is None else x.reshape(-1, x.shape[-1])
    sampler_logp = flat(mb.get("sampler_logp"))
    if gcfg.fused:  # rl.fused_loss: gradients formed in the forward (losses/grpo_fused.py)
      h = completion_hidden(params, cfg, mb, remat=remat)
      loss, metrics, logp = fused_lib.fused_grpo_loss(
          h.reshape(-1, *h.shape[2:]), models.lm_head_weight(params, cfg),
          flat(mb["completion"]), mb["advantages"].reshape(-1), flat(mb["weights"]),
          denominator, gcfg, old_logp=flat(mb["old_logp"]) if num_iterations > 1 else None,
          ref_logp=flat(mb.get("ref_logp")), sampler_logp=sampler_logp,
          metric_weights=flat(mb.get("metric_weights")), temperature=temperature,
          chunk_size=kernel.get("chunk_size", 256))
      old = flat(mb["old_logp"]) if num_iterations > 1 else logp
    else:
      logp, entropy = completion_logprobs(params, cfg, mb, temperature=temperature,
                                          kernel=kernel, remat=remat)
      # mu = 1: pi_old is the current policy (ratio = 1, gradient = policy gradient).
      old = flat(mb["old_logp"] if num_iterations > 1 else logp)
      loss, metrics = grpo_lib.grpo_loss(flat(logp), old, flat(mb.get("ref_logp")),
                                         mb["advantages"].reshape(-1), flat(mb["weights"]),
                                         denominator, gcfg, flat(entropy),
                                         flat(mb.get("metric_weights")), sampler_logp)
    if sampler_logp is not None:
      mw = mb.get("metric_weights")
      mw = flat(mb["weights"]) / denominator if mw is None else flat(mw)
      metrics.update(offpolicy.micro_batch_metrics(
          jax.lax.stop_gradient(old), sampler_logp, flat(mb["weights"]) > 0, mw,
          gcfg.offpolicy_correction, gcfg.offpolicy_cap, gcfg.offpolicy_mis_low))
    return loss, metrics
  return loss_fn


def make_logprob_fn(cfg: ModelConfig, mesh, num_micro: int, *, temperature: float,
                    kernel: dict, rules: Optional[dict] = None):
  """Jitted (params, batch) -> completion log-probs [B, G, N], micro-batched like the update.

  Used for the reference policy (beta > 0) and for pi_old when mu > 1."""
  def ref(params, batch):
    params = precision.cast_floating(params, cfg.dtype)  # no-op for a compute-dtype copy
    micro = {k: trainer_lib.split_micro(batch[k], num_micro)
             for k in ("prompt_tokens", "prompt_lengths", "completion")}
    lp = jax.lax.map(lambda mb: completion_logprobs(params, cfg, mb, temperature=temperature,
                                                    kernel=kernel, remat=False)[0], micro)
    return trainer_lib.merge_micro(lp)
  return jax.jit(shd.with_activation_sharding(ref, mesh, rules or shd.DEFAULT_RULES),
                 out_shardings=shd.batch_sharding(mesh, 3))


# ---------------------------------------------------------------------- evaluation
def evaluate(params, sampler: sampling.Sampler, tok: Tokenizer, rewards: RewardComputer,
             examples: list[dict], config, key, train_sp: sampling.SamplingParams,
             prefix: str = "") -> tuple[dict[str, float], list[dict]]:
  """Held-out accuracy and format rate, greedy and sampled (one sample per prompt).

  General prompts (kind "general", all-scenario RL) have no answer: they are left out of
  accuracy, format rate and lengths, and scored by the run's reward models instead
  (reward_general_<mode>, reward_general/<name>_<mode>; none without reward models)."""
  metrics, samples = {}, []
  general = [example_kind(ex) == "general" for ex in examples]
  reasoning = [ex for ex, g in zip(examples, general) if not g]
  gen_examples = [ex for ex, g in zip(examples, general) if g]
  for mode, temperature in (("greedy", 0.0), ("sampled", config.eval.temperature)):
    sp = dataclasses.replace(train_sp, temperature=temperature, top_p=1.0, top_k=0)
    acc, fmt, lens, fins, calls = [], [], [], [], []
    for i in range(0, len(reasoning), config.eval.batch_size):
      chunk = reasoning[i:i + config.eval.batch_size]
      out = sampler(params, [ex["prompt_ids"] for ex in chunk], jax.random.fold_in(key, i),
                    num_samples=1, sampling=sp)
      texts = [row[0] for row in sampling.decode_completions(tok, out, sp, prefix)]
      acc.extend(rewards.heldout_accuracy(texts, chunk).tolist())
      fmt.extend(format_ok(t) for t in texts)
      lens.extend(out.lengths[:, 0].tolist())
      fins.extend(np.asarray(out.finished)[:, 0].tolist())
      calls.extend(np.asarray(getattr(out, "num_calls", np.zeros_like(out.lengths)))[:, 0])
      if mode == "greedy" and i == 0:
        samples = [{"split": "eval", "question": ex["question"], "answer": ex["answer"],
                    "completion": t, "accuracy": float(a)}
                   for ex, t, a in zip(chunk[:config.log.num_samples], texts, acc)]
    if reasoning:
      metrics[f"accuracy_{mode}"] = float(np.mean(acc))
      metrics[f"format_rate_{mode}"] = float(np.mean(fmt))
      metrics[f"response_len_{mode}"] = float(np.mean(lens))
      metrics.update(ro_lib.length_breakdown(lens, fins, acc, suffix=f"_{mode}"))
      if hasattr(sampler, "settings"):  # tool rollouts
        metrics.update(tools_lib.eval_metrics(calls, acc, mode))
    if gen_examples and isinstance(rewards, RoutedRewards):
      totals, per = [], {}
      for i in range(0, len(gen_examples), config.eval.batch_size):
        chunk = gen_examples[i:i + config.eval.batch_size]
        out = sampler(params, [ex["prompt_ids"] for ex in chunk],
                      jax.random.fold_in(key, 10**6 + i), num_samples=1, sampling=sp)
        texts = [row[0] for row in sampling.decode_completions(tok, out, sp, prefix)]
        res = rewards(texts, chunk)
        totals.extend(res.total.tolist())
        for name in rewards.scorers:
          per.setdefault(name, []).extend(res.per_function[name].tolist())
      metrics[f"reward_general_{mode}"] = float(np.mean(totals))
      metrics.update({f"reward_general/{k}_{mode}": float(np.mean(v)) for k, v in per.items()})
  metrics["num_examples"] = len(reasoning)
  metrics["num_general_examples"] = len(gen_examples)
  return metrics, samples


def make_rewards(config, s: Settings) -> Any:
  """The reward computer of the run (rule rewards; routed to reward models for general
  prompts in all-scenario RL)."""
  rewards = RewardComputer(list(s.reward_spec), num_workers=config.rewards.num_workers,
                           timeout_s=config.rewards.timeout_s, fn_kwargs=s.reward_kwargs)
  if config.rewards.get("helpfulness_rm") or config.rewards.get("harmlessness_rm"):
    # All-scenario RL (R1 stage 4): reward models score the prompts of kind "general".
    from r1jax.data import preference_data
    from r1jax.rewards.routing import routed_rewards_from_config
    rewards = routed_rewards_from_config(config.rewards, rewards,
                                         encode_fn=preference_data.encode_scoring_input)
  return rewards


# ---------------------------------------------------------------------- the stage
def run(config, *, rewards=None) -> dict[str, Any]:
  """Run GRPO as configured; returns the last step's metrics (and eval metrics).

  Args:
    config: a configs/grpo.py-shaped ConfigDict.
    rewards: a reward computer to use instead of the one rewards.* describes (it is closed
      at the end).
  """
  s = validate_config(config)
  loop.prepare_run_dir(config.run_dir, loop.parse_resume(config.resume))
  rules, sampler_rules = s.parallel.train_rules, s.parallel.sampling_rules
  if s.rollout_devices:  # rollout and training on disjoint sub-meshes (grpo_async)
    train_devices, rollout_devices = grpo_async.split_devices(s.rollout_devices)
    mesh = shd.make_mesh(dict(s.parallel.mesh_shape), train_devices)
    rollout_mesh = shd.make_mesh(dict(s.rollout_mesh), rollout_devices)
  else:
    mesh = rollout_mesh = s.parallel.mesh()
  # Several processes: each loads, samples and scores its own block of prompts; the update
  # runs on global arrays. Process 0 alone writes metrics, samples and plots.
  nproc, pidx = jax.process_count(), jax.process_index()
  logging.info("mesh %s, rollout mesh %s, sharding rules %s, %d process(es), %s rollouts",
               dict(mesh.shape), dict(rollout_mesh.shape), config.sharding.preset, nproc,
               "one-step-async" if s.async_rollouts else "synchronous")
  rl = config.rl
  G, B = s.num_generations, s.prompts_per_step
  b = B // nproc  # prompts of this process per step
  if s.micro_batch_prompts % shd.batch_divisor(mesh, rules):
    raise ValueError(f"rl.micro_batch_prompts={s.micro_batch_prompts} must be a multiple of "
                     f"the mesh's batch shards ({shd.batch_divisor(mesh, rules)})")

  loaded = s.model.load()
  policy = adapters_lib.TrainedPolicy.create(loaded.config, s.lora, config.param_dtype)
  cfg, tok = policy.cfg, loaded.tokenizer
  data = PromptData(config.data, tok)
  max_len = config.data.max_prompt_tokens + rl.max_new_tokens
  if max_len > cfg.max_position_embeddings:
    raise ValueError(f"data.max_prompt_tokens + rl.max_new_tokens = {max_len} exceeds the "
                     f"model's context of {cfg.max_position_embeddings} tokens")
  gcfg = s.grpo
  optimizer, schedule = trainer_lib.make_optimizer(settings_lib.optimizer_config(
      config, decay_steps=config.steps, updates_per_step=rl.num_iterations))
  kernel = kernel_lib.kwargs_from_config(
      config.kernels, mesh, shd.batch_sharding(mesh, 1, rules).spec[0],
      # d W of the fused log-prob is reduce-scattered straight into the head's own layout.
      weight_spec=shd.logical_to_spec(("embed", "vocab"), (cfg.hidden_size, cfg.vocab_size),
                                      mesh, rules))
  loss_fn = make_loss_fn(cfg, gcfg, temperature=rl.temperature, kernel=kernel,
                         remat=config.remat, num_iterations=rl.num_iterations)
  # The update computes in cfg.dtype on a copy of the param_dtype masters (train/precision).
  loss_fn = precision.compute_params(loss_fn, cfg.dtype)
  logging.info("%s", precision.describe(cfg.dtype, cfg.param_dtype))
  trainer = policy.trainer(mesh, loss_fn, optimizer, s.num_micro, rules)
  # Full fine-tuning: the reference is a copy of the starting params, kept in the compute
  # dtype (it never trains); LoRA: the frozen base.
  state, ref_params = policy.init(trainer, loaded.params, config.seed, reference=gcfg.beta > 0)
  if ref_params is not None and not policy.is_lora:
    ref_params = precision.cast_floating(ref_params, cfg.dtype)
  del loaded
  logprob_fn = make_logprob_fn(cfg, mesh, s.num_micro, temperature=rl.temperature,
                               kernel=kernel, rules=rules)
  ref_logprob_fn = (logprob_fn if policy.base_cfg == cfg else make_logprob_fn(
      policy.base_cfg, mesh, s.num_micro, temperature=rl.temperature, kernel=kernel,
      rules=rules))
  # The sampler may lay the same params out differently (e.g. replicated for decoding while
  # the trainer keeps them FSDP-sharded), on other devices, in another dtype: an explicit
  # reshard (a copy when the update would donate them) before each rollout.
  eval_sampler = sampling.Sampler(cfg, pad_id=tok.pad_id, min_prompt_bucket=32,
                                  mesh=rollout_mesh, rules=sampler_rules)
  # Rollouts decode from a compute-dtype copy (none when the masters are in it).
  compute_dtype = cfg.dtype if cfg.dtype != cfg.param_dtype else ""
  eval_params = grpo_async.RolloutParams(policy.logical_axes(), policy.params(state.params),
                                         rollout_mesh, sampler_rules, compute_dtype)
  if s.rollout_dtype and s.rollout_dtype != cfg.dtype:
    rollout_cfg = dataclasses.replace(cfg, dtype=s.rollout_dtype, param_dtype=s.rollout_dtype)
    sampler = sampling.Sampler(rollout_cfg, pad_id=tok.pad_id, min_prompt_bucket=32,
                               mesh=rollout_mesh, rules=sampler_rules)
    rollout_params = grpo_async.RolloutParams(policy.logical_axes(),
                                              policy.params(state.params), rollout_mesh,
                                              sampler_rules, s.rollout_dtype)
  else:
    sampler, rollout_params = eval_sampler, eval_params
  if tools_lib.enabled(config):  # tool-calling rollouts (r1jax.tool_rollout), also in eval
    sampler = eval_sampler = tools_lib.make_sampler(config, cfg, tok, pad_id=tok.pad_id,
                                                    min_prompt_bucket=32)
  sp = sampling.SamplingParams(
      temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k,
      max_new_tokens=rl.max_new_tokens, stop_ids=tok.stop_ids,
      stop_sequences=sampling.stop_sequences_for(tok, split_list(rl.stop_strings)))
  # Text the template already wrote at the start of the response (e.g. "<think>"): the
  # rewards judge prefix + completion.
  prefix = response_prefix(config.data.template)
  data_iter = data.train_iterator(B, shard_index=pidx, shard_count=nproc)
  eval_examples = data.eval_examples()
  base_key = jax.random.key(config.seed)

  def produce(params, step):
    return ro_lib.rollout_with_dynamic_sampling(
        params, sampler, sp, tok, rewards, data_iter, jax.random.fold_in(base_key, step), b,
        G, rl, prefix)

  rollouts = grpo_async.RolloutSchedule(
      produce, rollout_params, data_iter, async_rollouts=s.async_rollouts, steps=config.steps,
      restore=lambda rec: grpo_async.restore_rollout(rec, data_iter, sampler, tok, sp, prefix))

  def step_fn(state, step):
    t0 = time.perf_counter()
    ro = rollouts.take(policy.params(state.params), step)  # prefetched during the last update, or sampled now
    t_ro = time.perf_counter()
    # Advantages and loss weights need the whole batch: gather the (small) per-process
    # rewards and masks, compute globally, keep this process's rows.
    gro = ro_lib.global_view(ro) if nproc > 1 else ro
    mine = slice(pidx * b, (pidx + 1) * b)
    adv, shaped = adv_lib.advantages_from_rewards(gro.rewards.total.reshape(B, G),
                                                  gro.out.lengths.reshape(B, G), s.advantages)
    batch = ro_lib.build_batch(ro.prompt_ids, ro.prompt_lengths, ro.out, adv[mine],
                               rl.mask_truncated)
    mask = shd.process_allgather(batch.pop("mask"))
    weights, denom = grpo_lib.loss_weights(mask.reshape(B * G, -1), gcfg.aggregation,
                                           gcfg.max_completion_len)
    batch["weights"] = weights.reshape(mask.shape)[mine]
    batch["metric_weights"] = grpo_lib.token_mean_weights(mask)[mine]
    seeds = policy.dropout_seeds(config.seed, step, B)
    if seeds is not None:
      batch["lora_seed"] = seeds[mine]
    t_ref = time.perf_counter()
    if ref_params is not None:
      batch["ref_logp"] = ref_logprob_fn(ref_params, trainer.shard_batch(batch))
      if not s.async_rollouts:
        jax.block_until_ready(batch["ref_logp"])
    if rl.num_iterations > 1:
      # pi_old = the policy before the first update, through the same numerics as the loss.
      batch["old_logp"] = logprob_fn(policy.params(state.params), trainer.shard_batch(batch))
    # The next rollout's params: copied before the update donates them.
    next_params = rollout_params(policy.params(state.params), copy=True) if rollouts.prefetches(step) else None
    t_update = time.perf_counter()
    ms = []
    for _ in range(rl.num_iterations):
      state, m = trainer.update(state, batch, denom, policy.frozen)  # dispatched: runs while we sample
      ms.append(m)
    prefetch_s = rollouts.prefetch(next_params, step + 1) if next_params is not None else 0.0
    t_wait = time.perf_counter()
    ms = jax.device_get(ms)
    # Mean over the mu updates (maxima: the max).
    m = {k: (np.max if k.endswith("_max") else np.mean)([x[k] for x in ms]) for k in ms[0]}
    t_end = time.perf_counter()
    metrics = ro_lib.step_metrics(gro, m, G, schedule(step * rl.num_iterations))
    metrics.update({"seconds/rollout": ro.seconds_rollout, "seconds/reward": ro.seconds_reward,
                    "seconds/wait_rollout": t_ro - t0, "seconds/reference": t_update - t_ref,
                    "seconds/update": t_end - t_update, "seconds/prefetch": prefetch_s,
                    "seconds/wait_update": t_end - t_wait, "step_s": t_end - t0,
                    "rollout_tokens_per_s": float(gro.out.lengths.sum()) / ro.seconds_rollout})
    if s.advantages.overlong_buffer:
      metrics["reward_shaped"] = float(shaped.mean())
    if tools_lib.enabled(config):
      metrics.update(tools_lib.step_metrics(sampler, ro.out,
                                            ro.rewards.per_function.get("accuracy")))
    if hasattr(rewards, "stats"):  # pool counters and the code sandbox's level
      metrics.update({f"rewards/{k}": v for k, v in rewards.stats().items()})
    return state, metrics, ro

  def evaluate_hook(state, step):
    key = jax.random.fold_in(jax.random.fold_in(base_key, 10 ** 9), step)
    return evaluate(eval_params(policy.params(state.params)), eval_sampler, tok, rewards, eval_examples,
                    config, key, sp, prefix)

  settings = loop.LoopSettings.from_config(
      config, progress_keys=("reward", "accuracy", "format_rate", "response_len_mean", "step_s"))
  logging.info("data: %s", json.dumps(data.summary())[:2000])
  rewards = make_rewards(config, s) if rewards is None else rewards
  try:
    _, result = loop.run(settings, trainer=trainer, state=state, data=data_iter,
                         step_fn=step_fn, evaluate=evaluate_hook if eval_examples else None,
                         samples=lambda ro: ro_lib.samples(ro, config.log.num_samples),
                         finish=lambda st, step, res: policy.export_adapters(
                             st.params, config.run_dir, config.model),
                         config=config, stage_state=rollouts)
  finally:
    rewards.close()
    if hasattr(sampler, "close"):
      sampler.close()
  return result
