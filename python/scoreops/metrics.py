"""Self-correction metrics: Acc@t1, Acc@t2, Acc@tK, Δ, Δi→c, Δc→i with 95% intervals.

Everything is computed from counts of a 2×2 table of per-sample correctness at turn 1 and
turn 2, so ``Δ = Δi→c − Δc→i`` holds exactly: Δ is computed as that difference of the two
rates (the same float), and it equals ``Acc@t2 − Acc@t1`` as a fraction because
``(c2c + i2c) − (c2c + c2i) = i2c − c2i`` (in floating point up to one rounding).

Intervals:

* accuracies and the transition rates Δi→c, Δc→i: Wilson score intervals;
* Δ (a difference of two proportions measured on the same items): Newcombe's hybrid score
  interval for paired data (Newcombe 1998, method 10), built from the two Wilson intervals
  and the (continuity-corrected) correlation of the 2×2 table. It stays inside [−1, 1], is not degenerate when no
  item changes, and matches the normal approximation on paired differences for large n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

__all__ = [
    "CorrectionMetrics",
    "PairedCounts",
    "accuracy_with_ci",
    "change_rates",
    "correction_metrics",
    "newcombe_paired_interval",
    "paired_counts",
    "wilson_interval",
]

Interval = tuple[float, float]


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a binomial proportion; (0, 1) when ``n == 0``."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return (0.0, 1.0)
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # exact at the boundaries (floating point can leave 1e-17 instead of 0)
    if successes == 0:
        lo = 0.0
    if successes == n:
        hi = 1.0
    return (lo, hi)


@dataclass(frozen=True)
class PairedCounts:
    """The 2×2 table of correctness at two turns: c2c, c2i (correct → incorrect),
    i2c (incorrect → correct), i2i."""

    c2c: int
    c2i: int
    i2c: int
    i2i: int

    @property
    def n(self) -> int:
        return self.c2c + self.c2i + self.i2c + self.i2i


def paired_counts(first: Sequence[bool], second: Sequence[bool]) -> PairedCounts:
    """Count the four transitions between two turns' per-sample correctness."""
    if len(first) != len(second):
        raise ValueError(f"turns differ in length: {len(first)} vs {len(second)}")
    c2c = c2i = i2c = i2i = 0
    for a, b in zip(first, second, strict=True):
        if a and b:
            c2c += 1
        elif a:
            c2i += 1
        elif b:
            i2c += 1
        else:
            i2i += 1
    return PairedCounts(c2c, c2i, i2c, i2i)


def newcombe_paired_interval(counts: PairedCounts, confidence: float = 0.95) -> Interval:
    """Interval for Acc(second) − Acc(first) on paired samples (Newcombe's method 10)."""
    n = counts.n
    if n == 0:
        return (-1.0, 1.0)
    p1 = (counts.c2c + counts.c2i) / n  # first turn
    p2 = (counts.c2c + counts.i2c) / n  # second turn
    l1, u1 = wilson_interval(counts.c2c + counts.c2i, n, confidence)
    l2, u2 = wilson_interval(counts.c2c + counts.i2c, n, confidence)
    a, b, c, d = counts.c2c, counts.c2i, counts.i2c, counts.i2i
    # correlation of the two turns' correctness (continuity-corrected when positive, as
    # Newcombe recommends: with no discordant pair the uncorrected phi is 1 and the interval
    # collapses to a point); 0 when a margin is constant
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    if cross > 0:
        cross = max(cross - n / 2, 0.0)
    phi = cross / math.sqrt(margins) if margins > 0 else 0.0
    delta = p2 - p1
    lower = delta - math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)
                                  + (u1 - p1) ** 2))
    upper = delta + math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1)
                                  + (p1 - l1) ** 2))
    return (max(-1.0, lower), min(1.0, upper))


