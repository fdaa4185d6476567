"""STaR (Zelikman et al., 2022) as a self-correction baseline: sample, keep what the verifier
accepts, fine-tune on it with plain cross-entropy.

With *external correction prompts* an episode is two turns (attempt, correction instruction,
attempt) and both a correct first attempt and a correct revision are kept — the revision is
trained in its context ``[x][y1][instruction][y2]``, so the model learns to revise. Without,
only first attempts exist and are kept when correct.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["select_verified", "sft_loss"]


def select_verified(
    rewards: Sequence[Sequence[float]],
    *,
    external_correction: bool,
    threshold: float = 0.5,
) -> list[tuple[int, int]]:
    """``(episode, turn)`` pairs (turn 1-based) to fine-tune on.

    ``rewards[e][t]`` is the verifier's score of turn t+1 of episode e. Turn 1 is kept when
    correct; with ``external_correction`` the last turn is kept too when correct (a revision
    that is right, whatever the first attempt was). Without it only turn 1 is considered.
    """
    keep: list[tuple[int, int]] = []
    for e, r in enumerate(rewards):
        if not r:
            continue
        if r[0] >= threshold:
            keep.append((e, 1))
        if external_correction and len(r) > 1 and r[-1] >= threshold:
            keep.append((e, len(r)))
    return keep


def sft_loss(
    logp: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-mean negative log-likelihood ``−Σ mask·logp / Σ mask`` of the kept tokens.

    ``logp [B, T]`` are the log-probs of the sequence tokens, ``mask [B, T]`` selects the kept
    answer tokens (0/1 or bool). Returns ``(loss, {"loss", "nll", "tokens"})``; an all-zero
    mask gives a zero loss that still has a graph (so ``backward`` is always valid).
    """
    if logp.shape != mask.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and mask {tuple(mask.shape)} differ in shape")
    m = mask.to(logp.dtype)
    n = m.sum()
    loss = -(logp * m).sum() / n.clamp(min=1.0)
    value = float(loss.item())
    return loss, {"loss": value, "nll": value, "tokens": float(n.item())}
