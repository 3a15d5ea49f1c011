"""Reference logits from `transformers` (which loads GGUF files itself) and parity report.

python tools/reference_logits.py [--model smollm2-135m-instruct or a .gguf path]
                                 [--out tests/data/smollm2_logits_ref.npz] [--greedy 32]

For each prompt in PROMPTS: transformers' token ids, float32 logits and greedy
continuation (`generate(do_sample=False)`), then the same from r1jax (tools/logits.py),
and the max abs logit difference and greedy agreement. Writes a compact reference file for
tests/test_parity.py: ids, the greedy continuation and the logits restricted to every
`--stride`-th vocabulary column (float32; the full [T, V] would be megabytes).
Prints a JSON object on its last line. Needs torch and transformers
(`pip install -e .[reference]`); the default test suite reads the committed file only.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as "
    "many clips in May. How many clips did Natalia sell altogether in April and May?\nAnswer:",
]


def transformers_reference(gguf_path: str, texts, greedy: int):
  import torch
  import transformers
  d, f = os.path.dirname(gguf_path), os.path.basename(gguf_path)
  tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
  model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
  model.eval()
  out = []
  for text in texts:
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
      lg = model(ids).logits[0].float().numpy()
      # Plain argmax loop: generate()'s processors (min_new_tokens suppresses EOS) would
      # change the distribution, and r1jax's greedy continuation runs past EOS here.
      seq = ids
      for _ in range(greedy):
        nxt = model(seq).logits[0, -1].argmax()
        seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
      g = seq[0, ids.shape[1]:].numpy()
    out.append((ids[0].numpy().astype(np.int32), lg, g.astype(np.int32)))
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--model", default="smollm2-135m-instruct")
  ap.add_argument("--out", default="tests/data/smollm2_logits_ref.npz")
  ap.add_argument("--greedy", type=int, default=32)
  ap.add_argument("--stride", type=int, default=64)
  args = ap.parse_args()
  from r1jax.models import loading
  from logits import r1jax_logits
  path = str(loading.default_model_path(args.model)) if not os.path.exists(args.model) \
      else args.model
  ref = transformers_reference(path, PROMPTS, args.greedy)
  ours = r1jax_logits(args.model, PROMPTS, args.greedy)
  report, arrays = [], {}
  for i, ((rid, rlg, rg), (oid, olg, og)) in enumerate(zip(ref, ours)):
    same_ids = rid.shape == oid.shape and bool((rid == oid).all())
    diff = float(np.abs(rlg - olg).max()) if same_ids else float("nan")
    agree = int(np.cumprod(rg == og[:len(rg)]).sum())  # leading tokens that agree
    report.append({"prompt": i, "tokens": int(len(rid)), "ids_equal": same_ids,
                   "max_abs_logit_diff": diff, "greedy_agree_leading": agree,
                   "greedy_tokens": int(len(rg))})
    print(f"prompt {i}: {len(rid)} tokens, ids equal {same_ids}, max |dlogit| {diff:.3g}, "
          f"greedy agree {agree}/{len(rg)}", flush=True)
    arrays[f"ids_{i}"] = rid
    arrays[f"greedy_{i}"] = rg
    arrays[f"logits_{i}"] = rlg[:, ::args.stride].astype(np.float32)
  arrays["stride"] = np.int32(args.stride)
  arrays["prompts"] = np.array(PROMPTS)
  np.savez_compressed(args.out, **arrays)
  print(json.dumps({"out": args.out, "prompts": report,
                    "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in report)}))


if __name__ == "__main__":
  main()
