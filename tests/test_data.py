"""Tests of r1jax.data: templates, sources, the GRPO prompt pipeline and its iterator state."""
import gzip
import json
import logging

import pytest
import reasoning_gym

from r1jax.data import (PromptData, default_data_config, jsonl_examples, read_jsonl,
                        reasoning_gym_examples, render_prompt)
from r1jax.data.templates import R1_SYSTEM_PROMPT
from r1jax.tokenizer import Tokenizer

SMALL = dict(train_size=200, eval_size=20)


@pytest.fixture(scope="module")
def tok():
  try:
    return Tokenizer.from_source("smollm2-135m-instruct")
  except FileNotFoundError as e:
    pytest.skip(str(e))


def make(tok, **overrides):
  return PromptData({**SMALL, **overrides}, tok)


def write_jsonl(path, lines):
  path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
  return path


# -- templates ------------------------------------------------------------------------------------

def test_r1_zero_template_is_the_spec_text():
  expected = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process "
    "here </think> <answer> answer here </answer>. User: What is 2+{3}?. Assistant:")
  assert render_prompt("What is 2+{3}?", "r1_zero", None) == expected


def test_steps_template_and_its_config():
  """The signature config's template: the worked example's partial sums are right, the
  response opens with <think>, and configs/grpo_reasoning.py validates with it."""
  import re
  from r1jax import configs
  from r1jax.stages import grpo as grpo_stage
  p = render_prompt("State the final answer to the following arithmetic problem: 1 + 2 =",
                    "r1_zero_steps_1shot", None)
  assert p.endswith("problem: 1 + 2 =\nAssistant: <think>") and p.count("User:") == 2
  steps = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)\.", p)
  assert len(steps) == 3
  for a, op, b, c in steps:
    assert int(a) + (int(b) if op == "+" else -int(b)) == int(c)
  assert "<answer> 17 </answer>" in p and 7 + 5 - 3 + 8 == 17
  c = configs.load("grpo_reasoning")
  assert c.data.template == "r1_zero_steps_1shot" and c.data.tasks == "chain_sum"
  assert grpo_stage.validate_config(c).grpo.aggregation == "dr_grpo"


def test_stage3_recipe_config_wiring():
  """configs/r1_stage3.py: every evaluation and the rejection sampling use the GRPO job's
  held-out data settings (so "heldout" is the split the RL run held out), the RL template
  for the base and RL models, the chat template for the SFT'd base and its baseline, n >= 4
  on >= 200 problems, and the stage-3 SFT starts from the base on the rejection samples."""
  from r1jax import configs
  from r1jax.stages import pipeline as pipeline_stage
  c = configs.load("r1_stage3")
  rl = configs.load("grpo")
  pipeline_stage.validate_config(c)
  names = [n.strip() for n in c.order.split(",")]
  outs = {n: {"model": f"/m/{n}", "data": f"/d/{n}.jsonl"} for n in names}
  got = {n: pipeline_stage.stage_config(c, n, outs) for n in names}
  for n in names:
    if got[n].stage in ("eval", "rejection_sampling"):
      assert got[n].data.tasks == rl.data.tasks, n
      assert got[n].data.task_configs == rl.data.task_configs, n
      assert got[n].data.seed == rl.data.seed and got[n].seed == rl.seed, n
      assert got[n].data.template == got[n].template, n
      assert got[n].sampling.max_new_tokens == rl.rl.max_new_tokens, n
  for n in ("eval_base", "eval_reasoning_rl", "eval_base_chat", "eval_sft"):
    assert got[n].num_samples >= 4 and got[n].data.eval_size == rl.data.eval_size >= 200, n
  assert got["eval_base"].template == got["eval_reasoning_rl"].template == rl.data.template
  assert got["eval_sft"].template == got["eval_base_chat"].template == "chat"
  assert got["sft"].model == c.model and got["sft"].data.train_jsonl == "/d/rejection_sampling.jsonl"
  assert got["rejection_sampling"].model == "/m/reasoning_rl" and got["eval_sft"].model == "/m/sft"


def test_chat_templates_render(tok):
  q = "Calculate 5 + 3."
  chat = render_prompt(q, "chat", tok)
  assert f"<|im_start|>user\n{q}<|im_end|>" in chat
  assert chat.endswith("<|im_start|>assistant\n")
  chat_r1 = render_prompt(q, "chat_r1", tok)
  assert chat_r1.startswith(f"<|im_start|>system\n{R1_SYSTEM_PROMPT}<|im_end|>")
  assert "<think> </think> and <answer> </answer>" in chat_r1
  assert f"<|im_start|>user\n{q}<|im_end|>" in chat_r1 and chat_r1.endswith("assistant\n")
  assert render_prompt(q, "raw", None) == q
  with pytest.raises(ValueError, match="needs a tokenizer"):
    render_prompt(q, "chat", None)


