"""Cold-start SFT data for R1 stage 1 (DeepSeek-R1, section 2.3.1; docs/method.md "Stages"
and "Templates").

R1 fine-tunes the base model on a few thousand long chains of thought before reasoning RL,
in a readable output format `|special_token|<reasoning_process>|special_token|<summary>`,
collected (among other ways) from readable R1-Zero outputs and from human-written solutions,
with non-reader-friendly responses (mixed languages, no summary, long paragraphs, messy code)
filtered out. This module builds that set from
  (a) verified samples of an R1-Zero run: a GRPO run's samples.jsonl ({"question", "answer",
      "completion", "reward" / "accuracy", ...}) or a rejection-sampling output
      (reasoning.jsonl / train.jsonl: {"prompt", "response", "provenance", ...});
  (b) worked solutions: CHAMP competition problems (r1jax.data.champ), solution = reasoning,
      "The answer is <answer> X </answer>." = summary.

Format: `reasoning_start + "\\n" + reasoning + "\\n" + reasoning_end + "\\n" + summary`. The
paper does not name the special tokens; the default pair is "<think>" / "</think>", which makes
the result exactly r1jax.data.sft_data.R1_RESPONSE_FORMAT and what the format / language
rewards of the next stage look for. Other markers (e.g. "<|reasoning|>", "<|summary|>") are
configurable; `special_token_status` reports whether a tokenizer has them as single tokens and
`add_special_tokens` adds them to a model (embedding rows initialised to the mean embedding).

Verification of (a): a record with an "accuracy" field needs accuracy >= 1; a rejection-
sampling record (source "rejection_sampling") was verified when it was kept; otherwise the
accuracy reward (r1jax.rewards.accuracy: math-verify / reasoning-gym by "task", default
"math") is recomputed against "answer", in this process. Records without an answer and
without an accuracy field are rejected as unverifiable.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from r1jax.curation import filters as filters_lib

__all__ = ["ColdStartFormat", "format_response", "split_completion", "sample_candidates",
           "champ_candidates", "build_cold_start", "special_token_status", "add_special_tokens"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ColdStartFormat:
  """The R1 output format's markers: reasoning_start and reasoning_end (non-empty, distinct)."""
  reasoning_start: str = "<think>"
  reasoning_end: str = "</think>"

  def __post_init__(self):
    if not self.reasoning_start or not self.reasoning_end:
      raise ValueError("reasoning_start and reasoning_end must be non-empty")
    if self.reasoning_start == self.reasoning_end:
      raise ValueError(f"reasoning_start and reasoning_end are both {self.reasoning_start!r}")

  @property
  def template(self) -> str:
    """The format as an r1_format string of r1jax.data.sft_data ("{reasoning}", "{summary}")."""
    return f"{self.reasoning_start}\n{{reasoning}}\n{self.reasoning_end}\n{{summary}}"


def format_response(reasoning: str, summary: str, fmt: ColdStartFormat = ColdStartFormat()
                    ) -> str:
  """`start\\n{reasoning}\\n end\\n{summary}` with both texts stripped.

  Raises:
    ValueError: empty reasoning or summary, or a text containing a marker (the result would
      not split back into the two parts).
  """
  reasoning, summary = reasoning.strip(), summary.strip()
  if not reasoning or not summary:
    raise ValueError("empty reasoning or summary")
  for part in (reasoning, summary):
    if fmt.reasoning_start in part or fmt.reasoning_end in part:
      raise ValueError("reasoning / summary text contains a format marker")
  return f"{fmt.reasoning_start}\n{reasoning}\n{fmt.reasoning_end}\n{summary}"


def split_completion(text: str, start: str = "<think>", end: str = "</think>"
                     ) -> Optional[tuple[str, str]]:
  """(reasoning, summary) of an R1-Zero style completion, or None when it has no closed
  reasoning block. The reasoning is the text between the first `start` (or the beginning,
  when the prompt opened the block) and the first `end`; the summary everything after it
  (for R1-Zero: "<answer> ... </answer>"). Both stripped; None when either is empty."""
  i = text.find(end)
  if i < 0:
    return None
  s = text.find(start)
  body_start = s + len(start) if 0 <= s < i else 0
  reasoning, summary = text[body_start:i].strip(), text[i + len(end):].strip()
  if not reasoning or not summary or start in summary or end in summary:
    return None
  return reasoning, summary


