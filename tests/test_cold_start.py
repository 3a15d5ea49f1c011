"""Cold-start data (R1 stage 1): format, splitting, the builder on hand-made samples and CHAMP,
the tool, and adding marker tokens to a tiny model."""
import json
import os
import sys

import numpy as np
import pytest

from r1jax.curation import cold_start
from r1jax.curation.filters import FilterConfig
from r1jax.data.sft_data import R1_RESPONSE_FORMAT, format_r1_response, read_sft_jsonl

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_format_and_split():
  fmt = cold_start.ColdStartFormat()
  # The default markers give exactly the SFT stage's R1 format.
  assert fmt.template == R1_RESPONSE_FORMAT
  assert cold_start.format_response(" r ", " s ") == format_r1_response("r", "s")
  custom = cold_start.ColdStartFormat("<|reasoning|>", "<|summary|>")
  assert cold_start.format_response("r", "s", custom) == "<|reasoning|>\nr\n<|summary|>\ns"
  with pytest.raises(ValueError):
    cold_start.format_response("r", "  ")
  with pytest.raises(ValueError, match="marker"):
    cold_start.format_response("r </think> x", "s")
  with pytest.raises(ValueError):
    cold_start.ColdStartFormat("<x>", "<x>")
  split = cold_start.split_completion
  assert split("<think> a b </think> <answer> 5 </answer>") == ("a b", "<answer> 5 </answer>")
  assert split(" a b </think> The answer is 5.") == ("a b", "The answer is 5.")  # prompt opened it
  assert split("<think> no end <answer> 5 </answer>") is None
  assert split("<think> a </think>  ") is None  # no summary
  assert split("<think> a </think> x </think> y") is None


def _write(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False))
      f.write("\n")
  return str(path)


def _samples(tmp_path):
  good = "<think> 2 plus 3 is 5. </think> <answer> 5 </answer>"
  return _write(tmp_path / "samples.jsonl", [
      # GRPO samples.jsonl lines: verified by recomputing accuracy against "answer".
      {"step": 3, "split": "train", "question": "What is 2+3?", "answer": "5",
       "completion": good, "reward": 1.5},
      {"step": 3, "split": "train", "question": "What is 2+3?", "answer": "5",
       "completion": good.replace(" plus", "  Plus"), "reward": 1.5},  # duplicate
      {"step": 3, "split": "train", "question": "What is 2+3?", "answer": "5",
       "completion": "<think> 2 plus 3 is 6. </think> <answer> 6 </answer>", "reward": 0.5},
      "{not json",
      {"step": 3, "split": "train", "answer": "5", "completion": good},  # no question
      # Eval samples carry "accuracy".
      {"step": 4, "split": "eval", "question": "What is 4+4?", "answer": "8", "accuracy": 1.0,
       "completion": "<think> 4 加 4 等于 8，所以答案是八，检查一下。 </think> <answer> 8 </answer>"},
      {"step": 4, "split": "eval", "question": "What is 9-4?", "answer": "5", "accuracy": 1.0,
       "completion": "<think> 9 minus 4 <answer> 5 </answer>"},  # no closed reasoning block
      {"step": 4, "split": "eval", "question": "What is 7+7?", "answer": "14", "accuracy": 1.0,
       "completion": "<think> " + "seven and seven " * 200 + "</think> <answer> 14 </answer>"},
      {"step": 4, "split": "eval", "question": "Write f.", "answer": "", "completion": good},
  ])


def test_build_from_samples_counts_and_sft_readable(tmp_path):
  rs_file = _write(tmp_path / "reasoning.jsonl", [
      {"id": "q1#s0", "prompt": "What is 6*7?", "response": "<think> 6 times 7 is 42. </think> "
       "<answer> 42 </answer>", "source": "rejection_sampling",
       "provenance": {"model": "m", "sample_index": 0, "reward": 1.0}}])
  out = tmp_path / "cold.jsonl"
  records, stats = cold_start.build_cold_start([_samples(tmp_path), rs_file], out_path=str(out))
  s = stats["per_source"]["samples:samples.jsonl"]
  assert s["read"] == 9 and s["malformed"] == 2
  assert s["unverified"] == 1 and s["unverifiable"] == 1
  assert s["no_reasoning_block"] == 1
  assert s["failed_language"] == 1 and s["failed_paragraph"] == 1
  assert s["duplicates"] == 1 and s["kept"] == 1
  assert stats["per_source"]["samples:reasoning.jsonl"]["kept"] == 1
  assert stats["records"] == len(records) == 2
  r = records[0]
  assert r["response"] == "<think>\n2 plus 3 is 5.\n</think>\n<answer> 5 </answer>"
  assert r["source"] == "r1_zero_samples" and r["provenance"]["line"] == 1
  assert r["provenance"]["step"] == 3
  assert records[1]["source"] == "rejection_sampling"
  assert records[1]["provenance"]["upstream"]["model"] == "m"
  sft, skipped = read_sft_jsonl(str(out))  # what configs/cold_start_sft.py reads
  assert not skipped and [x["messages"][1]["content"] for x in sft] == [
      x["response"] for x in records]


