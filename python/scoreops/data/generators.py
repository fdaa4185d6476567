"""Procedurally generated training items: built-in tasks and reasoning-gym's generators.

Built in:

* ``single-digit-addition`` - "What is a + b? Answer with only the number." with one-digit
  operands. The CPU demo task: SmolLM2-135M-Instruct gets about half right before training,
  which leaves room for RL to show an effect in minutes. Config: ``low``/``high`` operand
  bounds (default 0..9).
* ``bbh_boolean_expressions`` - BIG-Bench Hard's boolean-expression grammar
  (``not ( True ) and False is``). Config: ``num_tokens`` (default 8, as in BBH).

Everything else is looked up in reasoning-gym (``basic_arithmetic``, ``chain_sum``,
``gsm_symbolic``, ... 100+ tasks); ``config`` is passed to the task's config class.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Callable
from typing import Any

from scoreops.data.items import Item, json_safe

__all__ = ["BUILTIN_TASKS", "generate_items", "known_tasks"]


def _single_digit_addition(size: int, seed: int, config: dict[str, Any]) -> list[Item]:
    unknown = set(config) - {"low", "high"}
    if unknown:
        raise ValueError(f"single-digit-addition: unknown config key(s) {sorted(unknown)}; "
                         "known: low, high")
    low, high = int(config.get("low", 0)), int(config.get("high", 9))
    if not 0 <= low <= high:
        raise ValueError(f"single-digit-addition: need 0 <= low <= high, got {low}..{high}")
    rng = random.Random(seed)
    items = []
    for i in range(size):
        a, b = rng.randint(low, high), rng.randint(low, high)
        items.append(Item(
            id=f"single-digit-addition-{seed}-{i}",
            question=f"What is {a} + {b}? Answer with only the number.",
            answer=str(a + b),
            source="builtin:single-digit-addition",
            meta={"a": a, "b": b},
        ))
    return items


def _boolean_expressions(size: int, seed: int, config: dict[str, Any]) -> list[Item]:
    from scoreops.benchmarks.bbh import generate_boolean_expressions

    unknown = set(config) - {"num_tokens"}
    if unknown:
        raise ValueError(f"bbh_boolean_expressions: unknown config key(s) {sorted(unknown)}; "
                         "known: num_tokens")
    rows = generate_boolean_expressions(size, seed=seed,
                                        num_tokens=int(config.get("num_tokens", 8)))
    return [Item(id=f"bbh_boolean_expressions-{seed}-{i}", question=r["question"],
                 answer=r["answer"], source="builtin:bbh_boolean_expressions",
                 meta={"task": "boolean_expressions"})
            for i, r in enumerate(rows)]


BUILTIN_TASKS: dict[str, Callable[[int, int, dict[str, Any]], list[Item]]] = {
    "single-digit-addition": _single_digit_addition,
    "bbh_boolean_expressions": _boolean_expressions,
}


def _reasoning_gym_tasks() -> list[str]:
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError:
        return []
    import reasoning_gym  # noqa: F401  (registers the datasets)

    return sorted(DATASETS)


def known_tasks() -> list[str]:
    """Every generator name: the built-in ones, then reasoning-gym's."""
    return [*BUILTIN_TASKS, *_reasoning_gym_tasks()]


def _unknown_task(task: str) -> ValueError:
    names = known_tasks()
    close = difflib.get_close_matches(task, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    examples = [*BUILTIN_TASKS, "basic_arithmetic", "chain_sum", "gsm_symbolic"]
    return ValueError(
        f"unknown generator task {task!r}.{hint} Known: {', '.join(examples)}, ... "
        f"({len(names)} in all; scoreops.data.known_tasks() lists them)"
    )


def generate_items(
    task: str, size: int, seed: int = 0, config: dict[str, Any] | None = None
) -> list[Item]:
    """``size`` items of ``task``, the same for the same (task, size, seed, config)."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    config = dict(config or {})
    if task in BUILTIN_TASKS:
        return BUILTIN_TASKS[task](size, seed, config)
    if task not in _reasoning_gym_tasks():
        raise _unknown_task(task)
    import reasoning_gym

    try:
        dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **config)
    except TypeError as exc:
        raise ValueError(f"{task}: bad config {config}: {exc}") from exc
    except AssertionError as exc:
        raise ValueError(f"{task}: invalid config {config}: {exc}") from exc
    safe_config = json_safe(config)
    items = []
    for i, entry in enumerate(dataset):
        items.append(Item(
            id=f"{task}-{seed}-{i}",
            question=str(entry["question"]),
            answer=str(entry["answer"]),
            source=f"reasoning-gym:{task}",
            meta={"task": task, "config": safe_config,
                  "entry_metadata": json_safe(entry.get("metadata", {}))},
        ))
    return items
