"""Prompt templates: how a question becomes the text the policy continues.

Names:
  "r1_zero"  the R1-Zero training template (DeepSeek-R1, table 1), plain text, no chat markup.
  "chat"     the model's chat template, question as the user message, generation prompt added.
  "chat_r1"  the chat template with a system message carrying the R1-Zero format instructions.
  "r1_zero_1shot"  the R1-Zero instructions, one worked example in the format, and the
             response opened with "<think>" (small models never emit the tags unprompted, so
             the plain template gives no reward signal to learn from; see README).
  "r1_zero_steps_1shot"  as r1_zero_1shot, with a worked example that reasons step by step
             (a chain sum computed one partial sum at a time): the R1-Zero signature config.
  "r1_zero_tool_1shot"  as r1_zero_1shot, with a Python tool: the instructions say how to
             call it and the worked example makes one call (tool rollouts, r1jax.tool_rollout).
  "raw"      the question itself.

`response_prefix(template)` is the part of the response the template already wrote
("<think>" for r1_zero_1shot): rewards must see prefix + completion.

Questions are inserted verbatim (reasoning-gym questions often carry their own instructions such
as "Give your answer as ..."; they are left as they are).
"""

from __future__ import annotations

from typing import Any

__all__ = ["R1_ZERO_TEMPLATE", "R1_ZERO_1SHOT_TEMPLATE", "R1_ZERO_STEPS_1SHOT_TEMPLATE", "R1_SYSTEM_PROMPT", "TEMPLATES",
           "render_prompt", "response_prefix", "check_template", "is_chat_template"]

# DeepSeek-R1, table 1 (docs/method.md "Templates"); "{prompt}" is replaced by the question.
R1_ZERO_TEMPLATE = (
  "A conversation between User and Assistant. The user asks a question, and the Assistant "
  "solves it. The assistant first thinks about the reasoning process in the mind and then "
  "provides the user with the answer. The reasoning process and answer are enclosed within "
  "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process "
  "here </think> <answer> answer here </answer>. User: {prompt}. Assistant:"
)

# The R1-Zero template's instructions, addressed to the assistant, for "chat_r1".
R1_SYSTEM_PROMPT = (
  "You are a helpful assistant. The user asks a question, and you solve it. You first think "
  "about the reasoning process in the mind and then provide the user with the answer. The "
  "reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
  "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
  "</answer>."
)

# R1-Zero instructions + one worked example; the response is opened with "<think>".
R1_ZERO_1SHOT_TEMPLATE = (
  R1_ZERO_TEMPLATE[:R1_ZERO_TEMPLATE.index(" User: {prompt}")]
  + "\nUser: What is 3 + 4?\nAssistant: <think> 3 plus 4 equals 7. </think> <answer> 7 </answer>"
  + "\nUser: {prompt}\nAssistant: <think>"
)

# As R1_ZERO_1SHOT_TEMPLATE, but the example reasons one step at a time.
R1_ZERO_STEPS_1SHOT_TEMPLATE = (
  R1_ZERO_TEMPLATE[:R1_ZERO_TEMPLATE.index(" User: {prompt}")]
  + "\nUser: State the final answer to the following arithmetic problem: 7 + 5 - 3 + 8 ="
  + "\nAssistant: <think> 7 + 5 = 12. 12 - 3 = 9. 9 + 8 = 17. </think> <answer> 17 </answer>"
  + "\nUser: {prompt}\nAssistant: <think>"
)

# R1-Zero instructions, a Python tool (fenced call, fenced output as in ToRA, Gou et al.
# 2024), and one worked example that calls it; the response is opened with "<think>".
R1_ZERO_TOOL_1SHOT_TEMPLATE = (
  R1_ZERO_TEMPLATE[:R1_ZERO_TEMPLATE.index(" User: {prompt}")]
  + " To compute, the assistant may run Python by writing ```python\ncode\n```; the output "
  "follows in ```output\n...\n```."
  + "\nUser: What is 4817 + 2396 - 758 + 9064?\nAssistant: <think> I run it.\n```python\n"
  "print(4817 + 2396 - 758 + 9064)\n```\n```output\n15519\n```\n</think> <answer> 15519 </answer>"
  + "\nUser: {prompt}\nAssistant: <think>"
)

TEMPLATES = ("r1_zero", "r1_zero_1shot", "chat", "chat_r1", "raw", "r1_zero_tool_1shot",
             "r1_zero_steps_1shot")

_RESPONSE_PREFIX = {"r1_zero_1shot": "<think>", "r1_zero_tool_1shot": "<think>",
                    "r1_zero_steps_1shot": "<think>"}
_PLAIN = {"r1_zero": R1_ZERO_TEMPLATE, "r1_zero_1shot": R1_ZERO_1SHOT_TEMPLATE,
          "r1_zero_tool_1shot": R1_ZERO_TOOL_1SHOT_TEMPLATE,
          "r1_zero_steps_1shot": R1_ZERO_STEPS_1SHOT_TEMPLATE}


def response_prefix(template: str) -> str:
  """Text that the template put at the start of the response ("" for most templates).

  Raises:
    ValueError: unknown template name.
  """
  check_template(template)
  return _RESPONSE_PREFIX.get(template, "")


def check_template(template: str) -> None:
  """Validates a template name.

  Raises:
    ValueError: unknown name (the message lists the known ones).
  """
  if template not in TEMPLATES:
    raise ValueError(f"unknown prompt template {template!r}; known: {', '.join(TEMPLATES)}")


def is_chat_template(template: str) -> bool:
  """True for templates rendered with the tokenizer's chat template ("chat", "chat_r1").

  Raises:
    ValueError: unknown template name.
  """
  check_template(template)
  return template in ("chat", "chat_r1")


def render_prompt(question: str, template: str, tokenizer: Any = None) -> str:
  """Renders one question with a named template.

  Args:
    question: the question text, inserted as is.
    template: one of TEMPLATES.
    tokenizer: an `r1jax.tokenizer.Tokenizer` (anything with `apply_chat_template`); needed only
      for the chat templates.

  Returns:
    the prompt text (str). Chat templates end with the assistant generation prompt.
  Raises:
    ValueError: unknown template name, or a chat template without a tokenizer.
    TypeError: question is not a str.
  """
  check_template(template)
  if not isinstance(question, str):
    raise TypeError(f"question must be a str, got {type(question).__name__}")
  if template == "raw":
    return question
  if template in _PLAIN:
    # str.replace, not str.format: questions may contain braces.
    return _PLAIN[template].replace("{prompt}", question)
  if tokenizer is None:
    raise ValueError(f"template {template!r} needs a tokenizer (for its chat template)")
  messages = [{"role": "user", "content": question}]
  if template == "chat_r1":
    messages.insert(0, {"role": "system", "content": R1_SYSTEM_PROMPT})
  return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
