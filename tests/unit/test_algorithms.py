"""The RL objectives against values worked out by hand on tiny tensors.

Constants used below (to 10 digits): e^0.5 = 1.6487212707, e^-0.5 = 0.6065306597,
e^0.2 = 1.2214027582, e^-0.2 = 0.8187307531, e^0.3 = 1.3498588076, e^-0.3 = 0.7408182207,
ln 2 = 0.6931471806.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from scoreops.algorithms import (  # noqa: E402
    group_normalized,
    grpo_loss,
    leave_one_out,
    per_token_kl,
    shaped_turn2_reward,
    stage1_loss,
    stage2_loss,
)

LN2 = 0.6931471806


def t(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def close(actual: torch.Tensor | float, expected: list | float, tol: float = 1e-8) -> None:
    a = torch.as_tensor(actual, dtype=torch.float64)
    torch.testing.assert_close(a, torch.as_tensor(expected, dtype=torch.float64), atol=tol, rtol=0)


# ---------------------------------------------------------------- KL estimators


def test_kl_estimators_policy_likelier_than_reference() -> None:
    # π(y) = 0.5, π_ref(y) = 0.25: log_r = ln(0.25/0.5) = −ln 2
    logp, ref = t([math.log(0.5)]), t([math.log(0.25)])
    close(per_token_kl(logp, ref, "k1"), [LN2])  # −log_r
    close(per_token_kl(logp, ref, "k2"), [0.5 * LN2 * LN2])  # ½·0.480453014 = 0.240226507
    close(per_token_kl(logp, ref, "k3"), [0.5 + LN2 - 1.0])  # r − log_r − 1 = 0.1931471806


def test_kl_estimators_reference_likelier_than_policy() -> None:
    # π(y) = 0.25, π_ref(y) = 0.5: log_r = +ln 2, r = 2
    logp, ref = t([math.log(0.25)]), t([math.log(0.5)])
    close(per_token_kl(logp, ref, "k1"), [-LN2])  # k1 can be negative
    close(per_token_kl(logp, ref, "k2"), [0.2402265070])
    close(per_token_kl(logp, ref, "k3"), [2.0 - LN2 - 1.0])  # 0.3068528194


def test_kl_is_zero_at_the_reference_and_rejects_unknown_estimator() -> None:
    x = t([-1.0, -2.0, -3.0])
    for est in ("k1", "k2", "k3"):
        close(per_token_kl(x, x, est), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="k4"):
        per_token_kl(x, x, "k4")  # type: ignore[arg-type]


def test_k3_gradient_is_one_minus_the_reference_ratio() -> None:
    logp = t([-2.0]).requires_grad_()
    per_token_kl(logp, t([-1.5]), "k3").sum().backward()
    # d/dlogp [e^(ref−logp) − (ref−logp) − 1] = 1 − e^0.5
    close(logp.grad, [1.0 - 1.6487212707])


# ---------------------------------------------------------------- advantages


def test_leave_one_out() -> None:
    adv = leave_one_out(t([[1, 0, 0, 1], [1, 1, 1, 0]]))
    # row 0, sample 0: 1 − (0+0+1)/3 = 2/3; sample 1: 0 − (1+0+1)/3 = −2/3
    # row 1, sample 0: 1 − (1+1+0)/3 = 1/3; sample 3: 0 − (1+1+1)/3 = −1
    close(adv, [[2 / 3, -2 / 3, -2 / 3, 2 / 3], [1 / 3, 1 / 3, 1 / 3, -1.0]])


def test_leave_one_out_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out(t([[1.0], [0.0]]))
    with pytest.raises(ValueError, match="prompts, group"):
        leave_one_out(t([1.0, 0.0]))


def test_group_normalized() -> None:
    # [1,0,0,1]: mean 0.5, unbiased var = 4·0.25/3 = 1/3, std = 0.5773502692 → ±0.8660254038
    # [0,0,3]:   mean 1,  deviations (−1,−1,2), var = 6/2 = 3, std = 1.7320508076
    close(group_normalized(t([[1, 0, 0, 1]]), eps=0.0),
          [[0.8660254038, -0.8660254038, -0.8660254038, 0.8660254038]])
    close(group_normalized(t([[0, 0, 3]]), eps=0.0), [[-0.5773502692, -0.5773502692, 1.1547005384]])
    # all-equal group: no signal
    close(group_normalized(t([[2, 2, 2]])), [[0.0, 0.0, 0.0]])
    # scale=False only centres
    close(group_normalized(t([[1, 0, 0, 1]]), scale=False), [[0.5, -0.5, -0.5, 0.5]])
    # eps keeps the division finite and shrinks the values slightly
    close(group_normalized(t([[1, 0]]), eps=1e-6), [[0.5 / (0.7071067812 + 1e-6),
                                                     -0.5 / (0.7071067812 + 1e-6)]], tol=1e-9)


# ---------------------------------------------------------------- SCoRe

# Two episodes (one prompt, G = 2), three tokens each: token 0 is turn 1, tokens 1–2 turn 2.
LOGP = [[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]]
REF = [[-1.0, -1.5, -0.5], [-1.2, -1.0, -0.8]]
MASK1 = [[1, 0, 0], [1, 0, 0]]
MASK2 = [[0, 1, 1], [0, 1, 1]]
# k3 per token, log_r = ref − logp:
#   row 0: (0, 0.5, 0)  → (0, e^0.5 − 1.5 = 0.1487212707, 0)
#   row 1: (−0.2, 0, 0.2) → (e^−0.2 − 0.8 = 0.0187307531, 0, e^0.2 − 1.2 = 0.0214027582)
K3_ROW0_T1 = 0.1487212707
K3_ROW1_T0 = 0.0187307531
K3_ROW1_T2 = 0.0214027582


def test_shaped_turn2_reward() -> None:
    # r2 + 10·(r2 − r1)
    close(shaped_turn2_reward(t([0, 1, 1, 0]), t([1, 0, 1, 0]), 10.0), [11.0, -10.0, 1.0, 0.0])
    close(shaped_turn2_reward(t([0, 1]), t([1, 0]), 0.0), [1.0, 0.0])


def test_stage1_loss_value_and_stats() -> None:
    logp = t(LOGP).requires_grad_()
    loss, stats = stage1_loss(
        logp, t(REF), logp, t(REF), t(MASK1), t(MASK2), t([1.0, 0.0]),
        beta1=0.01, beta2=0.1, group_size=2, r1=t([0.0, 1.0]),
    )
    # LOO advantages for r2 = (1, 0): (1, −1). Turn-2 log-prob sums: (−2.5, −2).
    # pg = −A·Σlogp: (2.5, −2) → mean 0.25
    # row 0: 2.5 + 0.1·0 + 0.01·0.1487212707 = 2.501487212707
    # row 1: −2 + 0.1·0.0187307531 + 0.01·0.0214027582 = −1.997912897108
    close(loss, (2.501487212707 - 1.997912897108) / 2)  # 0.2517871578
    assert stats["pg_loss"] == pytest.approx(0.25)
    assert stats["kl_turn1"] == pytest.approx(K3_ROW1_T0 / 2)
    assert stats["kl_turn2"] == pytest.approx((K3_ROW0_T1 + K3_ROW1_T2) / 2)
    assert stats["reward_turn2"] == pytest.approx(0.5)
    assert stats["reward_turn1"] == pytest.approx(0.5)
    assert stats["tokens_turn1"] == 1.0 and stats["tokens_turn2"] == 2.0

    loss.backward()
    # turn-2 token of row 0: (1/B)(−A + β1(1 − e^0.5)) = 0.5·(−1 − 0.01·0.6487212707)
    close(logp.grad[0, 1], -0.503243606354, tol=1e-9)
    # turn-1 tokens get only the β2 KL gradient: row 0 sits at the reference (0),
    # row 1: 0.5·0.1·(1 − e^−0.2) = 0.5·0.1·0.1812692469
    close(logp.grad[0, 0], 0.0)
    close(logp.grad[1, 0], 0.009063462345, tol=1e-9)


def test_stage1_baselines() -> None:
    args = (t(LOGP), t(REF), t(LOGP), t(REF), t(MASK1), t(MASK2), t([1.0, 0.0]))
    kw = {"beta1": 0.0, "beta2": 0.0, "group_size": 2}
    # no baseline: A = r2 = (1, 0): pg = (2.5, 0) → 1.25
    _, none = stage1_loss(*args, baseline="none", **kw)
    assert none["pg_loss"] == pytest.approx(1.25)
    # group mean: A = (0.5, −0.5): pg = (1.25, −1) → 0.125
    _, mean = stage1_loss(*args, baseline="mean", **kw)
    assert mean["pg_loss"] == pytest.approx(0.125)
    with pytest.raises(ValueError, match="group_size=3"):
        stage1_loss(*args, group_size=3, beta1=0.0, beta2=0.0)


def test_stage2_loss_value_and_stats() -> None:
    logp = t(LOGP).requires_grad_()
    loss, stats = stage2_loss(
        logp, t(REF), logp, t(REF), t(MASK1), t(MASK2), t([0.0, 1.0]), t([1.0, 0.0]),
        alpha=10.0, beta1=0.01, group_size=2,
    )
    # r̂2 = r2 + 10(r2 − r1) = (11, −10); turn-1 return r1 + r̂2 = (11, −9)
    # turn 2 is credited with r̂2 + α·r1 = 11·r2 = (11, 0) (−α·r1 is fixed by turn 2's prompt)
    # LOO with G = 2 is r_i − r_other: A1 = (20, −20), A2 = (11, −11)
    # turn sums: turn 1 (−1, −1), turn 2 (−2.5, −2)
    # pg row 0 = −(20·−1 + 11·−2.5) = 47.5; row 1 = −(−20·−1 + −11·−2) = −42  → mean 2.75
    # KL row 0 = 0.1487212707, row 1 = 0.0187307531 + 0.0214027582 = 0.0401335113
    close(loss, (47.5 + 0.01 * 0.1487212707 - 42.0 + 0.01 * 0.0401335113) / 2)  # 2.7509442739
    assert stats["pg_loss"] == pytest.approx(2.75)
    assert stats["shaped_reward_turn2"] == pytest.approx(0.5)
    assert stats["reward_turn1"] == pytest.approx(0.5)
    assert stats["reward_turn2"] == pytest.approx(0.5)
    assert stats["kl_turn1"] == pytest.approx(K3_ROW1_T0 / 2)

    loss.backward()
    # turn-1 token of row 0: credited with A1 = 20 → 0.5·(−20 + 0.01·0) = −10
    close(logp.grad[0, 0], -10.0)
    # turn-2 token of row 1: 0.5·(+11 + 0.01·(1 − e^0)) = 5.5
    close(logp.grad[1, 1], 5.5)


def test_stage2_right_then_right_second_attempt_is_not_penalised() -> None:
    """G=2: r1=[1,0], r2=[1,1] (right→right next to wrong→right), α=10, no KL.
    Turn 2's return with −α·r1 removed is 11·r2 = [11, 11] → A2 = LOO = [0, 0]: both second
    attempts were right and neither is pushed down. (Left in the group baseline, r̂2 = [1, 11]
    gave A2 = [−10, +10]: the right→right second attempt made less likely.)"""
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]], dtype=torch.float64, requires_grad=True)
    m1, m2 = t([[1, 0], [1, 0]]), t([[0, 1], [0, 1]])
    loss, _ = stage2_loss(logp, logp.detach(), logp, logp.detach(), m1, m2, t([1.0, 0.0]),
                          t([1.0, 1.0]), alpha=10.0, beta1=0.0, group_size=2,
                          bonus_on_turn1=False)
    loss.backward()
    close(logp.grad[:, 1], [0.0, 0.0])
    # turn 1 still learns from r1 + r2 = [2, 1]: A1 = [1, −1] → grad −A1/B = [−0.5, 0.5]
    close(logp.grad[:, 0], [-0.5, 0.5])


def test_stage2_turn2_advantage_is_the_bonus_scaled_reward_minus_its_baseline() -> None:
    """G=4, α=10, mean baseline: r1 = [1, 1, 0, 0], r2 = [1, 0, 1, 0].
    11·r2 = [11, 0, 11, 0] → mean 5.5 → A2 = [5.5, −5.5, 5.5, −5.5]; turn-2 tokens have
    log-prob sum −1 each, so pg2 = −A2·(−1) = A2 → mean 0; gradient on each turn-2 token
    −A2/B = [−1.375, 1.375, −1.375, 1.375]. With term_scale="std" A2 is divided by its
    population std 5.5 (+1e-6): gradient ±0.25·5.5/(5.5 + 1e-6)."""
    lp = [[-1.0, -1.0]] * 4
    m1, m2 = t([[1, 0]] * 4), t([[0, 1]] * 4)
    r1, r2 = t([1.0, 1.0, 0.0, 0.0]), t([1.0, 0.0, 1.0, 0.0])
    for scale, factor in (("none", 1.0), ("std", 1 / (5.5 + 1e-6))):
        logp = t(lp).requires_grad_()
        loss, _ = stage2_loss(logp, logp.detach(), logp, logp.detach(), m1, m2, r1, r2,
                              alpha=10.0, beta1=0.0, baseline="mean", group_size=4,
                              bonus_on_turn1=False, term_scale=scale)
        loss.backward()
        close(logp.grad[:, 1], [-1.375 * factor, 1.375 * factor, -1.375 * factor,
                                1.375 * factor], tol=1e-9)


def test_term_scale_std_balances_the_two_turns() -> None:
    """G=2, α=10, LOO, bonus_on_turn1=False; r1 = [0, 1], r2 = [1, 1] → A1 = LOO(r1 + r2 =
    [1, 2]) = [−1, 1]; A2 = LOO(11·r2) = [0, 0]. Second group r1 = [0, 0], r2 = [1, 0] →
    A1 = LOO([1, 0]) = [1, −1], A2 = LOO([11, 0]) = [11, −11].
    Raw: turn-1 |A| mean 1, turn-2 |A| mean 5.5 (11× on the rows that carry it).
    std: A1 / std([−1, 1, 1, −1]) = A1 / 1; A2 / std([0, 0, 11, −11]) = A2 / √60.5 = 7.7782."""
    logp = t([[-1.0, -1.0]] * 4).requires_grad_()
    m1, m2 = t([[1, 0]] * 4), t([[0, 1]] * 4)
    r1, r2 = t([0.0, 1.0, 0.0, 0.0]), t([1.0, 1.0, 1.0, 0.0])
    parts: dict = {}
    loss, _ = stage2_loss(logp, logp.detach(), logp, logp.detach(), m1, m2, r1, r2,
                          alpha=10.0, beta1=0.0, group_size=2, bonus_on_turn1=False,
                          term_scale="std", terms_out=parts)
    loss.backward()
    s2 = math.sqrt(60.5) + 1e-6
    s1 = 1.0 + 1e-6
    close(logp.grad[:, 0], [1 / s1 / 4, -1 / s1 / 4, -1 / s1 / 4, 1 / s1 / 4], tol=1e-9)
    close(logp.grad[:, 1], [0.0, 0.0, -11 / s2 / 4, 11 / s2 / 4], tol=1e-9)
    # the parts sum to the loss; each is the mean over episodes of one turn's terms
    close(parts["turn1"] + parts["turn2"], loss.detach())
    close(parts["turn1"], (-1 + 1 + 1 - 1) / s1 / 4 * 1.0, tol=1e-9)


def test_term_scale_shared_keeps_the_alpha_weight() -> None:
    """G=2, LOO, bonus_on_turn1=False, r1 = [0, 0], r2 = [1, 0], batch of one group, B=2.
    A1 = LOO(r1 + r2 = [1, 0]) = [1, −1]; A2 = LOO((1+α)·r2) = [1+α, −(1+α)].
    α = 10: one scale σ = std([1, −1, 11, −11]) = √61 = 7.8102496759 → gradient on the
    turn-1 tokens −A1/σ/B = ∓0.0640184, on the turn-2 tokens −A2/σ/B = ∓0.7041965.
    α = 0: σ = std([1, −1, 1, −1]) = 1 → ∓0.5 on both turns."""
    m1, m2 = t([[1, 0]] * 2), t([[0, 1]] * 2)
    r1, r2 = t([0.0, 0.0]), t([1.0, 0.0])
    for alpha, sigma in ((10.0, math.sqrt(61.0) + 1e-6), (0.0, 1.0 + 1e-6)):
        logp = t([[-1.0, -1.0]] * 2).requires_grad_()
        loss, _ = stage2_loss(logp, logp.detach(), logp, logp.detach(), m1, m2, r1, r2,
                              alpha=alpha, beta1=0.0, group_size=2, bonus_on_turn1=False,
                              term_scale="shared")
        loss.backward()
        close(logp.grad[:, 0], [-1 / sigma / 2, 1 / sigma / 2], tol=1e-9)
        close(logp.grad[:, 1], [-(1 + alpha) / sigma / 2, (1 + alpha) / sigma / 2], tol=1e-9)


# the mixed two-turn batch of the review: groups of 4, outcomes of every kind
MIXED_R1 = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
MIXED_R2 = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0]


def _stage2_grad(alpha: float, **config: object) -> torch.Tensor:
    """The stage-II gradient on per-token log-probs of the mixed batch (two tokens a turn)."""
    logp = t([[-1.0, -0.5, -2.0, -0.25]] * 8).requires_grad_()
    m1, m2 = t([[1, 1, 0, 0]] * 8), t([[0, 0, 1, 1]] * 8)
    loss, _ = stage2_loss(logp, logp.detach(), logp, logp.detach(), m1, m2, t(MIXED_R1),
                          t(MIXED_R2), alpha=alpha, beta1=0.01, group_size=4, **config)
    loss.backward()
    return logp.grad.detach()


def test_alpha_changes_the_stage2_update_under_the_scorerun_defaults() -> None:
    """SCoRe's shaping weight must act with the settings a ScoreRun gets by default: α = 10
    and α = 0 give different stage-II gradients on a mixed batch, also in direction (not
    only in size, which the optimiser's normalisation would absorb)."""
    from scoreops.api.scorerun import ScoreConfig

    cfg = ScoreConfig()
    kw = {"baseline": cfg.baseline, "kl_estimator": cfg.kl_estimator,
          "bonus_on_turn1": cfg.bonus_on_turn1, "term_scale": cfg.term_scale}
    g10, g0 = _stage2_grad(10.0, **kw), _stage2_grad(0.0, **kw)
    rel = float((g10 - g0).norm() / g0.norm())
    assert rel > 0.1, f"alpha has no effect: relative gradient difference {rel:.4f}"
    cos = float((g10.flatten() @ g0.flatten()) / (g10.norm() * g0.norm()))
    assert cos < 0.99, f"alpha only rescales the update: cosine {cos:.4f}"
    # the turn-2 part of the update grows relative to the turn-1 part by about 1 + α
    ratio10 = float(g10[:, 2:].norm() / g10[:, :2].norm())
    ratio0 = float(g0[:, 2:].norm() / g0[:, :2].norm())
    assert ratio10 / ratio0 > 5.0


def test_per_turn_std_scale_divides_alpha_out() -> None:
    """The named option ``term_scale="std"`` (the earlier default): each turn normalised on
    its own, so the (1+α) weight cancels and α = 10 gives α = 0's gradient (the KL part,
    identical for both, aside)."""
    kw = {"bonus_on_turn1": False, "term_scale": "std"}
    g10, g0 = _stage2_grad(10.0, **kw), _stage2_grad(0.0, **kw)
    assert float((g10 - g0).norm() / g0.norm()) < 1e-5  # the eps of the scale


def test_stage_losses_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="mask2"):
        stage1_loss(t(LOGP), t(REF), t(LOGP), t(REF), t(MASK1), t([[0, 1]]), t([1.0, 0.0]),
                    beta1=0.0, beta2=0.0, group_size=2)


