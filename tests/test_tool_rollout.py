"""Tool rollouts: scripted policies that call the tool get the right tool message appended,
the masks are right, hanging / hostile calls cost at most their limit, the sampler's
log-probs of a multi-segment sequence equal the training forward's, the ragged decode
without calls equals the plain sampler, and a GRPO run with tools resumes exactly."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import models, sampling, tool_calls
from r1jax.models.config import tiny_config
from r1jax.sampling import SamplingParams
from r1jax.stages import grpo as stage
from r1jax.stages import grpo_rollout as rollouts
from r1jax.tool_rollout import ToolSampler, ToolSettings, tool_metrics

# Tests that start sandboxes share one pytest-xdist worker (--dist loadgroup): those of
# test_code_reward check for leftover sandbox processes machine-wide.
pytestmark = pytest.mark.xdist_group("sandbox")

CFG = tiny_config()
D = CFG.hidden_size


class ByteTokenizer:
  """A 256-token vocabulary for the tiny model: 0 pad, 1 bos, 2 eos (special), 3..127 the
  ASCII characters, 128..255 multi-character "words" given per test (for scripts)."""
  vocab_size = 256
  special_ids = frozenset({0, 1, 2})
  suffix_ids = ()

  def __init__(self, words=None):
    self.words = dict(words or {})

  def text(self, i, skip=True):
    if i < 3:
      return "" if skip else ("<pad>", "<s>", "</s>")[i]
    return chr(i) if i < 128 else self.words.get(i, "")

  def encode(self, text, add_bos=False):
    return [ord(c) if 3 <= ord(c) < 128 else ord("?") for c in text]

  def decode(self, ids, skip_special_tokens=True):
    return "".join(self.text(int(i), skip_special_tokens) for i in ids)


@dataclasses.dataclass
class FakeResult:
  status: str
  output: str


class FakeExecutor:
  """Deterministic stand-in for the sandbox: the output names the code's length."""

  def __init__(self):
    self.batches = []

  def __call__(self, codes):
    self.batches.append(list(codes))
    return [FakeResult("ok", f"len={len(c)}") for c in codes]


# --------------------------------------------------------------------------- scripted policy
FENCED = tool_calls.get_format("fenced")
WORDS = {200: "```python\n", 201: "print(6*7)", 202: "\n```", 203: " So", 204: " <answer>42</answer>",
         210: "```python\nwhile True: pass", 211: "```python\nprint(('</ans' + 'wer>' + '`' * 3 + '<ans' + 'wer>') * 99)",
         212: "```python\nimport os\nos.fork()\nos.kill(1, 9)\nopen('/etc/passwd')"}
# Prompt's last token -> script: A computes, B hangs, C prints hostile text, D never calls,
# E forks / signals / reads files.
SCRIPT = {100: 200, 200: 201, 201: 202, 210: 202, 211: 202, 212: 202, 10: 203, 203: 204,
          101: 210, 102: 211, 103: 203, 104: 212}


def scripted_params(script, seed=0, margin=1.0):
  """A bigram policy: attention and MLP outputs zeroed, orthonormal embeddings for the
  scripted tokens, LM head mapping each scripted token to its successor (greedy)."""
  p = jax.tree.map(np.array, models.init_params(CFG, jax.random.key(seed)))
  p["layers"]["attn"]["o_proj"]["kernel"][:] = 0
  p["layers"]["mlp"]["down_proj"]["kernel"][:] = 0
  ids = sorted(set(script) | set(script.values()))
  q, _ = np.linalg.qr(np.random.RandomState(seed).normal(size=(D, len(ids))))
  for k, i in enumerate(ids):
    p["embedding"][i] = q[:, k]
  p["lm_head"][:] = 0
  for a, b in script.items():
    p["lm_head"][:, b] += margin * q[:, ids.index(a)]
  return jax.tree.map(jnp.asarray, p)


def tool_sampler(tok, executor, *, fmt=FENCED, **kw):
  return ToolSampler(CFG, tok, ToolSettings(fmt, **kw), executor, pad_id=0, cache_block=16)


def message(tok, output, after="\n```"):
  head, tail = FENCED.response(output, after)
  return tok.encode(head + output + tail)


@pytest.fixture(scope="module")
def sandbox_executor():
  from r1jax.rewards import tool_exec
  limits = dataclasses.replace(tool_exec.DEFAULT_LIMITS, wall_s=1.0)
  ex = tool_exec.SandboxToolExecutor(limits, grace_s=2.0)
  yield ex
  ex.close()


