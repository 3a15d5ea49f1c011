"""Training curves of one or more runs (R1-Zero style) from RUN_DIR/metrics.jsonl, as a PNG.

  from r1jax.train import plots
  plots.plot_runs(["runs/r1zero"], "runs/r1zero/curves.png", smooth_n=20)
  plots.plot_run_dir("runs/r1zero")       # the end-of-run plot of the training loop

Panels (each drawn only when one of its keys is logged): accuracy (train, eval greedy /
sampled), mean response length (and max), reward components, reward by prompt kind
(all-scenario RL), format rate, tool calls, KL and clip
fraction, entropy, grad norm, learning rate, step time. `tools/plot_run.py` is the
command-line wrapper.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
from typing import Optional, Sequence

import numpy as np

# Figure objects, never pyplot: no GUI backend is selected or needed.
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from r1jax.train.metrics import read_metrics

# Series kinds: "line" (per-step train metric, smoothable), "light" (faint companion such
# as the max), "marker" (sparse eval points), "right" (line on a second y axis).


@dataclasses.dataclass(frozen=True)
class Panel:
  """One subplot: `keys` are exact metric names, or prefixes when they end with "*"."""
  name: str
  title: str
  ylabel: str
  keys: tuple[tuple[str, str], ...]  # (key or "prefix*", kind)
  ylabel_right: str = ""
  sci_y: bool = False  # scientific y tick labels (tiny values)
  smooth: bool = True  # False for schedules: a moving average would misdraw them


PANELS = (
  Panel("accuracy", "Accuracy", "accuracy",
        (("accuracy", "line"), ("accuracy_reasoning", "line"), ("eval/accuracy_greedy", "marker"),
         ("eval/accuracy_sampled", "marker"), ("eval/accuracy*", "marker"))),
  Panel("response_len", "Mean response length", "tokens",
        (("response_len_mean", "line"), ("response_len_max", "light"),
         ("response_len_finished", "line"), ("response_len_correct", "line"),
         ("eval/response_len_greedy", "marker"), ("eval/response_len_sampled", "marker"),
         ("eval/response_len*", "marker"), ("response_len_gap", "right")),
        ylabel_right="right - wrong in a group (tokens)"),
  Panel("reward", "Reward", "reward", (("reward", "line"), ("reward/*", "line"))),
  # All-scenario RL: each reward over the prompts it scores (reasoning / general).
  Panel("reward_by_kind", "Reward by prompt kind", "reward",
        (("reward_reasoning", "line"), ("reward_general", "line"),
         ("reward_general/*", "line"))),
  Panel("format_rate", "Format rate", "fraction well formatted",
        (("format_rate", "line"), ("eval/format_rate_greedy", "marker"),
         ("eval/format_rate*", "marker"))),
  Panel("tools", "Tool calls (tool rollouts)", "fraction of samples calling",
        (("tool/call_rate", "line"), ("eval/tool_call_rate*", "marker"),
         ("tool/calls_per_sample", "right")), ylabel_right="calls per sample"),
  Panel("kl_clip", "KL to reference / clip fraction", "KL",
        (("kl", "line"), ("clip_frac", "right")), ylabel_right="clip fraction"),
  Panel("entropy", "Policy entropy", "nats / token", (("entropy", "line"),)),
  Panel("grad_norm", "Gradient norm", "global norm", (("grad_norm", "line"),)),
  Panel("lr", "Learning rate", "lr", (("lr", "line"), ("learning_rate", "line")),
        sci_y=True, smooth=False),
  Panel("step_time", "Step time", "seconds", (("step_s", "line"), ("step_time", "line"))),
)

_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v")


def load_series(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{key: (steps, values)} sorted by step; a step logged twice keeps its last value."""
  by_key: dict[str, dict[int, float]] = {}
  for rec in records:
    step = rec.get("step")
    if not isinstance(step, (int, float)) or isinstance(step, bool):
      continue
    for k, v in rec.items():
      if k in ("step", "time"):
        continue
      if v is None:
        by_key.setdefault(k, {})[int(step)] = math.nan
      elif isinstance(v, (int, float)) and not isinstance(v, bool):
        by_key.setdefault(k, {})[int(step)] = float(v)
  out = {}
  for k, d in by_key.items():
    steps = np.array(sorted(d), dtype=np.int64)
    vals = np.array([d[s] for s in steps], dtype=np.float64)
    keep = np.isfinite(vals)
    if keep.any():
      out[k] = (steps[keep], vals[keep])
  return out


