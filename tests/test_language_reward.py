"""Language-consistency reward on hand-made mixed-language texts; proportions counted by hand
(the word rules are in r1jax/rewards/language.py's docstring)."""

import pytest

from r1jax.rewards import REWARD_FUNCTIONS, RewardComputer, parse_reward_spec
from r1jax.rewards.language import classify_words, extract_cot, language_reward

MIXED = "<think>首先，我们计算 3 + 4 = 7。So the answer is 7.</think> <answer>7</answer>"


@pytest.mark.parametrize("text,language,want", [
    # 首 先 我 们 计 算 (6 Han words) + So, the, answer, is (4 Latin); digits are neutral.
    (MIXED, "en", 4 / 10),
    (MIXED, "zh", 6 / 10),
    # $x = 3$ and \frac are neutral; {x} is a one-letter variable: Let, and, compute, The,
    # result, is.
    (r"<think>Let $x = 3$ and compute \frac{x}{2}. The result is 1.5</think>", "en", 1.0),
    (r"<think>Let $x = 3$ and compute \frac{x}{2}. The result is 1.5</think>", "zh", 0.0),
    # No <think>: the CoT is the text before </think> (计, 算, the, sum).
    ("计算 the sum </think> <answer>5</answer>", "en", 2 / 4),
    # No tags: the whole text. Bonjour | привет, мир | 你, 好.
    ("Bonjour, привет мир 你好", "ru", 2 / 5),
    ("Bonjour, привет мир 你好", "fr", 1 / 5),
    # Japanese: こ, れ, は, で, す (kana, one word each) + test.
    ("<think>これは test です</think>", "ja", 5 / 6),
    ("<think>これは test です</think>", "en", 1 / 6),
    # Korean is space-delimited: 답은, 입니다 (Hangul words) + seven.
    ("<think>답은 seven 입니다</think>", "ko", 2 / 3),
    # An unclosed think block (truncated generation) is judged to the end.
    ("<think>we are still thinking 然后", "en", 4 / 6),
    # Code blocks are neutral: only "Compute" and "first" count.
    ("<think>Compute ```python\nprint('你好')\n``` first</think>", "en", 1.0),
    # A combining accent continues its word: "cafe\u0301" is one Latin word.
    ("<think>cafe\u0301 ok 好</think>", "fr", 2 / 3),
    # No countable word: 0.
    ("<think> </think><answer>7</answer>", "en", 0.0),
    ("<think>3 + 4 = 7</think>", "en", 0.0),
    ("", "en", 0.0),
])
def test_hand_computed_proportions(text, language, want):
  assert language_reward(text, language=language) == pytest.approx(want)


def test_target_from_example_fields():
  assert language_reward(MIXED, {"language": "zh"}) == pytest.approx(0.6)
  assert language_reward(MIXED, {"metadata": {"language": "zh"}}) == pytest.approx(0.6)
  assert language_reward(MIXED, {"metadata": {}}, language="zh") == pytest.approx(0.6)
  assert language_reward(MIXED, {"language": "zh-CN"}) == pytest.approx(0.6)
  assert language_reward(MIXED, None) == pytest.approx(0.4)  # default "en"
  with pytest.raises(ValueError, match="unknown target language"):
    language_reward(MIXED, language="xx")
  with pytest.raises(ValueError, match="method"):
    language_reward(MIXED, method="bert")


def test_word_splitting_and_cot_extraction():
  assert [w for w, _, _ in classify_words("I think x1 = 2a, so 答案")] == \
      ["think", "so", "答", "案"]
  assert extract_cot("pre <think>a</think> post") == "a"
  assert extract_cot("a </think> b") == "a "
  assert extract_cot("plain") == "plain"


def test_langid_method_separates_same_script_languages():
  pytest.importorskip("py3langid")
  text = ("<think>Nous additionnons trois et quatre pour obtenir sept. "
          "Then we check the result carefully.</think>")
  # Script alone cannot tell French from English.
  assert language_reward(text, language="en") == 1.0
  # 8 French words + 6 English words.
  got = language_reward(text, language="en", method="langid", candidates=["en", "fr", "de"])
  assert got == pytest.approx(6 / 14)
  assert language_reward(text, language="fr", method="langid",
                         candidates=["en", "fr", "de"]) == pytest.approx(8 / 14)
  # Sentences shorter than min_words are not identified (benefit of the doubt).
  assert language_reward(text, language="en", method="langid", candidates=["en", "fr"],
                         min_words=10) == 1.0
  # Other scripts are still decided by script.
  assert language_reward(MIXED, language="en", method="langid") == pytest.approx(0.4)


def test_registered_and_weighted_in_the_reward_spec():
  assert "language" in REWARD_FUNCTIONS
  assert parse_reward_spec("accuracy:1.0,language:0.1") == [("accuracy", 1.0), ("language", 0.1)]
  ex = {"id": "q", "question": "3 + 4?", "answer": "7", "task": "math", "metadata": {}}
  with RewardComputer("accuracy:1.0,language:0.1", num_workers=0,
                      fn_kwargs={"language": {"language": "zh"}}) as rc:
    res = rc([MIXED, "<think>We add them.</think> <answer>8</answer>"], [ex, ex])
  assert res.per_function["language"].tolist() == pytest.approx([0.6, 0.0])
  assert res.total.tolist() == pytest.approx([1.0 + 0.06, 0.0])
