"""Truncated importance sampling of the trainer/sampler mismatch (scoreops.algorithms.importance):
it is the identity when the two agree, truncates as documented when they do not, and reaches
the SCoRe and GRPO losses only through their policy-gradient terms."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from scoreops.algorithms.grpo import grpo_loss  # noqa: E402
from scoreops.algorithms.importance import (  # noqa: E402
    TruncatedImportance,
    truncated_is_weights,
)
from scoreops.algorithms.score import stage1_loss, stage2_loss  # noqa: E402
from scoreops.rollout.batch import TrainingBatch  # noqa: E402
from scoreops.rollout.episodes import sampling_token_logprobs  # noqa: E402
from scoreops.rollout.types import Completion, Episode, Turn  # noqa: E402

B, T, G = 4, 7, 2


def _setup(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    turn_mask = torch.tensor([[0, 1, 1, 0, 2, 2, 2]] * B)
    return {
        "logits": torch.randn(B, T, generator=g),
        "ref": -torch.rand(B, T, generator=g),
        "mask1": turn_mask == 1,
        "mask2": turn_mask == 2,
        "r1": torch.tensor([0.0, 1.0, 1.0, 0.0]),
        "r2": torch.tensor([1.0, 1.0, 0.0, 1.0]),
    }


def _logp(d: dict[str, torch.Tensor]) -> torch.Tensor:
    """Log-probs with a gradient path to a leaf (log-sigmoid of the logits: all < 0)."""
    leaf = d["logits"].clone().requires_grad_(True)
    return leaf, torch.nn.functional.logsigmoid(leaf)


def _grad(loss_of: object, d: dict[str, torch.Tensor], **kw: object) -> tuple[float, torch.Tensor]:
    leaf, logp = _logp(d)
    loss, _ = loss_of(logp, **kw)  # type: ignore[operator]
    loss.backward()
    return float(loss.detach()), leaf.grad.clone()


def _score2(logp: torch.Tensor, d: dict[str, torch.Tensor], **kw: object):
    return stage2_loss(logp, d["ref"], logp, d["ref"], d["mask1"], d["mask2"], d["r1"], d["r2"],
                       alpha=3.0, beta1=0.1, group_size=G, **kw)


def _score1(logp: torch.Tensor, d: dict[str, torch.Tensor], **kw: object):
    return stage1_loss(logp, d["ref"], logp, d["ref"], d["mask1"], d["mask2"], d["r2"],
                       beta1=0.1, beta2=0.5, group_size=G, **kw)


def _grpo(logp: torch.Tensor, d: dict[str, torch.Tensor], **kw: object):
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    return grpo_loss(logp, None, d["ref"], adv, d["mask2"], beta=0.1, **kw)


LOSSES = {"score-stage1": _score1, "score-stage2": _score2, "grpo": _grpo}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_agreeing_sampler_gives_todays_gradient_exactly(name: str) -> None:
    d = _setup()
    fn = LOSSES[name]
    loss0, grad0 = _grad(lambda lp: fn(lp, d), d)
    # the sampler reports exactly the trainer's log-probs: every weight is 1
    tis = TruncatedImportance(torch.nn.functional.logsigmoid(d["logits"]).detach(), cap=2.0)

    def corrected(lp: torch.Tensor):
        w = tis.weights(slice(0, B), lp, d["mask1"] | d["mask2"])
        assert torch.equal(w, torch.ones_like(w))
        return fn(lp, d, pg_weight=w)

    loss1, grad1 = _grad(corrected, d)
    assert loss1 == loss0
    assert torch.equal(grad1, grad0)
    stats = tis.stats.as_dict()
    assert stats["is_ratio_mean"] == stats["is_ratio_max"] == stats["is_ratio_min"] == 1.0
    assert stats["is_clipped_fraction"] == 0.0 and stats["is_logp_gap_mean"] == 0.0


def test_weights_truncate_at_the_cap_only_from_above() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.9]]))
    sampler = torch.log(torch.tensor([[0.5, 0.1, 0.2, 0.9, 0.05]]))  # ratios 1, 5, 2.5, 5/9, 18
    mask = torch.tensor([[True, True, True, True, False]])
    w, ratio = truncated_is_weights(logp, sampler, mask, cap=2.0)
    expected = torch.tensor([[1.0, 2.0, 2.0, 5 / 9, 1.0]])  # masked-out token: weight 1
    assert torch.allclose(w, expected, atol=1e-6)
    assert torch.allclose(ratio[mask], torch.tensor([1.0, 5.0, 2.5, 5 / 9]), atol=1e-5)
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap must be >= 1"):
        truncated_is_weights(logp, sampler, mask, cap=0.5)


def test_weights_never_overflow() -> None:
    logp = torch.tensor([[0.0, -1.0]])
    sampler = torch.tensor([[-200.0, -1.0]])  # exp(200) is inf in float32
    w, ratio = truncated_is_weights(logp, sampler, torch.ones(1, 2, dtype=torch.bool), cap=3.0)
    assert torch.equal(w, torch.tensor([[3.0, 1.0]]))
    assert torch.isfinite(ratio).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_disagreeing_sampler_scales_each_tokens_policy_gradient(name: str) -> None:
    """With weights w the gradient of a loss whose KL is off is w ⊙ the unweighted one,
    token by token (clipped weights included); the KL part is never weighted."""
    d = _setup(1)
    g = torch.Generator().manual_seed(5)
    sampler = torch.nn.functional.logsigmoid(d["logits"]) + torch.randn(B, T, generator=g)
    tis = TruncatedImportance(sampler, cap=1.5)
    mask = d["mask1"] | d["mask2"]
    kw_off = {"beta1": 0.0, "beta2": 0.0} if name == "score-stage1" else (
        {"beta1": 0.0} if name == "score-stage2" else {"beta": 0.0})

    def plain(lp: torch.Tensor, **kw: object):
        if name == "grpo":
            adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
            return grpo_loss(lp, None, None, adv, d["mask2"], **{**kw_off, **kw})
        if name == "score-stage1":
            return stage1_loss(lp, d["ref"], lp, d["ref"], d["mask1"], d["mask2"], d["r2"],
                               group_size=G, **{**kw_off, **kw})
        return stage2_loss(lp, d["ref"], lp, d["ref"], d["mask1"], d["mask2"], d["r1"],
                           d["r2"], alpha=3.0, group_size=G, **{**kw_off, **kw})

    _, grad0 = _grad(plain, d)
    weights: list[torch.Tensor] = []

    def corrected(lp: torch.Tensor):
        w = tis.weights(slice(0, B), lp, mask)
        weights.append(w)
        return plain(lp, pg_weight=w)

    _, grad1 = _grad(corrected, d)
    w = weights[0]
    assert (w < 1).any() and (w == 1.5).any()  # both sides of 1, and clipped tokens
    assert torch.allclose(grad1, grad0 * w, atol=1e-6)
    stats = tis.stats.as_dict()
    ratio = torch.exp(torch.nn.functional.logsigmoid(d["logits"]) - sampler)[mask]
    assert math.isclose(stats["is_ratio_max"], float(ratio.max()), rel_tol=1e-5)
    assert math.isclose(stats["is_ratio_mean"], float(ratio.mean()), rel_tol=1e-5)
    assert math.isclose(stats["is_clipped_fraction"], float((ratio > 1.5).float().mean()),
                        rel_tol=1e-6)

    # with the KL on, the weights leave the KL's gradient alone: corrected − plain differs
    # from the KL-free difference by nothing
    if name != "grpo":
        return
    _, g_plain_kl = _grad(lambda lp: grpo_loss(lp, None, d["ref"], torch.tensor(
        [1.0, -1.0, 0.5, -0.5]), d["mask2"], beta=0.3), d)
    _, g_corr_kl = _grad(lambda lp: grpo_loss(lp, None, d["ref"], torch.tensor(
        [1.0, -1.0, 0.5, -0.5]), d["mask2"], beta=0.3, pg_weight=w), d)
    assert torch.allclose(g_corr_kl - g_plain_kl, grad1 - grad0, atol=1e-6)


def test_stats_accumulate_over_micro_batches() -> None:
    sampler = torch.log(torch.tensor([[0.5, 0.1], [0.5, 0.5]]))
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.5]]))  # ratios 1, 5 | 0.5, 1
    mask = torch.ones(2, 2, dtype=torch.bool)
    tis = TruncatedImportance(sampler, cap=2.0)
    tis.weights(slice(0, 1), logp[:1], mask[:1])
    tis.weights(slice(1, 2), logp[1:], mask[1:])
    stats = tis.stats.as_dict()
    assert math.isclose(stats["is_ratio_mean"], (1 + 5 + 0.5 + 1) / 4, rel_tol=1e-6)
    assert math.isclose(stats["is_ratio_max"], 5.0, rel_tol=1e-6)
    assert math.isclose(stats["is_ratio_min"], 0.5, rel_tol=1e-6)
    assert stats["is_clipped_fraction"] == 0.25


def _episode(turns: list[tuple[list[int], list[int], list[float] | None]]) -> Episode:
    ep = Episode(question="q", question_index=0, sample=0)
    for prompt, tokens, lps in turns:
        ep.turns.append(Turn(messages=[{"role": "user", "content": "q"}],
                             completion=Completion(text="", token_ids=tokens,
                                                   sampling_logprobs=lps),
                             prompt_token_ids=prompt))
    return ep


def test_sampling_logprobs_land_on_their_tokens() -> None:
    turn_mask = torch.tensor([[0, 0, 1, 1, 0, 2, 2], [0, 1, 1, 1, 0, 2, 0]])
    batch = TrainingBatch(torch.zeros(2, 7, dtype=torch.long), (turn_mask >= 0).long(),
                          turn_mask, torch.zeros(2, dtype=torch.bool))
    eps = [_episode([([1, 2], [3, 4], [-0.1, -0.2]), ([1, 2, 3, 4, 9], [5, 6], [-0.3, -0.4])]),
           # the second row's turn 2 was cut by max_len: its first token is kept
           _episode([([1], [3, 4, 5], [-1.0, -2.0, -3.0]), ([1, 3, 4, 5, 9], [7, 8], [-4.0, -5.0])])]
    out = sampling_token_logprobs(eps, batch)
    assert out is not None
    assert torch.allclose(out, torch.tensor([[0, 0, -0.1, -0.2, 0, -0.3, -0.4],
                                             [0, -1.0, -2.0, -3.0, 0, -4.0, 0]]))
    eps[1].turns[1].completion.sampling_logprobs = None  # an engine that does not report them
    assert sampling_token_logprobs(eps, batch) is None
