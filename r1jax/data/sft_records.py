"""SFT records: JSONL lines -> {"id", "messages", "metadata"} (the record layouts are listed in
r1jax.data.sft_data), the shared JSONL reader with file-and-line errors, and the CHAMP worked
solutions as SFT records.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from r1jax.data.sources import open_lines

log = logging.getLogger(__name__)

# The R1 output format |special_token|<reasoning_process>|special_token|<summary> with the
# think tags as the special tokens (what the format / language rewards look for).
R1_RESPONSE_FORMAT = "<think>\n{reasoning}\n</think>\n{summary}"
ROLES = ("system", "user", "assistant")
_RESERVED = ("messages", "prompt", "response", "reasoning", "summary", "system", "id")


def format_r1_response(reasoning: str, summary: str, fmt: str = R1_RESPONSE_FORMAT) -> str:
  """The R1 output format `|special_token|<reasoning_process>|special_token|<summary>`
  (DeepSeek-R1, section 2.3.1; docs/method.md "Templates"): `fmt` with "{reasoning}" and "{summary}" replaced (str.replace, so
  braces in the texts are safe)."""
  return fmt.replace("{reasoning}", reasoning.strip()).replace("{summary}", summary.strip())


def _text_field(rec: dict, key: str) -> str:
  v = rec[key]
  if not isinstance(v, str):
    raise ValueError(f'"{key}" must be a string, got {type(v).__name__}')
  if not v.strip():
    raise ValueError(f'empty "{key}"')
  return v


def parse_sft_record(rec: Any, *, default_id: str = "", r1_format: str = R1_RESPONSE_FORMAT
                     ) -> dict:
  """Validate one record and normalise it to {"id", "messages", "metadata"}.

  Args:
    rec: the decoded JSON value of one line.
    default_id: id when the record has none.
    r1_format: template of {"reasoning", "summary"} records (see format_r1_response).
  Returns:
    {"id": str, "messages": [{"role", "content"}, ...], "metadata": dict}.
  Raises:
    ValueError: not an object, no usable fields, wrong types, empty texts, unknown roles, or
      no assistant turn (the message says which).
  """
  if not isinstance(rec, dict):
    raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
  if "messages" in rec:
    msgs = rec["messages"]
    if not isinstance(msgs, list) or not msgs:
      raise ValueError('"messages" must be a non-empty list')
    messages = []
    for i, m in enumerate(msgs):
      if not isinstance(m, dict) or "role" not in m or "content" not in m:
        raise ValueError(f'messages[{i}] must be an object with "role" and "content"')
      if m["role"] not in ROLES:
        raise ValueError(f'messages[{i}] has role {m["role"]!r}; expected one of {ROLES}')
      if not isinstance(m["content"], str):
        raise ValueError(f'messages[{i}].content must be a string, got '
                         f'{type(m["content"]).__name__}')
      messages.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
      raise ValueError("no non-empty assistant message (nothing to train on)")
  elif "prompt" in rec:
    prompt = _text_field(rec, "prompt")
    if "response" in rec:
      response = _text_field(rec, "response")
    elif "reasoning" in rec and "summary" in rec:
      response = format_r1_response(_text_field(rec, "reasoning"), _text_field(rec, "summary"),
                                    r1_format)
    else:
      raise ValueError('missing "response" (or "reasoning" and "summary") next to "prompt"')
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
  else:
    raise ValueError('missing "messages" or "prompt"/"response" fields')
  if "system" in rec and rec["system"] is not None:
    if messages[0]["role"] == "system":
      raise ValueError('both a "system" field and a system message')
    messages.insert(0, {"role": "system", "content": _text_field(rec, "system")})
  ex_id = rec.get("id", default_id)
  if isinstance(ex_id, bool) or not isinstance(ex_id, (str, int)):
    raise ValueError(f'"id" must be a string or an integer, got {type(ex_id).__name__}')
  return {"id": str(ex_id), "messages": messages,
          "metadata": {k: v for k, v in rec.items() if k not in _RESERVED}}


def read_sft_jsonl(path: str, *, on_error: str = "raise", r1_format: str = R1_RESPONSE_FORMAT
                   ) -> tuple[list[dict], list[int]]:
  """SFT records of a JSONL(.gz) file (blank lines ignored).

  Args:
    path: the file.
    on_error: "raise" or "skip" (malformed lines counted and reported in one warning).
    r1_format: see parse_sft_record.
  Returns:
    (records as parse_sft_record returns them, 1-based numbers of skipped lines).
  Raises:
    FileNotFoundError: no such file.
    ValueError: "{path}: line {n}: {problem}" for the first malformed line (on_error="raise"),
      or a bad on_error.
  """
  return read_jsonl_records(
      path, lambda rec, rid: parse_sft_record(rec, default_id=rid, r1_format=r1_format),
      what="SFT", on_error=on_error)


def read_jsonl_records(path: str, parse, *, what: str, on_error: str = "raise"
                       ) -> tuple[list[Any], list[int]]:
  """Parsed records of a JSONL(.gz) file, one per non-blank line.

  Args:
    path: the file.
    parse: (json value, default id "file:line") -> record; raises ValueError when malformed.
    what: name in the not-found error ("SFT", "preference").
    on_error: "raise" or "skip" (malformed lines counted and reported in one warning).
  Returns:
    (records, 1-based numbers of skipped lines).
  Raises:
    FileNotFoundError: no such file.
    ValueError: "{path}: line {n}: {problem}" for the first malformed line (on_error="raise"),
      or a bad on_error.
  """
  if on_error not in ("raise", "skip"):
    raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
  p = Path(path).expanduser()
  if not p.is_file():
    raise FileNotFoundError(f"{what} JSONL file not found: {p}")
  records, skipped, first = [], [], None
  with open_lines(p) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        try:
          text = line.decode("utf-8")
        except UnicodeDecodeError as e:
          raise ValueError(f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
        try:
          rec = json.loads(text.lstrip("\ufeff") if lineno == 1 else text)
        except json.JSONDecodeError as e:
          raise ValueError(f"invalid JSON: {e.msg} (column {e.colno})") from None
        records.append(parse(rec, f"{p.name}:{lineno}"))
      except ValueError as e:
        if on_error == "raise":
          raise ValueError(f"{p}: line {lineno}: {e}") from None
        skipped.append(lineno)
        first = first or f"line {lineno}: {e}"
  if skipped:
    log.warning("%s: skipped %d malformed line(s) (first: %s)", p, len(skipped), first)
  return records, skipped


def champ_sft_records(r1_format: str = R1_RESPONSE_FORMAT) -> list[dict]:
  """CHAMP competition problems with their worked solutions as SFT records in the R1 format.

  The response is the reference solution as the reasoning and "The answer is <answer>
  X </answer>." as the summary, so the accuracy reward can read the answer. All 270 problems
  (solutions exist for unverifiable answers too). Needs the PyPI package champ-dataset.

  Returns:
    list of {"id", "messages", "metadata"} (see parse_sft_record).
  Raises:
    ImportError / FileNotFoundError: champ-dataset is not installed.
  """
  from r1jax.data.champ import champ_examples
  out = []
  for ex in champ_examples(only_verifiable=False):
    md = ex["metadata"]
    summary = f"The answer is <answer> {ex['answer']} </answer>."
    out.append(parse_sft_record({"id": ex["id"], "prompt": ex["question"],
                                 "reasoning": md["solution"] or ex["answer"],
                                 "summary": summary, "category": md["category"]},
                                r1_format=r1_format))
  return out
