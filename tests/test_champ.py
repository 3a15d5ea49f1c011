"""Tests of r1jax.data.champ: CHAMP problems (PyPI champ-dataset) as math eval examples."""
import importlib.util

import pytest

from r1jax.data import champ
from r1jax.data.champ import champ_data_path, champ_examples, normalize_champ_answer
from r1jax.rewards.accuracy import math_accuracy


@pytest.fixture(scope="module")
def everything():
  """All 270 examples; the data-dependent tests skip when champ-dataset is not installed."""
  try:
    champ_data_path()
  except ImportError as e:
    pytest.skip(str(e))
  return {e["id"]: e for e in champ_examples(only_verifiable=False)}


def answer_of(examples, pid):
  return examples[f"champ/{pid}"]["answer"]


# -- loading --------------------------------------------------------------------------------------

def test_counts_and_categories(everything):
  assert len(everything) == 270
  cats = {}
  for e in everything.values():
    cats[e["metadata"]["category"]] = cats.get(e["metadata"]["category"], 0) + 1
  assert cats == {"Combinatorics": 40, "Inequality": 50, "Number-Theory": 80, "Polynomial": 50,
                  "Sequence": 50}
  verifiable = champ_examples()
  assert len(verifiable) == sum(e["metadata"]["verifiable"] for e in everything.values()) == 246
  assert all(e["metadata"]["verifiable"] for e in verifiable)


def test_fields_and_unique_ids(everything):
  for key, e in everything.items():
    assert set(e) == {"id", "question", "answer", "task", "metadata"}
    assert key == e["id"] == f"champ/{e['metadata']['problem_id']}"
    assert e["task"] == "math"
    assert isinstance(e["question"], str) and e["question"] and "@@" not in e["question"]
    assert isinstance(e["answer"], str) and e["answer"] and "@@" not in e["answer"]
    m = e["metadata"]
    assert m["source"] == "champ" and isinstance(m["verifiable"], bool)
    assert m["solution"] and m["raw_answer"]
    assert (m["unverifiable_reason"] is None) == m["verifiable"]
    assert (m["answer_type"] == "free_text") != m["verifiable"]
  ids = [e["id"] for e in champ_examples(only_verifiable=False)]
  assert len(ids) == len(set(ids)) == 270


def test_every_verifiable_answer_parses(everything):
  import math_verify
  bad = [(e["id"], e["answer"]) for e in everything.values() if e["metadata"]["verifiable"]
         and not math_verify.parse(f"${e['answer']}$")]
  assert not bad


def test_returns_fresh_copies(everything):
  first = champ_examples()
  first[0]["metadata"]["category"] = "changed"
  assert champ_examples()[0]["metadata"]["category"] != "changed"


@pytest.mark.parametrize("pid,answer,kind", [
  ("P_Combinatorics_1", "239", "integer"),
  ("P_Combinatorics_2", "252", "integer"),                  # "C(10, 5), or equivalently 252"
  ("P_Combinatorics_3", "2^{\\lfloor n/2 \\rfloor} \\cdot \\lfloor n/2 \\rfloor!", "expression"),
  ("P_Combinatorics_14", "5/14", "expression"),             # "5/14, or approximately 35.7%"
  ("P_Combinatorics_16", "\\binom{n+1}{2m+1}", "expression"),
  ("P_Combinatorics_17", "No", "yes_no"),
  ("P_Combinatorics_37", "n(n+1)(2n+1)/6", "expression"),   # the closed form, not the sum
  ("P_Inequality_1", "[-1, 1]", "interval"),
  ("P_Inequality_19", "2", "integer"),                      # "2 inequalities"
  ("P_Inequality_44", "1", "integer"),                      # "Exactly one"
  ("P_Number-Theory_3", "376, 625", "set"),                 # "376 and 625"
  ("P_Number-Theory_4", "(6, 5)", "tuple"),                 # "x=6, y=5"
  ("P_Number-Theory_19", "0", "integer"),                   # "0 is the only possible value"
  ("P_Number-Theory_39", "(0, 2), (9, 11)", "set"),
  ("P_Number-Theory_53", "1, 4, 9", "set"),                 # "1, 4 and 9"
  ("P_Polynomial_3", "0", "integer"),      # "At most 0 integer-valued zeros (i.e., ...)"
  ("P_Polynomial_15", "0, 1", "set"),                       # "f(x)=0 or f(x)=1"
  ("P_Polynomial_22", "1, -1", "set"),                      # "x=±1"
  ("P_Polynomial_28", "((-1)^{n+1}+n+1)/(n+2)", "expression"),
  ("P_Sequence_7", "3", "integer"),          # "The limit exists and is equal to 3"
  ("P_Sequence_12", "No", "yes_no"),         # "The limit does not exist"
  ("P_Sequence_41", "(1+\\sqrt{4a+1})/2", "expression"),
])
def test_hand_checked_answers(everything, pid, answer, kind):
  e = everything[f"champ/{pid}"]
  assert (e["answer"], e["metadata"]["answer_type"]) == (answer, kind)
  assert e["metadata"]["verifiable"]


