"""Self-correction metrics: the Δ identity, hand-computed values and the intervals' coverage."""

from __future__ import annotations

import random

import pytest

from scoreops.metrics import (
    PairedCounts,
    change_rates,
    correction_metrics,
    newcombe_paired_interval,
    paired_counts,
    wilson_interval,
)


def test_hand_computed_table() -> None:
    # t1: C C W W W C ; t2: C W C C W C  -> c2c 2, c2i 1, i2c 2, i2i 1
    t1 = [True, True, False, False, False, True]
    t2 = [True, False, True, True, False, True]
    m = correction_metrics([list(p) for p in zip(t1, t2, strict=True)])
    assert m.n == 6
    assert m.counts == PairedCounts(c2c=2, c2i=1, i2c=2, i2i=1)
    assert m.acc_t1 == pytest.approx(3 / 6) and m.acc_t2 == pytest.approx(4 / 6)
    assert m.delta_i2c == pytest.approx(2 / 6) and m.delta_c2i == pytest.approx(1 / 6)
    assert m.delta == pytest.approx(1 / 6)
    d = m.to_dict()
    assert d["counts"] == {"c2c": 2, "c2i": 1, "i2c": 2, "i2i": 1}
    assert set(d["ci"]) == {"acc_t1", "acc_t2", "acc_tk", "delta", "delta_i2c", "delta_c2i"}


def test_identity_holds_exactly_on_random_tables() -> None:
    rng = random.Random(1234)
    for _ in range(500):
        n = rng.randint(1, 400)
        turns = rng.randint(1, 4)
        p = rng.random()
        rows = [[rng.random() < p for _ in range(turns)] for _ in range(n)]
        m = correction_metrics(rows)
        assert m.delta == m.delta_i2c - m.delta_c2i  # exact, not approximate
        assert m.delta == pytest.approx(m.acc_t2 - m.acc_t1, abs=1e-12)
        assert m.counts.n == n
        assert m.acc_tk == sum(r[-1] for r in rows) / n
        for key, (lo, hi) in m.ci.items():
            value = getattr(m, key)
            assert lo <= value + 1e-12 and value - 1e-12 <= hi, key
            assert (-1.0 if key == "delta" else 0.0) <= lo <= hi <= 1.0


def test_wilson_matches_hand_computed_values() -> None:
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(6, 5)


def test_paired_interval_agrees_with_a_seeded_bootstrap() -> None:
    rng = random.Random(7)
    n = 400
    first = [rng.random() < 0.45 for _ in range(n)]
    # turn 2 fixes 30% of the wrong answers and breaks 10% of the right ones
    second = [(not a and rng.random() < 0.3) or (a and rng.random() >= 0.1) for a in first]
    lo, hi = newcombe_paired_interval(paired_counts(first, second))
    deltas = []
    for _ in range(2000):
        idx = [rng.randrange(n) for _ in range(n)]
        deltas.append(sum(second[i] - first[i] for i in idx) / n)
    deltas.sort()
    assert lo == pytest.approx(deltas[50], abs=0.015)
    assert hi == pytest.approx(deltas[1949], abs=0.015)


def test_paired_interval_is_not_degenerate_when_nothing_changes() -> None:
    counts = paired_counts([True] * 5 + [False] * 5, [True] * 5 + [False] * 5)
    lo, hi = newcombe_paired_interval(counts)
    assert lo < 0.0 < hi  # 10 items cannot rule out a real change
    # more data, narrower interval
    lo2, hi2 = newcombe_paired_interval(PairedCounts(50, 0, 0, 50))
    assert hi2 - lo2 < hi - lo


def test_single_turn_means_final_equals_first() -> None:
    m = correction_metrics([[True], [False], [True]])
    assert m.acc_t2 == m.acc_t1 == pytest.approx(2 / 3)
    assert m.delta == m.delta_i2c == m.delta_c2i == 0.0


def test_ragged_turns_are_rejected() -> None:
    with pytest.raises(ValueError, match="same"):
        correction_metrics([[True, False], [True]])
    with pytest.raises(ValueError, match="length"):
        paired_counts([True], [True, False])


def test_change_rates_say_which_answers_changed() -> None:
    """Six items: turn 1 wrong on 4 (two changed, one of them to the right answer; one
    unchanged; one with no answer at either turn), right on 2 (one changed to a wrong one)."""
    extracted = [["3", "5"], ["7", "8"], ["4", "4"], [None, None], ["True", "true."],
                 ["9", "2"]]
    correct = [[False, True], [False, False], [False, False], [False, False], [True, True],
               [True, False]]
    c = change_rates(extracted, correct)
    assert (c["wrong_t1"], c["right_t1"], c["changed"]) == (4, 2, 3)
    assert c["change_if_wrong"] == pytest.approx(2 / 4)
    assert c["change_if_right"] == pytest.approx(1 / 2)  # "True" → "true." is no change
    assert c["changes_fixing"] == pytest.approx(1 / 3)
    assert c["ci"]["change_if_wrong"] == list(wilson_interval(2, 4))
    assert c["ci"]["changes_fixing"] == list(wilson_interval(1, 3))
    # a missing answer that appears counts as a change
    assert change_rates([[None, "5"]], [[False, True]])["changes_fixing"] == 1.0
    # one turn: nothing can change
    assert change_rates([["5"]], [[True]])["changed"] == 0
    with pytest.raises(ValueError, match="rows"):
        change_rates([["1", "2"]], [])


def test_a_bare_answer_is_recorded_so_its_change_counts() -> None:
    """A bare "False" (no number, no "answer is") is its own answer: a wrong "True" that
    becomes "False" is a change, two "True"s are not."""
    from scoreops.training.evaluation import _answer_of

    answers = [[_answer_of("True"), _answer_of("False")], [_answer_of("True"), _answer_of(" True ")]]
    assert answers == [["True", "False"], ["True", "True"]]
    c = change_rates(answers, [[False, True], [True, True]])
    assert (c["change_if_wrong"], c["change_if_right"], c["changes_fixing"]) == (1.0, 0.0, 1.0)
    assert _answer_of("Answer: 12") == "12" and _answer_of("  ") is None
