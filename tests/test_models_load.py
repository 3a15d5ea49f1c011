"""`models.load`, the one model loader: tiny-random, HF directories, training run directories
(params from the orbax checkpoint, model source from the run's config.json), config-only
loads, and one-line errors for bad sources and dtypes."""

import json
import os

import jax
import numpy as np
import optax
import pytest

from r1jax import models
from r1jax import sharding as shd
from r1jax.train import trainer as trainer_lib

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
        "num_kv_heads": 1, "head_dim": 16}


@pytest.fixture(scope="module")
def tiny():
  try:
    return models.load("tiny-random", tiny=TINY, seed=3)
  except FileNotFoundError as e:  # the default model's tokenizer is not installed
    pytest.skip(str(e))


def test_tiny_random_is_seeded_and_sized(tiny):
  cfg, params, tok, info = tiny
  assert cfg.num_layers == 1 and cfg.hidden_size == 32 and cfg.vocab_size == tok.vocab_size
  again = models.load("tiny-random", tiny=TINY, seed=3).params
  other = models.load("tiny-random", tiny=TINY, seed=4).params
  want = models.init_params(cfg, jax.random.key(3))  # the independent reference
  for a, b, c in zip(jax.tree.leaves(params), jax.tree.leaves(again), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                      jax.tree.leaves(other)))
  assert info == {"source": "tiny-random", "checkpoint": None, "step": None,
                  "description": "tiny-random"}
  assert models.load("tiny-random", tiny=TINY, params=False).params is None


def test_hf_directory_round_trip(tmp_path, tiny):
  cfg, params, tok, _ = tiny
  models.save_pretrained(cfg, params, tmp_path / "hf")
  tok.save_pretrained(tmp_path / "hf")
  got = models.load(str(tmp_path / "hf"))
  assert got.config.num_layers == 1 and got.tokenizer.vocab_size == tok.vocab_size
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(got.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert models.load(str(tmp_path / "hf"), with_tokenizer=False).tokenizer is None


def _fake_run(run_dir, cfg, params, *, step, config_json=True):
  """A run directory as the training stages leave it: config.json + orbax checkpoint."""
  mesh = shd.make_mesh({"data": 1}, jax.devices()[:1])
  tr = trainer_lib.Trainer(mesh, models.param_logical_axes(cfg), None, optax.sgd(0.1))
  state = tr.init_state(params)
  ck = trainer_lib.Checkpointer(os.path.join(run_dir, "checkpoints"))
  ck.save(step, state, {"step": step, "seed": 0, "data_state": {}})
  ck.close()
  if config_json:
    with open(os.path.join(run_dir, "config.json"), "w") as f:
      json.dump({"model": "tiny-random", "tiny_model": TINY}, f)


def test_run_directory_loads_the_checkpoint(tmp_path, tiny):
  cfg, params, _, _ = tiny
  shifted = jax.tree.map(lambda x: np.asarray(x) + 1.0, params)
  _fake_run(str(tmp_path / "run"), cfg, shifted, step=7)
  got = models.load(str(tmp_path / "run"))
  assert got.info["source"] == "tiny-random" and got.info["step"] == 7
  assert got.info["checkpoint"] == str(tmp_path / "run")
  assert got.config == cfg.replace(dtype="float32")
  for a, b in zip(jax.tree.leaves(shifted), jax.tree.leaves(got.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Its checkpoints/ directory works too; config-only loads read the step without params.
  assert models.load(str(tmp_path / "run" / "checkpoints"), params=False).info["step"] == 7
  # Without config.json the model source must be given.
  _fake_run(str(tmp_path / "bare"), cfg, params, step=1, config_json=False)
  with pytest.raises(ValueError, match="without config.json"):
    models.load(str(tmp_path / "bare"))
  assert models.load(str(tmp_path / "bare"), base="tiny-random", tiny=TINY).info["step"] == 1


def test_bad_sources_and_dtypes_fail_with_one_line(tmp_path):
  with pytest.raises(ValueError, match="dtype='fp8' is not supported"):
    models.load("tiny-random", dtype="fp8")
  with pytest.raises(ValueError, match="param_dtype='int8'"):
    models.load("tiny-random", param_dtype="int8")
  with pytest.raises(FileNotFoundError, match="no such file or directory"):
    models.load(str(tmp_path / "nowhere"))
  fake = tmp_path / "fake.gguf"
  fake.write_bytes(b"GGUF" + b"\0" * 60)
  with pytest.raises(ValueError):
    models.load(str(fake))
  with pytest.raises(ValueError, match="model source is empty"):
    models.load("")
