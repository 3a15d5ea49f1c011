"""Stage `eval`: pass@1 from n samples, unbiased pass@k and cons@n, as the R1 paper reports
them (DeepSeek-R1, section 3; docs/method.md "Evaluation"), for any model source of
r1jax.models.load (a training run directory evaluates its latest checkpoint, or
`checkpoint_step`).

For every problem: n samples (one prefill per problem, `Sampler` with num_samples = n),
scored with the training verifier (`accuracy`, binary), answers extracted for the majority
vote. General prompts (records of kind "general", e.g. the all-scenario RL's held-out
prompts) have no answer: each sample is scored instead by the helpfulness reward model
(`reward_model`, on the summary after </think>, as in RL) and by the rule judge
(r1jax.curation.preference_judge), so a reward-model gain can be checked against the judge.
Per-problem records go to `<run_dir>/records.jsonl` as they are produced, so a killed
evaluation resumes from them; the report is `report.json` and `report.md`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from r1jax import sampling
from r1jax.data import PromptData
from r1jax.data.pipeline import split_list
from r1jax.data.sources import jsonl_examples
from r1jax.curation.preference_judge import CRITERIA, judge
from r1jax.data.templates import render_prompt, response_prefix
from r1jax.eval.metrics import length_gap, majority_vote, mean_interval, pass_at_k
from r1jax.rewards import RewardComputer, format_ok
from r1jax.rewards.parsing import extract_answer
from r1jax.rewards.routing import example_kind, final_summary
from r1jax.tokenizer import Tokenizer
from r1jax.train import loop
from r1jax.train import settings as settings_lib

# Config fields that change the records (resuming with other values would mix results).
_RECORD_FIELDS = ("model", "checkpoint_step", "template", "num_samples", "sampling", "seed")


def load_datasets(config, tok: Tokenizer) -> dict[str, list[dict]]:
  """name -> examples. Names: "heldout" (the GRPO held-out split of config.data), "champ",
  or a path to a JSONL file with prompt/answer records (MATH-500 / AIME layout)."""
  out = {}
  for name in split_list(config.datasets):
    if name == "heldout":
      out[name] = PromptData(config.data, tok).eval_examples()
    elif name == "champ":
      from r1jax.data.champ import champ_examples
      out[name] = champ_examples()
    elif name.endswith((".jsonl", ".jsonl.gz")):
      out[os.path.basename(name)] = jsonl_examples(name)
    else:
      raise ValueError(f"unknown eval dataset {name!r}: use heldout, champ or a .jsonl path")
  return out


def summarize_general(records: list[dict]) -> dict[str, Any]:
  """Report figures of general-prompt records: judge score and criteria rates, reward-model
  score (when scored), each mean with a 95% interval over prompts."""
  n = len(records[0]["judge"])
  out = {"prompts": len(records), "samples_per_problem": n}
  judge_score = np.array([[j["score"] for j in r["judge"]] for r in records], np.float64)
  out["judge_score"] = float(judge_score.mean())
  out["judge_ci95"] = list(mean_interval(judge_score.mean(axis=1))[1:])
  for c in CRITERIA:
    out[f"judge_{c}"] = float(np.mean([j[c] for r in records for j in r["judge"]]))
  if all("rm_score" in r for r in records):
    rm = np.array([r["rm_score"] for r in records], np.float64)
    out["rm_score"] = float(rm.mean())
    out["rm_ci95"] = list(mean_interval(rm.mean(axis=1))[1:])
  out["response_len_mean"] = float(np.mean([r["lengths"] for r in records]))
  out["truncation_rate"] = float(1 - np.mean([r["finished"] for r in records]))
  return out


def summarize(records: list[dict], ks: list[int]) -> dict[str, Any]:
  """Report figures of a list of per-problem records (all with the same n). A list of
  general-prompt records (kind "general") is summarised by summarize_general; in a mixed
  list they are left out."""
  if not records:
    return {"problems": 0}
  reasoning = [r for r in records if r.get("kind") != "general"]
  if not reasoning:
    return summarize_general(records)
  records = reasoning  # a mixed list (the "overall" row): the reasoning figures
  correct = np.array([r["correct"] for r in records], np.float64)  # [P, n]
  P, n = correct.shape
  c = correct.sum(axis=1).astype(np.int64)
  out = {"problems": P, "samples_per_problem": n, "pass@1": float(correct.mean())}
  # 95% interval over problems (the n samples of a problem are not independent).
  out["pass1_ci95"] = list(mean_interval(correct.mean(axis=1))[1:])
  for k in ks:
    if k <= n:
      out[f"pass@{k}"] = float(pass_at_k(np.full(P, n), c, k).mean())
  out[f"cons@{n}"] = float(np.mean([r["cons_correct"] for r in records]))
  out["response_len_mean"] = float(np.mean([r["lengths"] for r in records]))
  # Within a problem's samples, how much longer the right ones are (GRPO's length signal).
  out.update(length_gap([r["lengths"] for r in records], correct))
  out["format_rate"] = float(np.mean([r["format_ok"] for r in records]))
  out["truncation_rate"] = float(1 - np.mean([r["finished"] for r in records]))
  return out


def _markdown(report: dict) -> str:
  rows = report["datasets"]
  keys = [k for k in ("problems", "prompts", "pass@1", "rm_score", "judge_score")
          if any(k in r for r in rows.values())]
  extra = sorted({k for r in rows.values() for k in r if k.startswith(("pass@", "cons@"))}
                 - set(keys), key=lambda k: (k.split("@")[0], int(k.split("@")[1])))
  keys += extra + ["response_len_mean", "len_gap", "format_rate", "truncation_rate"]
  keys = [k for k in keys if any(k in r for r in rows.values())]
  fmt = lambda k, v: (f"{100 * v:.1f} %" if k.startswith(("pass", "cons", "format", "trunc"))
                      else f"{v:.2f}" if k.startswith(("rm_", "judge_"))
                      else f"{v:.1f}" if isinstance(v, float) else str(v))
  lines = [f"# Evaluation of {report['model']}", "",
           f"{report['samples_per_problem']} samples per problem, temperature "
           f"{report['sampling']['temperature']}, top-p {report['sampling']['top_p']}, at most "
           f"{report['sampling']['max_new_tokens']} new tokens; template {report['template']}; "
           f"wall time {report['wall_s'] / 60:.1f} min.", "",
           "| dataset | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
  for name, r in list(rows.items()) + [("overall", report["overall"])]:
    cell = lambda k: "" if k not in r else fmt(k, r[k]) + (
        f" [{100 * r['pass1_ci95'][0]:.1f}, {100 * r['pass1_ci95'][1]:.1f}]"
        if k == "pass@1" and "pass1_ci95" in r else
        f" [{r['len_gap_ci95'][0]:.1f}, {r['len_gap_ci95'][1]:.1f}]" if k == "len_gap" else "")
    lines.append(f"| {name} | " + " | ".join(cell(k) for k in keys) + " |")
  return "\n".join(lines) + "\n"


def run(config) -> dict[str, Any]:
  """Evaluate as configured; returns the report dict (also written to out_dir)."""
  t0 = time.perf_counter()
  n = config.num_samples
  ks = [int(k) for k in split_list(config.pass_k)]
  if n < 1 or any(k < 1 or k > n for k in ks):
    raise ValueError(f"num_samples={n} must be >= every k in pass_k={config.pass_k!r}")
  model = settings_lib.ModelSettings.from_config(config)
  parallel = settings_lib.ParallelSettings.from_config(config)
  out_dir = config.run_dir
  loop.prepare_run_dir(out_dir, resume="auto")  # creates it; checks it is writable
  fields = _RECORD_FIELDS + (("reward_model",) if config.get("reward_model") else ())
  fingerprint = {k: (config[k].to_dict() if hasattr(config[k], "to_dict") else config[k])
                 for k in fields}
  fp_path = os.path.join(out_dir, "eval_config.json")
  if os.path.exists(fp_path) and json.load(open(fp_path)) != fingerprint:
    raise ValueError(f"{out_dir} holds records of another evaluation "
                     f"({fp_path}); choose another --config.run_dir")
  json.dump(fingerprint, open(fp_path, "w"), indent=2)

  loaded = model.load()
  cfg, params, tok = loaded.config, loaded.params, loaded.tokenizer
  described = loaded.info["description"]
  datasets = load_datasets(config, tok)
  rec_path = os.path.join(out_dir, "records.jsonl")
  done: dict[tuple[str, str], dict] = {}
  if os.path.exists(rec_path):
    kept = []
    for line in open(rec_path):
      try:
        r = json.loads(line)
      except json.JSONDecodeError:  # a line cut by a kill: that problem is redone
        continue
      done[(r["dataset"], r["id"])] = r
      kept.append(line if line.endswith("\n") else line + "\n")
    # Rewrite without the cut line (atomically), so appended records start on a fresh line.
    with open(rec_path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(rec_path + ".tmp", rec_path)
    logging.info("resuming: %d problems already evaluated in %s", len(done), rec_path)

  prefix = response_prefix(config.template)
  sp = settings_lib.sampling_params(config.sampling, tok)
  sampler, params = settings_lib.make_sampler(parallel, cfg, params, pad_id=tok.pad_id,
                                              min_prompt_bucket=32)
  rewards = RewardComputer("accuracy:1.0", num_workers=config.reward_workers,
                           timeout_s=config.reward_timeout_s)
  scorer = None
  if config.get("reward_model"):
    from r1jax.data.preference_data import encode_scoring_input
    from r1jax.rewards.routing import RewardModelScorer
    scorer = RewardModelScorer(config.reward_model, encode_fn=encode_scoring_input,
                               batch_size=config.get("rm_batch_size", 16))
  base_key = jax.random.key(config.seed)
  total = sum(len(v) for v in datasets.values())
  bar = tqdm(total=total, initial=sum(1 for k in done if k[0] in datasets), desc="eval",
             unit="problem", mininterval=5)
  try:
    with open(rec_path, "a") as rec_file:
      for name, examples in datasets.items():
        todo = [ex for ex in examples if (name, ex["id"]) not in done]
        for i in range(0, len(todo), config.batch_size):
          chunk = todo[i:i + config.batch_size]
          prompts = [tok.encode(render_prompt(ex["question"], config.template, tok))
                     for ex in chunk]
          for ex, p in zip(chunk, prompts):
            if len(p) + sp.max_new_tokens > sampler.max_total_len:
              raise ValueError(f"{name} problem {ex['id']}: prompt of {len(p)} tokens + "
                               f"max_new_tokens={sp.max_new_tokens} exceeds the model's context "
                               f"of {sampler.max_total_len} tokens")
          # The key depends on the problem, not on the batch, so resumed runs sample the same.
          key = jax.random.fold_in(base_key, int(hashlib.sha1(chunk[0]["id"].encode())
                                                 .hexdigest()[:7], 16))
          out = sampler(params, prompts, key, num_samples=n, sampling=sp)
          texts = sampling.decode_completions(tok, out, sp, prefix)
          general = [example_kind(ex) == "general" for ex in chunk]
          acc = np.zeros((len(chunk), n))
          rea = [b for b, g in enumerate(general) if not g]
          if rea:
            acc[rea] = rewards.heldout_accuracy(
                [t for b in rea for t in texts[b]],
                [chunk[b] for b in rea for _ in range(n)]).reshape(-1, n)
          gen = [b for b, g in enumerate(general) if g]
          rm = None
          if scorer is not None and gen:  # one batched call for the chunk's general samples
            rm = scorer.score_texts([chunk[b]["question"] for b in gen for _ in range(n)],
                                    [final_summary(t) for b in gen for t in texts[b]]
                                    ).reshape(len(gen), n)
          for b, ex in enumerate(chunk):
            if general[b]:
              topic = str((ex.get("metadata") or {}).get("topic", ex.get("topic", "")))
              r = {"dataset": name, "id": ex["id"], "kind": "general",
                   "question": ex["question"], "completions": texts[b],
                   "lengths": out.lengths[b].tolist(), "finished": out.finished[b].tolist(),
                   "judge": [judge(t, topic, bool(f)) for t, f in
                             zip(texts[b], out.finished[b].tolist())]}
              if rm is not None:
                r["rm_score"] = rm[gen.index(b)].tolist()
              rec_file.write(json.dumps(r) + "\n")
              done[(name, ex["id"])] = r
              continue
            answers = [extract_answer(t) for t in texts[b]]
            voted, votes = majority_vote(answers)
            cons = float(acc[b][answers.index(voted)]) if voted is not None else 0.0
            r = {"dataset": name, "id": ex["id"], "question": ex["question"],
                 "answer": ex["answer"], "completions": texts[b], "extracted": answers,
                 "correct": acc[b].tolist(), "voted": voted, "votes": votes,
                 "cons_correct": cons, "lengths": out.lengths[b].tolist(),
                 "finished": out.finished[b].tolist(),
                 "format_ok": [format_ok(t) for t in texts[b]]}
            rec_file.write(json.dumps(r) + "\n")
            done[(name, ex["id"])] = r
          rec_file.flush()
          bar.update(len(chunk))
          so_far = [r for r in done.values() if r["dataset"] in datasets and "correct" in r]
          if so_far:
            bar.set_postfix({"pass@1": f"{np.mean([np.mean(r['correct']) for r in so_far]):.3f}"})
  finally:
    bar.close()
    rewards.close()
    if scorer is not None:
      scorer.close()

  per = {name: summarize([done[(name, ex["id"])] for ex in exs], ks)
         for name, exs in datasets.items()}
  overall = summarize([done[(name, ex["id"])] for name, exs in datasets.items() for ex in exs], ks)
  report = {"model": described, "template": config.template, "samples_per_problem": n,
            "sampling": config.sampling.to_dict(), "datasets": per, "overall": overall,
            "wall_s": time.perf_counter() - t0}
  json.dump(report, open(os.path.join(out_dir, "report.json"), "w"), indent=2)
  md = _markdown(report)
  open(os.path.join(out_dir, "report.md"), "w").write(md)
  print(md)
  return report