def test_chat_prompt_ids_match_apply_chat_template(tok):
  data = make(tok, template="chat_r1", tasks="chain_sum")
  ex = data.eval_examples()[0]
  messages = [{"role": "system", "content": R1_SYSTEM_PROMPT},
              {"role": "user", "content": ex["question"]}]
  assert ex["prompt_ids"] == tok.apply_chat_template(messages, tokenize=True)


def test_unknown_template(tok):
  with pytest.raises(ValueError, match="r1_zero, r1_zero_1shot, chat, chat_r1, raw"):
    render_prompt("q", "r1-zero", tok)
  with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
    make(tok, template="nope")


# -- reasoning-gym --------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["basic_arithmetic", "chain_sum"])
def test_reasoning_gym_examples_score_one(task):
  config = default_data_config().task_configs[task]
  examples = reasoning_gym_examples(task, 20, 3, config)
  ds = reasoning_gym.create_dataset(task, size=20, seed=3, **config.to_dict())
  for ex in examples:
    assert set(ex) == {"id", "question", "answer", "task", "metadata"}
    assert ex["task"] == task and isinstance(ex["answer"], str) and ex["question"]
    json.dumps(ex["metadata"])
    entry = {"question": ex["question"], "answer": ex["answer"], "metadata": ex["metadata"]}
    assert ds.score_answer(ex["answer"], entry) == 1.0


def test_pipeline_examples_have_the_contract_fields(tok):
  data = make(tok)
  batch = next(data.train_iterator(8))
  assert isinstance(batch, list) and len(batch) == 8
  for ex in batch + data.eval_examples():
    assert set(ex) == {"id", "question", "answer", "task", "metadata", "prompt", "prompt_ids"}
    assert isinstance(ex["prompt_ids"], list) and all(type(i) is int for i in ex["prompt_ids"])
    assert ex["prompt_ids"] == tok.encode(ex["prompt"])
    assert ex["prompt"].endswith(f"User: {ex['question']}. Assistant:")
    json.dumps(ex)
    score = reasoning_gym.get_score_answer_fn(ex["task"])
    assert score(ex["answer"], ex) == 1.0


def test_unknown_task_and_bad_config(tok):
  with pytest.raises(ValueError, match=r"unknown reasoning-gym task 'chain_sums'.*chain_sum"):
    reasoning_gym_examples("chain_sums", 5, 0, None)
  with pytest.raises(ValueError, match="unknown reasoning-gym task 'nope'"):
    make(tok, tasks="basic_arithmetic,nope")
  with pytest.raises(ValueError, match=r"unknown config key\(s\) \['max_term'\].*max_terms"):
    reasoning_gym_examples("chain_sum", 5, 0, {"max_term": 3})
  with pytest.raises(ValueError, match="must not set"):
    reasoning_gym_examples("chain_sum", 5, 0, {"seed": 3})
  with pytest.raises(ValueError, match="invalid config"):
    reasoning_gym_examples("chain_sum", 5, 0, {"min_terms": 0})
  with pytest.raises(ValueError, match="unknown data config field"):
    make(tok, task="chain_sum")
  with pytest.raises(ValueError, match="no prompt sources"):
    make(tok, tasks="")


# -- JSONL ----------------------------------------------------------------------------------------

def test_jsonl_good_file(tmp_path):
  path = write_jsonl(tmp_path / "a.jsonl", [
    {"prompt": "1+1?", "answer": 2},
    "",
    {"prompt": "Name?", "answer": "x", "task": "qa", "id": 7, "metadata": {"k": 1},
     "source": "s", "k": 2},
    "   ",
    {"prompt": "half?", "answer": 0.5},
  ])
  ex = jsonl_examples(path)
  assert [e["question"] for e in ex] == ["1+1?", "Name?", "half?"]
  assert [e["answer"] for e in ex] == ["2", "x", "0.5"]
  assert [e["task"] for e in ex] == ["math", "qa", "math"]
  assert [e["id"] for e in ex] == ["a.jsonl:1", "7", "a.jsonl:5"]
  assert ex[1]["metadata"] == {"k": 1, "source": "s"}
  assert ex[0]["metadata"] == {}


