"""The fixed prompts strategies add to a conversation (plain text, no imports).

They live apart from the strategies that use them so that the registry's context budget
(:meth:`scoreops.strategies.registry.Strategy.budget`) can measure them without importing the
strategies' code.
"""

from __future__ import annotations

__all__ = ["DEFAULT_AGGREGATOR_PROMPT", "GUIDED_SELF_EVAL_PROMPT", "SELF_EVAL_PROMPT"]

#: The system prompt a moa aggregator gets above the numbered responses.
DEFAULT_AGGREGATOR_PROMPT = (
    "Several assistants have answered the user's latest question; their responses are listed "
    "below. Some of them may be wrong. Evaluate them critically and write one answer of your "
    "own that is correct, complete and well reasoned. Do not just copy a response, and do not "
    "mention that there were several responses."
)

#: The question best-of-n's self-eval verifier asks after each candidate.
SELF_EVAL_PROMPT = "Is this answer correct? Answer Yes or No."

#: The question the guided strategy's self-eval critic asks after each candidate step.
GUIDED_SELF_EVAL_PROMPT = "Is the last step of your answer above correct? Answer Yes or No."