def test_scripted_calls_get_their_output_and_masks(sandbox_executor):
  tok = ByteTokenizer(WORDS)
  ts = tool_sampler(tok, sandbox_executor, max_output_tokens=24)
  sp = SamplingParams(temperature=0, max_new_tokens=64, stop_ids=(2,),
                      stop_sequences=sampling.StopStrings(["</answer>"],
                                                          [tok.decode([i]) for i in range(256)]))
  prompts = [[5, 6, 100], [5, 101], [7, 8, 9, 102], [103], [104]]
  out = ts(scripted_params(SCRIPT), prompts, jax.random.key(0), num_samples=2, sampling=sp)
  assert out.tokens.shape == (5, 2, 64)
  # A: the right output, appended as a tool message, then the model goes on and stops.
  want = [200, 201, 202] + message(tok, "42") + [203, 204]
  for g in range(2):
    assert out.tokens[0, g, :out.lengths[0, g]].tolist() == want
    mask = np.zeros(64, bool)
    mask[3:3 + len(message(tok, "42"))] = True
    np.testing.assert_array_equal(out.tool_mask[0, g], mask)
    assert (out.logprobs[0, g][mask] == 0).all() and (out.logprobs[0, g][:len(want)][~mask[:len(want)]] < 0).all()
  texts = sampling.decode_completions(tok, out, sp)
  assert texts[0][0] == "```python\nprint(6*7)\n```\n```output\n42\n```\n So <answer>42</answer>"
  # B: the hanging call is stopped at its limit; the message says so (truncated to 24 tokens).
  assert out.tool_timeouts[1].tolist() == [1, 1] and out.finished[1].all()
  body = tok.decode(out.tokens[1, 0][out.tool_mask[1, 0]])
  assert body.startswith("\n```output\nTimeoutError: the progra") and body.endswith("\n```\n")
  assert out.tool_mask[1, 0].sum() == len(message(tok, "x")) - 1 + 24
  # C: hostile output cannot fake an answer or close the tool message early.
  body = tok.decode(out.tokens[2, 0][out.tool_mask[2, 0]])
  assert "answer>" not in body and body.count("```") == 2 and out.finished[2].all()
  assert texts[2][0].count("</answer>") == 1 and texts[2][0].endswith(" <answer>42</answer>")
  # D: no call, no tool tokens. E: fork / kill / file access fail inside the sandbox.
  assert out.num_calls[3].tolist() == [0, 0] and not out.tool_mask[3].any()
  assert out.tool_errors[4].tolist() == [1, 1] and out.finished[4].all()
  assert out.num_calls[:3].tolist() == [[1, 1]] * 3
  assert out.lengths.max() <= 64 and not out.call_limit_hit.any()
  # All calls of a batch run together: the hanging one costs about one limit in all.
  assert ts.last_stats["tool_seconds"] < 1.0 + 2.0 + 0.5
  m = tool_metrics(out, np.array([1, 1, 0, 0, 1, 1, 1, 1, 0, 0], float))
  assert m["tool/call_rate"] == 0.8 and m["tool/timeouts"] == 2 and m["tool/errors"] == 2
  assert m["tool/accuracy_with_call"] == 0.5 and m["tool/accuracy_without_call"] == 1.0


def test_call_limit_and_budget_end_the_sample():
  tok = ByteTokenizer(WORDS)
  loop = {**SCRIPT, 10: 200}  # after every tool message the policy calls again
  ex = FakeExecutor()
  ts = tool_sampler(tok, ex, max_calls=2, max_output_tokens=8)
  sp = SamplingParams(temperature=0, max_new_tokens=96)
  out = ts(scripted_params(loop), [[100]], jax.random.key(0), num_samples=1, sampling=sp)
  assert out.num_calls[0, 0] == 2 and out.call_limit_hit[0, 0] and not out.finished[0, 0]
  msg = message(tok, "len=10")
  call = [200, 201, 202]
  assert out.tokens[0, 0, :out.lengths[0, 0]].tolist() == (call + msg) * 2 + call
  assert [len(b) for b in ex.batches] == [1, 1]
  # A budget without room for the tool message ends the sample before running the call.
  ex = FakeExecutor()
  ts = tool_sampler(tok, ex, max_calls=2, max_output_tokens=8)
  out = ts(scripted_params(loop), [[100]], jax.random.key(0), num_samples=1,
           sampling=SamplingParams(temperature=0, max_new_tokens=3 + len(msg) + 4))
  assert out.num_calls[0, 0] == 1 and out.call_limit_hit[0, 0] and ex.batches == [["print(6*7)"]]


