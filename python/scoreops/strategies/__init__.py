"""Inference-time strategies, shared by evaluation and serving.

One entry point, :func:`run_strategy`, runs ``single``, ``self-correct`` (K turns),
``self-consistency`` (majority vote of N samples), ``best-of-n`` (N samples ranked by a
verifier) and ``moa`` (layers x agents with an aggregator) on any
:class:`scoreops.rollout.RolloutEngine`, batched over conversations::

    from scoreops.api import StrategySpec
    from scoreops.rollout import SamplingParams
    from scoreops.strategies import run_strategy

    results = run_strategy(engine, [[{"role": "user", "content": "What is 7 + 5?"}]],
                           StrategySpec(name="self-correct", turns=2),
                           SamplingParams(max_new_tokens=64, temperature=0.0))
    results[0].final_text, [a.text for a in results[0].attempts]

:class:`OpenAIEngine` (``scoreops.strategies.remote``) is an engine over an OpenAI-compatible
endpoint; import it from there (it needs httpx).
"""

from scoreops.strategies.base import DIVERSE_TEMPERATURE, Attempt, StrategyResult
from scoreops.strategies.core import (
    DEFAULT_AGGREGATOR_PROMPT,
    aggregator_conversation,
    majority_vote,
    run_strategy,
)
from scoreops.strategies.registry import STRATEGIES, Strategy, get_strategy
from scoreops.strategies.verifiers import (
    SELF_EVAL_PROMPT,
    RewardFn,
    load_reward_model,
    parse_yes_no,
    self_eval_scores,
)

__all__ = [
    "DEFAULT_AGGREGATOR_PROMPT",
    "DIVERSE_TEMPERATURE",
    "SELF_EVAL_PROMPT",
    "STRATEGIES",
    "Attempt",
    "RewardFn",
    "Strategy",
    "StrategyResult",
    "aggregator_conversation",
    "get_strategy",
    "load_reward_model",
    "majority_vote",
    "parse_yes_no",
    "run_strategy",
    "self_eval_scores",
]
