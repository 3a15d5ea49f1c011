"""Experiment trackers behind MetricsWriter (r1jax/train/metrics.py): Weights & Biases and
MLflow, tested with fake modules injected into sys.modules (neither package is needed);
off by default; the loop passes the log block's settings and resumes the same tracker run."""

import json
import sys
import types

import numpy as np
import pytest

from r1jax import configs
from r1jax.train import loop
from r1jax.train import metrics as metrics_lib


class _FakeWandbRun:
  def __init__(self, calls, **kwargs):
    self.calls, self.kwargs = calls, kwargs
    self.config = types.SimpleNamespace(update=lambda d, **kw: calls.append(("config", d)))

  def log(self, data, step=None):
    self.calls.append(("log", step, data))

  def finish(self):
    self.calls.append(("finish",))


def _fake_wandb(monkeypatch):
  calls, ids = [], iter(["run1", "run2"])
  mod = types.ModuleType("wandb")
  mod.util = types.SimpleNamespace(generate_id=lambda: next(ids))

  def init(**kwargs):
    calls.append(("init", kwargs))
    return _FakeWandbRun(calls, **kwargs)

  class Table:
    def __init__(self, columns, data):
      self.columns, self.data = columns, data

  mod.init, mod.Table = init, Table
  monkeypatch.setitem(sys.modules, "wandb", mod)
  return calls


def _fake_mlflow(monkeypatch):
  calls = []
  mod = types.ModuleType("mlflow")
  mod.set_tracking_uri = lambda uri: calls.append(("uri", uri))
  mod.set_experiment = lambda name: calls.append(("experiment", name))

  def start_run(run_id=None, run_name=None):
    calls.append(("start", run_id, run_name))
    return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id or "ml1"))

  mod.start_run = start_run
  mod.log_metrics = lambda m, step: calls.append(("metrics", step, m))
  mod.log_dict = lambda d, path: calls.append(("dict", path, d))
  mod.end_run = lambda: calls.append(("end",))
  monkeypatch.setitem(sys.modules, "mlflow", mod)
  return calls


def test_trackers_are_off_by_default():
  for name in ("grpo", "sft", "reward_model"):
    c = configs.load(name)
    assert c.log.wandb_project == "" and c.log.mlflow_experiment == ""
    assert loop.LoopSettings.from_config(c).trackers == ()


def test_wandb_gets_what_the_jsonl_gets(tmp_path, monkeypatch):
  calls = _fake_wandb(monkeypatch)
  (tr,) = metrics_lib.make_trackers([("wandb", (("project", "r1"), ("entity", "me")))], tmp_path)
  with metrics_lib.MetricsWriter(tmp_path, tensorboard=False, trackers=[tr]) as w:
    w.write_config({"rl": {"beta": 0.04}})
    rec = w.write(3, {"loss": np.float32(0.5), "n": np.int64(7), "bad": float("nan"),
                      "name": "x"})
    w.write(3, {"accuracy_greedy": 0.25}, prefix="eval/")
    w.write_samples(3, [{"question": "1+1", "completion": "2", "reward": 1.0}])
  assert calls[0] == ("init", dict(project="r1", entity="me", id="run1", resume="allow",
                                   name=tmp_path.name, dir=str(tmp_path)))
  assert ("config", {"rl": {"beta": 0.04}}) in calls
  logs = [c for c in calls if c[0] == "log"]
  # The same scalars as metrics.jsonl (NaN -> null and strings stay out of the tracker).
  assert logs[0] == ("log", 3, {"loss": 0.5, "n": 7})
  assert {k: v for k, v in rec.items() if k not in ("step", "time", "bad", "name")} == logs[0][2]
  assert logs[1] == ("log", 3, {"eval/accuracy_greedy": 0.25})
  table = logs[2][2]["samples"]
  assert table.columns == ["question", "completion", "reward"] and table.data == [["1+1", "2", 1.0]]
  assert calls[-1] == ("finish",)
  line = json.loads(open(tmp_path / "metrics.jsonl").readline())
  assert line["loss"] == 0.5 and line["bad"] is None
  # A resumed run continues the same W&B run.
  metrics_lib.make_trackers([("wandb", (("project", "r1"),))], tmp_path)[0].close()
  assert [c[1]["id"] for c in calls if c[0] == "init"] == ["run1", "run1"]


def test_mlflow_tracker(tmp_path, monkeypatch):
  calls = _fake_mlflow(monkeypatch)
  spec = [("mlflow", (("experiment", "r1"), ("tracking_uri", "file:/tmp/x")))]
  with metrics_lib.MetricsWriter(tmp_path, tensorboard=False,
                                 trackers=metrics_lib.make_trackers(spec, tmp_path)) as w:
    w.write(1, {"loss": 1.5})
    w.write_samples(1, [{"completion": "a"}])
  assert calls[:3] == [("uri", "file:/tmp/x"), ("experiment", "r1"), ("start", None, tmp_path.name)]
  assert ("metrics", 1, {"loss": 1.5}) in calls
  assert ("dict", "samples/step_1.json", [{"completion": "a"}]) in calls
  assert calls[-1] == ("end",)
  metrics_lib.make_trackers(spec, tmp_path)  # resume: the kept run id
  assert calls[-1] == ("start", "ml1", None)


def test_missing_package_names_the_key(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
  with pytest.raises(ImportError, match="log.wandb_project"):
    metrics_lib.make_trackers([("wandb", (("project", "r1"),))], tmp_path)
  with pytest.raises(ValueError, match="unknown experiment tracker"):
    metrics_lib.make_trackers([("neptune", ())], tmp_path)


def test_loop_logs_to_the_configured_tracker_and_saves_stage_state(tmp_path, monkeypatch):
  """loop.run with log.wandb_project set: every train/eval record goes to W&B too; the
  stage_state hook is saved in the checkpoint and given back on resume."""
  from test_train_loop import _Data, _trainer
  calls = _fake_wandb(monkeypatch)
  c = configs.load("sft:tiny")
  c.log.wandb_project = "proj"
  settings = loop.LoopSettings.from_config(c, steps=2)
  assert settings.trackers == (("wandb", (("project", "proj"), ("entity", ""))),)

  class Stage:
    def __init__(self):
      self.value, self.restored = 0, None

    def get_state(self):
      return {"value": self.value}

    def set_state(self, s):
      self.restored = s

  def run(steps, resume, stage):
    s = loop.LoopSettings(run_dir=str(tmp_path / "run"), steps=steps, resume=resume,
                          checkpoint_every=1, trackers=settings.trackers)
    tr, data = _trainer(), _Data()
    state = tr.init_state({"w": np.ones((3, 2), np.float32)})

    def step_fn(state, step):
      stage.value = step + 1
      state, m = tr.update(state, next(data), 4.0)
      return state, {"loss": float(m["loss"])}, None

    loop.run(s, trainer=tr, state=state, data=data, step_fn=step_fn,
             evaluate=lambda state, step: ({"acc": 0.5}, []), stage_state=stage)

  run(2, False, Stage())
  logged = [(c[1], sorted(c[2])) for c in calls if c[0] == "log"]
  assert logged == [(1, ["loss", "skipped_updates", "step_s"]),
                    (2, ["loss", "skipped_updates", "step_s"]), (2, ["eval/acc", "eval/seconds"])]
  stage = Stage()
  run(3, True, stage)
  assert stage.restored == {"value": 2}  # the state saved with checkpoint 2
  assert [c[1]["id"] for c in calls if c[0] == "init"] == ["run1", "run1"]
