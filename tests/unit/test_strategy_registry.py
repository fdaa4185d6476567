"""The strategy registry: what callers read instead of comparing strategy names."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from scoreops.api import StrategySpec
from scoreops.strategies import STRATEGIES, get_strategy
from scoreops.strategies.core import RUNNERS
from scoreops.strategies.prompts import DEFAULT_AGGREGATOR_PROMPT, SELF_EVAL_PROMPT
from scoreops.strategies.registry import DEFAULT_STRATEGY


def test_every_strategy_has_a_runner_and_the_api_knows_every_name() -> None:
    for strategy in STRATEGIES.values():
        assert strategy.runner in RUNNERS
    literal = StrategySpec.model_fields["name"].annotation
    assert set(literal.__args__) == set(STRATEGIES)
    assert StrategySpec().name == DEFAULT_STRATEGY


def test_unknown_names_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'vote'; known: single, "):
        get_strategy("vote")


@pytest.mark.parametrize(("name", "want"), [
    ("single", 1), ("self-correct", 3), ("moa", 5), ("self-consistency", None),
    ("best-of-n", None), ("guided", None)])
def test_the_streamed_call_is_the_final_answers(name: str, want: int | None) -> None:
    spec = StrategySpec(name=name, turns=3, layers=4)
    assert get_strategy(name).stream_call(spec) == want


def test_the_context_budget_counts_what_the_final_prompt_holds() -> None:
    def overhead(text: str) -> int:
        return {SELF_EVAL_PROMPT: 11, DEFAULT_AGGREGATOR_PROMPT: 50}.get(text, 7)

    def budget(**spec: object) -> tuple[int, int]:
        s = StrategySpec(**spec)
        return get_strategy(s.name).budget(s, overhead)

    assert budget(name="single") == (1, 0)
    assert budget(name="self-consistency") == (1, 0)
    assert budget(name="self-correct", turns=3) == (3, 2 * 7)
    assert budget(name="best-of-n") == (1, 11 + 3)
    assert budget(name="moa", agents=2) == (3, 50 + 8)
    assert budget(name="moa", agents=2, aggregator_prompt="merge") == (3, 7 + 8)
    assert budget(name="guided") == (1, 7 + 3)  # the answer and the step question


def test_the_spec_rules_come_from_the_registry() -> None:
    with pytest.raises(ValidationError, match="turns must be at least 2 for strategy "
                                              "self-correct"):
        StrategySpec(name="self-correct", turns=1)
    StrategySpec(name="single", turns=1)
    with pytest.raises(ValidationError, match="rewardModel is required"):
        StrategySpec(name="best-of-n", verifier="reward-model")
    StrategySpec(name="self-consistency", verifier="reward-model")


def test_the_registry_imports_nothing_heavy() -> None:
    code = ("import sys, scoreops.strategies.registry\n"
            "print([m for m in ('torch', 'transformers', 'pydantic', 'scoreops.api')"
            " if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_captions_name_each_strategy_with_its_settings() -> None:
    def caption(**kw: object) -> str:
        spec = StrategySpec(**kw)
        return get_strategy(spec.name).caption(spec)

    assert caption(name="single") == "single attempt"
    assert caption(name="self-correct", turns=3) == "self-correct, 3 turns"
    assert caption(name="self-consistency", samples=5) == "self-consistency@5"
    assert caption(name="best-of-n", samples=4) == "best-of-4 (self-eval)"
    assert caption(name="moa", layers=2, agents=3) == "mixture of agents, 2 layers × 3 agents"
    explained = {n for n, s in STRATEGIES.items() if not s.turns_are_attempts_of_one_answer}
    assert caption(name="guided", beam=2, expand=3, max_steps=5, critic="tool") == (
        "guided decoding, beam 2 × expand 3, up to 5 steps, critic tool")
    assert explained == {"single", "self-consistency", "best-of-n", "moa", "guided"}
