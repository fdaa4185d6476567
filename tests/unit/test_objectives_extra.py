"""MGRPO, STaR and CORY objectives against values worked out by hand on tiny tensors.

Recurring constants: a group of rewards [1, 0] (or [2, 1]) has mean 0.5 and Bessel std
√0.5 = 0.7071067812, so GRPO's advantages are ±0.5 / (0.7071067812 + 1e-6) = ±0.7071057812 (A).
ln 2 = 0.6931471806; k3 at log(π_ref/π) = −ln 2 is e^−ln2 + ln 2 − 1 = 0.1931471806.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from scoreops.algorithms.cory import (  # noqa: E402
    cooperative_reward,
    cory_loss,
    roles_for_step,
)
from scoreops.algorithms.mgrpo import (  # noqa: E402
    draw_guide_phrases,
    layer2_advantages,
    mgrpo_loss,
    select_corrections,
)
from scoreops.algorithms.star import select_verified, sft_loss  # noqa: E402

A = 0.5 / (math.sqrt(0.5) + 1e-6)
LN2 = 0.6931471806
K3_HALF = 0.1931471806


def t(values: list, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def close(actual: torch.Tensor | float, expected: list | float, tol: float = 1e-8) -> None:
    a = torch.as_tensor(actual, dtype=torch.float64)
    torch.testing.assert_close(a, torch.as_tensor(expected, dtype=torch.float64), atol=tol, rtol=0)


# ---------------------------------------------------------------- MGRPO


def test_guide_phrases_are_a_pure_function_of_the_seed() -> None:
    pool = ["p0", "p1", "p2", "p3", "p4", "p5", "p6"]
    first = draw_guide_phrases(pool, 50, seed=17)
    assert first == draw_guide_phrases(pool, 50, seed=17)
    assert first != draw_guide_phrases(pool, 50, seed=18)
    assert set(first) <= set(pool) and len(set(first)) > 3
    assert draw_guide_phrases(["only"], 3, seed=0) == ["only", "only", "only"]
    with pytest.raises(ValueError, match="pool is empty"):
        draw_guide_phrases([], 1, seed=0)


def test_select_corrections_keeps_accepted_ones_in_order() -> None:
    assert select_corrections([1.0, 0.0, 0.0, 1.0, 0.5, 0.49]) == [0, 3, 4]
    assert select_corrections([0.0, 0.0]) == []
    assert select_corrections([0.7, 0.9], threshold=0.8) == [1]


def test_layer2_advantages_are_normalised_within_each_kept_group() -> None:
    adv = layer2_advantages(t([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    # group 1: mean 1/3, Bessel std √(1/3) = 0.5773502692
    s = math.sqrt(1 / 3) + 1e-6
    close(adv, [(2 / 3) / s, -(1 / 3) / s, -(1 / 3) / s, 0.0, 0.0, 0.0], tol=1e-9)
    close(layer2_advantages(t([[1.0, 0.0]]), scale=False), [0.5, -0.5])
    with pytest.raises(ValueError, match="groups, variations"):
        layer2_advantages(t([1.0, 0.0]))


def test_mgrpo_loss_adds_the_two_layers() -> None:
    # layer 1: group [1, 0] -> advantages [A, -A]; row 0 has 2 answer tokens, row 1 has 1;
    # on-policy (ratio 1) and at the reference (KL 0): token-mean of -A over 3 tokens
    # = -(2A - A)/3 = -A/3.
    lp1 = t([[-0.3, -0.7], [-0.2, 0.0]], grad=True)
    m1 = t([[1, 1], [1, 0]])
    adv1 = t([A, -A])
    # layer 2: advantages [1, -1], one token each, π = [0.5, 0.25], π_ref = [0.25, 0.25]:
    # pg token-mean (-1 + 1)/2 = 0; KL (k3) = [0.1931471806, 0] -> mean 0.0965735903;
    # with β = 0.1 and weight 2: 2 · 0.1 · 0.0965735903 = 0.0193147181.
    lp2 = t([[math.log(0.5)], [math.log(0.25)]], grad=True)
    ref2 = t([[math.log(0.25)], [math.log(0.25)]])
    loss, stats = mgrpo_loss(
        (lp1, lp1.detach().clone(), adv1, m1), (lp2, ref2, t([1.0, -1.0]), t([[1], [1]])),
        layer2_weight=2.0, beta=0.1,
    )
    close(loss, -A / 3 + 2 * 0.1 * K3_HALF / 2, tol=1e-9)
    close(stats["layer1_loss"], -A / 3, tol=1e-9)
    close(stats["layer2_kl"], K3_HALF / 2, tol=1e-9)
    close(stats["layer2_pg_loss"], 0.0, tol=1e-12)
    loss.backward()
    # d/d logp of layer 1: -A_i · mask / 3 (no gradient to the masked padding token)
    close(lp1.grad, [[-A / 3, -A / 3], [A / 3, 0.0]], tol=1e-9)
    # layer 2: weight · (-A_i + β · (1 − π_ref/π)) / 2 = 2·(-1 + 0.1·0.5)/2, 2·(1 + 0)/2
    close(lp2.grad, [[-0.95], [1.0]], tol=1e-9)


def test_mgrpo_without_surviving_groups_is_plain_grpo() -> None:
    lp1 = t([[-0.3], [-0.2]], grad=True)
    loss, stats = mgrpo_loss((lp1, None, t([A, -A]), t([[1], [1]])), None, beta=0.0)
    close(loss, 0.0, tol=1e-12)
    assert not any(k.startswith("layer2_") for k in stats)
    loss.backward()
    close(lp1.grad, [[-A / 2], [A / 2]], tol=1e-9)


# ---------------------------------------------------------------- STaR


def test_star_keeps_verified_first_attempts_and_revisions() -> None:
    rewards = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    assert select_verified(rewards, external_correction=True) == [(0, 1), (1, 2), (2, 1), (2, 2)]
    assert select_verified(rewards, external_correction=False) == [(0, 1), (2, 1)]
    assert select_verified([[1.0], [0.0]], external_correction=True) == [(0, 1)]


def test_sft_loss_is_the_token_mean_nll_of_kept_tokens() -> None:
    logp = t([[math.log(0.5), math.log(0.25), -9.0], [math.log(0.5), -9.0, -9.0]], grad=True)
    mask = t([[1, 1, 0], [0, 0, 0]])
    loss, stats = sft_loss(logp, mask)
    close(loss, (LN2 + 2 * LN2) / 2, tol=1e-9)  # 1.0397207709
    assert stats["tokens"] == 2.0
    loss.backward()
    close(logp.grad, [[-0.5, -0.5, 0.0], [0.0, 0.0, 0.0]])


def test_sft_loss_with_nothing_kept_is_zero_and_differentiable() -> None:
    logp = t([[-1.0, -2.0]], grad=True)
    loss, stats = sft_loss(logp, t([[0, 0]]))
    assert loss.item() == 0.0 and stats["tokens"] == 0.0
    loss.backward()
    close(logp.grad, [[0.0, 0.0]])


# ---------------------------------------------------------------- CORY


def test_roles_exchange_every_t_steps() -> None:
    assert [roles_for_step(s, 2) for s in range(6)] == [
        ("a", "b"), ("a", "b"), ("b", "a"), ("b", "a"), ("a", "b"), ("a", "b")]
    assert roles_for_step(7, 1) == ("b", "a")
    with pytest.raises(ValueError, match="exchange_every"):
        roles_for_step(0, 0)


def test_cooperative_reward_is_the_sum() -> None:
    close(cooperative_reward(t([1.0, 0.0, 1.0]), t([1.0, 1.0, 0.0])), [2.0, 1.0, 1.0])


def test_cory_loss_credits_both_agents_with_the_shared_advantage() -> None:
    # R = [1+1, 0+1] = [2, 1] -> A = [A, -A]. Pioneer: tokens 2 and 1 -> -(2A - A)/3 = -A/3.
    # Observer: 2 tokens each -> -(2A - 2A)/4 = 0. β = 0.
    lp_p = t([[-0.1, -0.2], [-0.3, -0.4]], grad=True)
    lp_o = t([[-0.5, -0.6], [-0.7, -0.8]], grad=True)
    loss, stats = cory_loss(
        lp_p, None, t([[1, 1], [1, 0]]), lp_o, None, t([[1, 1], [1, 1]]),
        t([1.0, 0.0]), t([1.0, 1.0]), group_size=2, beta=0.0,
    )
    close(loss, -A / 3, tol=1e-9)
    close(stats["cooperative_reward"], 1.5)
    close(stats["pioneer_loss"], -A / 3, tol=1e-9)
    close(stats["observer_loss"], 0.0, tol=1e-12)
    loss.backward()
    close(lp_p.grad, [[-A / 3, -A / 3], [A / 3, 0.0]], tol=1e-9)
    close(lp_o.grad, [[-A / 4, -A / 4], [A / 4, A / 4]], tol=1e-9)


def test_cory_loss_kl_and_group_checks() -> None:
    # all-equal cooperative rewards: no policy gradient, only β·k3 remains.
    lp = t([[math.log(0.5)], [math.log(0.5)]], grad=True)
    ref = t([[math.log(0.25)], [math.log(0.5)]])
    loss, _ = cory_loss(lp, ref, t([[1], [1]]), lp, ref, t([[1], [1]]),
                        t([1.0, 1.0]), t([0.0, 0.0]), group_size=2, beta=0.5)
    close(loss, 2 * 0.5 * K3_HALF / 2, tol=1e-9)
    with pytest.raises(ValueError, match="group_size"):
        cory_loss(lp, None, t([[1], [1]]), lp, None, t([[1], [1]]), t([1.0, 0.0]),
                  t([1.0, 0.0]), group_size=3)


def test_layer2_groups_keep_the_verified_correction_with_its_variations() -> None:
    from scoreops.algorithms.mgrpo import assemble_layer2_groups

    # layer-1 answers 0..3; probe corrections c0..c3 with rewards [1, 0, 1, 0] -> kept [0, 2];
    # H = 2 variations each: v0a v0b for 0 (rewards 0, 1), v2a v2b for 2 (rewards 1, 1)
    kept = select_corrections([1.0, 0.0, 1.0, 0.0])
    samples, rewards, size = assemble_layer2_groups(
        kept, ["c0", "c1", "c2", "c3"], [1.0, 0.0, 1.0, 0.0], ["v0a", "v0b", "v2a", "v2b"],
        [0.0, 1.0, 1.0, 1.0], variations_per_group=2)
    assert samples == ["c0", "v0a", "v0b", "c2", "v2a", "v2b"] and size == 3
    assert rewards == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    # group [1, 0, 1]: mean 2/3, Bessel std 0.5773502692: the verified correction gets
    # +(1/3)/0.57735 = +0.5773492692 (it is reinforced); the all-right group gets 0
    adv = layer2_advantages(t(rewards).reshape(-1, size))
    s = math.sqrt(1 / 3) + 1e-6
    close(adv, [(1 / 3) / s, -(2 / 3) / s, (1 / 3) / s, 0.0, 0.0, 0.0], tol=1e-9)
    # the H-variations-only form (keepSelected: false): group [0, 1] and [1, 1]
    samples, rewards, size = assemble_layer2_groups(
        kept, ["c0", "c1", "c2", "c3"], [1.0, 0.0, 1.0, 0.0], ["v0a", "v0b", "v2a", "v2b"],
        [0.0, 1.0, 1.0, 1.0], variations_per_group=2, keep_selected=False)
    assert samples == ["v0a", "v0b", "v2a", "v2b"] and size == 2
    with pytest.raises(ValueError, match="variations"):
        assemble_layer2_groups([0], ["c0"], [1.0], ["v"], [1.0], variations_per_group=2)
