"""What each inference-time strategy is, as data: the one place a strategy's name is matched.

Callers ask :func:`get_strategy` for a :class:`Strategy` and read its properties instead of
comparing ``strategy.name`` with string literals. The module imports nothing heavy (neither
torch nor the strategies' code nor the API models), so the API's validators and the CLI can
use it.

The strategies (each runs on a batch of conversations; see
:func:`scoreops.strategies.run_strategy`):

* ``single``: one greedy-or-sampled attempt.
* ``self-correct``: turn k+1 sees the conversation, every earlier attempt as an assistant
  message and ``strategy.instruction`` as a user message after each.
* ``self-consistency``: ``strategy.samples`` samples, majority vote over extracted answers
  (ties: the answer seen first; no answer at all: the first sample).
* ``best-of-n``: ``strategy.samples`` samples ranked by the verifier (see
  :func:`scoreops.strategies.verifiers.self_eval_scores`); ties: earliest sample.
* ``moa``: ``strategy.layers`` layers of ``strategy.agents`` agents. Layer 1 answers the
  conversation; each later layer sees the previous layer's answers in the aggregator prompt
  (a system message); then the main engine aggregates the last layer's answers into the
  final answer (attempt ``turn = layers + 1``).
* ``guided``: feedback-guided decoding, a step-level beam search: ``strategy.beam`` partial
  answers kept, ``strategy.expand`` candidate next steps sampled from each (a step ends at
  ``strategy.step_delimiter``), each scored by ``strategy.critic`` (``self-eval``, ``tool``,
  ``reward-model``, or ``criticWeights``); see :mod:`scoreops.strategies.guided`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from scoreops.strategies.prompts import (
    DEFAULT_AGGREGATOR_PROMPT,
    GUIDED_SELF_EVAL_PROMPT,
    SELF_EVAL_PROMPT,
)

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "STRATEGY_NAMES",
    "Strategy",
    "StrategySettings",
    "get_strategy",
]


class StrategySettings(Protocol):
    """The settings a strategy's rules read (what :class:`scoreops.api.StrategySpec` has)."""

    name: str
    turns: int
    layers: int
    agents: int
    samples: int
    verifier: str
    instruction: str
    aggregator_prompt: str | None
    beam: int
    expand: int
    max_steps: int
    critic: str


#: Tokens a follow-up user message with the given text adds to a conversation.
Overhead = Callable[[str], int]


def _one_call(spec: StrategySettings) -> int | None:
    return 1


def _last_turn(spec: StrategySettings) -> int | None:
    return spec.turns


def _aggregator_call(spec: StrategySettings) -> int | None:
    return spec.layers + 1


def _chosen_after_sampling(spec: StrategySettings) -> int | None:
    return None  # the answer is chosen among samples after they are all generated


def _one_generation(spec: StrategySettings, overhead: Overhead) -> tuple[int, int]:
    return 1, 0


def _every_turn(spec: StrategySettings, overhead: Overhead) -> tuple[int, int]:
    return spec.turns, (spec.turns - 1) * overhead(spec.instruction)


def _candidate_and_question(spec: StrategySettings, overhead: Overhead) -> tuple[int, int]:
    return 1, overhead(SELF_EVAL_PROMPT) + 3


def _listed_responses(spec: StrategySettings, overhead: Overhead) -> tuple[int, int]:
    prompt = spec.aggregator_prompt or DEFAULT_AGGREGATOR_PROMPT
    return spec.agents + 1, overhead(prompt) + 4 * spec.agents


def _answer_and_step_question(spec: StrategySettings, overhead: Overhead) -> tuple[int, int]:
    return 1, overhead(GUIDED_SELF_EVAL_PROMPT) + 3


def _single_caption(spec: StrategySettings) -> str:
    return "single attempt"


def _turns_caption(spec: StrategySettings) -> str:
    return f"self-correct, {spec.turns} turns"


def _vote_caption(spec: StrategySettings) -> str:
    return f"self-consistency@{spec.samples}"


def _ranked_caption(spec: StrategySettings) -> str:
    return f"best-of-{spec.samples} ({spec.verifier})"


def _agents_caption(spec: StrategySettings) -> str:
    return f"mixture of agents, {spec.layers} layers × {spec.agents} agents"