def smooth(values: np.ndarray, window: int) -> np.ndarray:
  """Trailing moving average over `window` points (fewer at the start)."""
  if window <= 1 or len(values) == 0:
    return values
  c = np.cumsum(np.insert(values, 0, 0.0))
  idx = np.arange(1, len(values) + 1)
  lo = np.maximum(idx - window, 0)
  return (c[idx] - c[lo]) / (idx - lo)


def panel_keys(panel: Panel, available) -> list[tuple[str, str]]:
  """The (key, kind) pairs of `panel` present in `available`, each key once, in order."""
  seen, out = set(), []
  for pattern, kind in panel.keys:
    if pattern.endswith("*"):
      matches = sorted(k for k in available if k.startswith(pattern[:-1]))
    else:
      matches = [pattern] if pattern in available else []
    for k in matches:
      if k not in seen:
        seen.add(k)
        out.append((k, kind))
  return out


def run_labels(run_dirs: list[pathlib.Path]) -> list[str]:
  """Dir names as labels; parent/name where names collide."""
  names = [p.name for p in run_dirs]
  if len(set(names)) == len(names):
    return names
  return [f"{p.parent.name}/{p.name}" for p in run_dirs]


def _draw_panel(ax, panel: Panel, runs: list[tuple[str, dict]], smooth_n: int) -> int:
  """Draw `panel` on `ax`; returns the number of series drawn.

  One run: a colour per series. Several runs: colour = run (figure legend), line style /
  marker = series (panel legend in grey), the same for every run.
  """
  multi = len(runs) > 1
  keys: list[tuple[str, str]] = []
  for _, series in runs:
    keys += [kk for kk in panel_keys(panel, series) if kk not in keys]
  if not keys:
    return 0
  ax_right = None
  handles = {}
  n = 0
  colors, color_i = {}, 0
  for j, (key, kind) in enumerate(keys):
    # A "light" series shares the colour of the line it accompanies.
    if kind == "light" and color_i > 0:
      colors[key] = f"C{color_i - 1}"
    else:
      colors[key] = f"C{color_i % 10}"
      color_i += 1
  styles = {key: (_LINESTYLES[j % len(_LINESTYLES)] if multi else
                  "--" if kind == "right" else ":" if kind == "light" else "-")
            for j, (key, kind) in enumerate(keys)}
  markers = {key: _MARKERS[j % len(_MARKERS)] for j, (key, _) in enumerate(keys)}
  for r, (label, series) in enumerate(runs):
    for key, kind in keys:
      if key not in series:
        continue
      steps, vals = series[key]
      color = f"C{r % 10}" if multi else colors[key]
      style = styles[key]
      target = ax
      if kind == "right":
        if ax_right is None:
          ax_right = ax.twinx()
          ax_right.set_ylabel(panel.ylabel_right)
        target = ax_right
      marker = markers[key] if kind == "marker" else None
      if kind == "marker":
        target.plot(steps, vals, color=color, linestyle=style, linewidth=1.2, marker=marker,
                    markersize=4, zorder=3)
      elif kind == "light":
        target.plot(steps, vals, color=color, linestyle=style, linewidth=1.0, alpha=0.45)
      elif smooth_n > 1 and panel.smooth and len(vals) > 1:
        target.plot(steps, vals, color=color, linestyle=style, linewidth=0.8, alpha=0.25)
        target.plot(steps, smooth(vals, smooth_n), color=color, linestyle=style,
                    linewidth=2.0)
      else:
        target.plot(steps, vals, color=color, linestyle=style, linewidth=1.5)
      if key not in handles:
        handles[key] = Line2D([], [], color="0.3" if multi else color, linestyle=style,
                              marker=marker, markersize=4,
                              alpha=0.6 if kind == "light" else 1.0,
                              linewidth=1.0 if kind == "light" else 1.8, label=key)
      n += 1
  ax.set_title(panel.title, fontsize=10)
  ax.set_xlabel("step")
  ax.set_ylabel(panel.ylabel)
  ax.grid(True, alpha=0.3)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
  if panel.sci_y:
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
  if len(handles) > 1:
    ax.legend(handles=list(handles.values()), fontsize=7, loc="best", framealpha=0.8)
  return n