def _verified(rec: dict) -> Optional[bool]:
  """True/False by the rules of the module docstring, None = unverifiable."""
  if "accuracy" in rec and rec["accuracy"] is not None:
    return float(rec["accuracy"]) >= 1.0
  if rec.get("source") == "rejection_sampling":
    return True
  answer = rec.get("answer")
  if answer is None or not str(answer).strip():
    return None
  from r1jax.rewards.accuracy import accuracy
  text = rec.get("completion") if "completion" in rec else rec.get("response", "")
  ex = {"question": rec.get("question") or rec.get("prompt", ""), "answer": str(answer),
        "task": rec.get("task") or "math", "metadata": rec.get("metadata") or {}}
  try:
    return accuracy(text, ex) >= 1.0
  except Exception as e:  # a scorer crash on odd text rejects the sample, never the build
    log.debug("accuracy failed on a sample: %s", e)
    return False


def sample_candidates(path: str, counts: collections.Counter) -> Iterable[dict]:
  """Candidates {"id", "prompt", "completion", "source", "provenance"} of the verified samples
  of a GRPO samples.jsonl or a rejection-sampling JSONL file; `counts` gets "read",
  "malformed", "unverified", "unverifiable".

  Malformed lines (not JSON, no prompt/question or completion/response text) are skipped and
  logged with their line number.

  Raises:
    FileNotFoundError: no such file.
  """
  p = Path(path).expanduser()
  if not p.is_file():
    raise FileNotFoundError(f"samples file not found: {p}")
  with open(p, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      counts["read"] += 1
      try:
        rec = json.loads(line)
        if not isinstance(rec, dict):
          raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
        prompt = rec.get("question") or rec.get("prompt")
        text = rec.get("completion") if "completion" in rec else rec.get("response")
        if not isinstance(prompt, str) or not prompt.strip():
          raise ValueError('no "question" / "prompt" text')
        if not isinstance(text, str) or not text.strip():
          raise ValueError('no "completion" / "response" text')
      except (ValueError, json.JSONDecodeError) as e:
        counts["malformed"] += 1
        log.warning("%s: line %d: skipped (%s)", p, lineno, e)
        continue
      ok = _verified(rec)
      if ok is None:
        counts["unverifiable"] += 1
        continue
      if not ok:
        counts["unverified"] += 1
        continue
      prov = {"file": str(p), "line": lineno}
      for k in ("step", "split", "reward", "accuracy"):
        if k in rec:
          prov[k] = rec[k]
      if isinstance(rec.get("provenance"), dict):
        prov["upstream"] = rec["provenance"]
      yield {"id": str(rec.get("id", f"{p.name}:{lineno}")), "prompt": prompt,
             "completion": text, "answer": rec.get("answer"),
             "source": "rejection_sampling" if rec.get("source") == "rejection_sampling"
             else "r1_zero_samples", "provenance": prov}


def champ_candidates(counts: collections.Counter, path: Optional[str] = None) -> Iterable[dict]:
  """CHAMP problems with a worked solution as candidates {"id", "prompt", "reasoning",
  "summary", "source": "champ", "provenance"}; `counts` gets "read" and "no_solution".

  Raises:
    ImportError / FileNotFoundError: champ-dataset is not installed (and no path given).
  """
  from r1jax.data.champ import champ_examples
  for ex in champ_examples(only_verifiable=False, path=path):
    counts["read"] += 1
    md = ex["metadata"]
    solution = (md.get("solution") or "").strip()
    if not solution:
      counts["no_solution"] += 1
      continue
    yield {"id": ex["id"], "prompt": ex["question"], "reasoning": solution,
           "summary": f"The answer is <answer> {ex['answer']} </answer>.", "answer": ex["answer"],
           "source": "champ", "provenance": {"category": md.get("category"),
                                             "verifiable": md.get("verifiable")}}


def build_cold_start(sample_files: Sequence[str] = (), *, champ: bool = False,
                     champ_path: Optional[str] = None, out_path: Optional[str] = None,
                     fmt: ColdStartFormat = ColdStartFormat(),
                     filter_config: Optional[filters_lib.FilterConfig] = None,
                     sample_markers: tuple[str, str] = ("<think>", "</think>"),
                     ) -> tuple[list[dict], dict[str, Any]]:
  """Build the cold-start set.

  Each candidate is split into reasoning and summary (samples: by `sample_markers`, the
  R1-Zero tags), re-formatted with `fmt`, and kept when the readability filters pass
  (filters.readability_failures on the formatted response; the summary rule uses
  fmt.reasoning_end); duplicates (same prompt and normalised response) are dropped.

  Args:
    sample_files: GRPO samples.jsonl / rejection-sampling JSONL paths.
    champ: include CHAMP worked solutions; champ_path: its data file (None = installed).
    out_path: write the records there as JSONL ({"id", "prompt", "response", "source",
      "provenance"}; read by configs/cold_start_sft.py as data.train_jsonl); None = don't.
    fmt: output markers.
    filter_config: readability thresholds (default FilterConfig()).
    sample_markers: (start, end) tags of the samples' reasoning block.
  Returns:
    (records, stats) with stats {"per_source": {source: counts}, "records": n, "format":
    fmt.template}; counts: read, malformed, unverified, unverifiable, no_solution,
    no_reasoning_block, failed_<filter>, duplicates, kept.
  Raises:
    FileNotFoundError: a missing sample file. ImportError: champ without champ-dataset.
  """
  fcfg = dataclasses.replace(filter_config or filters_lib.FilterConfig(),
                             reasoning_end=fmt.reasoning_end)
  per: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  cands: list[tuple[str, dict]] = []
  for path in sample_files:
    c = collections.Counter()
    cands += [(f"samples:{os.path.basename(path)}", x) for x in sample_candidates(path, c)]
    per[f"samples:{os.path.basename(path)}"].update(c)
  if champ:
    c = collections.Counter()
    cands += [("champ", x) for x in champ_candidates(c, champ_path)]
    per["champ"].update(c)
  records, seen = [], set()
  for src, cand in cands:
    counts = per[src]
    if "completion" in cand:
      parts = split_completion(cand["completion"], *sample_markers)
      if parts is None:
        counts["no_reasoning_block"] += 1
        continue
      reasoning, summary = parts
    else:
      reasoning, summary = cand["reasoning"], cand["summary"]
    try:
      response = format_response(reasoning, summary, fmt)
    except ValueError:
      counts["no_reasoning_block"] += 1
      continue
    failures = filters_lib.readability_failures(response, fcfg)
    for name in failures:
      counts[f"failed_{name}"] += 1
    if failures:
      continue
    key = (cand["prompt"].strip(), filters_lib.dedup_key(response))
    if key in seen:
      counts["duplicates"] += 1
      continue
    seen.add(key)
    counts["kept"] += 1
    records.append({"id": cand["id"], "prompt": cand["prompt"], "response": response,
                    "answer": "" if cand.get("answer") is None else str(cand["answer"]),
                    "source": cand["source"],
                    "provenance": {**cand["provenance"], "filters_passed": list(fcfg.enabled)}})
  if out_path:
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      for r in records:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, out_path)
  stats = {"per_source": {k: dict(v) for k, v in per.items()}, "records": len(records),
           "format": fmt.template}
  return records, stats


