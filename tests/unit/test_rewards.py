"""Answer extraction and verifiers: hand-computed cases, lm-eval's GSM8K semantics."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from scoreops.data import Item, generate_items
from scoreops.rewards import (
    VERIFIER_KINDS,
    auto_verifier_kind,
    extract_boxed,
    extract_choice,
    extract_final_answer,
    extract_flexible,
    extract_strict_gsm8k,
    lm_eval_normalize,
    make_verifier,
    math_equal,
    normalize_number,
)

# -- GSM8K: lm-eval strict-match vs flexible-extract ----------------------------------------


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("#### 72", "72", "72"),
        ("The answer is 72.", None, "72."),  # no #### marker: strict fails
        ("72 apples ... 3 more", None, "3"),  # flexible takes the LAST number
        ("She pays $1,000.", None, "$1,000."),
        ("So 5 + 4 = 9.\n#### 9", "9", "9"),
        ("#### 5\nWait, it is 6", "5", "6"),  # strict takes the FIRST ####, flexible the last
        ("####72", None, "####72"[4:]),  # lm-eval's strict needs the space
        ("#### -3.5", "-3.5", "-3.5"),
        ("no digits here", None, None),
    ],
)
def test_gsm8k_extractors_follow_lm_eval(text: str, strict: str | None, flexible: str | None):
    assert extract_strict_gsm8k(text) == strict
    assert extract_flexible(text) == flexible


def test_lm_eval_normalisation_drops_commas_dollars_and_trailing_period():
    assert lm_eval_normalize("$1,000.") == "1000"
    assert lm_eval_normalize("72.") == "72"
    assert lm_eval_normalize("Janet sells 9.\n#### 18") == "18"


def test_gsm8k_verifiers_disagree_where_lm_eval_does():
    strict, flexible = make_verifier("gsm8k-strict"), make_verifier("gsm8k-flexible")
    item = {"answer": "Janet sells 16 - 3 - 4 = 9 eggs.\n#### 18"}  # a full GSM8K gold
    assert strict("so #### 18", item) == 1.0
    assert flexible("so #### 18", item) == 1.0
    assert strict("The answer is 18.", item) == 0.0
    assert flexible("The answer is 18.", item) == 1.0
    assert flexible("18 eggs, then 2 more", item) == 0.0
    assert strict("#### 1,8", {"answer": "18"}) == 1.0  # commas ignored, as in lm-eval


# -- boxed / final answer / numbers -----------------------------------------------------------


def test_extract_boxed_handles_nesting_and_picks_the_last():
    assert extract_boxed(r"so \boxed{\frac{1}{\sqrt{2}}} done") == r"\frac{1}{\sqrt{2}}"
    assert extract_boxed(r"\boxed{1} then \boxed{2}") == "2"
    assert extract_boxed(r"\boxed{3} and \boxed{4") == "3"  # unbalanced last one
    assert extract_boxed(r"\boxed 5.") == "5"
    assert extract_boxed("nothing") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"The answer is 4, i.e. $\boxed{5}$", "5"),  # boxed wins
        ("I think the answer is 3.5.", "3.5"),
        ("The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
        ("Answer: **12**", "12"),
        ("work...\n#### 5 apples", "5"),
        ("first 3, then 4, finally 10", "10"),
        ("no answer", None),
    ],
)
def test_extract_final_answer(text: str, expected: str | None):
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("$1,000.00", "1000"), ("-3.50", "-3.5"), ("0.0", "0"), ("007", "7"), ("50%", "50"),
     (r"\boxed{12}", "12"), ("-6/8", "-6/8"), ("abc", None), ("1.2.3", None)],
)
def test_normalize_number(text: str, expected: str | None):
    assert normalize_number(text) == expected


# -- math equivalence -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold", "equal"),
    [
        (r"\boxed{\frac12}", "0.5", True),
        ("1,000 dollars", "1000", True),
        ("#### 72", "72", True),
        ("(1,2)", "(1, 2)", True),
        ("(1,2)", "(2,1)", False),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})", True),
        ("x=3", "3", True),
        ("72.0", "72", True),
        ("3/6", "1/2", True),
        ("0.5", "0.6", False),
        (r"\frac{1}{3}", "0.33", False),
        ("", "1", False),
        (None, "1", False),
    ],
)
def test_math_equal(pred: str | None, gold: str, equal: bool):
    assert math_equal(pred, gold) is equal


def test_math_equal_works_off_the_main_thread():
    # math-verify's own timeout uses signal.alarm, which raises outside the main thread
    cases = [(r"\frac{\sqrt{3}}{2}", r"\sqrt3/2", True), (r"2\pi", r"\pi", False)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: math_equal(c[0], c[1]), cases))
    assert results == [c[2] for c in cases]


def test_math_verifier_extracts_then_compares():
    v = make_verifier("math")
    item = {"answer": r"\frac{1}{2}"}
    assert v(r"Half of it: $\boxed{0.5}$.", item) == 1.0
    assert v("The answer is 0.25.", item) == 0.0
    assert v("I don't know", item) == 0.0


# -- multiple choice --------------------------------------------------------------------------

CHOICES = ["Paris", "London", "Berlin", "Madrid"]


@pytest.mark.parametrize(
    ("text", "index"),
    [
        ("B", 1), ("(B)", 1), ("B.", 1), ("B. London", 1), ("The answer is (C).", 2),
        ("answer: D", 3), (r"\boxed{A}", 0), ("I'd say london.", 1),
        ("A dog barks; I think (B)", 1), ("Paris or London", None), ("E", None),
        ("a", None), ("The answer is **C**", 2),
    ],
)
def test_extract_choice(text: str, index: int | None):
    assert extract_choice(text, CHOICES) == index


def test_choice_verifier_accepts_index_or_letter_gold():
    v = make_verifier("choice")
    assert v("The answer is B", {"choices": CHOICES, "answer": 1}) == 1.0
    assert v("The answer is B", {"choices": CHOICES, "answer": "B"}) == 1.0
    assert v("The answer is C", {"choices": CHOICES, "answer": "(B)"}) == 0.0
    item = Item(id="q", question="Capital of France?", answer="0", source="x",
                meta={"choices": CHOICES})
    assert v("Paris", item) == 1.0


def test_exact_verifier_numbers_by_value_text_by_normalised_string():
    v = make_verifier("exact")
    assert v("1,000", {"answer": "1000"}) == 1.0
    assert v("The answer is True.", {"answer": "True"}) == 1.0
    assert v("false", {"answer": "True"}) == 0.0


def test_make_verifier_rejects_unknown_kind_naming_the_known_ones():
    with pytest.raises(ValueError) as err:
        make_verifier("fuzzy")  # type: ignore[arg-type]
    for kind in VERIFIER_KINDS:
        assert kind in str(err.value)


# -- reasoning-gym ----------------------------------------------------------------------------


def test_reasoning_gym_verifier_uses_the_tasks_scorer_after_a_json_round_trip():
    v = make_verifier("reasoning-gym")
    items = generate_items("basic_arithmetic", 6, seed=3)
    for item in items:
        stored = Item.from_dict(json.loads(json.dumps(item.to_dict())))
        assert auto_verifier_kind(stored) == "reasoning-gym"
        assert v(stored.answer, stored) == 1.0
        assert v(f"Let me compute.\n<answer>{stored.answer}</answer>", stored) == 1.0
        assert v(f"The answer is {stored.answer}.", stored) == 1.0
        wrong = str(int(stored.answer) + 1)
        assert v(wrong, stored) == 0.0


def test_reasoning_gym_verifier_on_a_text_task():
    v = make_verifier("reasoning-gym")
    (item,) = generate_items("spell_backward", 1, seed=0)
    assert v(f"<answer>{item.answer}</answer>", item) == 1.0
    # the word itself (not reversed) is wrong; the task's scorer gives partial credit at most
    assert v(f"<answer>{item.answer[::-1]}</answer>", item) == 0.0


def test_auto_verifier_kind():
    assert auto_verifier_kind(generate_items("single-digit-addition", 1, 0)[0]) == "math"
    assert auto_verifier_kind({"answer": 1, "choices": CHOICES}) == "choice"