BAD_LINES = [
  ('{"prompt": "a", "answer": 1', "invalid JSON"),
  ('["prompt", "answer"]', "expected a JSON object, got list"),
  ('{"answer": "1"}', 'missing "prompt"'),
  ('{"prompt": "  ", "answer": "1"}', 'empty "prompt"'),
  ('{"prompt": 5, "answer": "1"}', '"prompt" must be a string, got int'),
  ('{"prompt": "a"}', 'missing "answer"'),
  ('{"prompt": "a", "answer": ""}', 'empty "answer"'),
  ('{"prompt": "a", "answer": [1]}', '"answer" must be a string or a number, got list'),
  ('{"prompt": "a", "answer": true}', '"answer" must be a string or a number, got bool'),
  ('{"prompt": "a", "answer": "1", "metadata": 3}', '"metadata" must be an object'),
]


@pytest.mark.parametrize("bad,what", BAD_LINES)
def test_jsonl_malformed_line_names_file_and_line(tmp_path, bad, what):
  path = write_jsonl(tmp_path / "bad.jsonl",
                     [{"prompt": "ok", "answer": "1"}, "", {"prompt": "ok2", "answer": "2"}, bad])
  with pytest.raises(ValueError) as e:
    jsonl_examples(path)
  assert str(e.value).startswith(f"{path}: line 4: ")
  assert what in str(e.value)


def test_jsonl_skip_mode(tmp_path, caplog):
  lines = [{"prompt": "p0", "answer": "0"}] + [bad for bad, _ in BAD_LINES[:3]]
  lines += [{"prompt": "p1", "answer": "1"}]
  path = write_jsonl(tmp_path / "mixed.jsonl", lines)
  with caplog.at_level(logging.WARNING, logger="r1jax.data.sources"):
    examples, skipped = read_jsonl(path, on_error="skip")
  assert [e["question"] for e in examples] == ["p0", "p1"]
  assert skipped == [2, 3, 4]
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "skipped 3 malformed" in warnings[0].getMessage()
  assert "2, 3, 4" in warnings[0].getMessage()
  with pytest.raises(ValueError, match="line 2"):
    jsonl_examples(path)


def test_jsonl_gz_and_missing(tmp_path):
  path = tmp_path / "z.jsonl.gz"
  with gzip.open(path, "wt") as f:
    f.write('{"prompt": "gz?", "answer": "yes"}\n\n{"prompt": "b", "answer": 3}\n')
  assert [(e["question"], e["answer"]) for e in jsonl_examples(path)] == [("gz?", "yes"),
                                                                        ("b", "3")]
  (tmp_path / "bad.jsonl.gz").write_bytes(b"\x1f\x8b not really gzip")
  with pytest.raises(ValueError, match="corrupt gzip"):
    jsonl_examples(tmp_path / "bad.jsonl.gz")
  with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
    jsonl_examples(tmp_path / "nothere.jsonl")


# -- split, iterator ------------------------------------------------------------------------------

def test_held_out_split_is_disjoint(tok):
  data = make(tok, eval_size=60)
  train_q = {e["question"] for e in data.train_examples()}
  eval_ex = data.eval_examples()
  eval_q = [e["question"] for e in eval_ex]
  assert len(eval_q) == 60 and len(set(eval_q)) == 60
  assert not train_q & set(eval_q)
  s = data.summary()
  # Easy generators repeat questions, so some train examples were removed.
  assert s["removed_overlap"] > 0
  assert s["train"] == 400 - s["removed_overlap"]
  assert s["tasks"]["chain_sum"]["eval"] == 30 and s["tasks"]["basic_arithmetic"]["eval"] == 30
  # Sources interleave in the eval list too; it is the same list every time.
  assert [e["task"] for e in eval_ex[:4]] == ["basic_arithmetic", "chain_sum"] * 2
  assert data.eval_examples() == eval_ex


def test_jsonl_hold_out_and_eval_jsonl(tok, tmp_path):
  train = write_jsonl(tmp_path / "t.jsonl",
                      [{"prompt": f"q{i}", "answer": i} for i in range(10)] +
                      [{"prompt": "q3", "answer": 3}])  # q3 again, last: held out -> train loses q3
  data = make(tok, tasks="", jsonl=str(train), eval_size=2)
  assert [e["question"] for e in data.eval_examples()] == ["q9", "q3"]
  assert [e["question"] for e in data.train_examples()] == [f"q{i}" for i in range(9) if i != 3]
  ev = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "q1", "answer": 1},
                                          {"prompt": "other", "answer": 0}])
  data = make(tok, tasks="chain_sum", jsonl=str(train), eval_jsonl=str(ev), eval_size=4)
  s = data.summary()
  assert s["sources"][f"jsonl:{train}"]["train"] == 10  # 11 records less q1 (q3 twice)
  assert s["sources"][f"eval_jsonl:{ev}"]["eval"] == 2
  assert s["sources"]["chain_sum"]["eval"] == 4
  assert s["tasks"]["math"] == {"train": 10, "eval": 2}


