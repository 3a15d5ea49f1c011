"""Tokenizer backends (raw encode / decode, no BOS/EOS) and the loaders of HF tokenizer files.

`HFBackend` wraps a `tokenizers.Tokenizer` (tokenizer.json files and converted GGUF
vocabularies); `SPBackend` a sentencepiece model. `load_hf_json` / `load_sentencepiece` return
the keyword arguments of `r1jax.tokenizer.Tokenizer` for such files, with the special tokens,
chat template and stop ids of the sibling tokenizer_config.json / special_tokens_map.json /
generation_config.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

def token_str(tok: Any) -> str | None:
  """A special token as found in HF configs: a string or an AddedToken dict."""
  if tok is None:
    return None
  if isinstance(tok, dict):
    return tok.get("content")
  return str(tok)


def read_json(path: Path) -> dict:
  if not path.is_file():
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)



class HFBackend:
  """Backend over a `tokenizers.Tokenizer` (tokenizer.json files and converted GGUF vocabs)."""

  kind = "tokenizers"

  def __init__(self, tk):
    self.tk = tk
    # Never pad/truncate inside the backend: batch_encode does it in numpy.
    tk.no_padding()
    tk.no_truncation()
    self.vocab_size = tk.get_vocab_size(with_added_tokens=True)
    self.special_ids = {i for i, t in tk.get_added_tokens_decoder().items() if t.special}

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

  def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
    return self.tk.decode(ids, skip_special_tokens=skip_special_tokens)

  def token_to_id(self, token: str) -> int | None:
    return self.tk.token_to_id(token)

  def id_to_token(self, i: int) -> str | None:
    return self.tk.id_to_token(i)


class SPBackend:
  """Backend over a `sentencepiece.SentencePieceProcessor`.

  Text is encoded by sentencepiece as is: control-token strings such as "<s>" inside the text are
  NOT parsed as special tokens (sentencepiece's own behaviour; user-defined pieces are matched).
  """

  kind = "sentencepiece"

  def __init__(self, model_file: Path):
    import sentencepiece as spm
    self.model_file = Path(model_file)
    self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
    self.vocab_size = self.sp.get_piece_size()
    self.special_ids = {i for i in range(self.vocab_size)
                        if self.sp.is_control(i) or self.sp.is_unknown(i)}

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return self.sp.encode(list(texts), out_type=int)

  def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
    if skip_special_tokens:
      return self.sp.decode([i for i in ids if i not in self.special_ids])
    # sentencepiece renders control pieces as "", so splice their surface forms in.
    out, run = [], []
    for i in ids:
      if i in self.special_ids:
        out.append(self.sp.decode(run))
        out.append(self.sp.id_to_piece(i))
        run = []
      else:
        run.append(i)
    out.append(self.sp.decode(run))
    return "".join(out)

  def token_to_id(self, token: str) -> int | None:
    i = self.sp.piece_to_id(token)
    if self.sp.is_unknown(i) and self.sp.id_to_piece(i) != token:
      return None
    return i

  def id_to_token(self, i: int) -> str | None:
    return self.sp.id_to_piece(i) if 0 <= i < self.vocab_size else None



def hf_configs(directory: Path) -> tuple[dict, dict, dict]:
  """(tokenizer_config, special_tokens_map, generation_config) of a directory, {} if absent."""
  return (read_json(directory / "tokenizer_config.json"),
          read_json(directory / "special_tokens_map.json"),
          read_json(directory / "generation_config.json"))


def chat_template_of(directory: Path, config: dict) -> str | None:
  jinja = directory / "chat_template.jinja"
  if jinja.is_file():
    return jinja.read_text(encoding="utf-8")
  template = config.get("chat_template")
  if isinstance(template, list):  # [{"name": ..., "template": ...}] form
    named = {t.get("name"): t.get("template") for t in template}
    template = named.get("default", next(iter(named.values()), None))
  return template


def load_hf_json(path: Path) -> dict[str, Any]:
  """Tokenizer settings from a tokenizer.json (+ sibling config files)."""
  from tokenizers import Tokenizer as HFTokenizer
  directory = path.parent
  config, special_map, gen = hf_configs(directory)
  tk = HFTokenizer.from_file(str(path))
  names = {k: token_str(config.get(f"{k}_token", special_map.get(f"{k}_token")))
           for k in ("bos", "eos", "unk", "pad")}
  backend = HFBackend(tk)
  for k in ("bos", "eos", "pad"):
    gid = gen.get(f"{k}_token_id")
    if names[k] is None and isinstance(gid, int):
      names[k] = tk.id_to_token(gid)
  # As in transformers 5, tokenizer.json's post-processor decides what encode adds by default
  # (add_bos_token/add_eos_token in tokenizer_config are ignored when tokenizer.json exists).
  prefix, suffix = post_processor_affixes(tk)
  gen_eos = gen.get("eos_token_id")
  gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
  max_len = config.get("model_max_length")
  return dict(backend=backend, tokens=names, prefix_ids=prefix, suffix_ids=suffix,
              chat_template=chat_template_of(directory, config),
              extra_stop_ids=tuple(int(i) for i in gen_eos),
              model_max_length=int(max_len) if isinstance(max_len, (int, float)) and max_len < 1e12
              else None)


def post_processor_affixes(tk) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(ids added before, ids added after) a text by a tokenizer's post-processor."""
  with_sp = tk.encode("a b", add_special_tokens=True).ids
  without = tk.encode("a b", add_special_tokens=False).ids
  for k in range(len(with_sp) - len(without) + 1):
    if with_sp[k:k + len(without)] == without:
      return tuple(with_sp[:k]), tuple(with_sp[k + len(without):])
  raise NotImplementedError("tokenizer.json post-processor changes the text's own ids; "
                            "only added prefix/suffix tokens are supported")


def load_sentencepiece(path: Path) -> dict[str, Any]:
  """Tokenizer settings from a sentencepiece .model (+ sibling HF config files)."""
  backend = SPBackend(path)
  sp = backend.sp
  directory = path.parent
  config, special_map, gen = hf_configs(directory)

  def piece(i: int) -> str | None:
    return sp.id_to_piece(i) if i >= 0 else None

  names = {"bos": piece(sp.bos_id()), "eos": piece(sp.eos_id()), "unk": piece(sp.unk_id()),
           "pad": piece(sp.pad_id())}
  for k in names:
    override = token_str(config.get(f"{k}_token", special_map.get(f"{k}_token")))
    if override is not None:
      names[k] = override
  gen_eos = gen.get("eos_token_id")
  gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
  max_len = config.get("model_max_length")
  return dict(backend=backend, tokens=names,
              add_bos=bool(config.get("add_bos_token", True)),  # Llama-style default
              add_eos=bool(config.get("add_eos_token", False)),
              chat_template=chat_template_of(directory, config),
              extra_stop_ids=tuple(int(i) for i in gen_eos),
              model_max_length=int(max_len) if isinstance(max_len, (int, float)) and max_len < 1e12
              else None)

