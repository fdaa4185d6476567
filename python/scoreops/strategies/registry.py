"""What each inference-time strategy is, as data: the one place a strategy's name is matched.

Callers ask :func:`get_strategy` for a :class:`Strategy` and read its properties instead of
comparing ``strategy.name`` with string literals.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["STRATEGIES", "Strategy", "get_strategy"]


@dataclass(frozen=True)
class Strategy:
    """One strategy's properties.

    Attributes:
        name: the ``StrategySpec.name`` it answers to.
        attempts_are_turns: each attempt is a turn for the metrics (Acc@t1..t K): ``single``
            and ``self-correct``. Otherwise turn 1 is the first sample and turn 2 the final
            (voted, ranked or aggregated) answer.
        uses_agent_models: the strategy loads ``StrategySpec.agent_models`` (``moa``).
    """

    name: str
    attempts_are_turns: bool = False
    uses_agent_models: bool = False


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("single", attempts_are_turns=True),
    Strategy("self-correct", attempts_are_turns=True),
    Strategy("self-consistency"),
    Strategy("best-of-n"),
    Strategy("moa", uses_agent_models=True),
)}


def get_strategy(name: str) -> Strategy:
    """The registered strategy called ``name``; ``ValueError`` names the known ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
