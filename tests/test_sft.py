"""SFT: loss vs a naive log-softmax reference, packing vs separate rows (loss, gradients,
attention), exact micro-batch accumulation, JSONL parsing and errors, tokenisation masks,
the resumable batch iterator, and the tiny end-to-end stage (loss falls, resume is exact,
the HF export reloads)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import models
from r1jax.data import sft_data
from r1jax.data.sft_data import SFTExample, build_batch, pack_rows
from r1jax.losses import sft as sft_lib
from r1jax import configs
from r1jax.configs.common import set_path
from r1jax.models.config import tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))
CFG = tiny_config(vocab_size=97, max_position_embeddings=64)


@pytest.fixture(scope="module")
def params():
  return models.init_params(CFG, jax.random.key(0))


def _examples(seed=0, lengths=(9, 5, 14)):
  """Random examples whose first ~third is a masked prompt."""
  rng = np.random.RandomState(seed)
  out = []
  for i, n in enumerate(lengths):
    ids = rng.randint(3, CFG.vocab_size, size=n).astype(np.int32)
    mask = np.arange(n) >= max(1, n // 3)
    out.append(SFTExample(f"e{i}", ids, mask))
  return out


@jax.jit
def _forward(params, ids):
  return models.forward(params, CFG, ids[None])[0]


@jax.jit
def _naive_logp(params, ids):
  """Full [T, V] logits of one sequence alone, log_softmax, log-prob of each next token."""
  logp = jax.nn.log_softmax(models.logits(params, CFG, _forward(params, ids))[:-1], axis=-1)
  return logp[jnp.arange(ids.shape[0] - 1), ids[1:]]


def _naive_loss(params, examples):
  """Each example alone through the decoder; masked token mean over all examples."""
  total, count = 0.0, 0.0
  for ex in examples:
    w = ex.loss_mask[1:].astype(np.float32)
    total = total - float(jnp.sum(_naive_logp(params, jnp.asarray(ex.ids)) * w))
    count += w.sum()
  return total / count


def _loss(params, batch, denominator):
  return sft_lib.make_loss_fn(CFG, kernel=dict(chunk_size=8))(params, batch, denominator)[0]


_loss_and_grad = jax.jit(jax.value_and_grad(_loss))


def test_loss_matches_naive_log_softmax_reference(params):
  exs = _examples()
  unpacked = build_batch(exs, pack_rows([len(e.ids) - 1 for e in exs], 24, packing=False), 24,
                         num_rows=4)
  denom = sft_lib.loss_denominator(unpacked)
  assert denom == sum(e.loss_mask[1:].sum() for e in exs)
  np.testing.assert_allclose(_loss_and_grad(params, unpacked, denom)[0],
                             _naive_loss(params, exs), rtol=1e-5)


def test_packed_equals_unpacked_loss_and_gradients(params):
  exs = _examples(1, lengths=(9, 5, 14, 7, 3, 11))
  lengths = [len(e.ids) - 1 for e in exs]
  # Shapes [4, 24] and [8, 24] throughout this file: fewer compilations.
  packed = build_batch(exs, pack_rows(lengths, 24), 24, num_rows=4)
  unpacked = build_batch(exs, pack_rows(lengths, 24, packing=False), 24, num_rows=8)
  assert len(pack_rows(lengths, 24)) < len(exs)  # it did pack
  assert packed["segment_ids"].max() >= 2
  denom = sft_lib.loss_denominator(unpacked)
  assert sft_lib.loss_denominator(packed) == denom
  lp, gp = _loss_and_grad(params, packed, denom)
  lu, gu = _loss_and_grad(params, unpacked, denom)
  np.testing.assert_allclose(lp, lu, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gu)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_segment_aware_attention_equals_separate_sequences(params):
  exs = _examples(2, lengths=(9, 5, 14))
  row = np.zeros((1, 32), np.int32)  # 28 tokens + 4 padding
  pos, seg = np.zeros_like(row), np.zeros_like(row)
  at = 0
  for s, e in enumerate(exs, 1):
    n = len(e.ids)
    row[0, at:at + n], pos[0, at:at + n], seg[0, at:at + n] = e.ids, np.arange(n), s
    at += n
  h = models.forward(params, CFG, jnp.asarray(row), jnp.asarray(pos), jnp.asarray(seg))[0]
  at = 0
  for e in exs:
    ref = _forward(params, jnp.asarray(e.ids))
    np.testing.assert_allclose(h[at:at + len(e.ids)], ref, atol=1e-5)
    at += len(e.ids)
  assert np.isfinite(np.asarray(h[at:])).all()  # padding rows stay finite


def test_micro_batches_with_global_denominator_add_up_exactly(params):
  exs = _examples(3, lengths=(12, 4, 9, 6, 15, 5, 8, 10, 14, 7))
  batch = build_batch(exs, pack_rows([len(e.ids) - 1 for e in exs], 24), 24, num_rows=8)
  denom = sft_lib.loss_denominator(batch)
  whole, g_whole = _loss_and_grad(params, batch, denom)
  parts = [{k: v[i::2] for k, v in batch.items()} for i in range(2)]  # Trainer's split
  vals, grads = zip(*[_loss_and_grad(params, p, denom) for p in parts])
  np.testing.assert_allclose(sum(vals), whole, rtol=1e-5)
  for a, b, c in zip(*map(jax.tree.leaves, (grads[0], grads[1], g_whole))):
    np.testing.assert_allclose(a + b, c, rtol=1e-4, atol=1e-6)


def test_sft_loss_ignores_masked_minus_inf():
  logp = jnp.array([[-1.0, -jnp.inf, -2.0]])
  loss, m = sft_lib.sft_loss(logp, jnp.array([[1.0, 0.0, 1.0]]), 2.0)
  assert float(loss) == 1.5 and float(m["nll"]) == 1.5


# ---------------------------------------------------------------------- data
def _write(tmp_path, lines, name="d.jsonl"):
  p = tmp_path / name
  p.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
  return str(p)


GOOD = {"prompt": "Q?", "response": "A."}


@pytest.mark.parametrize("bad,match", [
    ("{not json", r"line 2: invalid JSON"),
    ({"prompt": "Q?"}, r'line 2: missing "response"'),
    ({"response": "A."}, r'line 2: missing "messages" or "prompt"'),
    ({"prompt": "Q?", "response": 3}, r'line 2: "response" must be a string'),
    ({"prompt": "Q?", "response": "  "}, r'line 2: empty "response"'),
    ({"messages": [{"role": "user", "content": "hi"}]}, r"line 2: no non-empty assistant"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, r"line 2: messages\[0\] has role 'bot'"),
    ({"messages": "hi"}, r'line 2: "messages" must be a non-empty list'),
    ([1, 2], r"line 2: expected a JSON object"),
    ({"prompt": "Q?", "reasoning": "r"}, r'line 2: missing "response" \(or "reasoning" and'),
])
def test_malformed_jsonl_names_the_line(tmp_path, bad, match):
  path = _write(tmp_path, [GOOD, bad, GOOD])
  with pytest.raises(ValueError, match=match):
    sft_data.read_sft_jsonl(path)
  recs, skipped = sft_data.read_sft_jsonl(path, on_error="skip")
  assert len(recs) == 2 and skipped == [2]


def test_jsonl_record_kinds(tmp_path):
  path = _write(tmp_path, [
      {"id": 7, "prompt": "P", "response": "R", "language": "zh"}, "",
      {"prompt": "P", "reasoning": " think ", "summary": "sum", "system": "S"},
      {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}])
  recs, _ = sft_data.read_sft_jsonl(path)
  assert recs[0]["id"] == "7" and recs[0]["metadata"] == {"language": "zh"}
  assert recs[1]["messages"] == [{"role": "system", "content": "S"},
                                 {"role": "user", "content": "P"},
                                 {"role": "assistant", "content": "<think>\nthink\n</think>\nsum"}]
  assert recs[2]["id"] == "d.jsonl:4"
  with pytest.raises(FileNotFoundError):
    sft_data.read_sft_jsonl(str(tmp_path / "missing.jsonl"))


@pytest.fixture(scope="module")
def tok():
  from r1jax.tokenizer import Tokenizer
  try:
    return Tokenizer.from_source("smollm2-135m-instruct")
  except FileNotFoundError as e:
    pytest.skip(str(e))


def test_chat_tokenization_trains_assistant_turns_only(tok):
  msgs = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
          {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"},
          {"role": "user", "content": "ignored trailing turn"}]
  ids, mask = sft_data.tokenize_messages(msgs, tok, "chat")
  full = tok.apply_chat_template(msgs[:4], add_generation_prompt=False)
  assert tok.decode(ids, skip_special_tokens=False) == full
  trained = tok.decode(ids[mask], skip_special_tokens=False)
  assert trained == "4<|im_end|>\n6<|im_end|>\n"
  # The untrained prefix of the first answer is exactly the generation prompt.
  first = int(np.argmax(mask))
  assert tok.decode(ids[:first], skip_special_tokens=False) == tok.apply_chat_template(msgs[:1])


def test_raw_tokenization_and_length_handling(tok):
  msgs = [{"role": "user", "content": "Q: 1+1="}, {"role": "assistant", "content": " 2"}]
  ids, mask = sft_data.tokenize_messages(msgs, tok, "raw")
  want = tok.encode("Q: 1+1=") + tok.encode(" 2", add_bos=False) + [tok.eos_id]
  assert ids.tolist() == want
  n_prompt = len(tok.encode("Q: 1+1="))
  assert mask.tolist() == [False] * n_prompt + [True] * (len(want) - n_prompt)
  n = len(ids)
  assert sft_data.fit_length(ids, mask, n - 1, "skip")[0].tolist() == want
  assert sft_data.fit_length(ids, mask, n - 2, "skip") is None
  cut = sft_data.fit_length(ids, mask, n - 2, "truncate")
  assert cut[0].tolist() == want[:-1]
  assert sft_data.fit_length(ids, mask, 2, "truncate") is None  # no trained token left


def test_sft_data_counts_overlong_and_holds_out_eval(tmp_path, tok):
  recs = [{"prompt": f"Question {i}?", "response": "word " * (2 if i % 4 else 60)}
          for i in range(12)]
  path = _write(tmp_path, recs)
  base = dict(train_jsonl=path, eval_size=2, seq_len=64)
  d = sft_data.SFTData(dict(base, overlong="skip"), tok)
  s = d.summary()
  assert s["train_records"] == 10 and s["eval_records"] == 2
  assert s["overlong_skipped"] + s["train"] + s["eval"] == 12 and s["overlong_skipped"] >= 2
  d2 = sft_data.SFTData(dict(base, overlong="truncate"), tok)
  assert d2.summary()["truncated"] == s["overlong_skipped"] and d2.summary()["train"] + \
      d2.summary()["eval"] == 12
  with pytest.raises(ValueError, match="overlong"):
    sft_data.SFTData(dict(base, overlong="drop"), tok)
  with pytest.raises(ValueError, match="unknown SFT data config"):
    sft_data.SFTData(dict(base, packed=True), tok)


def test_batch_iterator_state_is_exact_across_epochs():
  exs = _examples(4, lengths=(9, 5, 14, 7, 3, 11, 6, 8))
  mk = lambda: sft_data.SFTBatchIterator(exs, 20, 2, packing=True, shuffle=True, seed=3,
                                         pad_id=0, fingerprint="f")
  it = mk()
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  rest = [next(it) for _ in range(6)]  # crosses epoch boundaries
  assert it.epoch >= 1
  it2 = mk()
  it2.set_state(json.loads(json.dumps(state)))
  for a, b in zip(rest, [next(it2) for _ in range(6)]):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # Each epoch sees every example exactly once.
  ep = mk()
  n = ep.batches_per_epoch()
  segs = sum(int(b["segment_ids"].max(axis=1).sum()) for b in (next(ep) for _ in range(n)))
  assert segs == len(exs)
  with pytest.raises(ValueError, match="other data"):
    it2.set_state(dict(state, fingerprint="g"))
  del first


# ---------------------------------------------------------------------- the stage
def _tiny_config(run_dir, **overrides):
  c = configs.load("sft:tiny")
  c.run_dir = str(run_dir)
  for k, v in overrides.items():
    set_path(c, k, v)
  return c


def _train_records(run_dir):
  ms = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
  return [m for m in ms if "loss" in m], [m for m in ms if "eval/loss" in m]


def test_stage_learns_resumes_exactly_and_exports(tmp_path):
  from r1jax.stages import sft as stage
  from r1jax.models import load_run_params
  a = _tiny_config(tmp_path / "a")
  out = stage.run(a)
  train, evals = _train_records(a.run_dir)
  assert [m["step"] for m in train] == list(range(1, a.steps + 1))
  losses = [m["loss"] for m in train]
  assert losses[-1] < 0.7 * losses[0], losses  # memorising the toy set
  assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
  assert out["eval/loss"] == evals[-1]["eval/loss"]
  # Interrupted after 3 steps, then resumed: the same steps 4..6.
  b = _tiny_config(tmp_path / "b", steps=3)
  stage.run(b)
  b.steps, b.resume = a.steps, True
  stage.run(b)
  train_b, _ = _train_records(b.run_dir)
  assert [m["step"] for m in train_b] == list(range(1, a.steps + 1))
  for ma, mb in zip(train[3:], train_b[3:]):
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
  # The HF export is the final checkpoint, with the tokenizer, loadable as the next `model`.
  cfg, hf_params = models.from_pretrained(os.path.join(a.run_dir, "hf"))
  ck_params, step = load_run_params(a.run_dir, cfg)
  assert step == a.steps
  for x, y in zip(jax.tree.leaves(hf_params), jax.tree.leaves(ck_params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert os.path.isfile(os.path.join(a.run_dir, "hf", "tokenizer.json"))
  with pytest.raises(ValueError, match="resume"):
    stage.run(_tiny_config(tmp_path / "a"))


def test_stage_config_errors(tmp_path):
  from r1jax.stages import sft as stage
  with pytest.raises(ValueError, match="micro_batch_size"):
    stage.validate_config(_tiny_config(tmp_path, **{"train.micro_batch_size": 3}))
  with pytest.raises(ValueError, match="num_epochs"):
    stage.validate_config(_tiny_config(tmp_path, steps=0, num_epochs=0.0))
  with pytest.raises(ValueError, match="export.dtype"):
    stage.validate_config(_tiny_config(tmp_path, **{"export.dtype": "int8"}))


def test_configs_load():
  for name in ("sft", "cold_start_sft", "reasoning_rl"):
    c = configs.load(name)
    if c.stage == "sft":
      from r1jax.stages import sft as stage
      stage.validate_config(c)
    else:
      from r1jax.stages import grpo
      grpo.validate_config(c)
      assert "language" in c.rewards.spec and c.model.endswith("/hf")
  recs, _ = sft_data.read_sft_jsonl(os.path.join(HERE, "data", "sft_cold_start.jsonl"))
  assert all(m["content"].startswith("<think>\n") for r in recs for m in r["messages"]
             if m["role"] == "assistant")
