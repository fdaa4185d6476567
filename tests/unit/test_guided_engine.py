"""The guided strategy on the real transformers engine (the tiny model): partial answers are
continued as exact token ids, so the prefix cache serves each step's shared prefix, and a
seeded search is reproducible."""

from __future__ import annotations

from pathlib import Path

import pytest

from scoreops.api import StrategySpec
from scoreops.rollout import SamplingParams
from scoreops.strategies import run_strategy

QUESTIONS = [[{"role": "user", "content": "What is 2 + 3?"}],
             [{"role": "user", "content": "What is 4 * 5?"}]]
SPEC = StrategySpec(name="guided", beam=2, expand=2, max_steps=4, critic="tool",
                    step_delimiter=" ")
PARAMS = SamplingParams(max_new_tokens=12, temperature=0.8, seed=5)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    from scoreops.models import load_model
    from scoreops.rollout import HFEngine
    from testkit.tiny import build_tiny_model

    model, tokenizer = load_model(str(build_tiny_model(tmp_path_factory.mktemp("tiny"))))
    eng = HFEngine(model, tokenizer, max_batch_size=8)
    yield eng
    eng.close()


def test_each_step_extends_the_cached_partial_answers(engine) -> None:
    engine.clear_prefix_cache()
    cache = engine.prefix_cache
    hits0 = cache.hits
    results = run_strategy(engine, QUESTIONS, SPEC, PARAMS)
    assert all(r.search["depth"] >= 2 for r in results)
    assert cache.hits > hits0  # later steps reused the stored prompt + partial answer
    assert cache.reused_tokens > 0
    tok = engine.tokenizer
    for r in results:
        chosen = [r.search["nodes"][n] for n in r.search["chosen"]]
        assert r.final_text == "".join(n["text"] for n in chosen)
        assert r.completion_tokens == sum(n["tokens"] for n in r.search["nodes"])
        assert len(tok(r.final_text, add_special_tokens=False)["input_ids"]) <= 12 + 2


def test_a_seeded_search_on_the_engine_is_reproducible(engine, tmp_path: Path) -> None:
    first = run_strategy(engine, QUESTIONS, SPEC, PARAMS)
    engine.clear_prefix_cache()
    again = run_strategy(engine, QUESTIONS, SPEC, PARAMS)
    assert [r.search["nodes"] for r in first] == [r.search["nodes"] for r in again]
    other = run_strategy(engine, QUESTIONS, SPEC, SamplingParams(
        max_new_tokens=12, temperature=0.8, seed=6))
    assert [r.final_text for r in other] != [r.final_text for r in first]
