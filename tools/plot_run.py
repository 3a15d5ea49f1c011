"""Plot the training curves of one or more runs (R1-Zero style) from RUN_DIR/metrics.jsonl.

  python tools/plot_run.py runs/r1zero                    # -> runs/r1zero/curves.png
  python tools/plot_run.py runs/r1zero --smooth 20 --out /tmp/r1zero.png
  python tools/plot_run.py runs/a runs/b --out cmp.png    # overlay, labels = dir names
  python tools/plot_run.py runs/grpo_reasoning --panels accuracy,response_len --smooth 10

A thin wrapper of r1jax.train.plots (the panels are listed there). Prints the PNG path, then
one JSON line {"out", "steps", "panels", ...}.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout

from r1jax.train.plots import plot_runs  # noqa: E402

def main(argv=None) -> int:
  """Parse `argv` (default sys.argv[1:]), draw the PNG, print its path and a JSON summary."""
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                  help="run directory with metrics.jsonl (several: overlaid)")
  ap.add_argument("--out", default=None,
                  help="output PNG (default: RUN_DIR/curves.png, or RUN_DIR/compare.png for "
                  "several runs, in the first RUN_DIR)")
  ap.add_argument("--smooth", type=int, default=0, metavar="N",
                  help="moving average over N steps (raw curve drawn faint)")
  ap.add_argument("--title", default=None, help="figure title (default: run names)")
  ap.add_argument("--panels", default=None, metavar="A,B",
                  help="comma-separated panels to draw, in this order (default: all with "
                  "data), e.g. accuracy,response_len for the R1-Zero signature")
  args = ap.parse_args(argv)

  run_dirs = []
  for d in args.run_dirs:
    p = pathlib.Path(d)
    metrics = p if p.is_file() else p / "metrics.jsonl"
    if not metrics.is_file():
      print(f"plot_run: no metrics file {metrics}", file=sys.stderr)
      continue
    run_dirs.append(p)
  if not run_dirs:
    return 1
  out = args.out
  if out is None:
    first = run_dirs[0] if run_dirs[0].is_dir() else run_dirs[0].parent
    out = first / ("curves.png" if len(run_dirs) == 1 else "compare.png")
  with warnings.catch_warnings():
    warnings.simplefilter("always")  # show read_metrics' truncated-line warnings every time
    panels = [p.strip() for p in args.panels.split(",") if p.strip()] if args.panels else None
    try:
      summary = plot_runs(run_dirs, out, smooth_n=args.smooth, title=args.title, panels=panels)
    except ValueError as e:
      print(f"plot_run: error: {e}", file=sys.stderr)
      return 2
  print(summary["out"])
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
