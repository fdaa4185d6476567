"""Advantages from the rewards of a group of G samples of the same prompt.

Rewards come as a ``[P, G]`` tensor: P prompts, G samples each. Both estimators subtract a
baseline computed from the *other* information in the group, which lowers the variance of the
policy gradient without changing its expectation (leave-one-out) or nearly so (group mean).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["group_normalized", "leave_one_out"]


def _check_groups(rewards: torch.Tensor, minimum: int) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [prompts, group], got shape {tuple(rewards.shape)}")
    if rewards.shape[1] < minimum:
        raise ValueError(
            f"a group needs at least {minimum} samples per prompt, got {rewards.shape[1]}"
        )


def leave_one_out(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO advantages: ``A_i = r_i − (Σ_{j≠i} r_j) / (G − 1)``.

    The baseline of sample i never depends on r_i, so ``E[A_i ∇log π(y_i)] = ∇E[r]`` exactly.
    Equivalently ``A_i = G/(G−1) · (r_i − mean(r))``. Needs G ≥ 2.
    """
    _check_groups(rewards, 2)
    group = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (group - 1)
    return rewards - others


def group_normalized(
    rewards: torch.Tensor, eps: float = 1e-6, scale: bool = True
) -> torch.Tensor:
    """GRPO advantages: ``A_i = (r_i − mean(r)) / (std(r) + eps)``.

    ``std`` is the unbiased sample standard deviation over the group (Bessel-corrected, as in
    TRL's GRPOTrainer); a group with all-equal rewards gets advantage 0 everywhere. With
    ``scale=False`` only the mean is subtracted (Dr. GRPO: no per-group rescaling, which
    otherwise up-weights prompts that are almost always solved or almost always failed).
    Needs G ≥ 2.
    """
    _check_groups(rewards, 2)
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centered
    return centered / (rewards.std(dim=1, keepdim=True) + eps)
