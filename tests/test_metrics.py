"""MetricsWriter (JSON lines, TensorBoard, resume), read_metrics, ProgressBar, tools/plot_run.py."""

import importlib.util
import io
import json
import math
import pathlib
import struct
import sys

import numpy as np
import pytest

from r1jax.train import metrics as M

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_plot_run():
  spec = importlib.util.spec_from_file_location("plot_run", ROOT / "tools" / "plot_run.py")
  mod = importlib.util.module_from_spec(spec)
  sys.modules["plot_run"] = mod  # dataclasses look their module up there
  spec.loader.exec_module(mod)
  return mod


def _lines(path):
  return [json.loads(l) for l in path.read_text().splitlines()]


def _tb_events(tb_dir):
  """The Event protos of each TFRecord event file under `tb_dir`, files in creation order."""
  from tensorboardX.proto import event_pb2
  files = sorted(pathlib.Path(tb_dir).glob("events.out.tfevents.*"),
                 key=lambda f: int(f.name.rsplit(".", 1)[-1]))  # our per-process counter
  out = []
  for f in files:
    data, pos, events = f.read_bytes(), 0, []
    while pos + 12 <= len(data):
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + n]))
      pos += 12 + n + 4  # length, length crc, payload, payload crc
    out.append(events)
  return out


def _tb_scalars(tb_dir):
  """{tag: [(step, value)]} from the event files under `tb_dir`."""
  out = {}
  for events in _tb_events(tb_dir):
    for ev in events:
      for v in ev.summary.value:
        if v.HasField("simple_value"):
          out.setdefault(v.tag, []).append((ev.step, v.simple_value))
  return out


def test_write_round_trip(tmp_path):
  jnp = pytest.importorskip("jax.numpy")
  with M.MetricsWriter(tmp_path, tensorboard=False) as w:
    rec = w.write(3, {"reward": 0.5, "n": 7, "a": np.float32(0.25), "b": np.int64(12),
                      "c": jnp.asarray(1.5), "bad": float("nan"), "inf": np.float64(np.inf),
                      "flag": True})
    w.write(3, {"accuracy_greedy": 0.4}, prefix="eval/")
  assert rec["reward"] == 0.5 and rec["bad"] is None
  got = _lines(tmp_path / "metrics.jsonl")
  assert len(got) == 2
  r0, r1 = got
  assert r0["step"] == 3 and isinstance(r0["time"], float)
  assert r0["reward"] == 0.5 and r0["n"] == 7 and r0["a"] == 0.25 and r0["b"] == 12
  assert r0["c"] == 1.5 and isinstance(r0["c"], float)
  assert r0["bad"] is None and r0["inf"] is None and r0["flag"] == 1
  assert "NaN" not in (tmp_path / "metrics.jsonl").read_text()
  assert r1 == {"step": 3, "time": r1["time"], "eval/accuracy_greedy": 0.4}
  assert M.read_metrics(tmp_path) == got


def test_write_rejects_arrays_and_reserved_keys(tmp_path):
  with M.MetricsWriter(tmp_path, tensorboard=False) as w:
    with pytest.raises(ValueError):
      w.write(0, {"x": np.zeros(3)})
    with pytest.raises(ValueError):
      w.write(0, {"step": 1})


def test_samples_and_config(tmp_path):
  with M.MetricsWriter(tmp_path) as w:
    w.write_config({"lr": 1e-6, "groups": 8, "path": pathlib.Path("/x"), "arr": np.arange(2)})
    w.write_samples(5, [{"prompt": "1+1=?", "completion": "<think>a|b\nc</think> 2",
                         "reward": np.float32(1.0)}, {"prompt": "2+2", "reward": float("nan")}])
  cfg = json.loads((tmp_path / "config.json").read_text())
  assert cfg == {"lr": 1e-6, "groups": 8, "path": "/x", "arr": [0, 1]}
  s = _lines(tmp_path / "samples.jsonl")
  assert [x["step"] for x in s] == [5, 5]
  assert s[0]["completion"].endswith("2") and s[0]["reward"] == 1.0 and s[1]["reward"] is None
  md = M.samples_markdown(s)
  assert md.splitlines()[0] == "| prompt | completion | reward |"
  assert "a\\|b<br>c" in md and len(md.splitlines()) == 4


