"""Run logging: metrics as JSON lines + TensorBoard, sample completions, config, progress bar.

A run directory holds

  metrics.jsonl   one line per `MetricsWriter.write` call: {"step", "time", **metrics}
  samples.jsonl   one line per sample: {"step", **sample}
  config.json     the run's configuration
  tensorboard/    TensorBoard event files (scalars, sample tables, config)

and, optionally, the same records go to experiment trackers behind the same interface
(`Tracker`: log / log_samples / log_config / close): `WandbTracker` (Weights & Biases) and
`MlflowTracker` (MLflow), off unless configured (`log.wandb_project`,
`log.mlflow_experiment`); their packages are imported only then.

metrics.jsonl is the source of truth for `tools/plot_run.py` (accuracy and mean response
length against step, as DeepSeek-R1's figures 2 and 3 plot them); TensorBoard is for watching a live run. Only one
process should write a run directory (on multi-host, process 0).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import pathlib
import sys
import time
import warnings
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import tqdm

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
CONFIG_FILE = "config.json"
TENSORBOARD_DIR = "tensorboard"

_RESERVED = ("step", "time")
_TB_FILE_IDS = itertools.count()


def _scalar(key: str, value: Any) -> Any:
  """One metric value as a JSON-safe Python scalar: int, float, None (NaN/inf) or str."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, (bool, np.bool_)):
    return int(value)
  if isinstance(value, int):
    return value
  if isinstance(value, float):
    value = float(value)  # np.float64 is a float subclass
    return value if math.isfinite(value) else None
  try:
    a = np.asarray(value)  # numpy scalars, 0-d / 1-element numpy or jax arrays
  except Exception as e:
    raise TypeError(f"metric {key!r}: cannot convert {type(value).__name__} to a scalar") from e
  if a.size != 1:
    raise ValueError(f"metric {key!r} is not a scalar (shape {a.shape})")
  a = a.reshape(())
  if a.dtype.kind in "iu":
    return int(a)  # exact for large counters (tokens seen, ...)
  if a.dtype.kind == "b":
    return int(a)
  if a.dtype.kind in "fc":
    f = float(a.real)
    return f if math.isfinite(f) else None
  raise TypeError(f"metric {key!r}: unsupported dtype {a.dtype}")


def _jsonable(obj: Any) -> Any:
  """`obj` (nested dicts/lists, numpy/jax values, dataclasses, ConfigDicts) as plain JSON data."""
  if obj is None or isinstance(obj, (str, bool, int)):
    return obj
  if isinstance(obj, float):
    return float(obj) if math.isfinite(obj) else None
  if isinstance(obj, Mapping):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple, set, frozenset)):
    return [_jsonable(v) for v in obj]
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return _jsonable(dataclasses.asdict(obj))
  if hasattr(obj, "to_dict") and callable(obj.to_dict):  # ml_collections.ConfigDict
    return _jsonable(obj.to_dict())
  if isinstance(obj, (np.generic, np.ndarray)) or hasattr(obj, "__array__"):
    try:
      return _jsonable(np.asarray(obj).tolist())
    except Exception:
      pass
  if isinstance(obj, (pathlib.PurePath, type)):
    return str(obj)
  return getattr(obj, "__name__", None) or str(obj)


def _dumps(record: Mapping[str, Any]) -> str:
  """One JSON line (strict: NaN must have become null already)."""
  return json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))


def _drop_partial_tail(path: pathlib.Path) -> None:
  """Cut a last line without its newline (a crash mid-write) so appends start on a new line."""
  if not path.exists():
    return
  with open(path, "rb+") as f:
    end = f.seek(0, os.SEEK_END)
    if end == 0:
      return
    f.seek(end - 1)
    if f.read(1) == b"\n":
      return
    # Scan backwards in chunks for the previous newline.
    pos, chunk = end, 1 << 16
    cut = 0
    while pos > 0:
      start = max(0, pos - chunk)
      f.seek(start)
      buf = f.read(pos - start)
      i = buf.rfind(b"\n")
      if i >= 0:
        cut = start + i + 1
        break
      pos = start
    f.truncate(cut)
  warnings.warn(f"{path}: dropped a truncated last line ({end - cut} bytes) from an "
                "interrupted run", RuntimeWarning, stacklevel=3)