@dataclass(frozen=True)
class CorrectionMetrics:
    """Metrics of one model on one benchmark.

    ``acc_by_turn[t]`` is the accuracy at turn t+1. With a single turn, turn 2 is turn 1
    (the final answer is the first): ``acc_t2 == acc_t1`` and every Δ is 0.
    """

    n: int
    acc_by_turn: tuple[float, ...]
    counts: PairedCounts
    acc_t1: float
    acc_t2: float
    acc_tk: float
    delta: float
    delta_i2c: float
    delta_c2i: float
    ci: dict[str, Interval] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the keys of ``summary.json``."""
        return {
            "n": self.n,
            "turns": len(self.acc_by_turn),
            "acc_t1": self.acc_t1,
            "acc_t2": self.acc_t2,
            "acc_tk": self.acc_tk,
            "acc_by_turn": list(self.acc_by_turn),
            "delta": self.delta,
            "delta_i2c": self.delta_i2c,
            "delta_c2i": self.delta_c2i,
            "counts": {"c2c": self.counts.c2c, "c2i": self.counts.c2i,
                       "i2c": self.counts.i2c, "i2i": self.counts.i2i},
            "ci": {k: [lo, hi] for k, (lo, hi) in self.ci.items()},
        }


def correction_metrics(
    correct: Sequence[Sequence[bool]], confidence: float = 0.95
) -> CorrectionMetrics:
    """Metrics from per-sample correctness at each turn: ``correct[i][t]`` for sample i.

    Every sample must have the same number of turns (pad early-stopped items with their
    last answer first). Δ, Δi→c and Δc→i compare turn 1 with turn 2; ``acc_tk`` is the last
    turn's accuracy.
    """
    n = len(correct)
    turns = len(correct[0]) if n else 1
    if turns < 1 or any(len(row) != turns for row in correct):
        raise ValueError("every sample needs the same, non-zero number of turns")
    totals = [sum(1 for row in correct if row[t]) for t in range(turns)]
    first = [bool(row[0]) for row in correct]
    second = [bool(row[1 if turns > 1 else 0]) for row in correct]
    counts = paired_counts(first, second)
    last = totals[-1]

    def rate(k: int) -> float:
        return k / n if n else 0.0

    ci = {
        "acc_t1": wilson_interval(totals[0], n, confidence),
        "acc_t2": wilson_interval(counts.c2c + counts.i2c, n, confidence),
        "acc_tk": wilson_interval(last, n, confidence),
        "delta": newcombe_paired_interval(counts, confidence),
        "delta_i2c": wilson_interval(counts.i2c, n, confidence),
        "delta_c2i": wilson_interval(counts.c2i, n, confidence),
    }
    return CorrectionMetrics(
        n=n,
        acc_by_turn=tuple(rate(t) for t in totals),
        counts=counts,
        acc_t1=rate(totals[0]),
        acc_t2=rate(counts.c2c + counts.i2c),
        acc_tk=rate(last),
        delta=rate(counts.i2c) - rate(counts.c2i),
        delta_i2c=rate(counts.i2c),
        delta_c2i=rate(counts.c2i),
        ci=ci,
    )


def accuracy_with_ci(correct: Sequence[bool], confidence: float = 0.95) -> tuple[float, Interval]:
    """Accuracy of a list of 0/1 outcomes and its Wilson interval."""
    n = len(correct)
    k = sum(1 for c in correct if c)
    return (k / n if n else 0.0), wilson_interval(k, n, confidence)



def _same_answer(a: Any, b: Any) -> bool:
    """Two extracted answers are the same when both are missing or equal after lower-casing,
    collapsing whitespace and dropping a trailing full stop."""
    if a is None or b is None:
        return a is None and b is None

    def norm(x: Any) -> str:
        return " ".join(str(x).lower().split()).rstrip(".").strip()

    return norm(a) == norm(b)


def change_rates(
    extracted: Sequence[Sequence[Any]], correct: Sequence[Sequence[bool]],
    confidence: float = 0.95,
) -> dict[str, Any]:
    """How often the second attempt *changed* the first attempt's answer, and to what effect:
    the behaviour behind Δ.

    ``extracted[i][t]`` is sample i's extracted answer at turn t (None: none found),
    ``correct[i][t]`` its verdict. Returns (each rate with a Wilson interval in ``ci``):

    * ``change_if_wrong``: P(answer changed | turn 1 wrong);
    * ``change_if_right``: P(answer changed | turn 1 right);
    * ``changes_fixing``: the share of changes that turned a wrong answer into a right one
      (``i2c / changed``);
    * the counts ``changed``, ``wrong_t1``, ``right_t1``.

    A policy that flips every answer has both change rates near 1 and Δ = i2c − c2i decided
    by its first-turn accuracy; one that learned *which* answers to change has
    ``change_if_wrong ≫ change_if_right`` and ``changes_fixing`` near 1. With a single turn
    every rate is 0.
    """
    if len(extracted) != len(correct):
        raise ValueError(f"{len(extracted)} answer rows for {len(correct)} verdict rows")
    wrong = right = changed_wrong = changed_right = fixed = 0
    for ans, ok in zip(extracted, correct, strict=True):
        changed = len(ans) >= 2 and len(ok) >= 2 and not _same_answer(ans[0], ans[1])
        if ok[0]:
            right += 1
            changed_right += changed
        else:
            wrong += 1
            changed_wrong += changed
            fixed += changed and len(ok) > 1 and bool(ok[1])
    changed_total = changed_wrong + changed_right

    def rate(k: int, n: int) -> float:
        return k / n if n else 0.0

    return {
        "change_if_wrong": rate(changed_wrong, wrong),
        "change_if_right": rate(changed_right, right),
        "changes_fixing": rate(fixed, changed_total),
        "changed": changed_total,
        "wrong_t1": wrong,
        "right_t1": right,
        "ci": {
            "change_if_wrong": list(wilson_interval(changed_wrong, wrong, confidence)),
            "change_if_right": list(wilson_interval(changed_right, right, confidence)),
            "changes_fixing": list(wilson_interval(fixed, changed_total, confidence)),
        },
    }