def test_calls_are_found_under_any_tokenisation():
  tok = ByteTokenizer({130: "``", 131: "`py", 132: "thon\nx=1\n`", 133: "``\n"})
  texts = [tok.decode([i]) for i in range(256)]
  table = tool_calls.call_table(FENCED, texts)
  final = table.shape[0] - 1

  def run(ids):
    s = 0
    for i in ids:
      s = table[s, i]
    return s == final
  assert run([130, 131, 132, 133])  # "``" "`py" "thon\nx=1\n`" "``\n"
  assert not run([130, 131, 132])
  assert not run(tok.encode("```\nprint(1)\n```"))  # closed fence, not a python call
  assert run(tok.encode("so ```python\nprint(1)\n```"))
  assert FENCED.extract_code(tok.decode([130, 131, 132, 133])) == "x=1"
  tc = tool_calls.get_format("tool_call")
  body = '<tool_call>{"name": "python", "arguments": {"code": "print(2)"}}</tool_call>'
  assert tc.extract_code("ok " + body) == "print(2)"
  assert tc.extract_code("<tool_call>{bad json</tool_call>") is None
  assert tool_calls.sanitize_output("<ans<answer>wer>1", FENCED.reserved) == "1"


# --------------------------------------------------------------------------- random policy
@pytest.fixture(scope="module")
def params():
  return models.init_params(CFG, jax.random.key(1))


BRACKETS = tool_calls.ToolFormat("brackets", "[", "]", "<<", ">>")


def chatty_params(params, scale=4.0, boost=0.3, push=6.0):
  """Random weights with attention / MLP scaled up (the context matters) and every
  embedding pushed along one direction that the LM head maps to '[' and ']' (calls happen
  within a few tokens)."""
  p = jax.tree.map(np.array, params)
  for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
    p["layers"]["attn"][name]["kernel"] *= scale
  u = np.random.RandomState(0).normal(size=D)
  u /= np.linalg.norm(u)
  p["embedding"] += boost * u
  p["lm_head"][:, ord("[")] += push * u
  p["lm_head"][:, ord("]")] += push * u
  return jax.tree.map(jnp.asarray, p)


def test_sampler_logprobs_equal_the_training_forward(params):
  tok = ByteTokenizer()
  ex = FakeExecutor()
  ts = tool_sampler(tok, ex, fmt=BRACKETS, max_calls=3, max_output_tokens=5)
  p = chatty_params(params)
  prompts = [[5, 6, 7], list(range(10, 27)), [30]]
  sp = SamplingParams(temperature=0.9, max_new_tokens=40)
  out = ts(p, prompts, jax.random.key(3), num_samples=2, sampling=sp)
  assert out.num_calls.sum() >= 6 and (out.num_calls >= 2).any()  # multi-segment samples
  ids, lengths = ts.pad_prompts(prompts)
  mb = {"prompt_tokens": jnp.asarray(ids), "prompt_lengths": jnp.asarray(lengths),
        "completion": jnp.asarray(out.tokens)}
  logp, _ = stage.completion_logprobs(p, CFG, mb, temperature=0.9, kernel=dict(chunk_size=8),
                                      remat=False)
  model = (np.arange(40) < out.lengths[..., None]) & ~out.tool_mask
  np.testing.assert_allclose(out.logprobs[model], np.asarray(logp)[model], atol=2e-5)
  # The loss mask of the GRPO batch keeps exactly the model's tokens.
  batch = rollouts.build_batch(ids, lengths, out, np.zeros((3, 2), np.float32), False)
  np.testing.assert_array_equal(batch["mask"], model.astype(np.float32))
  # Tool messages are where the executor's outputs went, in call order.
  for b, g in zip(*np.nonzero(out.num_calls)):
    text = tok.decode(out.tokens[b, g][out.tool_mask[b, g]])
    assert text.count("<<") == out.num_calls[b, g] and "len=" in text


@pytest.mark.slow
def test_pause_schedule_does_not_change_samples(params):
  tok = ByteTokenizer()
  p = chatty_params(params)
  sp = SamplingParams(temperature=1.0, max_new_tokens=32)
  outs = [tool_sampler(tok, FakeExecutor(), fmt=BRACKETS, max_calls=2, max_output_tokens=4,
                       pause_wait_steps=w)(p, [[5, 6], [9]], jax.random.key(7), num_samples=3,
                                           sampling=sp) for w in (0, 5)]
  assert outs[0].num_calls.sum() > 0
  for a, b in zip(outs[0][:4], outs[1][:4]):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("cache_block", [128, pytest.param(4, marks=pytest.mark.slow)])
