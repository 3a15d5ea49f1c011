"""r1jax on the real default model vs transformers' reference (tools/reference_logits.py)."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import models, sampling

REF = pathlib.Path(__file__).parent / "data" / "smollm2_logits_ref.npz"


@pytest.fixture(scope="module")
def model(default_gguf_path):
  return models.from_pretrained(str(default_gguf_path))


def test_logits_and_greedy_match_transformers(model):
  cfg, params = model
  ref = np.load(REF)
  stride = int(ref["stride"])
  fwd = jax.jit(lambda p, x: models.logits(p, cfg, models.forward(p, cfg, x)))
  sampler = sampling.Sampler(cfg, pad_id=2)
  n_prompts = len(ref["prompts"])
  assert n_prompts == 3
  for i in range(n_prompts):
    ids = ref[f"ids_{i}"]
    got = np.asarray(fwd(params, jnp.asarray(ids)[None])[0])[:, ::stride]
    want = ref[f"logits_{i}"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=5e-4, rtol=0)
    greedy = ref[f"greedy_{i}"]
    out = sampler(params, [ids.tolist()], jax.random.key(0),
                  sampling=sampling.SamplingParams(temperature=0, max_new_tokens=len(greedy)))
    assert out.tokens[0, 0].tolist() == greedy.tolist()


def test_tokenizer_ids_of_the_reference_prompts():
  from r1jax.tokenizer import Tokenizer
  ref = np.load(REF)
  tok = Tokenizer.from_source("smollm2-135m-instruct")
  for i, text in enumerate(ref["prompts"]):
    assert tok.encode(str(text)) == ref[f"ids_{i}"].tolist()
