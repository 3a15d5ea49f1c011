"""End-to-end command line: generation from the default model, and the tiny GRPO job."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _run(args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one device, as a user's CPU run
  return subprocess.run([sys.executable, "-m", "r1jax.main", *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=timeout, env=env)


def test_generate_prints_a_chat_completion(default_gguf_path):
  r = _run(["--config=configs/generate.py", "--config.prompt=What is the capital of France?",
            "--config.sampling.temperature=0", "--config.sampling.max_new_tokens=24"])
  assert r.returncode == 0, r.stderr[-2000:]
  assert "Paris" in r.stdout
  assert "tok/s" in r.stderr


def test_tiny_grpo_job_writes_metrics_and_checkpoint(tmp_path):
  run_dir = tmp_path / "run"
  r = _run(["--config=configs/tiny.py", f"--config.run_dir={run_dir}", "--config.steps=2",
            "--config.rl.num_generations=4", "--config.rl.batch_size=8",
            "--config.rl.micro_batch_size=4"])
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(l) for l in open(run_dir / "metrics.jsonl")]
  assert [r["step"] for r in rows if "loss" in r] == [1, 2]
  assert any(k.startswith("eval/") for r in rows for k in r)
  assert "2" in os.listdir(run_dir / "checkpoints")  # the final step is always saved
  assert (run_dir / "samples.jsonl").exists() and list((run_dir / "tensorboard").iterdir())