def test_without_calls_equals_the_plain_sampler(params, cache_block):
  tok = ByteTokenizer()
  never = tool_calls.ToolFormat("never", "\u00e9", "\u00e8", "<", ">")
  ts = ToolSampler(CFG, tok, ToolSettings(never), FakeExecutor(), pad_id=0,
                   cache_block=cache_block)
  plain = sampling.Sampler(CFG, pad_id=0, cache_block=cache_block)
  prompts = [[5, 6, 7], list(range(10, 27)), [30]]
  greedy = plain(params, prompts, jax.random.key(0), num_samples=2,
                 sampling=SamplingParams(temperature=0, max_new_tokens=12))
  stops = (int(greedy.tokens[0, 0, 3]), int(greedy.tokens[1, 0, 1]))
  sp = SamplingParams(temperature=0, max_new_tokens=12, stop_ids=stops)
  a = plain(params, prompts, jax.random.key(0), num_samples=2, sampling=sp)
  b = ts(params, prompts, jax.random.key(0), num_samples=2, sampling=sp)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.lengths, b.lengths)
  np.testing.assert_array_equal(a.finished, b.finished)
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
  assert not b.tool_mask.any() and a.finished.any() and not a.finished.all()


# --------------------------------------------------------------------------- GRPO stage
def _tools_config(run_dir, steps):
  from r1jax import configs
  import reward_fixtures  # noqa: F401  registers the test_length reward
  c = configs.load("grpo_tools:tiny")
  c.run_dir = str(run_dir)
  c.steps = steps
  c.rewards.spec = "test_length:1.0,format:0.5"
  c.eval.at_start = False
  c.data.eval_size = 0
  # Markers that random text hits within a few tokens: every rollout calls the tool (the
  # code between them is junk: the sandbox answers with a SyntaxError, as a tool message).
  c.tools.call_start, c.tools.call_end = "a", "e"
  c.tools.wall_s = 1.0
  return c


def restore_params(run_dir):
  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"),
                               item_names=("state", "extra"))
  out = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), extra=ocp.args.JsonRestore()))
  return out["state"][0] if isinstance(out["state"], (list, tuple)) else out["state"]["params"]


@pytest.mark.slow
def test_grpo_with_tools_resumes_exactly(tmp_path):
  from r1jax.stages import grpo as grpo_stage
  a = _tools_config(tmp_path / "a", steps=2)
  grpo_stage.run(a)
  b = _tools_config(tmp_path / "b", steps=1)
  grpo_stage.run(b)
  b.steps, b.resume = 2, True
  grpo_stage.run(b)
  train = lambda c: [m for m in map(json.loads, open(os.path.join(c.run_dir, "metrics.jsonl")))
                     if "loss" in m]
  ma, mb = train(a), train(b)
  assert [m["step"] for m in mb] == [1, 2]
  # Tools were called (and answered) in the resumed step, and it equals the uninterrupted one.
  assert mb[-1]["tool/call_rate"] > 0 and mb[-1]["tool/tool_tokens_per_sample"] > 0
  for key in ("loss", "reward", "grad_norm", "tool/calls_per_sample", "tool/errors",
              "response_len_mean"):
    assert ma[-1][key] == mb[-1][key], key
  for x, y in zip(jax.tree.leaves(restore_params(a.run_dir)),
                  jax.tree.leaves(restore_params(b.run_dir))):
    np.testing.assert_array_equal(x, y)


def test_tools_config_is_validated(tmp_path):
  from r1jax.stages import grpo as grpo_stage
  c = _tools_config(tmp_path, steps=1)
  c.rl.dynamic_sampling = True
  with pytest.raises(ValueError, match="dynamic_sampling"):
    grpo_stage.validate_config(c)
  c = _tools_config(tmp_path, steps=1)
  c.tools.format = "xml"
  with pytest.raises(ValueError, match="unknown tool format"):
    grpo_stage.validate_config(c)
  c = _tools_config(tmp_path, steps=1)
  c.tools.max_calls = -1
  with pytest.raises(ValueError, match="tools.max_calls"):
    grpo_stage.validate_config(c)
