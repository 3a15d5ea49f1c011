"""Stop strings matched on decoded text, whatever the tokenisation (used by r1jax.sampling).

`</answer>` may end inside the token `>.`, so token-exact stop sequences miss it. Here stop
strings compile into a character-level Aho-Corasick automaton (Aho & Corasick 1975, "Efficient
string matching") lifted to tokens as a [states, V] table, built once on the host from each
token's decoded text; the jitted decode loop (r1jax.sampling.generate) carries one state per
sample and ends the sample when the final state is reached. Whoever decodes then cuts the
text right after the stop string (`decode_completions`, as vLLM does), so the rewards see
`...</answer>`.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

__all__ = ["StopStrings", "token_texts", "stop_sequences_for", "truncate_at_stop",
           "decode_completions"]


class StopStrings:
  """Stop strings compiled to a token-level automaton (module docstring).

  A character-level Aho-Corasick automaton over `strings` (its final states merged into one
  absorbing state) is run over each token's text from every state: `table[s, v]` is the
  state after the text of token v from state s, the final state if a stop string is
  completed anywhere inside it. Text is matched as the tokenizer decodes it token by token;
  a character split between tokens (bytes of one UTF-8 character) decodes to U+FFFD and
  matches nothing, so stop strings should be whole characters (as `</answer>` is).

  Attributes:
    strings: the stop strings (tuple of str).
    table: [S, V] int32 transition table; state 0 is the start, S - 1 the final state.
  Args:
    strings: non-empty stop strings.
    token_texts: V strings, the decoded text of each token id ("" for special tokens).
  Raises:
    ValueError: no strings, or an empty string.
  """

  def __init__(self, strings: Sequence[str], token_texts: Sequence[str]):
    self.strings = tuple(strings)
    if not self.strings or any(not s for s in self.strings):
      raise ValueError(f"stop strings must be non-empty strings, got {self.strings!r}")
    delta, alphabet = _aho_corasick(self.strings)
    self.table = lift_dfa(delta, alphabet, token_texts)
    self._key = (self.strings, hash(self.table.tobytes()))

  @property
  def final_state(self) -> int:
    return self.table.shape[0] - 1

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, StopStrings) and self._key == other._key and \
        np.array_equal(self.table, other.table)

  def __repr__(self):
    return f"StopStrings({list(self.strings)!r}, states={self.table.shape[0]}, " \
           f"vocab={self.table.shape[1]})"


def _aho_corasick(strings: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
  """Character DFA of the Aho-Corasick automaton: ([S, A + 1] int32, char -> column).

  Column 0 stands for every character outside the stop strings (back to the start state);
  the final states are merged into the last state, which is absorbing.
  """
  goto: list[dict[str, int]] = [{}]
  ends = [False]
  for s in strings:
    node = 0
    for ch in s:
      if ch not in goto[node]:
        goto.append({})
        ends.append(False)
        goto[node][ch] = len(goto) - 1
      node = goto[node][ch]
    ends[node] = True
  fail = [0] * len(goto)
  order, queue = [], list(goto[0].values())
  while queue:  # breadth-first: a node's failure link is known before its children's
    node = queue.pop(0)
    order.append(node)
    ends[node] = ends[node] or ends[fail[node]]
    for ch, child in goto[node].items():
      f = fail[node]
      while f and ch not in goto[f]:
        f = fail[f]
      fail[child] = goto[f][ch] if node and ch in goto[f] else 0
      queue.append(child)
  alphabet = {ch: k + 1 for k, ch in enumerate(sorted({c for s in strings for c in s}))}
  live = [n for n in range(len(goto)) if not ends[n]]  # root first
  index = {n: k for k, n in enumerate(live)}
  final = len(live)
  delta = np.zeros((final + 1, len(alphabet) + 1), np.int32)
  delta[final] = final
  for n in live:
    for ch, col in alphabet.items():
      m = n
      while m and ch not in goto[m]:
        m = fail[m]
      m = goto[m].get(ch, 0)
      delta[index[n], col] = final if ends[m] else index[m]
  return delta, alphabet


def lift_dfa(delta: np.ndarray, alphabet: dict[str, int],
             token_texts: Sequence[str]) -> np.ndarray:
  """Lift a character automaton to tokens.

  Args:
    delta: [S, A + 1] int32 character transitions (column 0: any character not in
      `alphabet`).
    alphabet: character -> column of `delta`.
    token_texts: the decoded text of each token id (V entries).
  Returns:
    [S, V] int32: the state reached from each state by reading each token's text.
  """
  V, S = len(token_texts), delta.shape[0]
  lengths = np.fromiter((len(t) for t in token_texts), np.int64, V)
  L = int(lengths.max()) if V else 0
  chars = np.full((V, max(L, 1)), -1, np.int32)
  for v, text in enumerate(token_texts):
    if text:
      chars[v, :len(text)] = [alphabet.get(c, 0) for c in text]
  state = np.repeat(np.arange(S, dtype=np.int32)[:, None], V, axis=1)
  for j in range(L):
    rows = np.nonzero(lengths > j)[0]
    state[:, rows] = delta[state[:, rows], chars[rows, j][None, :]]
  return state


def token_texts(tokenizer) -> list[str]:
  """Decoded text of every token id, as it reads in the middle of a text (a SentencePiece
  word-start token keeps its space): decode([a, v]) minus decode([a]) for an ordinary
  token a; special tokens give "" (skip_special_tokens, as the stages decode)."""
  anchor = tokenizer.encode("a", add_bos=False)
  anchor = anchor[:1] if anchor else []
  head = tokenizer.decode(anchor)
  out = []
  for v in range(tokenizer.vocab_size):
    text = tokenizer.decode(anchor + [v])
    out.append(text[len(head):] if text.startswith(head) else tokenizer.decode([v]))
  return out


@functools.lru_cache(maxsize=8)
def _compiled(tokenizer, strings: tuple[str, ...]) -> "StopStrings":
  return StopStrings(strings, token_texts(tokenizer))


def stop_sequences_for(tokenizer, strings: Sequence[str]) -> Optional[StopStrings]:
  """Stop strings compiled for `tokenizer`'s vocabulary (cached per tokenizer and strings),
  or None when `strings` is empty.

  Raises:
    ValueError: an empty stop string.
  """
  strings = tuple(strings)
  return _compiled(tokenizer, strings) if strings else None


def truncate_at_stop(text: str, strings: Sequence[str]) -> str:
  """`text` cut right after the earliest-ending occurrence of any stop string (unchanged
  when none occurs): the text the sampler's automaton stopped on."""
  ends = [i + len(s) for s in strings if s and (i := text.find(s)) >= 0]
  return text[:min(ends)] if ends else text


def decode_completions(tokenizer, out, sampling, prefix: str = "") -> list[list[str]]:
  """Texts of sampled completions: decoded, cut after the stop string, `prefix` prepended.

  Args:
    tokenizer: the tokenizer the stop strings were compiled for (`decode(ids)`).
    out: host r1jax.sampling.SampleOutput (tokens [B, G, N], lengths [B, G]).
    sampling: the r1jax.sampling.SamplingParams used (its stop_sequences).
    prefix: text the template already wrote at the start of the response ("<think>").
  Returns:
    [B][G] completion texts.
  """
  strings = sampling.stop_sequences.strings if sampling.stop_sequences is not None else ()
  B, G = out.lengths.shape
  return [[prefix + truncate_at_stop(tokenizer.decode(out.tokens[b, g, :out.lengths[b, g]]),
                                     strings) for g in range(G)] for b in range(B)]
