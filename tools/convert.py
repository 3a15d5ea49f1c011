"""Convert a checkpoint (default model name, .gguf file, HF directory or r1jax training run) to
a Hugging Face model directory that `transformers.AutoModelForCausalLM.from_pretrained` loads.

  python tools/convert.py smollm2-135m-instruct out/smollm2 --dtype bfloat16
  python tools/convert.py model.Q4_1.gguf out/model --max-shard-size 2GB

Quantised GGUF tensors are dequantised (the export is not smaller than the model in
`--dtype`). The model comes from `r1jax.models.load`; the tokenizer is exported too.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout

from r1jax import models  # noqa: E402
from r1jax.default_models import DEFAULT_MODELS  # noqa: E402


def main(argv=None) -> int:
  """Parse `argv` (default sys.argv[1:]), convert, print what was written; returns 0.

  Raises:
    SystemExit: bad arguments (2) or a checkpoint that cannot be loaded/exported (1).
  """
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("source", help=f"default model name ({', '.join(DEFAULT_MODELS)}), "
                  ".gguf file, Hugging Face model directory, or an r1jax training run "
                  "directory (its latest checkpoint; --step for another)")
  ap.add_argument("--step", type=int, default=None, help="checkpoint step of a run directory")
  ap.add_argument("out_dir", help="output directory (created; model files in it are replaced)")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                  help="tensor dtype of the export (default: float32)")
  ap.add_argument("--max-shard-size", default=None,
                  help="shard the safetensors above this size, e.g. 2GB or 500MiB")
  ap.add_argument("--no-tokenizer", action="store_true", help="do not export the tokenizer")
  args = ap.parse_args(argv)

  t0 = time.perf_counter()
  try:
    # Loaded in the export dtype so no float32 copy of a large model is held needlessly.
    loaded = models.load(args.source, param_dtype=args.dtype, step=args.step,
                         with_tokenizer=not args.no_tokenizer)
    if loaded.info["checkpoint"]:
      print(f"run {args.source}: checkpoint step {loaded.info['step']} of "
            f"{loaded.info['source']}")
    cfg = loaded.config
    out = models.save_pretrained(cfg, loaded.params, args.out_dir, dtype=args.dtype,
                                 max_shard_bytes=args.max_shard_size)
  except (FileNotFoundError, ValueError) as e:
    ap.exit(1, f"convert.py: error: {e}\n")
  print(f"model: {cfg.architecture}, {cfg.num_layers} layers, D={cfg.hidden_size}, "
        f"V={cfg.vocab_size}, {cfg.num_params() / 1e6:.1f}M params, {args.dtype} "
        f"({time.perf_counter() - t0:.1f}s)")
  for f in sorted(out.iterdir()):
    print(f"  wrote {f} ({f.stat().st_size:,} bytes)")
  if loaded.tokenizer is not None:
    before = {f: f.stat().st_mtime_ns for f in out.iterdir()}
    loaded.tokenizer.save_pretrained(out)
    for f in sorted(out.iterdir()):
      if before.get(f) != f.stat().st_mtime_ns:
        print(f"  wrote {f} ({f.stat().st_size:,} bytes)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
