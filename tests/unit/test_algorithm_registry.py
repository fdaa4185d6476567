"""The algorithm registry: one entry per algorithm a ScoreRun may name, whose traits the API
validators and the training loop read, and whose training step registers under its name."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from test_api import scorerun

from scoreops.algorithms.registry import ALGORITHMS, algorithm_traits
from scoreops.api import InvalidResource, parse_resource
from scoreops.api.scorerun import AlgorithmName


def run_doc(algorithm: str, **rollout: Any) -> dict[str, Any]:
    doc = scorerun()  # a fresh minimal ScoreRun document
    doc["spec"]["algorithm"] = {"name": algorithm}
    if rollout:
        doc["spec"]["rollout"] = rollout
    return doc


def test_every_algorithm_the_api_accepts_has_traits() -> None:
    assert set(get_args(AlgorithmName)) == set(ALGORITHMS)
    for name, traits in ALGORITHMS.items():
        assert traits.name == name
        assert traits.step_module == f"scoreops.training.steps.{name}"


def test_unknown_algorithm_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: cory, grpo, mgrpo, score, star"):
        algorithm_traits("ppo")


@pytest.mark.parametrize(("algorithm", "rollout", "message"), [
    ("score", {"turns": 1}, "algorithm score needs rollout.turns >= 2"),
    ("grpo", {"samplesPerPrompt": 1}, "algorithm grpo needs rollout.samplesPerPrompt >= 2"),
    ("mgrpo", {"samplesPerPrompt": 1}, "algorithm mgrpo needs rollout.samplesPerPrompt >= 2"),
])
def test_validators_read_the_traits(algorithm: str, rollout: dict[str, Any],
                                    message: str) -> None:
    with pytest.raises(InvalidResource, match=message):
        parse_resource(run_doc(algorithm, **rollout))


@pytest.mark.parametrize(("algorithm", "rollout"), [
    ("grpo", {"turns": 1}), ("star", {"samplesPerPrompt": 1, "turns": 1}),
    ("cory", {"samplesPerPrompt": 1}),
])
def test_what_other_algorithms_accept(algorithm: str, rollout: dict[str, Any]) -> None:
    parse_resource(run_doc(algorithm, **rollout))


def test_reference_model_follows_the_kl_weights() -> None:
    grpo = parse_resource(run_doc("grpo")).spec.algorithm
    assert algorithm_traits("grpo").loads_reference(grpo.config) == (grpo.config.beta > 0)
    no_kl = parse_resource({**run_doc("grpo"), "spec": {
        **run_doc("grpo")["spec"], "algorithm": {"name": "grpo", "grpo": {"beta": 0.0}}}})
    assert not algorithm_traits("grpo").loads_reference(no_kl.spec.algorithm.config)
    for name in ("star", "cory"):  # no KL term / the base with adapters off is the reference
        cfg = parse_resource(run_doc(name)).spec.algorithm.config
        assert not algorithm_traits(name).loads_reference(cfg)


def test_each_training_step_registers_with_its_traits() -> None:
    pytest.importorskip("torch")
    from scoreops.training.steps import make_algorithm

    for name in ALGORITHMS:
        rollout = {"turns": 2, "samplesPerPrompt": 2}
        step = make_algorithm(parse_resource(run_doc(name, **rollout)).spec)
        assert step.name == name
        assert step.traits is ALGORITHMS[name]