def test_build_with_custom_markers_and_champ(tmp_path):
  pytest.importorskip("champ_dataset")
  fmt = cold_start.ColdStartFormat("<|reasoning|>", "<|summary|>")
  records, stats = cold_start.build_cold_start(
      [_samples(tmp_path)], champ=True, fmt=fmt,
      filter_config=FilterConfig(max_paragraph_chars=1500))
  champ = stats["per_source"]["champ"]
  assert champ["read"] == 270
  assert champ["kept"] + sum(v for k, v in champ.items() if k.startswith(("failed_", "no_")))\
      + champ.get("duplicates", 0) == 270
  assert champ["kept"] > 200
  ch = [r for r in records if r["source"] == "champ"]
  assert len(ch) == champ["kept"]
  for r in ch[:20]:
    assert r["response"].startswith("<|reasoning|>\n")
    reasoning, summary = cold_start.split_completion(r["response"], "<|reasoning|>",
                                                     "<|summary|>")
    assert summary.startswith("The answer is <answer>") and reasoning
    assert "</think>" not in r["response"]


def test_tool_reports_markers(tmp_path, capsys):
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  try:
    import build_cold_start
  finally:
    sys.path.pop(0)
  out = tmp_path / "cold.jsonl"
  rc = build_cold_start.main(["--samples", _samples(tmp_path), "--out", str(out),
                              "--tokenizer", "smollm2-135m-instruct"])
  assert rc == 0
  stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert stats["records"] == 1 == len(open(out).readlines())
  # SmolLM2 spells "<think>" with several tokens.
  assert stats["markers_in_tokenizer"] == {"<think>": None, "</think>": None}
  assert build_cold_start.main(["--samples", str(tmp_path / "missing.jsonl"),
                                "--out", str(out)]) == 1


def test_add_special_tokens_tiny_model(tmp_path):
  import jax

  from r1jax import models
  from r1jax.tokenizer import Tokenizer
  tok = Tokenizer.from_source("smollm2-135m-instruct")
  cfg = models.tiny_config(vocab_size=tok.vocab_size, eos_token_id=tok.eos_id,
                           bos_token_id=tok.bos_id, pad_token_id=tok.pad_id, num_layers=1)
  params = jax.jit(models.init_params, static_argnums=0)(cfg, jax.random.key(0))
  src = tmp_path / "tiny"
  models.save_pretrained(cfg, params, src)
  tok.save_pretrained(src)
  markers = ["<|reasoning|>", "<|summary|>"]
  res = cold_start.add_special_tokens(str(src), markers, str(tmp_path / "out"))
  V = tok.vocab_size
  assert res["vocab_size"] == V and res["new_vocab_size"] == V + 2
  assert sorted(res["added"].values()) == [V, V + 1] and res["present"] == {}
  new_tok = Tokenizer.from_source(str(tmp_path / "out"))
  assert cold_start.special_token_status(new_tok, markers) == res["added"]
  text = "<|reasoning|>\nthink\n<|summary|>\nThe answer is 5."
  ids = new_tok.encode(text, add_bos=False)
  assert ids[0] == V and V + 1 in ids
  assert new_tok.decode(ids) == text  # kept by decode (not special)
  assert new_tok.encode("The answer is 5.", add_bos=False) == tok.encode("The answer is 5.",
                                                                         add_bos=False)
  cfg2, p2 = models.from_pretrained(str(tmp_path / "out"))
  assert cfg2.vocab_size == V + 2
  emb, old = np.asarray(p2["embedding"]), np.asarray(params["embedding"])
  np.testing.assert_allclose(emb[:V], old, rtol=1e-6)
  np.testing.assert_allclose(emb[V], old.mean(0), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(p2["lm_head"])[:, V + 1],
                             np.asarray(params["lm_head"]).mean(1), rtol=1e-5, atol=1e-7)
  # Already present tokens are not added again.
  res2 = cold_start.add_special_tokens(str(tmp_path / "out"), markers, str(tmp_path / "out2"))
  assert res2["added"] == {} and res2["present"] == res["added"]
  assert res2["new_vocab_size"] == V + 2