# ---------------------------------------------------------------- GRPO

G_LOGP = [[-1.0, -2.0], [-0.5, -1.0]]
G_OLD = [[-1.3, -2.0], [-0.5, -0.7]]
G_REF = [[-1.0, -2.5], [-0.5, -1.0]]
# ratios: row 0 (e^0.3 = 1.3498588076 → clipped to 1.2, 1); row 1 (1, e^−0.3 = 0.7408182207 → 0.8)
# A = (1, −1): per-token pg = −min(ρA, clip(ρ)A):
#   row 0: (−min(1.3499, 1.2) = −1.2, −1);  row 1: (1, −min(−0.7408, −0.8) = 0.8)
# k3: only row 0 token 1 differs: log_r = −0.5 → e^−0.5 + 0.5 − 1 = 0.1065306597


def test_grpo_token_mean() -> None:
    logp = t(G_LOGP).requires_grad_()
    mask = t([[1, 1], [1, 0]])
    loss, stats = grpo_loss(logp, t(G_OLD), t(G_REF), t([1.0, -1.0]), mask, clip_eps=0.2,
                            beta=0.04)
    # (−1.2 + (−1 + 0.04·0.1065306597) + 1) / 3 tokens
    close(loss, (-1.2 - 1.0 + 0.04 * 0.1065306597 + 1.0) / 3)  # −0.3985795912
    assert stats["clip_fraction"] == pytest.approx(1 / 3)  # row 0 token 0; row 1 token 1 masked
    assert stats["kl"] == pytest.approx(0.1065306597 / 3)
    assert stats["tokens"] == 3.0
    loss.backward()
    close(logp.grad[0, 0], 0.0)  # clipped: no gradient through the ratio
    # −A·ρ + β(1 − e^−0.5) = −1 + 0.04·0.3934693403, over 3 tokens
    close(logp.grad[0, 1], (-1.0 + 0.04 * 0.3934693403) / 3, tol=1e-9)
    close(logp.grad[1, 0], 1 / 3)
    close(logp.grad[1, 1], 0.0)  # masked


