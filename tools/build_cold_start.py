"""Build the cold-start SFT set of R1 stage 1 (DeepSeek-R1, section 2.3.1) as JSONL.

  python tools/build_cold_start.py --samples runs/grpo/samples.jsonl --champ \\
      --out data/cold_start.jsonl
  python tools/build_cold_start.py --samples runs/rejection_sampling/reasoning.jsonl \\
      --out data/cold_start.jsonl --reasoning-start "<|reasoning|>" --reasoning-end "<|summary|>" \\
      --tokenizer smollm2-135m-instruct --add-special-tokens --model smollm2-135m-instruct \\
      --model-out runs/base_with_markers

Sources: verified samples of an R1-Zero run (a GRPO samples.jsonl, or rejection-sampling
output) and CHAMP worked solutions (--champ). Each response becomes
`<start>\\n<reasoning>\\n<end>\\n<summary>` and is kept when it is readable (r1jax/data/
filters.py: language, paragraph, code, summary) and not a duplicate. Library code:
r1jax/curation/cold_start.py. The output is what configs/cold_start_sft.py reads:
  python -m r1jax.main --config=configs/cold_start_sft.py --config.data.train_jsonl=data/cold_start.jsonl

With --tokenizer the tool reports whether the markers are single tokens of that tokenizer.
With --add-special-tokens (and --model, --model-out) it adds the missing ones to the tokenizer,
grows the embedding (new rows = mean embedding) and saves an HF model directory to fine-tune
(--config.model=<model-out>). The default markers "<think>" / "</think>" need no new tokens:
they are what the rewards read, as text.

The last line printed is one JSON object with the counts per source.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout

from r1jax.curation import cold_start, filters  # noqa: E402


def main(argv=None) -> int:
  """Parse `argv` (default sys.argv[1:]), build the set, print the stats.

  Returns:
    0, or 1 after printing the error for missing inputs / a failed build.
  Raises:
    SystemExit: bad arguments (2).
  """
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--samples", action="append", default=[],
                  help="GRPO samples.jsonl or rejection-sampling JSONL (repeatable)")
  ap.add_argument("--champ", action="store_true", help="add CHAMP worked solutions")
  ap.add_argument("--out", required=True, help="output JSONL")
  ap.add_argument("--reasoning-start", default="<think>")
  ap.add_argument("--reasoning-end", default="</think>")
  ap.add_argument("--filters", default=",".join(filters.FILTER_NAMES),
                  help="comma-separated readability filters to apply")
  ap.add_argument("--language", default="en")
  ap.add_argument("--min-language-ratio", type=float, default=0.95)
  ap.add_argument("--max-paragraph-chars", type=int, default=2000)
  ap.add_argument("--max-loose-code-lines", type=int, default=2)
  ap.add_argument("--tokenizer", default="", help="report whether the markers are single tokens")
  ap.add_argument("--add-special-tokens", action="store_true",
                  help="add missing markers to --model and save it to --model-out")
  ap.add_argument("--model", default="", help="model source for --add-special-tokens")
  ap.add_argument("--model-out", default="", help="HF directory written by --add-special-tokens")
  args = ap.parse_args(argv)
  if not args.samples and not args.champ:
    ap.error("give --samples and/or --champ")
  if args.add_special_tokens and not (args.model and args.model_out):
    ap.error("--add-special-tokens needs --model and --model-out")
  try:
    fmt = cold_start.ColdStartFormat(args.reasoning_start, args.reasoning_end)
    fcfg = filters.FilterConfig(
        enabled=tuple(f for f in args.filters.split(",") if f.strip()), language=args.language,
        min_language_ratio=args.min_language_ratio,
        max_paragraph_chars=args.max_paragraph_chars,
        max_loose_code_lines=args.max_loose_code_lines)
    _, stats = cold_start.build_cold_start(args.samples, champ=args.champ, out_path=args.out,
                                           fmt=fmt, filter_config=fcfg)
    markers = [fmt.reasoning_start, fmt.reasoning_end]
    if args.tokenizer or args.add_special_tokens:
      from r1jax.tokenizer import Tokenizer
      tok = Tokenizer.from_source(args.tokenizer or args.model)
      status = cold_start.special_token_status(tok, markers)
      stats["markers_in_tokenizer"] = status
      missing = [t for t, i in status.items() if i is None]
      if missing:
        print(f"markers not single tokens of {tok.source}: {missing}"
              + ("" if args.add_special_tokens else " (pass --add-special-tokens to add them)"))
    if args.add_special_tokens:
      stats["added_tokens"] = cold_start.add_special_tokens(
          args.model, markers, args.model_out, tokenizer_source=args.tokenizer)
  except (FileNotFoundError, ValueError, ImportError, NotImplementedError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {stats['records']} records to {args.out}")
  print(json.dumps(stats))
  return 0


if __name__ == "__main__":
  sys.exit(main())
