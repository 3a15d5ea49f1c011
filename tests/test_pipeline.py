"""Stage `pipeline`: config structure and wiring, overrides, clear errors for stages that do
not exist yet (only when reached), and the tiny pipeline end to end: a SIGTERM mid-stage
stops it with the stage's checkpoint saved, re-running resumes that stage and completes with
run_dir/final_hf, and a further re-run skips every stage (DONE markers)."""

import json
import os
import signal

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from r1jax import configs, models
from r1jax.stages import pipeline
from r1jax.train import trainer as trainer_lib



def _load(name):
  return configs.load(name)


def test_r1_pipeline_config_wiring(tmp_path):
  c = _load("pipeline")
  pipeline.validate_config(c)
  assert c.order.split(",")[:6] == ["cold_start_sft", "reasoning_rl", "rejection_sampling",
                                   "sft", "reward_model", "all_scenario_rl"]
  c.run_dir = str(tmp_path)
  outs = {"cold_start_sft": {"model": "/x/cs/hf"}, "reasoning_rl": {"model": "/x/rl/hf"},
          "rejection_sampling": {"data": "/x/rs/samples.jsonl"}}
  rl = pipeline.stage_config(c, "reasoning_rl", outs)
  assert rl.stage == "grpo" and rl.model == "/x/cs/hf" and rl.resume == "auto"
  assert rl.run_dir == os.path.join(str(tmp_path), "reasoning_rl")
  # Stage 3 SFT: the *base* model on the rejection-sampling output (DeepSeek-R1, section 2.3.3).
  sft = pipeline.stage_config(c, "sft", outs)
  assert sft.model == c.model and sft.data.train_jsonl == "/x/rs/samples.jsonl"
  assert sft.num_epochs == 2.0 and sft.steps == 0
  rs = pipeline.stage_config(c, "rejection_sampling", outs)
  assert rs.model == "/x/rl/hf" and rs.run_dir == os.path.join(str(tmp_path),
                                                               "rejection_sampling")
  asr = pipeline.stage_config(c, "all_scenario_rl", dict(
      outs, sft={"model": "/x/sft/hf"}, reward_model={"model": "/x/rm/reward_model"}))
  assert asr.model == "/x/sft/hf" and asr.rewards.helpfulness_rm == "/x/rm/reward_model"
  ev = pipeline.stage_config(c, "eval", dict(outs, all_scenario_rl={"model": "/x/final"}))
  assert ev.run_dir == os.path.join(str(tmp_path), "eval") and ev.model == "/x/final"
  c.stages.distill.teacher_from = "all_scenario_rl"
  d = pipeline.stage_config(c, "distill", dict(outs, all_scenario_rl={"model": "/x/final"}))
  assert d.distill.teacher == "/x/final" and d.model == "smollm2-135m-instruct"


def test_pipeline_config_errors(tmp_path):
  c = _load("pipeline:tiny")
  c.stages.grpo.model_from = "eval"
  with pytest.raises(ValueError, match="model_from='eval' is not an enabled stage that runs"):
    pipeline.validate_config(c)
  c = _load("pipeline:tiny")
  c.order = "sft,nope"
  with pytest.raises(ValueError, match="'nope'"):
    pipeline.validate_config(c)
  c = _load("pipeline:tiny")
  c.stages.sft.overrides.no_such_key = 1
  with pytest.raises(KeyError, match="stages.sft.overrides.no_such_key"):
    pipeline.stage_config(c, "sft", {})


def _future_stage(tmp_path):
  """A config file of a stage kind the registry does not have."""
  p = tmp_path / "future.py"
  p.write_text("from ml_collections import ConfigDict\n"
               "def get_config():\n"
               "  return ConfigDict(dict(stage='not_written_yet', run_dir='x', model=''))\n")
  return str(p)


def test_missing_stage_fails_only_when_reached(tmp_path):
  c = _load("pipeline:tiny")
  c.run_dir = str(tmp_path / "run")
  c.order = "sft,future"
  c.final_from = ""
  c.stages.future = ConfigDict(dict(config=_future_stage(tmp_path), model_from="sft",
                                    data_from="", teacher_from="", data_output="",
                                    enabled=True, overrides=ConfigDict()))
  pipeline.validate_config(c)  # fine until it is reached
  # sft already done: the pipeline gets to `future` at once.
  os.makedirs(os.path.join(c.run_dir, "sft"))
  with open(os.path.join(c.run_dir, "sft", pipeline.DONE), "w") as f:
    json.dump({"outputs": {"model": "/x/hf"}}, f)
  with pytest.raises(ValueError, match="needs stage 'not_written_yet', which this r1jax does "
                                       "not provide yet"):
    pipeline.run(c)
  c.stages.future.config = str(tmp_path / "rejection_sampling_missing.py")
  with pytest.raises(FileNotFoundError, match="rejection_sampling_missing.py does not exist"):
    pipeline.run(c)


