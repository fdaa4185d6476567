"""Mathematical answer equivalence with math-verify, made cheap enough for RL rewards.

A math-verify check costs tens of milliseconds (sympy), far more than a rollout's reward
budget when thousands of samples are scored per step. So :func:`math_equal`:

1. short-circuits identical normalised strings and plain numbers (no sympy at all);
2. caches math-verify verdicts per (prediction, gold) pair in an LRU cache;
3. never raises and never hangs: math-verify's own timeout uses ``signal.alarm``, which only
   works in the main thread; elsewhere (a serving thread pool, a data-loader thread) the
   check runs without it but only on inputs of bounded length, and any error or timeout
   falls back to the string comparison.
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction
from functools import lru_cache

from scoreops.rewards.extract import extract_boxed, normalize_number

__all__ = ["math_equal", "math_equal_cache_info"]

log = logging.getLogger(__name__)

#: Inputs longer than this skip math-verify (pathological expressions can stall sympy).
MAX_VERIFY_CHARS = 2000
_TIMEOUT_S = 5


def _strip_wrappers(s: str) -> str:
    s = s.strip()
    boxed = extract_boxed(s)
    if boxed is not None and s.startswith(("\\boxed", "$\\boxed")):
        s = boxed
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\(?:left|right)\b", "", s)
    s = re.sub(r"\\[,;!: ]", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", s)
    return re.sub(r"\s+", "", s).rstrip(".").lower()


def _as_fraction(s: str) -> Fraction | None:
    n = normalize_number(s)
    if n is None:
        return None
    try:
        return Fraction(n)
    except (ValueError, ZeroDivisionError):
        return None


def _has_math_delimiters(s: str) -> bool:
    return "$" in s or "\\boxed" in s or "\\(" in s or "\\[" in s


@lru_cache(maxsize=65536)
def _verify_cached(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    timeout = _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold_text = gold if _has_math_delimiters(gold) else f"${gold}$"
    gold_parsed = parse(gold_text, parsing_timeout=timeout)  # type: ignore[arg-type]
    if not gold_parsed:
        return False
    candidates = [pred] if _has_math_delimiters(pred) else [pred, f"${pred}$"]
    for text in candidates:
        pred_parsed = parse(text, parsing_timeout=timeout)  # type: ignore[arg-type]
        if pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=timeout):
            return True
    return False


def math_equal(pred: str | None, gold: str | None) -> bool:
    """True when ``pred`` and ``gold`` denote the same mathematical answer.

    Plain answers (``"0.5"``, ``"(1, 2)"``) are wrapped in ``$...$`` for math-verify;
    LaTeX (``"\\boxed{\\frac12}"``, ``"$x=3$"``) is passed as is. Equal numbers compare
    equal however they are written (``"1,000"`` = ``"1000.0"``); sets, tuples, intervals,
    fractions and simple expressions go through math-verify.
    """
    if pred is None or gold is None:
        return False
    pred, gold = pred.strip(), gold.strip()
    if not pred or not gold:
        return False
    if pred == gold:
        return True
    stripped = _strip_wrappers(pred)
    if stripped and stripped == _strip_wrappers(gold):
        return True
    fp, fg = _as_fraction(pred), _as_fraction(gold)
    if fp is not None and fg is not None:
        return fp == fg
    if len(pred) > MAX_VERIFY_CHARS or len(gold) > MAX_VERIFY_CHARS:
        return False
    try:
        return _verify_cached(pred, gold)
    except Exception as exc:  # math-verify/sympy can raise on odd input; never crash a run
        log.debug("math-verify failed on %r vs %r: %s", pred, gold, exc)
        return False


def math_equal_cache_info() -> str:
    """Hit/miss statistics of the math-verify cache (for logs)."""
    return str(_verify_cached.cache_info())
