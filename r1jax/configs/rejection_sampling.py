"""R1 stage 3, rejection sampling (DeepSeek-R1, section 2.3.3; docs/method.md "Stages"): many
samples per prompt from the reasoning-RL checkpoint, keep the verified and readable ones, mix with non-reasoning SFT data,
write an SFT set (stage `rejection_sampling`).

python -m r1jax.main --config=configs/rejection_sampling.py --config.model=runs/reasoning_rl
python -m r1jax.main --config=configs/rejection_sampling.py --config.model=/ckpt/r1-stage2-hf \\
    --config.prompts=/data/math_prompts.jsonl --config.num_samples=16 \\
    --config.mix.non_reasoning_jsonl=/data/general_sft.jsonl --config.mix.fraction=0.25
python -m r1jax.main --config=configs/rejection_sampling.py --config.resume=True   # continue

Output (run_dir): reasoning.jsonl (kept samples with provenance), prompts.jsonl (one line
per finished prompt: per-filter counts; the resume ledger), train.jsonl (reasoning + mixed-in
non-reasoning records, shuffled; what configs/sft.py reads as data.train_jsonl),
summary.json / summary.md (acceptance rates per task and per filter).

Variants: "" (the default), "tiny" (tiny-random model, seconds: a random model is never
correct, so the accuracy verifier keeps nothing; tests pass a toy judge (judge.fn,
judge.tasks="*") to exercise the rest of the stage).
"""
from ml_collections import ConfigDict

from r1jax.configs import common


def get_config(variant: str = "") -> ConfigDict:
  c = common.base("rejection_sampling", run_dir="runs/rejection_sampling")
  del c.steps
  common.add_model(c, remat=None)
  # With a training run directory as `model`: its checkpoint step (-1 = the latest).
  c.checkpoint_step = -1
  common.add_parallel(c)
  # Comma-separated prompt sets: train (the train split of `data`), heldout (its held-out
  # split), champ (CHAMP problems with checkable answers), or .jsonl paths of
  # {"prompt", "answer", "task"?, "id"?} records.
  c.prompts = "train"
  # At most this many prompts per prompt set (0 = all).
  c.max_prompts = 200
  c.data = common.heldout_data()
  # Prompt template for every prompt set; the response prefix it writes ("<think>") is part
  # of the kept response.
  c.template = "r1_zero_1shot"
  # K: samples per prompt (one prefill per prompt).
  c.num_samples = 8
  c.sampling = common.sampling(temperature=0.7)
  # Prompts per sampler call.
  c.batch_size = 8
  # Rule verifier: a reward spec (r1jax.rewards.registry) and the score a sample needs.
  c.verifier = ConfigDict()
  c.verifier.spec = "accuracy:1.0"
  c.verifier.threshold = 1.0
  c.verifier.workers = 2
  c.verifier.timeout_s = 10.0
  # Generative judge for prompts no rule can check: "module:function" (or "module.function")
  # naming judge(prompt: str, reference: str, response: str) -> float, called in this
  # process; "" = none. It judges prompts whose task is in `tasks` ("*" = every prompt) and
  # prompts with an empty reference answer (not code).
  c.judge = ConfigDict()
  c.judge.fn = ""
  c.judge.tasks = ""
  c.judge.threshold = 0.5
  # Readability filters (r1jax/curation/filters.py).
  c.filters = ConfigDict()
  c.filters.enabled = "language,paragraph,code,summary"
  c.filters.language = "en"  # an example's own "language" field wins
  c.filters.min_language_ratio = 0.95
  c.filters.max_paragraph_chars = 2000
  c.filters.max_loose_code_lines = 2
  c.filters.reasoning_end = "</think>"
  # Keep verified samples that hit max_new_tokens (they never learnt to stop: dropped by default).
  c.keep_truncated = False
  # Remove duplicate samples of a prompt (normalised text).
  c.dedup = True
  # M: at most this many kept samples per prompt (0 = all), highest score first.
  c.max_per_prompt = 4
  # Non-reasoning SFT data (JSONL in a format r1jax.data.sft_data reads) mixed in so that it
  # makes up `fraction` of train.jsonl (R1: ~200k of ~800k = 0.25).
  c.mix = ConfigDict()
  c.mix.non_reasoning_jsonl = ""
  c.mix.fraction = 0.25
  return common.select_variant(c, variant, {"tiny": tiny}, "configs/rejection_sampling.py")


def tiny(c: ConfigDict) -> None:
  """A tiny random model, for tests and smoke runs (seconds)."""
  c.model = "tiny-random"
  c.run_dir = "runs/tiny_rejection_sampling"
  c.prompts = "train"
  c.max_prompts = 6
  c.data.train_size = 6
  c.data.eval_size = 2
  c.num_samples = 4
  c.batch_size = 3
  c.sampling.max_new_tokens = 8
  c.sampling.temperature = 1.0
  c.verifier.workers = 0
  c.max_per_prompt = 2
  # 8 new tokens never reach a stop: keep truncated samples so that the stage has output.
  c.keep_truncated = True