def test_mixing_round_robin_and_weights(tok):
  data = make(tok)
  batch = next(data.train_iterator(8))
  assert [e["task"] for e in batch] == ["basic_arithmetic", "chain_sum"] * 4
  data = make(tok, weights="3,1")
  it = data.train_iterator(40)
  tasks = [e["task"] for _ in range(5) for e in next(it)]
  assert tasks.count("basic_arithmetic") == 150


def test_iterator_state_round_trip(tok):
  data = make(tok)
  it = data.train_iterator(8)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it), next(it)]
  # A fresh PromptData (as after a restart) resumes exactly.
  fresh = make(tok).train_iterator(8)
  fresh.set_state(state)
  assert [next(fresh), next(fresh)] == expected
  assert [next(make(tok).train_iterator(8, state=state)) for _ in range(1)] == expected[:1]
  # Runs far past one epoch (400 examples / 8) keep working and restore too.
  for _ in range(120):
    next(it)
  late = it.get_state()
  want = next(it)
  again = data.train_iterator(8)
  again.set_state(late)
  assert next(again) == want
  with pytest.raises(ValueError, match="different data config"):
    data.train_iterator(4).set_state(state)
  with pytest.raises(ValueError, match="not a"):
    data.train_iterator(8).set_state({"next_index": 3})


def test_seeds(tok):
  a = [next(make(tok, seed=1).train_iterator(8)) for _ in range(1)]
  b = [next(make(tok, seed=1).train_iterator(8)) for _ in range(1)]
  c = [next(make(tok, seed=2).train_iterator(8)) for _ in range(1)]
  assert a == b and a != c
  # Epochs are reshuffled: the second pass over a source is in another order.
  data = make(tok, tasks="chain_sum", eval_size=0, train_size=50)
  it = data.train_iterator(50)
  first, second = next(it), next(it)
  assert sorted(e["id"] for e in first) == sorted(e["id"] for e in second)
  assert [e["id"] for e in first] != [e["id"] for e in second]
  # shuffle=False keeps generation order.
  data = make(tok, tasks="chain_sum", eval_size=0, train_size=50, shuffle=False)
  assert [e["id"] for e in next(data.train_iterator(5))] == [f"chain_sum/0/{i}" for i in range(5)]


def test_batches_are_fresh_copies(tok):
  data = make(tok, tasks="chain_sum", eval_size=0, train_size=8, shuffle=False)
  it = data.train_iterator(8)
  first = next(it)
  first[0]["metadata"]["x"] = 1
  first[0]["prompt_ids"].append(-1)
  again = next(data.train_iterator(8))
  assert "x" not in again[0]["metadata"] and again[0]["prompt_ids"][-1] != -1


def test_over_long_prompts_are_skipped_and_counted(tok, tmp_path, caplog):
  path = write_jsonl(tmp_path / "long.jsonl",
                     [{"prompt": "short one", "answer": 1},
                      {"prompt": "very long " * 200, "answer": 2},
                      {"prompt": "short two", "answer": 3}])
  with caplog.at_level(logging.WARNING, logger="r1jax.data.pipeline"):
    data = make(tok, tasks="", jsonl=str(path), eval_size=0, template="raw",
                max_prompt_tokens=64)
  assert [e["question"] for e in data.train_examples()] == ["short one", "short two"]
  s = data.summary()
  assert s["skipped_too_long"] == 1 and s["sources"][f"jsonl:{path}"]["too_long_train"] == 1
  assert any("longer than max_prompt_tokens=64" in r.getMessage() for r in caplog.records)
  # Skipped even with on_error="raise"; a source left empty is an error.
  with pytest.raises(ValueError, match="no train examples left"):
    make(tok, tasks="chain_sum", eval_size=0, max_prompt_tokens=10)


def test_default_config_builds_with_cli_style_overrides(tok):
  config = default_data_config()
  config.lock()
  config.train_size = 100
  config.eval_size = 10
  config.task_configs.chain_sum.max_terms = 2
  data = PromptData(config, tok)
  s = data.summary()
  assert s["eval"] == 10 and set(s["tasks"]) == {"basic_arithmetic", "chain_sum"}
  assert all(e["metadata"]["num_terms"] == 2 for e in data.train_examples()
             if e["task"] == "chain_sum")