def test_grpo_seq_mean_and_clip_on_negative_advantage() -> None:
    mask = t([[1, 1], [1, 0]])
    loss, _ = grpo_loss(t(G_LOGP), t(G_OLD), t(G_REF), t([1.0, -1.0]), mask, beta=0.04,
                        loss_agg="seq-mean")
    # row 0 mean (−1.2 − 0.9957387736)/2 = −1.0978693868; row 1 mean 1/1 = 1
    close(loss, (-1.0978693868 + 1.0) / 2, tol=1e-9)
    full, stats = grpo_loss(t(G_LOGP), t(G_OLD), t(G_REF), t([1.0, -1.0]), t([[1, 1], [1, 1]]),
                            beta=0.0)
    # all four tokens: (−1.2 − 1 + 1 + 0.8)/4 = −0.1, and both clips active
    close(full, -0.1)
    assert stats["clip_fraction"] == pytest.approx(0.5)


def test_grpo_on_policy_is_plain_policy_gradient() -> None:
    logp = t([[-1.0, -2.0]]).requires_grad_()
    loss, stats = grpo_loss(logp, None, None, t([2.0]), t([[1, 1]]), beta=0.0)
    close(loss, -2.0)  # ρ ≡ 1: −A per token
    assert stats["ratio_mean"] == pytest.approx(1.0)
    loss.backward()
    close(logp.grad, [[-1.0, -1.0]])  # −A/2 tokens
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, None, None, t([2.0]), t([[1, 1]]), beta=0.1)


