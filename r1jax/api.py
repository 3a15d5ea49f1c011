"""The Python API of r1jax: load a model, sample, score with rewards, train.

  import r1jax
  model = r1jax.load("smollm2-135m-instruct")             # or a .gguf, HF dir, run dir
  texts = r1jax.generate(model, ["What is 12 * 13?"], num_samples=2, max_new_tokens=64)
  result = r1jax.score([t for ts in texts for t in ts],
                       [{"question": "What is 12 * 13?", "answer": "156"}] * 2)
  config = r1jax.config("grpo:tiny")                      # any configs/ file, with variant
  metrics = r1jax.run(config, reward_fns={"brevity": brevity})

Everything here is a thin layer over the modules the command line uses (r1jax.models.load,
r1jax.sampling.Sampler, r1jax.rewards.RewardComputer, r1jax.configs.load, r1jax.stages.run),
so a script and `python -m r1jax.main` give the same results for the same config.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import jax

from r1jax import models, sampling


def load(source: str = "smollm2-135m-instruct", **kwargs) -> models.Loaded:
  """A model: `Loaded(config, params, tokenizer, info)` (see r1jax.models.load for the
  sources and keyword arguments: dtype, param_dtype, tokenizer, tiny, seed, step).

  Raises:
    FileNotFoundError / ValueError: see r1jax.models.load.
  """
  return models.load(source, **kwargs)


def generate(model: models.Loaded, prompts: Sequence[str], *, num_samples: int = 1,
             max_new_tokens: int = 128, temperature: float = 0.7, top_p: float = 0.95,
             top_k: int = 0, chat: bool = True, system: str = "", seed: int = 0,
             stop_strings: Sequence[str] = ()) -> list[list[str]]:
  """Sample `num_samples` completions of each prompt (one prefill per prompt).

  Args:
    model: from `load`.
    prompts: user messages (chat=True: wrapped in the model's chat template) or raw text.
    num_samples, max_new_tokens, temperature (0 = greedy), top_p, top_k: sampling settings.
    system: system message for chat prompts ("" = none).
    seed: PRNG seed (same seed, same completions).
    stop_strings: extra strings that end a completion (EOS-like tokens always do).

  Returns:
    [len(prompts)][num_samples] decoded completions (special tokens removed).
  """
  tok = model.tokenizer
  if chat:
    head = [{"role": "system", "content": system}] if system else []
    ids = [tok.apply_chat_template(head + [{"role": "user", "content": p}], tokenize=True)
           for p in prompts]
  else:
    ids = [tok.encode(p) for p in prompts]
  sp = sampling.SamplingParams(
      temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
      stop_ids=tok.stop_ids, stop_sequences=sampling.stop_sequences_for(tok, list(stop_strings)))
  out = sampling.Sampler(model.config, pad_id=tok.pad_id)(
      model.params, ids, jax.random.key(seed), num_samples=num_samples, sampling=sp)
  return [[tok.decode(out.tokens[b, g, :out.lengths[b, g]], skip_special_tokens=True)
           for g in range(num_samples)] for b in range(len(prompts))]


def score(completions: Sequence[str], examples: Sequence[Mapping], *,
          spec: str = "accuracy:1.0,format:0.5", fn_kwargs: Optional[dict] = None):
  """Rewards of `completions` against their `examples` ({"question", "answer", "task"?},
  one per completion), in this process.

  Args:
    spec: weighted reward functions, "name:weight,..." (r1jax.rewards.parse_reward_spec;
      registered user functions too).
    fn_kwargs: {function name: keyword arguments}.

  Returns:
    r1jax.rewards.RewardResult: total [N] (the weighted sum), per_function {name: [N]}.

  Raises:
    ValueError: an unknown reward function or mismatched lengths.
  """
  from r1jax.rewards import RewardComputer
  if len(completions) != len(examples):
    raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
  computer = RewardComputer(spec, num_workers=0, timeout_s=None, fn_kwargs=fn_kwargs)
  try:
    return computer(list(completions), [dict(e) for e in examples])
  finally:
    computer.close()


def config(spec: str):
  """The ConfigDict of a stage config: "grpo", "grpo:tiny", "configs/sft.py:tiny" or any
  config file path (r1jax.configs.load); edit it, then `run(config)`.

  Raises:
    FileNotFoundError / ValueError: no such config or variant.
  """
  from r1jax import configs
  return configs.load(spec)


def register_reward(name: str, fn: Callable) -> Callable:
  """Make `fn(completion: str, example: dict, **kwargs) -> float` nameable in reward specs
  (r1jax.rewards.register). With reward worker processes (rewards.num_workers > 0) it must
  be a top-level function of an importable module; in a script, set num_workers = 0.

  Raises:
    ValueError: another function is registered under `name`.
  """
  from r1jax.rewards import register
  return register(name)(fn)


def run(cfg, *, reward_fns: Optional[Mapping[str, Callable]] = None):
  """Run the stage of `cfg` (a ConfigDict from `config`, or a config spec string) in this
  process, as `python -m r1jax.main` would: train (grpo, sft, reward_model), evaluate,
  sample... Returns the stage's result (for training stages the last step's metrics, the
  final evaluation and the outputs).

  (Named `run`, not `train`: `r1jax.train` is the package of the training loop.)

  Args:
    cfg: ConfigDict or spec ("grpo:tiny").
    reward_fns: {name: function} registered first (see `register_reward`), so that
      cfg.rewards.spec can name them.

  Raises:
    ValueError / FileNotFoundError: bad config values, data or model sources.
  """
  from r1jax import sharding, stages
  if isinstance(cfg, str):
    cfg = config(cfg)
  for name, fn in (reward_fns or {}).items():
    register_reward(name, fn)
  sharding.initialize_distributed(cfg.get("distributed"))
  return stages.run(cfg)

