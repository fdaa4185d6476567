"""Held-out splits that cannot leak: no question text appears on both sides."""

from __future__ import annotations

import random

from scoreops.data.items import Item, normalize_question

__all__ = ["dedupe_items", "split_train_eval"]


def dedupe_items(items: list[Item]) -> list[Item]:
    """``items`` without later repeats of a question (compared by normalised text)."""
    seen: set[str] = set()
    out = []
    for item in items:
        key = normalize_question(item.question)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def split_train_eval(
    items: list[Item], eval_size: int | float, seed: int = 0
) -> tuple[list[Item], list[Item]]:
    """(train, eval) with no question shared between them.

    Questions are de-duplicated by normalised text first (generators repeat easy questions),
    then the distinct questions are shuffled with ``seed`` and ``eval_size`` of them held out:
    a count, or a fraction in (0, 1). Both sides keep the input order. ValueError when the
    held-out part would take every distinct question.
    """
    unique = dedupe_items(items)
    n = len(unique)
    if isinstance(eval_size, float) and not isinstance(eval_size, bool):
        if not 0.0 <= eval_size < 1.0:
            raise ValueError(f"a fractional eval_size must be in [0, 1), got {eval_size}")
        k = round(n * eval_size)
    else:
        k = int(eval_size)
        if k < 0:
            raise ValueError(f"eval_size must be >= 0, got {eval_size}")
    if k == 0:
        return unique, []
    if k >= n:
        raise ValueError(
            f"eval_size {eval_size} leaves no training items: only {n} distinct questions "
            f"(of {len(items)} items)"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    train = [it for i, it in enumerate(unique) if i not in held]
    evals = [it for i, it in enumerate(unique) if i in held]
    return train, evals
