"""CORY (Ma et al., 2024, "Coevolving with the Other You"): the policy is duplicated into a
*pioneer* and an *observer* that are trained together.

The pioneer answers the question, ``y_p ~ π_p(·|x)``; the observer answers after seeing the
question and the pioneer's answer, ``y_o ~ π_o(·|x ⊕ y_p ⊕ instruction)``. Both are trained
with the **cooperative** reward ``R = r(y_p) + r(y_o)``, so the pioneer is paid for answers
the observer can build on and the observer for improving on them. Every T steps the two
exchange roles, so each copy learns both to answer alone and to revise.

Here both agents are policy-gradient learners with GRPO's group-normalised advantages of R over
the G samples of a prompt (the paper uses PPO with a value head; a group baseline needs no
critic) and a KL penalty to the frozen base model. The functions are pure; see
:mod:`scoreops.training.steps.cory` for the adapters and rollouts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scoreops.algorithms.advantages import group_normalized
from scoreops.algorithms.grpo import grpo_loss
from scoreops.algorithms.kl import KLEstimator

if TYPE_CHECKING:
    import torch

__all__ = ["ROLES", "cooperative_reward", "cory_loss", "roles_for_step"]

ROLES = ("a", "b")
"""Names of the two copies (adapters); which one is the pioneer changes every T steps."""


def roles_for_step(step: int, exchange_every: int) -> tuple[str, str]:
    """``(pioneer, observer)`` copy names at ``step`` (0-based): ``a`` pioneers for steps
    ``0 … T−1``, ``b`` for ``T … 2T−1``, and so on."""
    if exchange_every < 1:
        raise ValueError(f"exchange_every must be >= 1, got {exchange_every}")
    if (step // exchange_every) % 2 == 0:
        return ROLES[0], ROLES[1]
    return ROLES[1], ROLES[0]


def cooperative_reward(r_pioneer: torch.Tensor, r_observer: torch.Tensor) -> torch.Tensor:
    """``R = r(y_p) + r(y_o)``, the reward both agents maximise."""
    if r_pioneer.shape != r_observer.shape:
        raise ValueError(
            f"reward shapes differ: {tuple(r_pioneer.shape)} vs {tuple(r_observer.shape)}")
    total = r_pioneer + r_observer
    return total if total.is_floating_point() else total.float()


def cory_loss(
    logp_pioneer: torch.Tensor,
    ref_pioneer: torch.Tensor | None,
    mask_pioneer: torch.Tensor,
    logp_observer: torch.Tensor,
    ref_observer: torch.Tensor | None,
    mask_observer: torch.Tensor,
    r_pioneer: torch.Tensor,
    r_observer: torch.Tensor,
    *,
    group_size: int,
    beta: float = 0.01,
    kl_estimator: KLEstimator = "k3",
    scale: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``L = L_GRPO(pioneer; A) + L_GRPO(observer; A)`` with ``A = group_norm(R)``.

    ``logp_pioneer`` are the sequence log-probs under the pioneer copy (its tokens selected by
    ``mask_pioneer``: the first answer), ``logp_observer`` under the observer copy
    (``mask_observer``: the second answer). Rows are P prompts × ``group_size`` samples,
    group-contiguous. Returns ``(loss, stats)``.
    """
    reward = cooperative_reward(r_pioneer, r_observer)
    if group_size < 2 or reward.shape[0] % group_size:
        raise ValueError(
            f"{reward.shape[0]} episodes are not whole groups of group_size={group_size} (>= 2)")
    adv = group_normalized(reward.reshape(-1, group_size), scale=scale).reshape(-1)
    lp, sp = grpo_loss(logp_pioneer, None, ref_pioneer, adv, mask_pioneer, beta=beta,
                       kl_estimator=kl_estimator)
    lo, so = grpo_loss(logp_observer, None, ref_observer, adv, mask_observer, beta=beta,
                       kl_estimator=kl_estimator)
    loss = lp + lo
    stats = {f"pioneer_{k}": v for k, v in sp.items()}
    stats.update({f"observer_{k}": v for k, v in so.items()})
    stats.update({
        "loss": float(loss.item()),
        "cooperative_reward": float(reward.mean().item()),
        "advantage_abs": float(adv.abs().mean().item()),
    })
    return loss, stats
