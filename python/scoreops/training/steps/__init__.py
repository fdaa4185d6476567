"""One optimiser step of each algorithm: rollouts → rewards → loss → backward.

Each algorithm's step is a :class:`TrainingStep` in its own module here (``score``, ``grpo``,
``mgrpo``, ``star``, ``cory``), registered under its name with :func:`register`; the loss
math it calls lives in :mod:`scoreops.algorithms`. The loop does everything else (zeroing,
the optimiser backend's step, checkpoints) and knows an algorithm only through this interface
and its :class:`~scoreops.algorithms.registry.AlgorithmTraits`.

* :mod:`.rollouts` — scored episodes of a step and their statistics;
* :mod:`.backward` — loss terms over micro-batches, through the optimiser backend.

``backward`` returns scalar statistics of the step (``reward_t1``, ``reward_t2``, ``loss``,
``kl_turn1``, ...). A new algorithm adds its traits to
:data:`scoreops.algorithms.registry.ALGORITHMS` and registers its step here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from scoreops.algorithms.registry import ALGORITHMS, AlgorithmTraits, algorithm_traits

if TYPE_CHECKING:
    from scoreops.data import Item
    from scoreops.training.context import StepContext

__all__ = ["TrainingStep", "make_algorithm", "register", "registered"]


class TrainingStep:
    """One algorithm's optimiser step; the loop calls :meth:`prepare` once before the
    optimiser is built, :meth:`backward` every step and :meth:`finalize` after the last."""

    name: ClassVar[str]
    traits: ClassVar[AlgorithmTraits]
    """Set by :func:`register`."""

    def stage(self, step: int) -> str:
        """The stage ``step`` belongs to, as shown in the progress and metrics."""
        return self.name

    def prepare(self, ctx: StepContext) -> None:
        """Shape the policy before the optimiser sees it (e.g. CORY attaches its two
        agents' adapters); nothing by default."""

    def backward(self, ctx: StepContext, step: int, prompts: list[Item]) -> dict[str, float]:
        """Rollouts, rewards and the accumulated gradients of step ``step``; its statistics."""
        raise NotImplementedError

    def finalize(self, ctx: StepContext, step: int) -> None:
        """Leave the policy as a plain model after the last step ``step`` (e.g. CORY merges
        its pioneer adapter into the weights); nothing by default."""


StepFactory = Callable[[Any], TrainingStep]
_REGISTRY: dict[str, StepFactory] = {}
S = TypeVar("S", bound=type[TrainingStep])


def register(name: str) -> Callable[[S], S]:
    """Register a :class:`TrainingStep` class as the step of algorithm ``name`` (one of
    :data:`~scoreops.algorithms.registry.ALGORITHMS`); it is built with the ScoreRunSpec."""
    traits = algorithm_traits(name)

    def deco(cls: S) -> S:
        cls.name = name
        cls.traits = traits
        _REGISTRY[name] = cls
        return cls

    return deco


def registered() -> list[str]:
    """The names of the algorithms whose steps are imported and registered."""
    return sorted(_REGISTRY)


def make_algorithm(spec: Any) -> TrainingStep:
    """The training step for ``spec.algorithm`` (a ScoreRunSpec), importing its module."""
    name = spec.algorithm.name
    if name not in _REGISTRY and name in ALGORITHMS:
        importlib.import_module(ALGORITHMS[name].step_module)
    if name not in _REGISTRY:
        raise NotImplementedError(
            f"algorithm {name!r} has no trainer here; available: {', '.join(registered())}")
    return _REGISTRY[name](spec)
