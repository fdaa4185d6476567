"""Verifiers: ``verifier(completion_text, item) -> 1.0 | 0.0`` against an item's reference.

An item is either a :class:`scoreops.data.Item` (training) or a benchmark item dict; both
carry ``answer``, and extra fields (``choices``, reasoning-gym's ``task`` and ``entry``) are
looked up on the item first and in its ``meta`` second.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from scoreops.rewards.equivalence import math_equal
from scoreops.rewards.extract import (
    extract_answer_tag,
    extract_boxed,
    extract_choice,
    extract_final_answer,
    extract_flexible,
    extract_strict_gsm8k,
    lm_eval_normalize,
    normalize_number,
    normalize_text,
)

__all__ = [
    "Verifier",
    "VerifierKind",
    "auto_verifier_kind",
    "item_field",
    "make_verifier",
]

VerifierKind = Literal["math", "gsm8k-strict", "gsm8k-flexible", "choice", "reasoning-gym", "exact"]
VERIFIER_KINDS: tuple[str, ...] = get_args(VerifierKind)


@runtime_checkable
class Verifier(Protocol):
    """Scores one completion against one item: 1.0 (correct) or 0.0."""

    kind: str

    def __call__(self, completion_text: str, item: Any) -> float: ...


def item_field(item: Any, name: str, default: Any = None) -> Any:
    """``item[name]`` / ``item.name``, else the same key in ``item``'s ``meta``, else default."""
    if isinstance(item, Mapping):
        if name in item:
            return item[name]
        meta = item.get("meta")
    else:
        if hasattr(item, name):
            return getattr(item, name)
        meta = getattr(item, "meta", None)
    if isinstance(meta, Mapping) and name in meta:
        return meta[name]
    return default


def _gold(item: Any) -> str:
    answer = item_field(item, "answer")
    if answer is None:
        raise ValueError("item has no 'answer'")
    return str(answer)


class MathVerifier:
    """Final answer (boxed / "the answer is" / #### / last number) equal to the gold by
    :func:`math_equal`."""

    kind = "math"

    def __call__(self, completion_text: str, item: Any) -> float:
        pred = extract_final_answer(completion_text)
        return 1.0 if math_equal(pred, _gold(item)) else 0.0


class Gsm8kVerifier:
    """lm-eval's GSM8K exact match under ``strict-match`` or ``flexible-extract``.

    The gold may be a bare number or a full GSM8K solution ending in ``#### n``.
    """

    def __init__(self, mode: Literal["strict", "flexible"]) -> None:
        self.mode = mode
        self.kind = f"gsm8k-{mode}"

    def __call__(self, completion_text: str, item: Any) -> float:
        extract = extract_strict_gsm8k if self.mode == "strict" else extract_flexible
        pred = extract(completion_text)
        if pred is None:
            return 0.0
        return 1.0 if lm_eval_normalize(pred) == lm_eval_normalize(_gold(item)) else 0.0


class ChoiceVerifier:
    """Multiple choice: the option named by the completion equals the gold index.

    The item carries ``choices`` (option texts) and ``answer`` as an index or a letter.
    """

    kind = "choice"

    def __call__(self, completion_text: str, item: Any) -> float:
        choices = item_field(item, "choices")
        if not choices:
            raise ValueError("a choice item needs 'choices'")
        answer = item_field(item, "answer")
        gold = gold_index(answer, len(choices))
        picked = extract_choice(completion_text, list(choices))
        return 1.0 if picked is not None and picked == gold else 0.0


def gold_index(answer: Any, n_choices: int) -> int:
    """Gold option index from an int, a digit string or a letter ("B", "(B)")."""
    if isinstance(answer, bool):
        raise ValueError(f"bad multiple-choice answer {answer!r}")
    if isinstance(answer, int):
        index = answer
    else:
        s = str(answer).strip().strip("()").strip()
        if s.isdigit():
            index = int(s)
        elif len(s) == 1 and s.isalpha():
            index = ord(s.upper()) - ord("A")
        else:
            raise ValueError(f"bad multiple-choice answer {answer!r}")
    if not 0 <= index < n_choices:
        raise ValueError(f"answer index {index} out of range for {n_choices} choices")
    return index


