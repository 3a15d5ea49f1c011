"""End-to-end command line: generation from the default model, the tiny GRPO job with the
packaged configs outside a checkout and a user reward module, and one-line user errors."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _run(args, timeout=300, cwd=ROOT, **env_extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **env_extra)
  env.pop("XLA_FLAGS", None)  # one device, as a user's CPU run
  env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(ROOT)] +
                                      [p for p in [os.environ.get("PYTHONPATH")] if p])
  return subprocess.run([sys.executable, "-m", "r1jax.main", *args], capture_output=True,
                        text=True, cwd=cwd, timeout=timeout, env=env)


def test_generate_prints_a_chat_completion(default_gguf_path):
  r = _run(["--config=configs/generate.py", "--config.prompt=What is the capital of France?",
            "--config.sampling.temperature=0", "--config.sampling.max_new_tokens=24"])
  assert r.returncode == 0, r.stderr[-2000:]
  assert "Paris" in r.stdout
  assert "tok/s" in r.stderr


def test_tiny_grpo_job_outside_a_checkout_with_a_user_reward(tmp_path):
  """The tiny GRPO job from another directory (as after pip install: configs/grpo.py:tiny is
  the packaged config), with --config.rewards.modules importing a user module whose
  registered reward the spec names: metrics of both steps, held-out evaluation, the final
  checkpoint, samples and TensorBoard events."""
  (tmp_path / "my_rewards.py").write_text(
      "from r1jax.rewards import register\n"
      "@register('shortness')\n"
      "def shortness(completion, example):\n"
      "  return 1.0 / (1.0 + len(completion))\n")
  run_dir = tmp_path / "run"
  r = _run(["--config=configs/grpo.py:tiny", f"--config.run_dir={run_dir}", "--config.steps=2",
            "--config.rl.num_generations=4", "--config.rl.prompts_per_step=2",
            "--config.rl.micro_batch_prompts=1", "--config.rewards.modules=my_rewards",
            "--config.rewards.spec=shortness:1.0,format:0.5"], cwd=tmp_path,
           PYTHONPATH=str(tmp_path))
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(l) for l in open(run_dir / "metrics.jsonl")]
  assert [r["step"] for r in rows if "loss" in r] == [1, 2]
  assert all(0 < r["reward/shortness"] < 1 for r in rows if "loss" in r)
  assert any(k.startswith("eval/") for r in rows for k in r)
  assert "2" in os.listdir(run_dir / "checkpoints")  # the final step is always saved
  assert (run_dir / "samples.jsonl").exists() and list((run_dir / "tensorboard").iterdir())


BAD_INPUTS = [
    # (arguments, what the one line must name)
    (["--config=configs/nope.py"], "config file configs/nope.py does not exist"),
    (["--config=configs/grpo.py:tinyy"], "no variant 'tinyy'"),
    (["--config=configs/grpo.py:tiny", "--config.rl.num_generation=8"],
     "unknown config key rl.num_generation (did you mean rl.num_generations?)"),
    (["--config=configs/generate.py", "--config.model=/no/such/model"],
     "'/no/such/model': no such file or directory"),
    (["--config=configs/generate.py", "--config.dtype=fp8"], "dtype='fp8' is not supported"),
    (["--config=configs/sft.py:tiny", "--config.data.train_jsonl={bad_jsonl}"],
     "bad.jsonl: line 2"),
    (["--config=configs/sft.py:tiny", "--config.data.train_jsonl={empty_jsonl}"],
     "no SFT train examples"),
    (["--config=configs/sft.py:tiny", "--config.run_dir=/proc/r1jax_run"], "run_dir /proc/r1jax_run"),
    (["--config=configs/grpo.py:tiny", "--config.resume=True"], "has no checkpoint"),
    (["--config=configs/generate.py", "--config.model={fake_gguf}"], "fake.gguf"),
]


def test_user_errors_print_one_line(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": 3\n')
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  fake = tmp_path / "fake.gguf"
  fake.write_bytes(b"GGUF" + b"\0" * 40)
  subs = {"bad_jsonl": bad, "empty_jsonl": empty, "fake_gguf": fake}
  cases = []
  for i, (args, want) in enumerate(BAD_INPUTS):
    args = [a.format(**subs) for a in args] + [f"--config.run_dir={tmp_path / f'run{i}'}"] * (
        not any(a.startswith("--config.run_dir") for a in args)
        and "generate" not in args[0] and "nope" not in args[0] and "tinyy" not in args[0])
    cases.append((args, want))
  # The processes mostly import JAX: run a few at once.
  from concurrent.futures import ThreadPoolExecutor
  with ThreadPoolExecutor(4) as pool:
    results = list(pool.map(lambda c: _run(c[0], timeout=300), cases))
  transcript = []
  for (args, want), r in zip(cases, results):
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    transcript.append(f"$ r1jax {' '.join(args)}\n{lines[-1] if lines else ''}")
    assert r.returncode != 0, args
    errors = [l for l in lines if l.startswith("r1jax: error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, (args, r.stderr[-3000:])
    assert want in errors[0], (want, errors[0])
  print("\n".join(transcript))
  # The traceback comes back on request.
  r = _run(["--config=configs/generate.py", "--config.dtype=fp8"], R1JAX_TRACEBACK="1")
  assert "Traceback" in r.stderr and r.returncode != 0
