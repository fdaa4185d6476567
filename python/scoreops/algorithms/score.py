"""SCoRe (Kumar et al., 2024): two-stage multi-turn RL that teaches self-correction.

An episode is ``x → y1 ~ π(·|x)``, ``x2 = x ⊕ y1 ⊕ instruction``, ``y2 ~ π(·|x2)`` with rewards
``r1 = r(y1)``, ``r2 = r(y2)`` in {0, 1}. The losses below take *token-level* log-probabilities
``[B, T]`` of one packed sequence per episode (``[x][y1][instruction][y2]``) and a mask per turn
that selects the tokens generated in that turn; the same ``[B, T]`` tensor may be passed as
``logp1`` and ``logp2`` with different masks.

Choices, made explicit:

* **Sequence-level sums.** The policy-gradient term of a turn is ``A · Σ_t log π(y_t)`` over
  that turn's tokens (REINFORCE on the turn's sequence probability), and the KL of a turn is
  the per-token estimator summed over its tokens (an estimate of the sequence-level KL).
  Both are averaged over the B episodes. Longer answers therefore carry proportionally more
  gradient, as in the exact sequence-level objective; there is no per-token length
  normalisation.
* **KL as a loss term**, not a reward penalty: ``β · Σ_t k(logp_t, ref_logp_t)`` is
  differentiated directly (as in GRPO), with the k3 estimator by default.
* **Baselines over the group.** The batch holds P prompts × G samples in group-contiguous order
  (rows ``p*G … p*G+G−1`` share prompt p — the order :func:`scoreops.rollout.run_episodes`
  produces). ``baseline="loo"`` subtracts the mean return of the other G−1 samples (unbiased),
  ``"mean"`` the group mean, ``"none"`` nothing.
* **Stage I** maximises ``E[r2] − β2·KL_turn1 − β1·KL_turn2``. Only the turn-2 tokens receive a
  policy gradient; the turn-1 tokens receive only the (strong, β2) KL term that keeps the first
  attempt at the base model's distribution — the point of stage I is to learn to correct
  base-model first attempts without collapsing the first attempt onto the second.
* **Stage II** maximises ``r1 + r̂2 − β1·(KL_turn1 + KL_turn2)`` with the shaped turn-2 reward
  ``r̂2 = r2 + α·(r2 − r1) = (1+α)·r2 − α·r1``. Turn-2 tokens are credited with ``r̂2`` minus a
  baseline. The term ``−α·r1`` is fixed once turn 2's prompt ``x2 = x ⊕ y1 ⊕ instruction`` is
  known, so it is a per-episode baseline of turn 2 (it does not depend on ``y2``) and is
  subtracted *before* the group baseline: turn 2's advantage is ``baseline((1+α)·r2)``. Its
  expectation is the exact turn-2 gradient of ``E[r̂2]``; left in, ``−α·r1`` would enter the
  group baseline shared by episodes whose first answers differ and give, e.g., a
  right→right second attempt an advantage of −α next to a wrong→right one (pure variance).
  Turn-1 tokens are credited according to ``bonus_on_turn1``; the gradient each option of
  :func:`stage2_loss` computes:

  - turn-2 tokens (both options): the REINFORCE estimate of ``∇E[r̂2]`` through ``y2`` with
    turn 1 held fixed; ``−α·r1`` is a function of turn 2's prompt and is removed per episode
    before the group baseline (same expectation, less variance).
  - ``bonus_on_turn1=True``: turn-1 tokens get the return-to-go ``(1−α)·r1 + (1+α)·r2``, so
    the sum is the exact policy gradient of ``E[r1 + r̂2]``; with α > 1 it pays a wrong first
    attempt that gets corrected more than a right one.
  - ``bonus_on_turn1=False`` (the ScoreRun default): turn-1 tokens get ``r1 + r2``, the exact
    gradient of ``E[r1 + r2]`` through ``y1``; the bonus acts only through ``y2``. The sum is
    then not the gradient of one objective, but each part is exact for its own.
* **What α does to the expected gradient.** Write ``g_t = E[∇log π(y_t|·) · R]`` for the
  exact REINFORCE gradient through turn t's tokens with return R, and ``J2 = E[r2]``. Because
  ``r̂2 = (1+α)·r2 − α·r1`` and ``r1`` is fixed once ``y2`` is sampled,

  - through ``y2``: ``∇_{y2} E[r̂2] = (1+α)·∇_{y2} E[r2]``: α *scales* the correction's
    gradient, it does not change its direction (``−α·r1`` has zero expected gradient there);
  - through ``y1``: with ``bonus_on_turn1=False`` the return is ``r1 + r2`` (no α); with
    ``bonus_on_turn1=True`` it is ``(1−α)·r1 + (1+α)·r2``, so α also changes *which* first
    attempts are reinforced (a wrong one that gets fixed earns ``1+α``, a right one kept
    right ``2``).

  Hence, with the unshaped turn-1 credit, α acts only as the weight ``(1+α)`` of the turn-2
  term relative to the turn-1 term: ``∇ ∝ ∇J1 + (1+α)·∇J2``. Any normalisation that rescales
  each turn's advantages *separately* divides that weight out again and leaves α without
  effect; normalisations that keep α must use one scale for both terms.
* **Advantage scale** (``term_scale``); the gradient of the policy-gradient part under each:

  - ``"shared"`` (the ScoreRun default): both turns' advantages are divided by one scale σ,
    the population standard deviation of the ``2B`` values ``[A1; A2]`` (``+ 1e-6``; no
    spread: unchanged). The gradient is ``(1/σ)·(∇J1 + (1+α)·∇J2)``: the step size is
    normalised (robust to clipping and AdamW's scale) and the ``(1+α)`` weighting of the
    correction survives. α = 10 and α = 0 give different updates on any batch where both
    turns carry signal.
  - ``"std"``: each turn's advantages divided by their own standard deviation. The gradient
    is ``(1/σ1)·∇J1 + (1/σ2)·∇J2`` with ``σ2 ∝ (1+α)``, so the ``(1+α)`` cancels and the
    update is the same for every α when ``bonus_on_turn1=False`` (kept for comparison with
    earlier runs; it balances the turns at the price of disabling α).
  - ``"none"``: raw advantages, ``∇J1 + (1+α)·∇J2`` unnormalised; with large α the turn-2
    term dominates the clipped gradient norm.

  The KL terms are not rescaled under any option. Not chosen: per-turn token-mean
  normalisation (leaves the ``1+α`` ratio but makes the objective length-normalised);
  rescaling each term's *parameter* gradient to a common norm (needs a backward pass per
  term). The per-turn gradient norms can be logged every step (``termGradNorms``, see
  :func:`scoreops.training.steps.backward.backward_micro_batches`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from scoreops.algorithms.advantages import leave_one_out
from scoreops.algorithms.kl import KLEstimator, per_token_kl

if TYPE_CHECKING:
    import torch

Baseline = Literal["loo", "mean", "none"]
TermScale = Literal["none", "std", "shared"]

__all__ = ["Baseline", "TermScale", "scale_term", "scale_terms", "shaped_turn2_reward",
           "stage1_loss", "stage2_loss"]


def shaped_turn2_reward(
    r1: torch.Tensor, r2: torch.Tensor, alpha: float
) -> torch.Tensor:
    """SCoRe's stage-II turn-2 reward ``r2 + α·(r2 − r1)``: a bonus for incorrect → correct and
    a penalty for correct → incorrect, α times the size of the plain reward."""
    return r2 + alpha * (r2 - r1)


def _advantages(returns: torch.Tensor, group_size: int, baseline: Baseline) -> torch.Tensor:
    """Per-episode advantages ``[B]`` from per-episode returns ``[B]``."""
    if returns.dim() != 1:
        raise ValueError(f"rewards must be [batch], got shape {tuple(returns.shape)}")
    if group_size < 1 or returns.shape[0] % group_size != 0:
        raise ValueError(
            f"batch of {returns.shape[0]} episodes is not a whole number of groups of "
            f"group_size={group_size}"
        )
    if baseline == "none":
        return returns
    grouped = returns.reshape(-1, group_size)
    if baseline == "mean":
        return (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    if baseline == "loo":
        return leave_one_out(grouped).reshape(-1)
    raise ValueError(f"unknown baseline {baseline!r}; expected 'loo', 'mean' or 'none'")


def _spread(values: torch.Tensor) -> float:
    return 0.0 if values.numel() < 2 else float(values.std(unbiased=False))


def scale_term(advantages: torch.Tensor, term_scale: TermScale, eps: float = 1e-6) -> torch.Tensor:
    """One policy-gradient term's advantages ``[B]`` after ``term_scale``: unchanged for
    ``"none"``; for ``"std"`` and ``"shared"`` (one term: its own scale) divided by
    ``σ + eps``, σ their population standard deviation over the batch. Advantages with no
    spread (all equal, or fewer than two) are unchanged."""
    return scale_terms([advantages], term_scale, eps)[0]


def scale_terms(terms: list[torch.Tensor], term_scale: TermScale,
                eps: float = 1e-6) -> list[torch.Tensor]:
    """Several policy-gradient terms' advantages after ``term_scale`` (module docstring):
    ``"none"`` unchanged; ``"std"`` each term by its own standard deviation; ``"shared"`` all
    terms by the standard deviation of their concatenation, so their relative weights (SCoRe's
    ``1+α``) survive. A term (or, for ``"shared"``, the whole set) with no spread is left
    unchanged."""
    import torch

    if term_scale == "none":
        return list(terms)
    if term_scale == "std":
        out = []
        for adv in terms:
            std = _spread(adv)
            out.append(adv if std == 0.0 else adv / (std + eps))
        return out
    if term_scale == "shared":
        std = _spread(torch.cat([t.reshape(-1) for t in terms]))
        return list(terms) if std == 0.0 else [t / (std + eps) for t in terms]
    raise ValueError(f"unknown term_scale {term_scale!r}; expected 'none', 'std' or 'shared'")


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask.to(values.dtype)).sum(dim=-1)


def _check_shapes(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"token-level tensors must share one shape [B, T], got {shapes}")


def _turn_terms(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_estimator: KLEstimator,
    pg_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_t w_t·log π over the turn, Σ_t KL estimate over the turn), each ``[B]``; ``w`` is
    ``pg_weight`` (detached importance weights, see :mod:`scoreops.algorithms.importance`)
    or 1."""
    seq = logp if pg_weight is None else logp * pg_weight.detach().to(logp.dtype)
    return _masked_sum(seq, mask), _masked_sum(per_token_kl(logp, ref_logp, kl_estimator), mask)


