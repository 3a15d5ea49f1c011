"""Stage `pipeline`: the full DeepSeek-R1 recipe as one resumable run (DeepSeek-R1, section 2.3;
docs/method.md "Stages").

    base -> cold_start_sft -> reasoning_rl (GRPO) -> rejection_sampling -> sft (stage 3, from
    the *base* model on the rejection-sampling output) -> all_scenario_rl (GRPO)
    -> [distill] -> eval;  final model exported to run_dir/final_hf

Each entry of `config.stages` (a ConfigDict keyed by stage name, run in `config.order`) is a
stage config (r1jax.configs.load: "sft.py", "sft.py:tiny" or a file path) plus `overrides`;
the pipeline sets its `run_dir` to run_dir/<name>, its `model` from `model_from` ("base" =
config.model, a stage name = that stage's exported HF directory, "" = the stage config's own
model), `data.train_jsonl` from `data_from` (a stage's data output) and `distill.teacher`
from `teacher_from`, and `resume=auto`, so a stage killed mid-way continues from its own
checkpoint.

A stage that finishes gets an atomically written `run_dir/<name>/DONE` (JSON: its outputs,
config, wall time of its last attempt, number of attempts); a stage with a DONE marker is
skipped. A stage that returns without its
outputs (it stopped on SIGTERM after saving a checkpoint) stops the pipeline with
`StageInterrupted`; re-running the same command resumes it. Stages run in this process,
one after another, through the `r1jax.stages.STAGES` registry; a stage not in the registry
(yet) fails with a clear error only when the pipeline reaches it.

Outputs per kind of stage: `sft` -> its run_dir/hf export; `grpo` -> its final checkpoint,
exported here to run_dir/<name>/hf (`export_run`); `eval` -> run_dir/report.json; any other
stage -> the file `data_output` (e.g. rejection sampling's train.jsonl) and / or the path
`model_output` (e.g. the reward model's directory) in its run_dir. `inputs`
("key=stage[:output],...") wires any other config key to an earlier stage's output (e.g.
all_scenario_rl's rewards.helpfulness_rm to the reward_model stage).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time
from typing import Any, Optional

from absl import logging

DONE = "DONE"
ATTEMPTS = "ATTEMPTS"  # how many times the stage was started (a resumed stage: > 1)
FINAL_HF = "final_hf"
HF_DIR = "hf"


class StageInterrupted(RuntimeError):
  """A stage returned before finishing (e.g. it saved a checkpoint on SIGTERM)."""


def load_config_file(spec: str):
  """The ConfigDict of a stage config spec (r1jax.configs.load), unlocked.

  Raises:
    FileNotFoundError: no such config.
  """
  from r1jax import configs
  return configs.load(spec)


def apply_overrides(config, overrides, where: str = "") -> None:
  """Set the values of a nested dict/ConfigDict `overrides` on `config`, key by key.

  Nested dicts recurse into sub-configs; any other value replaces the field.

  Raises:
    KeyError: an override names a key the config does not have (like a locked config).
  """
  items = overrides.items() if hasattr(overrides, "items") else []
  for k, v in items:
    if k not in config:
      raise KeyError(f"override {where}{k}: the stage config has no such key")
    if hasattr(v, "items") and hasattr(config[k], "items"):
      apply_overrides(config[k], v, f"{where}{k}.")
    else:
      config[k] = v.to_dict() if hasattr(v, "to_dict") else v


def _write_atomic(path: str, text: str) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_done(stage_dir: str) -> Optional[dict]:
  """The DONE marker of a stage directory (None when the stage has not finished)."""
  p = os.path.join(stage_dir, DONE)
  if not os.path.isfile(p):
    return None
  with open(p) as f:
    return json.load(f)


def export_run(config, out_dir: str, *, dtype: str = "float32") -> Optional[str]:
  """Export the final checkpoint of a training run (e.g. GRPO) as an HF directory.

  The model and tokenizer come from r1jax.models.load(run_dir) (the run's config.json names
  its model source). The directory is written under a temporary name and renamed.

  Args:
    config: the stage config the run was made with (run_dir, steps).
    out_dir: HF directory to write (safetensors + config.json + tokenizer).
    dtype: tensor dtype of the export (float32 | bfloat16 | float16).

  Returns:
    out_dir, or None when the run's latest checkpoint is before `config.steps` (the run
    did not finish).

  Raises:
    FileNotFoundError: the run has no checkpoint.
    ValueError: the checkpoint does not match the model config.
  """
  from r1jax import models
  loaded = models.load(config.run_dir, dtype=config.dtype, param_dtype=config.param_dtype)
  if loaded.info["step"] < config.steps:
    return None
  tmp = out_dir + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  models.save_pretrained(loaded.config, loaded.params, tmp, dtype=dtype)
  loaded.tokenizer.save_pretrained(tmp)
  shutil.rmtree(out_dir, ignore_errors=True)
  os.replace(tmp, out_dir)
  return out_dir


def validate_config(config) -> None:
  """Check the pipeline's own structure (stage configs are loaded when reached).

  Raises:
    ValueError: an unknown stage in `order`, a reference to a stage that does not run
      before, or a missing final_from.
  """
  order = _order(config)
  if not order:
    raise ValueError("pipeline order is empty")
  seen = set()
  for name in order:
    if name not in config.stages:
      raise ValueError(f"order names stage {name!r}, which config.stages does not define "
                       f"(defined: {sorted(config.stages)})")
    s = config.stages[name]
    if not s.get("enabled", True):
      continue
    refs = [(k, s.get(k, "")) for k in ("model_from", "data_from", "teacher_from")]
    refs += [("inputs", src) for src, _ in parse_inputs(s.get("inputs", "")).values()]
    for key, ref in refs:
      if ref and ref != "base" and ref not in seen:
        raise ValueError(f"stage {name}: {key}={ref!r} is not an enabled stage that runs "
                         f"before it (order: {order})")
    seen.add(name)
  if config.final_from and config.final_from not in seen:
    raise ValueError(f"final_from={config.final_from!r} is not an enabled stage of the pipeline")


def _order(config) -> list[str]:
  return [s.strip() for s in config.order.split(",") if s.strip()]


def stage_config(config, name: str, outputs: dict[str, dict]):
  """The resolved config of pipeline stage `name` given the outputs of earlier stages.

  Raises:
    FileNotFoundError: the stage's config file does not exist.
    KeyError: an override of a key the stage config lacks.
  """
  s = config.stages[name]
  c = load_config_file(s.config)
  apply_overrides(c, s.get("overrides") or {}, f"stages.{name}.overrides.")
  stage_dir = os.path.join(os.path.abspath(config.run_dir), name)
  if "run_dir" in c:
    c.run_dir = stage_dir
  if "resume" in c:
    c.resume = "auto"  # continue from the stage's own checkpoint after an interruption
  if c.get("stage") == "sft":
    c.export.hf = True  # the SFT output the next stages read
  src = s.get("model_from", "")
  if src == "base":
    c.model = config.model
    if "tokenizer" in c:
      c.tokenizer = config.tokenizer
  elif src:
    c.model = outputs[src]["model"]
    if "tokenizer" in c:
      c.tokenizer = ""  # the export holds the tokenizer
  if s.get("data_from", ""):
    c.data.source = "jsonl"
    c.data.train_jsonl = outputs[s.data_from]["data"]
  if s.get("teacher_from", ""):
    c.distill.teacher = outputs[s.teacher_from]["model"]
  for key, (src, what) in parse_inputs(s.get("inputs", "")).items():
    node, *path = key.split(".")
    node, last = (c, key) if not path else (c[node], path[-1])
    for p in path[:-1]:
      node = node[p]
    if last not in node:
      raise KeyError(f"stages.{name}.inputs: the stage config has no key {key}")
    node[last] = outputs[src][what]
  return c


def parse_inputs(spec: str) -> dict[str, tuple[str, str]]:
  """"rewards.helpfulness_rm=reward_model,x.y=stage:data" -> {config key: (stage, output)}
  (output defaults to "model").

  Raises:
    ValueError: an item without "=".
  """
  out = {}
  for item in (spec or "").split(","):
    if not item.strip():
      continue
    if "=" not in item:
      raise ValueError(f"inputs item {item!r} is not key=stage[:output]")
    key, src = (x.strip() for x in item.split("=", 1))
    stage, _, what = src.partition(":")
    out[key] = (stage, what or "model")
  return out


def _fingerprint(c) -> str:
  return hashlib.sha256(json.dumps(c.to_dict(), sort_keys=True, default=str).encode()
                        ).hexdigest()[:16]


def _outputs(kind: str, c, s, result: Any, export_dtype: str) -> Optional[dict]:
  """What a finished stage produced, or None when it stopped before the end."""
  if kind == "sft":
    hf = os.path.join(c.run_dir, HF_DIR)
    return {"model": hf} if os.path.isfile(os.path.join(hf, "config.json")) else None
  if kind == "grpo":
    out = export_run(c, os.path.join(c.run_dir, HF_DIR), dtype=export_dtype)
    return None if out is None else {"model": out}
  if kind == "eval":
    rep = os.path.join(c.run_dir, "report.json")
    return {"report": rep} if os.path.isfile(rep) else None
  stage_dir = c.get("run_dir", "")
  out = {"dir": stage_dir}
  data, model = s.get("data_output", ""), s.get("model_output", "")
  if data:
    out["data"] = os.path.join(stage_dir, data)
    if not os.path.isfile(out["data"]):
      return None
  if model:
    out["model"] = os.path.join(stage_dir, model)
    if not os.path.exists(out["model"]):
      return None
  if data or model:
    return out
  if isinstance(result, dict):
    out.update({k: v for k, v in result.items() if isinstance(v, str) and os.path.exists(v)})
  return out


def run(config) -> dict[str, Any]:
  """Run (or resume) the pipeline; returns {"stages": {name: "ran" | "skipped" |
  "disabled"}, "final_hf": path, "outputs": {name: outputs}, "wall_s": seconds}.

  Raises:
    ValueError: bad pipeline config (validate_config), or a stage unknown to the registry
      (raised when the pipeline reaches it).
    FileNotFoundError / KeyError: a stage's config file or override key (when reached).
    StageInterrupted: a stage stopped before finishing (re-run to resume it).
  """
  from r1jax import stages as registry
  validate_config(config)
  t_start = time.perf_counter()
  run_dir = os.path.abspath(config.run_dir)
  os.makedirs(run_dir, exist_ok=True)
  outputs: dict[str, dict] = {}
  status: dict[str, str] = {}
  for i, name in enumerate(_order(config)):
    s = config.stages[name]
    if not s.get("enabled", True):
      status[name] = "disabled"
      continue
    stage_dir = os.path.join(run_dir, name)
    done = read_done(stage_dir)
    if done is not None:
      outputs[name] = done["outputs"]
      status[name] = "skipped"
      logging.info("pipeline: stage %d %s already done (%s): skipping", i + 1, name,
                   os.path.join(stage_dir, DONE))
      try:
        if _fingerprint(stage_config(config, name, outputs)) != done.get("fingerprint"):
          logging.warning("pipeline: the config of stage %s changed since it ran; delete %s to "
                          "run it again", name, os.path.join(stage_dir, DONE))
      except (FileNotFoundError, KeyError, ValueError):
        pass  # the check is advisory; the stage is done either way
      continue
    c = stage_config(config, name, outputs)
    kind = c.stage
    if kind not in registry.STAGES:
      raise ValueError(f"pipeline stage {name!r} ({s.config}) needs stage {kind!r}, which this "
                       f"r1jax does not provide yet (known stages: {sorted(registry.STAGES)}); "
                       f"disable it with --config.stages.{name}.enabled=False or finish it first")
    logging.info("pipeline: stage %d %s (%s, %s) -> %s", i + 1, name, kind, s.config, stage_dir)
    # Attempts so far: DONE's wall_s times only the last one (a resumed stage's earlier
    # attempts may have been killed), so the marker says how many there were.
    os.makedirs(stage_dir, exist_ok=True)
    attempts_path = os.path.join(stage_dir, ATTEMPTS)
    try:
      with open(attempts_path) as f:
        attempts = int(f.read().strip() or 0) + 1
    except (OSError, ValueError):
      attempts = 1
    _write_atomic(attempts_path, str(attempts))
    t0 = time.perf_counter()
    result = importlib.import_module(registry.STAGES[kind]).run(c)
    out = _outputs(kind, c, s, result, config.export_dtype)
    if out is None:
      raise StageInterrupted(f"pipeline stage {name!r} stopped before it finished (a signal?); "
                             f"its checkpoint is in {stage_dir}: re-run the pipeline to resume")
    os.makedirs(stage_dir, exist_ok=True)
    _write_atomic(os.path.join(stage_dir, DONE), json.dumps(
        {"stage": name, "kind": kind, "config_file": s.config, "outputs": out,
         "fingerprint": _fingerprint(c), "wall_s": time.perf_counter() - t0,
         "attempts": attempts,
         "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))
    outputs[name] = out
    status[name] = "ran"
    logging.info("pipeline: stage %s done in %.1fs: %s", name, time.perf_counter() - t0, out)
  final = os.path.join(run_dir, FINAL_HF)
  if config.final_from and not os.path.isfile(os.path.join(final, "config.json")):
    src = outputs[config.final_from].get("model")
    if not src:
      raise ValueError(f"final_from={config.final_from!r} produced no model")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    logging.info("pipeline: final model (%s) exported to %s", config.final_from, final)
  result = {"stages": status, "outputs": outputs, "wall_s": time.perf_counter() - t_start,
            "final_hf": final if config.final_from else ""}
  logging.info("pipeline done: %s", json.dumps(status))
  return result
