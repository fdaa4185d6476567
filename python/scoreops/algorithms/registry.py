"""What each training algorithm is, as facts the API, the loop and the evaluation read.

The one place that knows algorithms by name: every other module asks :func:`algorithm_traits`
for the property it needs (does the run load a frozen reference model, may the rollout engine
reuse cached prefixes, ...) instead of comparing ``spec.algorithm.name`` with a string.

This module imports neither torch nor pydantic, so the API's validators use it too. The
training step of each algorithm (the torch side) lives in the module named by
:attr:`AlgorithmTraits.step_module` and registers there with
:func:`scoreops.training.steps.register`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ALGORITHMS", "AlgorithmTraits", "algorithm_traits"]

KL_WEIGHTS = ("beta", "beta1", "beta2")
"""The fields of an algorithm's settings that weigh a KL term to the reference model."""


@dataclass(frozen=True)
class AlgorithmTraits:
    """The properties of one algorithm that code outside its training step depends on."""

    name: str
    step_module: str
    """The module whose import registers the algorithm's training step."""
    min_turns: int = 1
    """The fewest ``rollout.turns`` it trains with (SCoRe's two-turn objective needs 2)."""
    min_samples_per_prompt: int = 1
    """The fewest ``rollout.samplesPerPrompt``: group-normalised advantages need 2."""
    needs_reference: bool = True
    """It loads a frozen copy of the base model as the reference of its KL term (when a KL
    weight is above zero). STaR has no KL term; CORY's reference is its own base with the
    adapters switched off."""
    prefix_cache_safe: bool = True
    """The rollout engine may reuse a cached prompt prefix across turns. Not for CORY: it
    switches LoRA adapters between turns without touching the weights the cache
    fingerprints."""
    generates_with_policy: bool = False
    """Rollouts run on the policy module itself, never on a separate generation copy (CORY's
    adapters are forward hooks on the policy)."""
    guided_second_turn: bool = False
    """Its evaluation's second attempt follows a guide phrase (``config.guide_phrases`` in
    ``config.guide_form``), its training distribution, instead of the correction
    instruction (MGRPO)."""

    def loads_reference(self, config: Any) -> bool:
        """Whether a run with these settings (``spec.algorithm.config``) loads a frozen
        reference model: :attr:`needs_reference` and some KL weight above zero."""
        return self.needs_reference and any(getattr(config, n, 0.0) > 0 for n in KL_WEIGHTS)


ALGORITHMS: dict[str, AlgorithmTraits] = {t.name: t for t in (
    AlgorithmTraits("score", "scoreops.training.steps.score", min_turns=2),
    AlgorithmTraits("grpo", "scoreops.training.steps.grpo", min_samples_per_prompt=2),
    AlgorithmTraits("mgrpo", "scoreops.training.steps.mgrpo", min_samples_per_prompt=2,
                    guided_second_turn=True),
    AlgorithmTraits("star", "scoreops.training.steps.star", needs_reference=False),
    AlgorithmTraits("cory", "scoreops.training.steps.cory", needs_reference=False,
                    prefix_cache_safe=False, generates_with_policy=True),
)}
"""Every algorithm a ScoreRun may name (``spec.algorithm.name``), by name."""


def algorithm_traits(name: str) -> AlgorithmTraits:
    """The traits of algorithm ``name``; a ``KeyError`` naming the known ones otherwise."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise KeyError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}") \
            from None