def _stats(loss: torch.Tensor, pg: torch.Tensor, kl1: torch.Tensor, kl2: torch.Tensor,
           mask1: torch.Tensor, mask2: torch.Tensor, **extra: float) -> dict[str, float]:
    """The statistics both stages report: loss, policy-gradient part, mean per-episode KL of
    each turn, the stage's ``extra`` ones, and the mean length of each turn."""
    return {
        "loss": loss.item(),
        "pg_loss": pg.mean().item(),
        "kl_turn1": kl1.mean().item(),
        "kl_turn2": kl2.mean().item(),
        **extra,
        "tokens_turn1": mask1.float().sum(dim=-1).mean().item(),
        "tokens_turn2": mask2.float().sum(dim=-1).mean().item(),
    }


def stage1_loss(
    logp1: torch.Tensor,
    ref_logp1: torch.Tensor,
    logp2: torch.Tensor,
    ref_logp2: torch.Tensor,
    mask1: torch.Tensor,
    mask2: torch.Tensor,
    r2: torch.Tensor,
    *,
    beta1: float,
    beta2: float,
    baseline: Baseline = "loo",
    kl_estimator: KLEstimator = "k3",
    group_size: int,
    r1: torch.Tensor | None = None,
    term_scale: TermScale = "none",
    terms_out: dict[str, torch.Tensor] | None = None,
    pg_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SCoRe stage I loss (to minimise)::

        L = mean_b[ −A2_b · Σ_{t∈turn2} log π  +  β2 · Σ_{t∈turn1} KL_t  +  β1 · Σ_{t∈turn2} KL_t ]

    with ``A2 = scale_term(baseline(r2))`` over each group of ``group_size`` samples of a
    prompt: the REINFORCE estimate of ``∇E[r2]`` through the turn-2 tokens only, plus the KLs.

    Args:
        logp1, logp2: policy log-probs ``[B, T]`` (with gradient); masks select each turn's tokens.
        ref_logp1, ref_logp2: reference-model log-probs ``[B, T]`` (no gradient).
        mask1, mask2: ``[B, T]`` 0/1 (bool or float) masks of the turn-1 / turn-2 tokens.
        r2: turn-2 rewards ``[B]``.
        r1: optional turn-1 rewards ``[B]``, used only for the ``reward_turn1`` statistic.
        term_scale: ``"std"`` divides the advantages by their batch standard deviation.
        terms_out: when given, filled with ``"turn1"`` and ``"turn2"``: the loss split by the
            tokens it differentiates (``mean_b[β2·KL_turn1]`` and
            ``mean_b[−A2·Σ log π + β1·KL_turn2]``; they sum to ``L``).
        pg_weight: ``[B, T]`` detached per-token weights of the policy-gradient sums
            (``Σ_t w_t·log π``: the truncated importance weights of
            :mod:`scoreops.algorithms.importance`); ``None``: 1. The KL terms are unweighted.

    Returns:
        ``(loss, stats)``; stats are floats: ``loss``, ``pg_loss``, ``kl_turn1``, ``kl_turn2``
        (mean per-episode sequence KL), ``reward_turn2`` (and ``reward_turn1`` when given),
        ``advantage_abs``, ``tokens_turn1``, ``tokens_turn2`` (mean lengths).
    """
    _check_shapes(logp1=logp1, ref_logp1=ref_logp1, logp2=logp2, ref_logp2=ref_logp2,
                  mask1=mask1, mask2=mask2)
    adv2 = scale_term(_advantages(r2.to(logp2.dtype), group_size, baseline), term_scale)
    _, kl1 = _turn_terms(logp1, ref_logp1, mask1, kl_estimator)
    seq2, kl2 = _turn_terms(logp2, ref_logp2, mask2, kl_estimator, pg_weight)
    pg = -(adv2.detach() * seq2)
    loss = (pg + beta2 * kl1 + beta1 * kl2).mean()
    if terms_out is not None:
        terms_out["turn1"] = (beta2 * kl1).mean()
        terms_out["turn2"] = (pg + beta1 * kl2).mean()
    stats = _stats(loss, pg, kl1, kl2, mask1, mask2, reward_turn2=r2.float().mean().item(),
                   advantage_abs=adv2.abs().mean().item())
    if r1 is not None:
        stats["reward_turn1"] = r1.float().mean().item()
    return loss, stats


def stage2_loss(
    logp1: torch.Tensor,
    ref_logp1: torch.Tensor,
    logp2: torch.Tensor,
    ref_logp2: torch.Tensor,
    mask1: torch.Tensor,
    mask2: torch.Tensor,
    r1: torch.Tensor,
    r2: torch.Tensor,
    *,
    alpha: float,
    beta1: float,
    baseline: Baseline = "loo",
    kl_estimator: KLEstimator = "k3",
    group_size: int,
    bonus_on_turn1: bool = True,
    term_scale: TermScale = "none",
    terms_out: dict[str, torch.Tensor] | None = None,
    pg_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SCoRe stage II loss (to minimise)::

        r̂2 = r2 + α·(r2 − r1)
        A2 = S(baseline((1+α)·r2))           (r̂2 with its per-episode part −α·r1 removed)
        A1 = S(baseline(r1 + r̂2))            (bonus_on_turn1=True)
        A1 = S(baseline(r1 + r2))            (bonus_on_turn1=False)
        L  = mean_b[ −A1_b · Σ_{turn1} log π − A2_b · Σ_{turn2} log π
                     + β1 · (Σ_{turn1} KL_t + Σ_{turn2} KL_t) ]

    ``S`` is :func:`scale_terms` over ``[A1, A2]`` with ``term_scale`` (``"shared"``: one
    scale for both, so the ``1+α`` weight of turn 2 survives; ``"std"``: one per turn, which
    cancels it); the gradient each option computes is derived in the module docstring.

    Arguments as in :func:`stage1_loss` (``pg_weight`` too), plus turn-1 rewards ``r1 [B]``
    and the shaping ``alpha``; ``terms_out`` is filled with ``"turn1"`` (``mean_b[−A1·Σ log π + β1·KL_turn1]``)
    and ``"turn2"`` (the same for turn 2).

    Returns:
        ``(loss, stats)``; stats: ``loss``, ``pg_loss``, ``kl_turn1``, ``kl_turn2``,
        ``reward_turn1``, ``reward_turn2``, ``shaped_reward_turn2``, ``advantage_abs``,
        ``tokens_turn1``, ``tokens_turn2``.
    """
    _check_shapes(logp1=logp1, ref_logp1=ref_logp1, logp2=logp2, ref_logp2=ref_logp2,
                  mask1=mask1, mask2=mask2)
    r1f, r2f = r1.to(logp1.dtype), r2.to(logp2.dtype)
    shaped = shaped_turn2_reward(r1f, r2f, alpha)
    # r̂2 + α·r1 = (1+α)·r2: the per-episode part of r̂2 that turn 2 cannot change is removed
    adv1, adv2 = scale_terms(
        [_advantages(r1f + (shaped if bonus_on_turn1 else r2f), group_size, baseline),
         _advantages(shaped + alpha * r1f, group_size, baseline)], term_scale)
    seq1, kl1 = _turn_terms(logp1, ref_logp1, mask1, kl_estimator, pg_weight)
    seq2, kl2 = _turn_terms(logp2, ref_logp2, mask2, kl_estimator, pg_weight)
    pg1, pg2 = -(adv1.detach() * seq1), -(adv2.detach() * seq2)
    pg = pg1 + pg2
    loss = (pg + beta1 * (kl1 + kl2)).mean()
    if terms_out is not None:
        terms_out["turn1"] = (pg1 + beta1 * kl1).mean()
        terms_out["turn2"] = (pg2 + beta1 * kl2).mean()
    return loss, _stats(loss, pg, kl1, kl2, mask1, mask2, reward_turn1=r1f.mean().item(),
                        reward_turn2=r2f.mean().item(),
                        shaped_reward_turn2=shaped.mean().item(),
                        advantage_abs=0.5 * (adv1.abs().mean() + adv2.abs().mean()).item())