class ExactVerifier:
    """Final answer equal to the gold after normalisation: numbers by value (``"1,000"`` =
    ``"1000"``), text case- and whitespace-insensitively."""

    kind = "exact"

    def __call__(self, completion_text: str, item: Any) -> float:
        gold = _gold(item)
        candidates = [extract_answer_tag(completion_text), extract_final_answer(completion_text),
                      completion_text]
        gold_num = normalize_number(gold)
        for pred in candidates:
            if pred is None:
                continue
            if gold_num is not None:
                if normalize_number(pred) == gold_num:
                    return 1.0
            elif normalize_text(pred) == normalize_text(gold):
                return 1.0
        return 0.0


@lru_cache(maxsize=256)
def _rg_dataset(task: str, config_json: str) -> Any:
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        raise ValueError(f"unknown reasoning-gym task {task!r}")
    config = json.loads(config_json)
    # size/seed do not affect scoring; keep the dataset tiny
    config = {k: v for k, v in config.items() if k not in ("size", "seed")}
    try:
        return reasoning_gym.create_dataset(task, size=1, seed=0, **config)
    except (TypeError, ValueError, AssertionError):
        return reasoning_gym.create_dataset(task, size=1, seed=0)


class ReasoningGymVerifier:
    """The task's own ``score_answer`` (reasoning-gym), thresholded to 0/1.

    Items carry ``meta["task"]`` (the reasoning-gym dataset name), ``meta["entry_metadata"]``
    (the generated entry's metadata; some tasks score from it) and optionally
    ``meta["config"]``. The answer is taken from an ``<answer>`` tag, else the final answer
    (boxed / "the answer is" / ...), else the whole completion; the best score counts.
    """

    kind = "reasoning-gym"

    def __init__(self, threshold: float = 1.0) -> None:
        self.threshold = threshold

    def raw_score(self, completion_text: str, item: Any) -> float:
        task = item_field(item, "task")
        if not task:
            raise ValueError("a reasoning-gym item needs meta['task']")
        config = item_field(item, "config") or {}
        dataset = _rg_dataset(str(task), json.dumps(config, sort_keys=True))
        entry = {
            "question": item_field(item, "question", ""),
            "answer": _gold(item),
            "metadata": item_field(item, "entry_metadata") or {},
        }
        tag = extract_answer_tag(completion_text)
        candidates = [tag] if tag is not None else []
        candidates += [extract_boxed(completion_text), extract_final_answer(completion_text),
                       completion_text.strip()]
        best = 0.0
        seen: set[str] = set()
        for cand in candidates:
            if cand is None or cand in seen:
                continue
            seen.add(cand)
            try:
                score = float(dataset.score_answer(cand, entry))
            except Exception:  # a task's scorer choking on free text is a wrong answer
                score = 0.0
            best = max(best, score)
            if best >= 1.0:
                break
        return best

    def __call__(self, completion_text: str, item: Any) -> float:
        return 1.0 if self.raw_score(completion_text, item) >= self.threshold - 1e-9 else 0.0


def make_verifier(kind: VerifierKind) -> Verifier:
    """The verifier for ``kind``; ValueError naming the known kinds otherwise."""
    if kind == "math":
        return MathVerifier()
    if kind == "gsm8k-strict":
        return Gsm8kVerifier("strict")
    if kind == "gsm8k-flexible":
        return Gsm8kVerifier("flexible")
    if kind == "choice":
        return ChoiceVerifier()
    if kind == "reasoning-gym":
        return ReasoningGymVerifier()
    if kind == "exact":
        return ExactVerifier()
    raise ValueError(f"unknown verifier {kind!r}; known: {', '.join(VERIFIER_KINDS)}")


def auto_verifier_kind(item: Any) -> VerifierKind:
    """The natural verifier for an item, from its ``source`` (what ``verifier: auto`` means).

    reasoning-gym items -> ``reasoning-gym``; items with ``choices`` -> ``choice``;
    everything else (built-in arithmetic, GSM8K/MATH-style files) -> ``math``.
    """
    source = str(item_field(item, "source", "") or "")
    if source.startswith("reasoning-gym:") and item_field(item, "task"):
        return "reasoning-gym"
    if item_field(item, "choices"):
        return "choice"
    return "math"