# ---------------------------------------------------------------------- special tokens
def special_token_status(tok, tokens: Sequence[str]) -> dict[str, Optional[int]]:
  """token -> its id when `tok` (an r1jax Tokenizer) has it as one token, else None (it would
  be split into several ordinary tokens)."""
  out = {}
  for t in tokens:
    i = tok.token_to_id(t)
    ids = tok.encode(t, add_bos=False)
    out[t] = i if i is not None and ids == [i] else None
  return out


def add_special_tokens(model_source: str, tokens: Sequence[str], out_dir: str, *,
                       tokenizer_source: str = "", dtype: str = "float32") -> dict[str, Any]:
  """Add `tokens` to a model's tokenizer and embedding, and save an HF model directory.

  Tokens the tokenizer lacks are added as added tokens (never split; not flagged special, so
  `decode(..., skip_special_tokens=True)`, which the sampler's text goes through, keeps them
  and the rewards see the markers). The embedding (and an untied LM head) grows to cover the
  new ids; new rows (columns of the head) are the mean of the existing ones, the usual
  initialisation that keeps the new tokens' logits at the average (Hewitt 2021). Ids below
  the model's vocab_size (padding rows) are reused and re-initialised the same way.

  Args:
    model_source: default model name, .gguf or HF directory.
    tokens: marker strings.
    out_dir: HF directory to write (config.json, model.safetensors, tokenizer files).
    tokenizer_source: tokenizer when not the model's own ("" = model_source).
    dtype: dtype of the saved tensors.
  Returns:
    {"added": {token: id}, "present": {token: id}, "vocab_size": old, "new_vocab_size": new}.
  Raises:
    NotImplementedError: a sentencepiece tokenizer (only tokenizer.json-style vocabularies).
    ValueError: an empty token.
  """
  import numpy as np
  from tokenizers import AddedToken
  from tokenizers import Tokenizer as HFTokenizer

  from r1jax import models
  if any(not t for t in tokens):
    raise ValueError("empty token")
  tok = models.load(model_source, tokenizer=tokenizer_source, params=False).tokenizer
  if tok.backend_kind != "tokenizers":
    raise NotImplementedError("adding tokens needs a tokenizer.json-style (BPE) tokenizer, got "
                              f"{tok.backend_kind}")
  present = {t: i for t, i in special_token_status(tok, tokens).items() if i is not None}
  missing = [t for t in tokens if t not in present]
  loaded = models.load(model_source, tokenizer=tokenizer_source)
  cfg, params = loaded.config, loaded.params
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tok.save_pretrained(out)
  tk = HFTokenizer.from_file(str(out / "tokenizer.json"))
  tk.add_tokens([AddedToken(t, normalized=False, special=False) for t in missing])
  tk.save(str(out / "tokenizer.json"))
  added = {t: tk.token_to_id(t) for t in missing}
  new_v = max([cfg.vocab_size] + [i + 1 for i in added.values()])
  params = dict(params)
  emb = np.asarray(params["embedding"], np.float32)
  base = min(tok.vocab_size, emb.shape[0])
  new_emb = np.zeros((new_v, emb.shape[1]), np.float32)
  new_emb[:emb.shape[0]] = emb
  new_emb[list(added.values())] = emb[:base].mean(axis=0)
  params["embedding"] = new_emb
  if not cfg.tie_word_embeddings:
    head = np.asarray(params["lm_head"], np.float32)
    new_head = np.zeros((head.shape[0], new_v), np.float32)
    new_head[:, :head.shape[1]] = head
    new_head[:, list(added.values())] = head[:, :base].mean(axis=1, keepdims=True)
    params["lm_head"] = new_head
  cfg = cfg.replace(vocab_size=new_v)
  models.save_pretrained(cfg, params, out, dtype=dtype)
  # tokenizer_config.json lists added tokens for transformers: keep it in step.
  tc_path = out / "tokenizer_config.json"
  tc = json.loads(tc_path.read_text()) if tc_path.exists() else {}
  dec = tc.setdefault("added_tokens_decoder", {})
  for t, i in added.items():
    dec[str(i)] = {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                   "single_word": False, "special": False}
  tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False))
  return {"added": added, "present": present, "vocab_size": int(emb.shape[0]),
          "new_vocab_size": int(new_v)}