def test_resume_and_truncate_after(tmp_path):
  with M.MetricsWriter(tmp_path) as w:
    for step in range(10):
      w.write(step, {"loss": float(step)})
      w.write_samples(step, [{"completion": f"s{step}"}])
  # Resume from a checkpoint at step 6: lines 7..9 go, new steps append after.
  with M.MetricsWriter(tmp_path) as w:
    removed = w.truncate_after(6)
    assert removed == {"metrics.jsonl": 3, "samples.jsonl": 3}
    for step in range(7, 9):
      w.write(step, {"loss": 100.0 + step})
  got = M.read_metrics(tmp_path)
  assert [r["step"] for r in got] == list(range(9))
  assert got[-1]["loss"] == 108.0 and got[6]["loss"] == 6.0
  assert [r["step"] for r in _lines(tmp_path / "samples.jsonl")] == list(range(7))
  # The resumed TensorBoard file starts with a purge at step 7 (hides the old 7..9), and
  # the first file is kept even though both were opened within the same second.
  events = _tb_events(tmp_path / "tensorboard")
  assert len(events) == 2
  starts = [e.step for e in events[1] if e.HasField("session_log")]
  assert starts == [7]
  def loss_steps(evs):
    return [e.step for e in evs for v in e.summary.value if v.tag == "loss"]
  assert loss_steps(events[0]) == list(range(10)) and loss_steps(events[1]) == [7, 8]


def test_tensorboard_scalars(tmp_path):
  with M.MetricsWriter(tmp_path) as w:
    w.write(1, {"reward": 0.25, "nan": float("nan")})
    w.write(2, {"accuracy_greedy": np.float32(0.5)}, prefix="eval/")
  files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert files and all(f.stat().st_size > 0 for f in files)
  scalars = _tb_scalars(tmp_path / "tensorboard")
  assert scalars["reward"] == [(1, 0.25)]
  assert scalars["eval/accuracy_greedy"] == [(2, 0.5)]
  assert "nan" not in scalars


def test_read_metrics_skips_truncated_last_line(tmp_path):
  with M.MetricsWriter(tmp_path, tensorboard=False) as w:
    w.write(0, {"a": 1.0})
    w.write(1, {"a": 2.0})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 2, "a": 3.')  # crash mid-write
  with pytest.warns(RuntimeWarning, match="truncated"):
    got = M.read_metrics(tmp_path)
  assert [r["step"] for r in got] == [0, 1]
  # Reopening drops the partial line, so the next record starts on its own line.
  with pytest.warns(RuntimeWarning, match="truncated"):
    w = M.MetricsWriter(tmp_path, tensorboard=False)
  w.write(2, {"a": 4.0})
  w.close()
  assert [r["a"] for r in M.read_metrics(tmp_path)] == [1.0, 2.0, 4.0]


def test_progress_bar_postfix():
  buf = io.StringIO()
  bar = M.ProgressBar(100, initial=10, file=buf, log_interval=0)
  metrics = {"reward": 0.41234, "accuracy": np.float32(0.5), "response_len_mean": 1234.5,
             "step_s": float("nan")}
  assert bar.postfix(metrics) == "reward=0.412 accuracy=0.5 response_len=1.23k step_s=nan"
  bar.update(11, metrics)
  bar.update(12, {"reward": 0.5})
  bar.close()
  assert "12/100" in buf.getvalue() and "reward=0.5" in buf.getvalue()


def synthetic_run(run_dir, steps=60, *, eval_every=10, with_eval=True, seed=0):
  """A run that looks like R1-Zero: accuracy and response length rise, KL grows."""
  rng = np.random.default_rng(seed)
  with M.MetricsWriter(run_dir, tensorboard=False) as w:
    for s in range(steps):
      t = s / max(1, steps - 1)
      acc = float(np.clip(0.15 + 0.5 * t + rng.normal(0, 0.05), 0, 1))
      fmt = float(np.clip(0.3 + 0.7 * (1 - math.exp(-6 * t)) + rng.normal(0, 0.03), 0, 1))
      length = 250 + 900 * t ** 1.5 + rng.normal(0, 40)
      w.write(s, {
        "reward": acc + 0.2 * fmt, "reward/accuracy": acc, "reward/format": 0.2 * fmt,
        "accuracy": acc, "format_rate": fmt, "response_len_mean": length,
        "response_len_max": min(4096, 2.5 * length + rng.normal(0, 100)),
        "kl": 0.002 + 0.05 * t ** 2 + abs(rng.normal(0, 0.003)),
        "clip_frac": 0.02 + abs(rng.normal(0, 0.01)),
        "entropy": 0.9 - 0.4 * t + rng.normal(0, 0.02),
        "grad_norm": abs(rng.normal(0.5, 0.15)) + 0.05,
        "lr": 1e-6 * min(1.0, (s + 1) / 10), "step_s": 30 + 20 * t + rng.normal(0, 2),
      })
      if with_eval and s % eval_every == 0:
        w.write(s, {"accuracy_greedy": min(1.0, acc + 0.05), "accuracy_sampled": acc,
                    "format_rate_greedy": fmt}, prefix="eval/")


