"""Writes tests/data/loading_ref.{npz,json}: what `transformers` produces for the checkpoint
tests of tests/test_loading.py, so that the default test suite needs no torch.

python tools/reference_loading.py [--out-prefix tests/data/loading_ref] [--only NAME ...]

Needs torch and transformers (`pip install -e .[reference]`, with a CPU build of torch).
For every case of `REFERENCE_CASES` in tests/test_loading.py (GGUF imports, HF imports,
HF exports, the default model): transformers' logits of the case's tokens, and for the HF
cases the files save_pretrained writes (config.json, shard index, tensor names per file)
or the keys transformers expects in a checkpoint. Arrays go to the .npz (float32 logits of
tiny random models, the default model's at every 64th vocabulary column), the rest to the
.json. Prints one JSON summary on its last line.
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--out-prefix", default=str(ROOT / "tests" / "data" / "loading_ref"))
  ap.add_argument("--only", nargs="*", default=None, help="cases to recompute (others kept)")
  args = ap.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, str(ROOT / "tests"))
  sys.path.insert(0, str(ROOT))
  import test_loading as T  # the cases are defined next to the tests that read them
  npz, js = pathlib.Path(args.out_prefix + ".npz"), pathlib.Path(args.out_prefix + ".json")
  arrays, info = {}, {}
  if args.only and npz.is_file():
    with np.load(npz) as old:
      arrays = {k: old[k] for k in old.files}
    info = json.loads(js.read_text())
  names = args.only or list(T.REFERENCE_CASES)
  unknown = sorted(set(names) - set(T.REFERENCE_CASES))
  if unknown:
    raise SystemExit(f"unknown cases {unknown}; cases: {sorted(T.REFERENCE_CASES)}")
  summary = {}
  for name in names:
    for k in [k for k in arrays if k.startswith(name + "/")]:
      del arrays[k]
    with tempfile.TemporaryDirectory() as d:
      out = T.REFERENCE_CASES[name](pathlib.Path(d))
    info[name] = {}
    for k, v in out.items():
      if isinstance(v, np.ndarray):
        arrays[f"{name}/{k}"] = v.astype(np.float32) if v.dtype.kind == "f" else v
      else:
        info[name][k] = v
    if not info[name]:
      del info[name]
    summary[name] = {k: list(v.shape) for k, v in out.items() if isinstance(v, np.ndarray)}
    print(name, summary[name], flush=True)
  np.savez_compressed(npz, **arrays)
  js.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
  print(json.dumps({"npz": str(npz), "json": str(js), "bytes": npz.stat().st_size +
                    js.stat().st_size, "cases": summary}))


if __name__ == "__main__":
  main()
