"""r1jax: the DeepSeek-R1 post-training recipe (GRPO, SFT, rejection sampling, reward models,
distillation) in JAX.

The Python API (r1jax.api), imported lazily so that `import r1jax` stays cheap:

  import r1jax
  model = r1jax.load("smollm2-135m-instruct")            # config, params, tokenizer, info
  texts = r1jax.generate(model, ["What is 12 * 13?"], num_samples=2)
  rewards = r1jax.score(texts[0], [{"question": "What is 12 * 13?", "answer": "156"}] * 2)
  result = r1jax.run(r1jax.config("grpo:tiny"), reward_fns={"brevity": brevity})  # train

The command line runs the same stages: `python -m r1jax.main --config=configs/grpo.py`.
"""

__version__ = "0.1.0"
__all__ = ["load", "generate", "score", "config", "register_reward", "run"]


def __getattr__(name):
  if name in __all__:
    from r1jax import api
    return getattr(api, name)
  raise AttributeError(f"module 'r1jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