def _interrupt_update(monkeypatch, batch_key, skip=0):
  """SIGTERM to this process during the first Trainer update whose batch has `batch_key`,
  after `skip` such updates (as a scheduler would send it): the stage saves a checkpoint and
  returns early."""
  orig = trainer_lib.Trainer.update
  fired, seen = [], []

  def update(self, state, batch, *args, **kwargs):
    out = orig(self, state, batch, *args, **kwargs)
    if batch_key in batch:
      seen.append(True)
      if len(seen) == skip + 1:
        fired.append(True)
        os.kill(os.getpid(), signal.SIGTERM)
    return out
  monkeypatch.setattr(trainer_lib.Trainer, "update", update)
  return fired


def _check_kill_resume_skip(tmp_path, monkeypatch, order, final_from, victim, batch_key,
                            c=None, skip=0):
  c = c or _load("pipeline:tiny")
  c.run_dir = str(tmp_path / "run")
  c.order, c.final_from = order, final_from
  c.stages.eval.model_from = final_from
  stages = order.split(",")
  # 1. Killed during the first update of `victim`: its step-1 checkpoint is kept.
  fired = _interrupt_update(monkeypatch, batch_key, skip)
  with pytest.raises(pipeline.StageInterrupted, match=f"stage '{victim}' stopped"):
    pipeline.run(c)
  assert fired
  monkeypatch.undo()
  for s in stages[:stages.index(victim)]:
    assert pipeline.read_done(os.path.join(c.run_dir, s)) is not None
  victim_dir = os.path.join(c.run_dir, victim)
  assert pipeline.read_done(victim_dir) is None
  assert trainer_lib.Checkpointer(os.path.join(victim_dir, "checkpoints")).latest_step() == 1
  # 2. Re-run: earlier stages skipped, the victim resumes at step 2, the rest runs.
  out = pipeline.run(c)
  i = stages.index(victim)
  assert out["stages"] == {**{s: "skipped" for s in stages[:i]},
                           **{s: "ran" for s in stages[i:]}}
  ms = [json.loads(l) for l in open(os.path.join(victim_dir, "metrics.jsonl"))]
  assert [m["step"] for m in ms if "loss" in m] == [1, 2]
  # DONE times the last attempt only, and says there were two.
  assert pipeline.read_done(victim_dir)["attempts"] == 2
  assert pipeline.read_done(os.path.join(c.run_dir, stages[-1]))["attempts"] == 1
  final = out["final_hf"]
  assert final == os.path.join(c.run_dir, "final_hf")
  cfg, params = models.from_pretrained(final)
  ck, step = models.load_run_params(os.path.join(c.run_dir, final_from), cfg)
  assert step == 2
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ck)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert os.path.isfile(os.path.join(final, "tokenizer.json"))
  report = pipeline.read_done(os.path.join(c.run_dir, "eval"))["outputs"]["report"]
  assert json.load(open(report))
  # 3. Re-run once more: every stage skipped, nothing rewritten.
  mtimes = {s: os.stat(os.path.join(c.run_dir, s, pipeline.DONE)).st_mtime_ns for s in stages}
  out = pipeline.run(c)
  assert out["stages"] == {s: "skipped" for s in stages} and out["wall_s"] < 10
  assert mtimes == {s: os.stat(os.path.join(c.run_dir, s, pipeline.DONE)).st_mtime_ns
                    for s in stages}


def test_two_stage_pipeline_kill_resume_skip(tmp_path, monkeypatch):
  _check_kill_resume_skip(tmp_path, monkeypatch, "sft,eval", "sft", "sft", "loss_mask")


@pytest.mark.slow
def test_tiny_pipeline_kill_resume_skip(tmp_path, monkeypatch):
  _check_kill_resume_skip(tmp_path, monkeypatch, "sft,grpo,eval", "grpo", "grpo", "advantages")


@pytest.mark.slow
def test_tiny_pipeline_with_rejection_sampling(tmp_path, monkeypatch):
  """R1 stages 1-3 in small: SFT -> GRPO -> rejection sampling from the GRPO model -> SFT
  of the base model on the kept samples (killed mid-way, resumed) -> eval."""
  (tmp_path / "accept_all_judge.py").write_text(
      "def judge(prompt, reference, response):\n  return 1.0\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  c = _load("pipeline:tiny")
  rs = c.stages.rejection_sampling.overrides
  rs.judge = ConfigDict(dict(fn="accept_all_judge:judge", tasks="*"))
  rs.filters = ConfigDict(dict(enabled=""))
  _check_kill_resume_skip(tmp_path, monkeypatch, "sft,grpo,rejection_sampling,sft3,eval",
                          "sft3", "sft3", "loss_mask", c, skip=2)  # after sft's 2 steps
  data = pipeline.read_done(str(tmp_path / "run" / "rejection_sampling"))["outputs"]["data"]
  assert data.endswith("train.jsonl") and open(data).readline()
  ms = [json.loads(l) for l in open(tmp_path / "run" / "sft3" / "metrics.jsonl")]
  assert ms[0]["data/train"] > 0