@pytest.mark.parametrize("pid", ["P_Inequality_9", "P_Inequality_12", "P_Number-Theory_7",
                                 "P_Number-Theory_59", "P_Polynomial_14", "P_Polynomial_46",
                                 "P_Sequence_36", "P_Sequence_43"])
def test_free_text_is_not_verifiable(everything, pid):
  e = everything[f"champ/{pid}"]
  assert not e["metadata"]["verifiable"] and e["metadata"]["answer_type"] == "free_text"
  assert e["answer"] == e["metadata"]["raw_answer"]   # the package's own text is kept
  assert e["id"] not in {x["id"] for x in champ_examples()}


# -- with the accuracy reward ---------------------------------------------------------------------

@pytest.mark.parametrize("pid", ["P_Combinatorics_2", "P_Combinatorics_3", "P_Combinatorics_16",
                                 "P_Inequality_1", "P_Inequality_18", "P_Number-Theory_4",
                                 "P_Number-Theory_39", "P_Polynomial_2", "P_Polynomial_38",
                                 "P_Sequence_12", "P_Sequence_41", "P_Inequality_28"])
def test_reward_accepts_the_normalised_answer(everything, pid):
  e = everything[f"champ/{pid}"]
  assert math_accuracy(f"<answer>{e['answer']}</answer>", e) == 1.0


@pytest.mark.parametrize("pid,pred,score", [
  ("P_Combinatorics_2", "\\binom{10}{5}", 1.0),
  ("P_Combinatorics_2", "251", 0.0),
  ("P_Inequality_18", "\\frac{\\sqrt{3}}{3}", 1.0),
  ("P_Number-Theory_3", "625, 376", 1.0),
  ("P_Number-Theory_3", "376", 0.0),
  ("P_Number-Theory_4", "x=6, y=5", 1.0),
  ("P_Number-Theory_4", "(5, 6)", 0.0),
  ("P_Polynomial_22", "\\pm 1", 1.0),
  ("P_Combinatorics_16", "\\frac{(n+1)!}{(2m+1)!(n-2m)!}", 1.0),
  ("P_Sequence_12", "no", 1.0),
  ("P_Sequence_12", "Yes", 0.0),
  ("P_Inequality_28", "\\text{Yes}", 1.0),
])
def test_reward_on_other_forms(everything, pid, pred, score):
  assert math_accuracy(f"<answer>{pred}</answer>", everything[f"champ/{pid}"]) == score


# -- normalisation rules without the data ---------------------------------------------------------

@pytest.mark.parametrize("raw,question,answer", [
  ("The answer is @@$\\frac{1}{2}$@@.", "", "\\frac{1}{2}"),
  ("@@2^(n-1)@@", "", "2^{n-1}"),
  ("@@C(10, 5)@@, or equivalently @@252@@", "", "252"),
  ("3 is the only possible value", "", "3"),
  ("The answer is Yes.", "Is it prime?", "Yes"),
  ("98 values", "For how many values of n ...?", "98"),
  ("It is not possible", "Is it possible to ...?", "No"),
  ("@@a=3, b=-7, c=4@@", "", "(3, -7, 4)"),
  ("@@(x=8, y=2), (x=2, y=8)@@", "", "(8, 2), (2, 8)"),
  ("@@x=±1, ±2@@", "", "1, -1, 2, -2"),
  ("@@sqrt(3)/3@@", "", "\\sqrt{3}/3"),
])
def test_normalize_rules(raw, question, answer):
  got = normalize_champ_answer(raw, question)
  assert got.answer == answer and got.reason is None


@pytest.mark.parametrize("raw,question", [
  ("No integer solutions", "Find all integer solutions to the equation x^2-3y^2=17."),
  ("It is not possible", "Find the sequence."),              # not a yes/no question
  ("98 values", "Find the values."),                         # not a "how many" question
  ("@@(x^2+x+1)(x^2-x+1)@@", "Factorize x^4+x^2+1."),
  ("@@x(x-1)(x-2)...(x-2022)@@", "Find a monic polynomial."),
  ("", ""),
])
def test_normalize_unverifiable(raw, question):
  got = normalize_champ_answer(raw, question)
  assert got.answer is None and got.answer_type == "free_text" and got.reason


def test_normalize_type_error():
  with pytest.raises(TypeError):
    normalize_champ_answer(None)


# -- errors ---------------------------------------------------------------------------------------

def test_missing_package_names_pip_install(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(champ.importlib.util, "find_spec",
                      lambda name, *a: None if name == "champ_dataset" else real(name, *a))
  with pytest.raises(ImportError, match="pip install champ-dataset"):
    champ_examples()


def test_missing_file_names_pip_install(tmp_path):
  with pytest.raises(FileNotFoundError, match="pip install champ-dataset"):
    champ_examples(path=tmp_path / "v0.json")


def test_wrong_layout(tmp_path):
  bad = tmp_path / "bad.json"
  bad.write_text('{"problems": {}}')
  with pytest.raises(ValueError, match="problems"):
    champ_examples(path=bad)