# ---------------------------------------------------------------- gradient direction


def _table_policy_logp(weights: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """A policy whose next-token logits at position i are ``weights[i]`` (no context)."""
    logp = torch.log_softmax(weights, dim=-1)  # [T, V]
    return logp.gather(-1, tokens.T).T  # [B, T]


@pytest.mark.parametrize("objective", ["stage1", "stage2", "grpo"])
def test_one_sgd_step_raises_the_rewarded_sequence(objective: str) -> None:
    torch.manual_seed(0)
    weights = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    tokens = torch.tensor([[1, 2, 3, 4], [5, 0, 1, 2]])  # two samples of one prompt
    mask1 = t([[1, 1, 0, 0], [1, 1, 0, 0]])
    mask2 = t([[0, 0, 1, 1], [0, 0, 1, 1]])
    logp = _table_policy_logp(weights, tokens)
    ref = logp.detach().clone()
    r1, r2 = t([0.0, 0.0]), t([1.0, 0.0])  # sample 0 is the one that got it right
    if objective == "stage1":
        loss, _ = stage1_loss(logp, ref, logp, ref, mask1, mask2, r2, beta1=0.01, beta2=0.1,
                              group_size=2)
        seq_mask = mask2
    elif objective == "stage2":
        loss, _ = stage2_loss(logp, ref, logp, ref, mask1, mask2, r1, r2, alpha=10.0,
                              beta1=0.01, group_size=2)
        seq_mask = mask1 + mask2
    else:
        adv = group_normalized(r2.reshape(1, 2)).reshape(-1)
        loss, _ = grpo_loss(logp, None, ref, adv, mask1 + mask2, beta=0.04)
        seq_mask = mask1 + mask2
    before = (logp.detach() * seq_mask).sum(-1)
    loss.backward()
    with torch.no_grad():
        weights -= 0.1 * weights.grad
    after = (_table_policy_logp(weights, tokens).detach() * seq_mask).sum(-1)
    assert after[0] > before[0], "the rewarded sample must become likelier"
    assert after[1] < before[1], "the unrewarded sample must become less likely"


def test_stage2_bonus_credit_of_turn1_by_hand() -> None:
    """G=2: r1=[1,0], r2=[1,1], α=10 → r̂2=[1,11]; A2=LOO(11·r2=[11,11])=[0,0].
    bonus_on_turn1: A1=LOO(r1+r̂2=[2,11])=[-9,9]; without: A1=LOO(r1+r2=[2,1])=[1,-1].
    Σlogp turn1=[-1,-3], turn2=[-2,-4], KL=0 (ref=logp).
    with bonus: pg=[-(9), -(-27)]=[-9,27] → 9; without: [-(-1), -(3)]=[1,-3] → -1."""
    import torch

    logp = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    m1 = torch.tensor([[1, 0], [1, 0]])
    m2 = torch.tensor([[0, 1], [0, 1]])
    r1, r2 = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    kw = {"alpha": 10.0, "beta1": 0.0, "baseline": "loo", "group_size": 2}
    with_bonus, _ = stage2_loss(logp, logp, logp, logp, m1, m2, r1, r2, **kw)
    without, _ = stage2_loss(logp, logp, logp, logp, m1, m2, r1, r2, bonus_on_turn1=False, **kw)
    assert with_bonus.item() == pytest.approx(9.0)
    assert without.item() == pytest.approx(-1.0)


def test_stage1_term_scale_and_parts() -> None:
    """Stage I, G=2, LOO: r2 = [1, 0] → A2 = [1, −1], population std 1 → unchanged by "std"
    (up to eps); the turn-1 part is the β2 KL only."""
    logp = t(LOGP).requires_grad_()
    parts: dict = {}
    loss, _ = stage1_loss(logp, t(REF), logp, t(REF), t(MASK1), t(MASK2), t([1.0, 0.0]),
                          beta1=0.01, beta2=0.1, group_size=2, term_scale="std",
                          terms_out=parts)
    close(parts["turn1"], 0.1 * K3_ROW1_T0 / 2, tol=1e-9)
    close(parts["turn1"] + parts["turn2"], loss.detach())
    # turn-2 row 0: 0.5·(−1/(1+1e-6) − 0.01·0.6487212707)
    loss.backward()
    close(logp.grad[0, 1], 0.5 * (-1 / (1 + 1e-6) - 0.01 * 0.6487212707), tol=1e-9)