def _line_step(line: str) -> Optional[int]:
  """The "step" of a JSON line, or None when the line does not parse."""
  try:
    rec = json.loads(line)
    return int(rec["step"])
  except (ValueError, KeyError, TypeError):
    return None


class MetricsWriter:
  """Appends metrics/samples of one run to `run_dir` (JSON lines + TensorBoard).

  Opening an existing `run_dir` appends (resume); call `truncate_after(step)` when resuming
  from a checkpoint older than the last logged step, so the curves have no duplicates.
  Each `write` is flushed to metrics.jsonl at once (a crash loses nothing, and a live run
  can be plotted); TensorBoard events are flushed every `flush_secs`.

    with MetricsWriter("runs/r1zero") as w:
      w.write_config(cfg)
      w.write(step, {"reward": 0.4, "accuracy": 0.35})
      w.write(step, {"accuracy_greedy": 0.41}, prefix="eval/")
  """

  def __init__(self, run_dir, *, tensorboard: bool = True, flush_secs: int = 30,
               trackers: Sequence["Tracker"] = ()):
    self.trackers = list(trackers)
    self.run_dir = pathlib.Path(run_dir)
    self.run_dir.mkdir(parents=True, exist_ok=True)
    self.metrics_path = self.run_dir / METRICS_FILE
    self.samples_path = self.run_dir / SAMPLES_FILE
    self.config_path = self.run_dir / CONFIG_FILE
    self.tensorboard_dir = self.run_dir / TENSORBOARD_DIR
    self._use_tb = tensorboard
    self._flush_secs = flush_secs
    self._tb = None  # created on first use so truncate_after can set purge_step first
    self._purge_step: Optional[int] = None
    self._metrics_f = None
    self._samples_f = None
    self._closed = False
    _drop_partial_tail(self.metrics_path)
    _drop_partial_tail(self.samples_path)

  # -- files ---------------------------------------------------------------

  def _metrics_file(self):
    if self._metrics_f is None:
      self._metrics_f = open(self.metrics_path, "a", encoding="utf-8")
    return self._metrics_f

  def _samples_file(self):
    if self._samples_f is None:
      self._samples_f = open(self.samples_path, "a", encoding="utf-8")
    return self._samples_f

  def _tensorboard(self):
    if not self._use_tb:
      return None
    if self._tb is None:
      from tensorboardX import SummaryWriter
      # purge_step makes TensorBoard hide events at steps >= it from earlier event files.
      # The suffix keeps file names unique: tensorboardX names them by the second and opens
      # them with "wb", so a writer reopened within a second would clobber the last one.
      self._tb = SummaryWriter(str(self.tensorboard_dir), purge_step=self._purge_step,
                               flush_secs=self._flush_secs,
                               filename_suffix=f".{os.getpid()}.{next(_TB_FILE_IDS)}")
      self._purge_step = None
    return self._tb

  def _check_open(self):
    if self._closed:
      raise RuntimeError(f"MetricsWriter({self.run_dir}) is closed")

  # -- writing -------------------------------------------------------------

  def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> dict:
    """Log scalar `metrics` at `step` (keys get `prefix`, e.g. "eval/"); returns the record.

    Values: Python/numpy/jax scalars (or 1-element arrays); NaN/inf are written as null
    (and not sent to TensorBoard); strings go to the JSON line only.
    """
    self._check_open()
    step = int(step)
    now = time.time()
    record: dict[str, Any] = {"step": step, "time": now}
    for k, v in metrics.items():
      key = f"{prefix}{k}"
      if key in _RESERVED:
        raise ValueError(f"metric key {key!r} is reserved")
      record[key] = _scalar(key, v)
    f = self._metrics_file()
    f.write(_dumps(record) + "\n")
    f.flush()
    tb = self._tensorboard()
    if tb is not None:
      for key, v in record.items():
        if key in _RESERVED or v is None or isinstance(v, str):
          continue
        tb.add_scalar(key, v, step, walltime=now)
    scalars = {k: v for k, v in record.items()
               if k not in _RESERVED and v is not None and not isinstance(v, str)}
    for t in self.trackers:
      t.log(step, scalars)
    return record

  def write_samples(self, step: int, samples: Sequence[Mapping[str, Any]], *,
                    tb_rows: int = 4, tb_max_chars: int = 600) -> None:
    """Append `samples` (e.g. {"prompt", "completion", "reward", "answer"}) at `step`.

    Every sample goes to samples.jsonl; the first `tb_rows` also go to TensorBoard as a
    markdown table under the "samples" text tag (cells cut to `tb_max_chars`).
    """
    self._check_open()
    step = int(step)
    rows = [_jsonable(dict(s)) for s in samples]
    if not rows:
      return
    f = self._samples_file()
    for row in rows:
      row.pop("step", None)
      f.write(_dumps({"step": step, **row}) + "\n")
    f.flush()
    tb = self._tensorboard()
    if tb is not None:
      tb.add_text("samples", samples_markdown(rows[:tb_rows], max_chars=tb_max_chars), step)
    for t in self.trackers:
      t.log_samples(step, rows)

  def write_config(self, config: Any) -> None:
    """Write `config` (dict, dataclass or ConfigDict) to config.json (and TensorBoard text)."""
    self._check_open()
    data = _jsonable(config)
    tmp = self.config_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, self.config_path)
    tb = self._tensorboard()
    if tb is not None:
      # Indented by 4 spaces: TensorBoard renders it as a code block.
      text = "\n".join("    " + line for line in json.dumps(data, indent=2).splitlines())
      tb.add_text("config", text, 0)
    for t in self.trackers:
      t.log_config(data)

  def truncate_after(self, step: int) -> dict[str, int]:
    """Remove lines with step > `step` from metrics.jsonl and samples.jsonl (resume).

    TensorBoard is told to hide its later events too (purge_step = step + 1).
    Returns the number of lines removed per file.
    """
    self._check_open()
    step = int(step)
    for attr in ("_metrics_f", "_samples_f"):
      fh = getattr(self, attr)
      if fh is not None:
        fh.close()
        setattr(self, attr, None)
    removed = {}
    for path in (self.metrics_path, self.samples_path):
      removed[path.name] = 0
      if not path.exists():
        continue
      tmp = path.with_name(path.name + ".tmp")
      with open(path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
        for line in src:
          s = _line_step(line)
          if s is not None and s <= step:
            dst.write(line if line.endswith("\n") else line + "\n")
          elif line.strip():
            removed[path.name] += 1
      os.replace(tmp, path)
    if self._use_tb:
      if self._tb is not None:
        self._tb.close()
        self._tb = None
      self._purge_step = step + 1
    return removed

  # -- lifecycle -----------------------------------------------------------

  def flush(self) -> None:
    """Flush all files and TensorBoard events to disk."""
    for fh in (self._metrics_f, self._samples_f):
      if fh is not None:
        fh.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flush and close everything (idempotent)."""
    if self._closed:
      return
    self.flush()
    for attr in ("_metrics_f", "_samples_f"):
      fh = getattr(self, attr)
      if fh is not None:
        fh.close()
        setattr(self, attr, None)
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    for t in self.trackers:
      t.close()
    self._closed = True

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# ---------------------------------------------------------------------- experiment trackers
class Tracker:
  """What MetricsWriter forwards to an experiment tracker (process 0 only).

  log(step, scalars): {key: int | float} of one `write` (keys with their prefix, e.g.
    "eval/accuracy_greedy"; NaN/inf and strings already dropped).
  log_samples(step, rows): sample dicts as written to samples.jsonl.
  log_config(config): the run's configuration as plain JSON data.
  close(): finish the tracker's run.
  """

  def log(self, step: int, scalars: Mapping[str, Any]) -> None:
    raise NotImplementedError

  def log_samples(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
    del step, rows

  def log_config(self, config: Mapping[str, Any]) -> None:
    del config

  def close(self) -> None:
    pass


def _import(module: str, key: str):
  import importlib
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f"{key} is set but {module} is not installed (pip install {module}; "
                      f"or set {key}=\"\")") from e


def _run_id(run_dir: pathlib.Path, name: str) -> Optional[str]:
  """The tracker run id kept in run_dir/name by an earlier start of this run, or None."""
  path = run_dir / name
  if not path.exists():
    return None
  return path.read_text(encoding="utf-8").strip() or None


def _keep_run_id(run_dir: pathlib.Path, name: str, run_id: str) -> None:
  tmp = run_dir / (name + ".tmp")
  tmp.write_text(run_id + "\n", encoding="utf-8")
  os.replace(tmp, run_dir / name)


class WandbTracker(Tracker):
  """Weights & Biases: one W&B run per run directory.

  The W&B run id is kept in run_dir/wandb_run_id, so a resumed run continues the same W&B
  run (wandb.init(id=..., resume="allow")). W&B's history only grows: after a resume from a
  checkpoint older than the last logged step, the repeated steps keep their first values
  (equal ones, as resume is exact), while metrics.jsonl is truncated and rewritten.

  Args:
    run_dir: the run directory (its name is the W&B run name).
    project, entity: W&B project and entity ("" = the default entity).

  Raises:
    ImportError: wandb is not installed (naming log.wandb_project).
  """
  ID_FILE = "wandb_run_id"

  def __init__(self, run_dir, *, project: str, entity: str = ""):
    wandb = _import("wandb", "log.wandb_project")
    run_dir = pathlib.Path(run_dir)
    run_id = _run_id(run_dir, self.ID_FILE) or wandb.util.generate_id()
    self.run = wandb.init(project=project, entity=entity or None, id=run_id, resume="allow",
                          name=run_dir.name, dir=str(run_dir))
    _keep_run_id(run_dir, self.ID_FILE, run_id)
    self._wandb = wandb

  def log(self, step, scalars):
    self.run.log(dict(scalars), step=int(step))

  def log_samples(self, step, rows):
    cols = list(dict.fromkeys(k for r in rows for k in r))
    table = self._wandb.Table(columns=cols, data=[[_jsonable(r.get(c)) for c in cols]
                                                  for r in rows])
    self.run.log({"samples": table}, step=int(step))

  def log_config(self, config):
    self.run.config.update(config, allow_val_change=True)

  def close(self):
    self.run.finish()


class MlflowTracker(Tracker):
  """MLflow: one MLflow run per run directory, in `experiment`.

  The MLflow run id is kept in run_dir/mlflow_run_id, so a resumed run logs into the same
  MLflow run (repeated steps are logged again; MLflow keeps every value with its step).
  Samples go to the run's artifacts as samples/step_<step>.json, the config as config.json.

  Args:
    run_dir: the run directory (its name is the MLflow run name).
    experiment: MLflow experiment name (created when missing).
    tracking_uri: "" = MLflow's default (MLFLOW_TRACKING_URI or ./mlruns).

  Raises:
    ImportError: mlflow is not installed (naming log.mlflow_experiment).
  """
  ID_FILE = "mlflow_run_id"

  def __init__(self, run_dir, *, experiment: str, tracking_uri: str = ""):
    mlflow = _import("mlflow", "log.mlflow_experiment")
    run_dir = pathlib.Path(run_dir)
    if tracking_uri:
      mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    run_id = _run_id(run_dir, self.ID_FILE)
    self.run = (mlflow.start_run(run_id=run_id) if run_id
                else mlflow.start_run(run_name=run_dir.name))
    _keep_run_id(run_dir, self.ID_FILE, self.run.info.run_id)
    self._mlflow = mlflow

  def log(self, step, scalars):
    self._mlflow.log_metrics({k: float(v) for k, v in scalars.items()}, step=int(step))

  def log_samples(self, step, rows):
    self._mlflow.log_dict([dict(r) for r in rows], f"samples/step_{int(step)}.json")

  def log_config(self, config):
    self._mlflow.log_dict(dict(config), "config.json")

  def close(self):
    self._mlflow.end_run()


TRACKERS = {"wandb": WandbTracker, "mlflow": MlflowTracker}


def make_trackers(specs: Sequence[tuple[str, Any]], run_dir) -> list[Tracker]:
  """Trackers from (kind, options) pairs (r1jax.train.loop.tracker_settings), e.g.
  [("wandb", (("project", "r1"),))].

  Raises:
    ValueError: an unknown kind; ImportError: its package is missing.
  """
  out = []
  for kind, options in specs:
    if kind not in TRACKERS:
      raise ValueError(f"unknown experiment tracker {kind!r}; known: {', '.join(TRACKERS)}")
    out.append(TRACKERS[kind](run_dir, **dict(options)))
  return out


def samples_markdown(rows: Sequence[Mapping[str, Any]], *, max_chars: int = 600) -> str:
  """A markdown table of `rows` (columns: union of keys in first-seen order)."""
  cols: list[str] = []
  for r in rows:
    cols.extend(k for k in r if k not in cols and k != "step")

  def cell(v: Any) -> str:
    if isinstance(v, float):
      s = f"{v:.4g}"
    elif isinstance(v, str):
      s = v
    else:
      s = json.dumps(v, ensure_ascii=False)
    if len(s) > max_chars:
      s = s[:max_chars] + " …"
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")

  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
  return "\n".join(lines)


def read_metrics(run_dir) -> list[dict]:
  """The records of `run_dir`/metrics.jsonl (or of a .jsonl path), in file order.

  A truncated last line (crash mid-write) is skipped with a warning; so is any other line
  that does not parse. Raises FileNotFoundError when there is no metrics file.
  """
  path = pathlib.Path(run_dir)
  if path.is_dir():
    path = path / METRICS_FILE
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  out = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
      if not isinstance(rec, dict):
        raise ValueError("not an object")
    except ValueError:
      what = "truncated last line" if i == len(lines) - 1 else f"unparsable line {i + 1}"
      warnings.warn(f"{path}: skipped {what}", RuntimeWarning, stacklevel=2)
      continue
    out.append(rec)
  return out


def _fmt3(v: Any) -> str:
  """`v` to 3 significant digits, with k/M suffixes for large values (1234 -> "1.23k")."""
  if v is None:
    return "nan"
  if isinstance(v, str):
    return v
  if isinstance(v, int) and abs(v) < 1000:
    return str(v)
  if not math.isfinite(float(v)):
    return str(float(v))
  x = float(f"{float(v):.3g}")  # round first so 999999 becomes 1M, not 1e+03k
  for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
    if 1000 > abs(x) / scale >= 1 or (suffix == "G" and abs(x) >= scale):
      return f"{x / scale:.3g}{suffix}"
  return f"{x:.3g}"


class ProgressBar:
  """A tqdm bar over training steps with a compact postfix of chosen metrics.

  `update(step, metrics)` moves the bar to `step` and shows `keys` (a missing key also
  matches `key + "_mean"`, so "response_len" shows response_len_mean) to 3 significant
  digits. Off a TTY (log files) it redraws at most every `log_interval` seconds.
  """

  def __init__(self, total_steps: int, initial: int = 0,
               keys: Iterable[str] = ("reward", "accuracy", "response_len", "step_s"), *,
               desc: str = "train", log_interval: float = 30.0, file=None, **tqdm_kwargs):
    self.keys = tuple(keys)
    file = file if file is not None else sys.stderr
    isatty = bool(getattr(file, "isatty", lambda: False)())
    self._bar = tqdm.tqdm(total=total_steps, initial=initial, desc=desc, unit="step",
                          file=file, dynamic_ncols=True, mininterval=0.5 if isatty
                          else log_interval, **tqdm_kwargs)

  def postfix(self, metrics: Mapping[str, Any]) -> str:
    """The postfix string for `metrics`, e.g. "reward=0.412 accuracy=0.35"."""
    parts = []
    for k in self.keys:
      v = metrics.get(k, metrics.get(f"{k}_mean"))
      if v is not None:
        parts.append(f"{k}={_fmt3(_scalar(k, v))}")
    return " ".join(parts)

  def update(self, step: int, metrics: Optional[Mapping[str, Any]] = None) -> None:
    """Move the bar to `step` (steps done) and show `metrics`."""
    if metrics:
      self._bar.set_postfix_str(self.postfix(metrics), refresh=False)
    # update() redraws at most every mininterval; a same-step call shows on the next one.
    self._bar.update(max(0, int(step) - self._bar.n))

  def write(self, msg: str) -> None:
    """Print `msg` above the bar without breaking it."""
    self._bar.write(msg)

  def close(self) -> None:
    """Close the bar."""
    self._bar.close()

  def __enter__(self) -> "ProgressBar":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
