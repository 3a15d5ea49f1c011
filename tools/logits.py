"""Float32 logits of r1jax for a text (no chat template), plus a greedy continuation.

python tools/logits.py --model SOURCE --text TEXT --out FILE.npz [--greedy 32]

Writes ids [T] int32, logits [T, V] float32 and greedy [n] int32 (the r1jax sampler's
greedy continuation of the text). Compare with tools/reference_logits.py (transformers).
Prints a JSON summary on its last line.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import models, sampling
from r1jax.tokenizer import Tokenizer


def r1jax_logits(source: str, texts: list[str], greedy: int = 32):
  """[(ids [T], logits [T, V] float32, greedy continuation [greedy])] for each text."""
  cfg, params = models.from_pretrained(source)
  tok = Tokenizer.from_source(source)
  fwd = jax.jit(lambda p, x: models.logits(p, cfg, models.forward(p, cfg, x)))
  sampler = sampling.Sampler(cfg, pad_id=tok.pad_id)
  out = []
  for text in texts:
    ids = np.asarray(tok.encode(text), np.int32)
    lg = np.asarray(fwd(params, jnp.asarray(ids)[None])[0], np.float32)
    g = sampler(params, [ids.tolist()], jax.random.key(0),
                sampling=sampling.SamplingParams(temperature=0, max_new_tokens=greedy))
    out.append((ids, lg, np.asarray(g.tokens[0, 0], np.int32)))
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--model", default="smollm2-135m-instruct")
  ap.add_argument("--text", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--greedy", type=int, default=32)
  args = ap.parse_args()
  t0 = time.perf_counter()
  ((ids, lg, greedy),) = r1jax_logits(args.model, [args.text], args.greedy)
  np.savez(args.out, ids=ids, logits=lg, greedy=greedy)
  print(json.dumps({"out": args.out, "tokens": int(len(ids)), "vocab": int(lg.shape[-1]),
                    "seconds": round(time.perf_counter() - t0, 2)}))


if __name__ == "__main__":
  main()