def _search_caption(spec: StrategySettings) -> str:
    weights = getattr(spec, "critic_weights", None)
    critic = (" + ".join(f"{w.weight:g}·{w.name}" for w in weights) if weights
              else spec.critic)
    return (f"guided decoding, beam {spec.beam} × expand {spec.expand}, up to "
            f"{spec.max_steps} steps, critic {critic}")


@dataclass(frozen=True)
class Strategy:
    """One strategy's properties.

    Attributes:
        name: the ``StrategySpec.name`` it answers to.
        runner: the name of the function in :mod:`scoreops.strategies.core` that runs it
            (resolved there: this module stays free of the strategies' code).
        attempts_are_turns: each attempt is a turn for the metrics (Acc@t1..t K): ``single``
            and ``self-correct``. Otherwise turn 1 is the first sample and turn 2 the final
            (voted, ranked or aggregated) answer.
        uses_agent_models: the strategy loads ``StrategySpec.agent_models`` (``moa``).
        streams_steps: the strategy fixes its answer step by step and reports each fixed step
            (``run_strategy``'s ``on_step``): a server streams those instead of a call.
        uses_critic: the strategy scores its steps with ``StrategySpec.critic`` (``guided``),
            so a ``reward-model`` critic needs a ``rewardModel``.
        uses_verifier: the strategy ranks its samples with ``StrategySpec.verifier``
            (``best-of-n``), so ``verifier: reward-model`` needs a ``rewardModel``.
        min_turns: the fewest ``StrategySpec.turns`` it accepts (self-correct: 2).
        final_call: which engine call (1-based) generates the final answer, the one a
            server can stream; None when the answer is chosen after all calls.
        context: ``(spec, overhead) -> (generations a final prompt holds, fixed extra
            tokens)``: what the longest prompt the strategy builds adds to the user's prompt,
            for the context check. ``overhead(text)`` counts the tokens a follow-up user
            message with ``text`` adds.
        caption: ``spec -> text`` naming the strategy and its settings in reports.
        turns_are_attempts_of_one_answer: the report's t1..tK are successive attempts at one
            answer (self-correct). Otherwise the report explains that t1 is one attempt and
            t2 the strategy's final answer.
    """

    name: str
    runner: str
    attempts_are_turns: bool = False
    uses_agent_models: bool = False
    uses_verifier: bool = False
    uses_critic: bool = False
    streams_steps: bool = False
    min_turns: int = 1
    final_call: Callable[[StrategySettings], int | None] = _chosen_after_sampling
    context: Callable[[StrategySettings, Overhead], tuple[int, int]] = _one_generation
    caption: Callable[[StrategySettings], str] = _single_caption
    turns_are_attempts_of_one_answer: bool = False

    def stream_call(self, spec: StrategySettings) -> int | None:
        """Which engine call of ``spec``'s run generates the final answer (streamable)."""
        return self.final_call(spec)

    def budget(self, spec: StrategySettings, overhead: Overhead) -> tuple[int, int]:
        """(generations a final prompt holds, fixed extra tokens) for the context check."""
        return self.context(spec, overhead)


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("single", "run_single", attempts_are_turns=True, final_call=_one_call),
    Strategy("self-correct", "run_self_correct", attempts_are_turns=True, min_turns=2,
             final_call=_last_turn, context=_every_turn, caption=_turns_caption,
             turns_are_attempts_of_one_answer=True),
    Strategy("self-consistency", "run_self_consistency", caption=_vote_caption),
    Strategy("best-of-n", "run_best_of_n", uses_verifier=True,
             context=_candidate_and_question, caption=_ranked_caption),
    Strategy("moa", "run_moa", uses_agent_models=True, final_call=_aggregator_call,
             context=_listed_responses, caption=_agents_caption),
    Strategy("guided", "run_guided", uses_critic=True, streams_steps=True, context=_answer_and_step_question,
             caption=_search_caption),
)}

#: The registered names, in registration order (for ``choices`` and help text).
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)

#: The strategy a ``StrategySpec`` (and ``scoreops serve``) uses when none is named.
DEFAULT_STRATEGY = STRATEGIES["self-correct"].name


def get_strategy(name: str) -> Strategy:
    """The registered strategy called ``name``; ``ValueError`` names the known ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
