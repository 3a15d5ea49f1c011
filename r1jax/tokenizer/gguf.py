"""GGUF vocabularies (llama.cpp metadata) rebuilt as `tokenizers.Tokenizer` objects.

The way `transformers.integrations.gguf` does, so ids match
`transformers.AutoTokenizer.from_pretrained(dir, gguf_file=name)`. tokenizer.ggml.model "gpt2"
(byte-level BPE, any `tokenizer.ggml.pre` flavour) is exact; "llama" (sentencepiece BPE)
follows sentencepiece/llama.cpp, which differs from transformers 5 only on text with leading
whitespace (see `gguf_sentencepiece`). Other models raise NotImplementedError.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from r1jax.tokenizer.backends import HFBackend

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



@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
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


def generate_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
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



def gguf_field(reader, key: str, default: Any = None) -> Any:
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
def fast_gguf_reader_cls():
  import gguf

  class _Reader(gguf.GGUFReader):
    """GGUFReader parsing from a plain ndarray view of the memmap: slicing np.memmap costs a
    Python-level __array_finalize__ per slice, ~2x slower for 100k vocab strings."""

    def _build_fields(self, offs, count):
      self.data = self.data.view(np.ndarray)
      return super()._build_fields(offs, count)

  return _Reader


def gguf_metadata(path: Path) -> dict[str, Any]:
  """The tokenizer-related metadata of a GGUF file, as python values.

  Raises:
    ValueError: the file is not a readable GGUF.
  """
  try:
    reader = fast_gguf_reader_cls()(str(path), "r")
  except Exception as e:  # noqa: BLE001 -- gguf raises ValueError/struct errors on bad files
    raise ValueError(f"{path}: not a readable GGUF file ({e})") from e
  meta = {k: gguf_field(reader, k) for k in reader.fields if k.startswith("tokenizer.")}
  arch = gguf_field(reader, "general.architecture")
  meta["general.architecture"] = arch
  meta["context_length"] = gguf_field(reader, f"{arch}.context_length") if arch else None
  return meta


def gguf_byte_level(tokens: list[str], merges: list[str], pre: str | None):
  """`tokenizers.Tokenizer` for a "gpt2" (byte-level BPE) GGUF vocabulary."""
  from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
  spelling = bytes_to_unicode()
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


def gguf_sentencepiece(tokens: list[str], merges: list[str] | None, scores: np.ndarray | None,
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
    merge_pairs = generate_merges(vocab, dict(zip(tokens, scores.tolist())))
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


def load_gguf(path: Path) -> dict[str, Any]:
  """Tokenizer settings from a GGUF file (see `Tokenizer.__init__` for the keys)."""
  from tokenizers import AddedToken
  meta = gguf_metadata(path)
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
    tk = gguf_byte_level(tokens, list(merges or []), meta.get("tokenizer.ggml.pre"))
    add_bos_default = False
    # A control token spelled outside the byte alphabet is a llama.cpp mislabel; skip it as
    # transformers does.
    alphabet = set(bytes_to_unicode().values())
    is_spelled = lambda t: set(t) <= alphabet  # noqa: E731
  elif model == "llama":
    tk = gguf_sentencepiece(tokens, list(merges) if merges else None,
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
    backend=HFBackend(tk), tokens=names,
    add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default)),
    add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
    chat_template=meta.get("tokenizer.chat_template"),
    extra_stop_ids=tuple(int(i) for i in (eot, eom) if i is not None),
    model_max_length=meta.get("context_length"),
  )
