"""One tokenizer interface over HF `tokenizer.json`, sentencepiece `.model` and GGUF vocabularies.

  tok = Tokenizer.from_source("smollm2-135m-instruct")   # default name, .gguf, HF dir, files
  ids = tok.encode("2 + 3 = ?"); text = tok.decode(ids)
  tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)

Modules: core (`Tokenizer`), backends (tokenizers / sentencepiece, HF files), gguf (GGUF
vocabularies), chat (chat templates).
"""

from r1jax.default_models import DEFAULT_MODELS
from r1jax.tokenizer.chat import CHATML_TEMPLATE
from r1jax.tokenizer.core import Tokenizer, resolve_default_model
from r1jax.tokenizer.gguf import GGUF_PRE_SPLITS

__all__ = ["Tokenizer", "DEFAULT_MODELS", "resolve_default_model", "CHATML_TEMPLATE",
           "GGUF_PRE_SPLITS"]