def plot_runs(run_dirs, out, *, smooth_n: int = 0, title: str | None = None,
              panels: Optional[Sequence[str]] = None) -> dict:
  """Draw the curves of `run_dirs` into the PNG `out`; returns the summary dict.

  Args:
    panels: names of PANELS to draw, in this order (None = every panel with data).

  Raises:
    ValueError: an unknown panel name.
  """
  known = [p.name for p in PANELS]
  unknown = [p for p in (panels or ()) if p not in known]
  if unknown:
    raise ValueError(f"unknown panel(s) {', '.join(unknown)} (known: {', '.join(known)})")
  run_dirs = [pathlib.Path(d) for d in run_dirs]
  dirs = [d if d.is_dir() else d.parent for d in run_dirs]  # a metrics.jsonl path works too
  labels = run_labels([d.resolve() for d in dirs])
  runs = []
  all_steps: set[int] = set()
  for label, d in zip(labels, run_dirs):
    series = load_series(read_metrics(d))
    runs.append((label, series))
    for steps, _ in series.values():
      all_steps.update(int(s) for s in steps)

  chosen = [next(p for p in PANELS if p.name == name) for name in panels] if panels else PANELS
  panels = [p for p in chosen if any(panel_keys(p, s) for _, s in runs)]
  n = max(1, len(panels))
  ncols = 1 if n == 1 else 2 if n <= 4 else 3
  nrows = math.ceil(n / ncols)
  fig = Figure(figsize=(5.2 * ncols, 3.5 * nrows + 0.5), layout="constrained")
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  drawn = []
  for ax, panel in zip(axes, panels):
    if _draw_panel(ax, panel, runs, smooth_n):
      drawn.append(panel.name)
  if all_steps:
    lo, hi = min(all_steps), max(all_steps)
    pad = max(1, (hi - lo) * 0.02)
    for ax in axes[:len(panels)]:
      ax.set_xlim(lo - pad, hi + pad)
  if len(runs) > 1:
    fig.legend(handles=[Line2D([], [], color=f"C{r % 10}", linewidth=2.5, label=label)
                        for r, (label, _) in enumerate(runs)],
               loc="outside lower center", ncol=min(len(runs), 4), fontsize=9, frameon=False)
  if not panels:
    axes[0].text(0.5, 0.5, "no plottable metrics", ha="center", va="center",
                 transform=axes[0].transAxes)
    axes[0].set_axis_off()
  for ax in axes[max(1, len(panels)):]:
    ax.set_axis_off()
  if title is None:
    title = " vs ".join(labels)
    if all_steps:
      title += f"  (steps {min(all_steps)}-{max(all_steps)}"
      title += f", smoothed over {smooth_n})" if smooth_n > 1 else ")"
  fig.suptitle(title, fontsize=12)
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=110)
  return {"out": str(out), "steps": len(all_steps),
          "last_step": max(all_steps) if all_steps else None,
          "panels": drawn, "runs": labels}


def plot_run_dir(run_dir, *, smooth_n: int = 0) -> Optional[dict]:
  """Draw RUN_DIR/curves.png from RUN_DIR/metrics.jsonl; returns the summary, or None when
  there is no metrics file. Never raises: a plot must not fail a finished run (a failure is
  logged as a warning)."""
  run_dir = pathlib.Path(run_dir)
  if not (run_dir / "metrics.jsonl").is_file():
    return None
  try:
    return plot_runs([run_dir], run_dir / "curves.png", smooth_n=smooth_n)
  except Exception as e:  # matplotlib / file errors: the run itself has succeeded
    logging.warning("plotting %s failed: %s", run_dir, e)
    return None
