"""Tool-call formats of multi-turn rollouts: how a call is written, found, and answered.

A sample calls the Python tool by writing a call block: `start` marker, code, `end` marker.
The sampler (r1jax.tool_rollout) pauses the sample at the token that completes the end
marker of a call opened by the start marker, runs the code (a ToolExecutor such as
r1jax.rewards.tool_exec.SandboxToolExecutor), and appends the tool message: the program's
output, sanitised and truncated to a token budget, inside the format's response wrapper.

Formats ("fenced" is the one of tool-integrated reasoning, Gou et al. 2024 "ToRA" and the
Qwen2.5-Math tool-integrated prompts; "tool_call" is the Hermes / Qwen2.5 chat-template
`<tool_call>` block with a JSON call of a `python` function):

  fenced     ```python\n<code>\n```                 -> ```output\n<stdout>\n```\n
  tool_call  <tool_call>{"name": "python", "arguments": {"code": "<code>"}}</tool_call>
                                                     -> \n<tool_response>\n<stdout>\n</tool_response>\n

Detection runs inside the jitted decode loop as a token-level automaton (`call_table`): a
character DFA for "start marker, then end marker" (Knuth-Morris-Pratt per marker, the end
matched only after the start), lifted to tokens as a [states, V] table from each token's
decoded text, like the stop strings of r1jax.stop_strings.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence

import numpy as np

from r1jax.stop_strings import lift_dfa

__all__ = ["ToolFormat", "FORMATS", "get_format", "call_table", "sequence_dfa", "lift_dfa",
           "sanitize_output", "RESERVED_STRINGS"]

# Strings a tool output must not carry into the transcript: the R1 tags (an answer printed by
# the tool is not the model's answer) are removed from every output, and each format adds
# its own markers (`ToolFormat.reserved`).
RESERVED_STRINGS = ("<think>", "</think>", "<answer>", "</answer>")


@dataclasses.dataclass(frozen=True)
class ToolFormat:
  """How a tool call is written and answered.

  Attributes:
    name: format name.
    start, end: the markers that open and close a call (non-empty; `end` is matched only
      after `start`).
    response_prefix, response_suffix: the tool message around the output text.
    json_code: the call body is JSON {"name": ..., "arguments": {"code": ...}} (tool_call),
      else the body is the code itself (fenced).
  """
  name: str
  start: str
  end: str
  response_prefix: str
  response_suffix: str
  json_code: bool = False

  def __post_init__(self):
    if not self.start or not self.end:
      raise ValueError(f"tool format {self.name!r}: start and end markers must be non-empty")

  @property
  def reserved(self) -> tuple[str, ...]:
    """Strings removed from tool outputs: R1 tags, call markers, the response wrapper."""
    own = (self.start, self.end, self.response_prefix.strip(), self.response_suffix.strip())
    return tuple(dict.fromkeys(s for s in RESERVED_STRINGS + own if s))

  def extract_code(self, text: str) -> Optional[str]:
    """The code of the call that ends `text` (text after the last tool message), or None.

    `text` ends with the end marker (possibly followed by the rest of its last token);
    the body is what lies between the last start marker and the last end marker.
    """
    i = text.rfind(self.start)
    if i < 0:
      return None
    body_start = i + len(self.start)
    j = text.rfind(self.end)
    if j < body_start:
      return None
    body = text[body_start:j]
    if not self.json_code:
      # "```python\n" and "\n```": the fence lines around the code are not part of it.
      body = body[1:] if body.startswith("\n") else body
      return body[:-1] if body.endswith("\n") else body
    try:
      call = json.loads(body)
    except ValueError:
      return None
    if not isinstance(call, dict) or not isinstance(call.get("arguments"), dict):
      return None
    code = call["arguments"].get("code")
    return code if isinstance(code, str) else None

  def response(self, output: str, after: str) -> tuple[str, str]:
    """(head, tail) of the tool message around `output`; a newline opens it when the text
    before (`after`) does not end with one, so the wrapper starts its own line."""
    head = self.response_prefix
    if after and not after.endswith("\n") and not head.startswith("\n"):
      head = "\n" + head
    return head, self.response_suffix


FORMATS = {
    "fenced": ToolFormat("fenced", "```python", "```", "```output\n", "\n```\n"),
    "tool_call": ToolFormat("tool_call", "<tool_call>", "</tool_call>",
                            "\n<tool_response>\n", "\n</tool_response>\n", json_code=True),
}


def get_format(name: str, *, start: str = "", end: str = "") -> ToolFormat:
  """A named format, with its markers optionally replaced.

  Raises:
    ValueError: an unknown name (the message lists the known ones).
  """
  if name not in FORMATS:
    raise ValueError(f"unknown tool format {name!r}; known: {', '.join(FORMATS)}")
  fmt = FORMATS[name]
  if start or end:
    fmt = dataclasses.replace(fmt, start=start or fmt.start, end=end or fmt.end)
  return fmt


def sanitize_output(text: str, reserved: Sequence[str]) -> str:
  """`text` with every reserved string removed (repeatedly: removing one must not assemble
  another, as in "<ans<answer>wer>")."""
  prev = None
  while prev != text:
    prev = text
    for s in reserved:
      if s:
        text = text.replace(s, "")
  return text


# --------------------------------------------------------------------------- automaton
def _kmp(pattern: str, alphabet: dict[str, int]) -> np.ndarray:
  """KMP DFA [len(pattern) + 1, A + 1] int32 of `pattern` over alphabet columns (column 0 =
  any other character); state len(pattern) = matched."""
  m = len(pattern)
  dfa = np.zeros((m + 1, len(alphabet) + 1), np.int32)
  fail = 0
  for i in range(m):
    dfa[i] = dfa[fail]
    dfa[i, alphabet[pattern[i]]] = i + 1
    if i > 0:
      fail = dfa[fail, alphabet[pattern[i]]]
  return dfa


def sequence_dfa(first: str, second: str) -> tuple[np.ndarray, dict[str, int]]:
  """Character DFA of "`first`, later `second`": ([S, A + 1] int32, char -> column).

  States 0..|first|-1 match `first`; reaching it moves to the start of `second`'s states;
  state S - 1 (matched both) is absorbing. Column 0 stands for any other character.
  """
  alphabet = {ch: k + 1 for k, ch in enumerate(sorted(set(first + second)))}
  a, b = _kmp(first, alphabet), _kmp(second, alphabet)
  n1, n2 = len(first), len(second)
  S = n1 + n2 + 1
  delta = np.zeros((S, len(alphabet) + 1), np.int32)
  delta[:n1] = a[:n1]  # a[.] == n1 means "first matched" = state n1 (start of second)
  delta[n1:] = b + n1
  delta[S - 1] = S - 1
  return delta, alphabet


def call_table(fmt: ToolFormat, token_texts: Sequence[str]) -> np.ndarray:
  """Token-level automaton [S, V] int32 of `fmt`'s calls: from state 0, the state after a
  token sequence is S - 1 exactly when its text contains the start marker followed (later)
  by the end marker."""
  return lift_dfa(*sequence_dfa(fmt.start, fmt.end), token_texts)