def _check_png(path):
  data = pathlib.Path(path).read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_run_single(tmp_path, capsys):
  plot_run = _load_plot_run()
  synthetic_run(tmp_path / "run")
  assert plot_run.main([str(tmp_path / "run"), "--smooth", "5"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  summary = json.loads(lines[-1])
  assert summary["out"] == lines[0] == str(tmp_path / "run" / "curves.png")
  assert summary["steps"] == 60
  assert summary["panels"] == ["accuracy", "response_len", "reward", "format_rate", "kl_clip",
                               "entropy", "grad_norm", "lr", "step_time"]
  _check_png(summary["out"])


def test_plot_run_without_eval_and_sparse_keys(tmp_path, capsys):
  plot_run = _load_plot_run()
  run = tmp_path / "noeval"
  synthetic_run(run, steps=20, with_eval=False)
  out = tmp_path / "x.png"
  assert plot_run.main([str(run), "--out", str(out)]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  _check_png(out)
  assert "accuracy" in summary["panels"]
  # Only a couple of keys, with a null: panels without data are skipped, nothing crashes.
  sparse = tmp_path / "sparse"
  with M.MetricsWriter(sparse, tensorboard=False) as w:
    w.write(0, {"accuracy": 0.1, "kl": float("nan")})
    w.write(1, {"accuracy": 0.2, "other": 3})
  assert plot_run.main([str(sparse)]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["panels"] == ["accuracy"] and summary["steps"] == 2
  _check_png(summary["out"])


def test_plot_run_two_runs(tmp_path, capsys):
  plot_run = _load_plot_run()
  synthetic_run(tmp_path / "run_a", steps=40, seed=1)
  synthetic_run(tmp_path / "run_b", steps=30, seed=2, with_eval=False)
  out = tmp_path / "cmp.png"
  assert plot_run.main([str(tmp_path / "run_a"), str(tmp_path / "run_b"), "--out", str(out),
                        "--smooth", "3"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["runs"] == ["run_a", "run_b"] and summary["steps"] == 40
  _check_png(out)


def test_plot_run_chosen_panels_and_heldout_lengths(tmp_path, capsys):
  """--panels draws only the named panels, in that order; the GRPO stage's held-out
  lengths (eval/response_len_greedy|sampled) land in the length panel; an unknown panel is
  a one-line error."""
  from r1jax.train import plots
  plot_run = _load_plot_run()
  run = tmp_path / "run"
  synthetic_run(run, steps=12, eval_every=4)
  with M.MetricsWriter(run, tensorboard=False) as w:
    w.write(11, {"response_len_greedy": 40.0, "response_len_sampled": 55.0}, prefix="eval/")
  length = next(p for p in plots.PANELS if p.name == "response_len")
  keys = [k for k, _ in plots.panel_keys(length, plots.load_series(M.read_metrics(run)))]
  assert keys == ["response_len_mean", "response_len_max", "eval/response_len_greedy",
                  "eval/response_len_sampled"]
  out = tmp_path / "sig.png"
  assert plot_run.main([str(run), "--out", str(out), "--panels",
                        "response_len,accuracy"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["panels"] == ["response_len", "accuracy"]
  _check_png(out)
  assert plot_run.main([str(run), "--panels", "accuracy,nope"]) == 2
  assert "unknown panel(s) nope" in capsys.readouterr().err


def test_load_series_dedups_and_smooth():
  from r1jax.train import plots as plot_run
  recs = [{"step": 0, "a": 1.0}, {"step": 1, "a": 2.0}, {"step": 1, "a": 5.0},
          {"step": 2, "a": None}, {"step": 3, "b": "text"}]
  series = plot_run.load_series(recs)
  assert list(series) == ["a"]
  np.testing.assert_array_equal(series["a"][0], [0, 1])
  np.testing.assert_array_equal(series["a"][1], [1.0, 5.0])
  np.testing.assert_allclose(plot_run.smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2),
                             [1.0, 2.0, 4.0, 6.0])
