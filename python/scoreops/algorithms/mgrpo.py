"""MGRPO (Ding et al., 2025, "Multi-Layer GRPO"): GRPO on the question, then GRPO on guided
self-corrections of its own answers; both layers update the same policy.

* **Layer 1** is plain GRPO: G samples ``o_1 … o_G`` of the question x, group-normalised
  advantages, clipped ratio, k3 KL to the reference.
* **Layer 2** turns every layer-1 output into a correction prompt ``x'_i`` with a guide phrase
  ``g_i`` drawn from a pool (by default the paper's seven). In the paper's form (the default,
  ``guideForm: same-turn``) ``x'_i = concat(x, o_i) + g_i``: the phrase continues the model's
  own answer inside the same assistant turn and the model goes on from there; ``user-turn``
  sends the phrase as a new user message instead. One correction is sampled per ``x'_i``;
  the prompts whose correction the rule-based verifier accepts are kept (``G' ≤ G`` per
  question: a correction of ``o_i`` is known to be reachable from there). For each kept
  ``x'_i`` ``H`` fresh corrections ("variations") are sampled, and GRPO is applied to the
  group of the verified correction *and* its H variations (``keepSelected``, the default;
  a group of H+1 whose first member is known to be right, so it trains unless all H
  variations are right too, and the verified correction gets a positive advantage). With
  ``keepSelected: false`` the group is the H variations only (a group trains only if they
  disagree; with H = 2 that discards most kept prompts). Including the selecting sample
  makes layer 2 partly a filtered (rejection-sampling) update: it is not an unbiased
  estimate of the gradient of E[r] at ``x'_i``, which is the point — it reinforces
  corrections that were verified.

The functions here are pure: the guide-phrase draw, the selection, the per-group advantages
and the two-layer loss. :mod:`scoreops.training.steps.mgrpo` wires them to rollouts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from scoreops.algorithms.advantages import group_normalized
from scoreops.algorithms.grpo import grpo_loss
from scoreops.algorithms.kl import KLEstimator

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

__all__ = [
    "assemble_layer2_groups",
    "draw_guide_phrases",
    "layer2_advantages",
    "layer_loss",
    "mgrpo_loss",
    "select_corrections",
]


def draw_guide_phrases(pool: Sequence[str], n: int, *, seed: int) -> list[str]:
    """``n`` guide phrases drawn uniformly with replacement from ``pool``; the same seed (the
    step's seed) always draws the same phrases, so a resumed run repeats them exactly."""
    if not pool:
        raise ValueError("the guide phrase pool is empty")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    return [pool[rng.randrange(len(pool))] for _ in range(n)]


def select_corrections(rewards: Sequence[float], *, threshold: float = 0.5) -> list[int]:
    """Indices of the layer-2 prompts whose sampled correction the verifier accepted
    (``reward >= threshold``), in order. These prompts become layer-2 GRPO groups."""
    return [i for i, r in enumerate(rewards) if r >= threshold]


def assemble_layer2_groups(
    kept: Sequence[int],
    selected: Sequence[T],
    selected_rewards: Sequence[float],
    variations: Sequence[T],
    variation_rewards: Sequence[float],
    *,
    variations_per_group: int,
    keep_selected: bool = True,
) -> tuple[list[T], list[float], int]:
    """Layer-2 GRPO groups, group-contiguous: ``(samples, rewards, group size)``.

    ``selected[i]`` / ``selected_rewards[i]`` are the probe correction of layer-1 answer i
    and its reward; ``variations`` hold ``variations_per_group`` (H) fresh corrections per kept
    index, in the order of ``kept``. With ``keep_selected`` each group is the verified
    correction followed by its H variations (size H+1), else the H variations (size H)."""
    h = variations_per_group
    if len(variations) != len(kept) * h or len(variation_rewards) != len(variations):
        raise ValueError(f"{len(variations)} variations for {len(kept)} kept prompts x H={h}")
    samples: list[T] = []
    rewards: list[float] = []
    for k, i in enumerate(kept):
        if keep_selected:
            samples.append(selected[i])
            rewards.append(float(selected_rewards[i]))
        samples.extend(variations[k * h:(k + 1) * h])
        rewards.extend(float(r) for r in variation_rewards[k * h:(k + 1) * h])
    return samples, rewards, h + 1 if keep_selected else h


def layer2_advantages(
    rewards: torch.Tensor, *, scale: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Advantages ``[K·H]`` of the variations from their rewards ``[K, H]`` (K kept groups of H
    variations each): group-normalised within each group, flattened group-contiguously."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [groups, variations], got {tuple(rewards.shape)}")
    r = rewards if rewards.is_floating_point() else rewards.float()
    return group_normalized(r, eps=eps, scale=scale).reshape(-1)


def layer_loss(
    logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    layer: int,
    weight: float = 1.0,
    clip_eps: float = 0.2,
    beta: float = 0.001,
    kl_estimator: KLEstimator = "k3",
) -> tuple[torch.Tensor, dict[str, float]]:
    """One layer's GRPO loss times ``weight``; statistics prefixed ``layer{layer}_``.

    ``mask`` selects the tokens this layer trains: the answer for layer 1, the correction
    (not the layer-1 answer it follows, which is context) for layer 2.
    """
    loss, stats = grpo_loss(logp, None, ref_logp, advantages, mask, clip_eps=clip_eps,
                            beta=beta, kl_estimator=kl_estimator)
    return loss * weight, {f"layer{layer}_{k}": v for k, v in stats.items()}


def mgrpo_loss(
    layer1: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor],
    layer2: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor] | None,
    *,
    layer2_weight: float = 1.0,
    clip_eps: float = 0.2,
    beta: float = 0.001,
    kl_estimator: KLEstimator = "k3",
) -> tuple[torch.Tensor, dict[str, float]]:
    """``L = L_GRPO(layer 1) + w · L_GRPO(layer 2)`` (to minimise).

    Each layer is ``(logp [B, T], ref_logp [B, T] | None, advantages [B], mask [B, T])`` and is
    token-averaged over its own tokens, so neither layer's weight depends on how long the
    other layer's sequences are. ``layer2=None`` (no correction survived selection) leaves
    plain GRPO.
    """
    common = {"clip_eps": clip_eps, "beta": beta, "kl_estimator": kl_estimator}
    loss, stats = layer_loss(*layer1, layer=1, **common)
    if layer2 is not None:
        l2, s2 = layer_loss(*layer2, layer=2, weight=layer2_weight, **common)
        loss = loss + l2
        stats.update(s2)
    stats["loss"] = float(loss.item())
    return loss, stats
