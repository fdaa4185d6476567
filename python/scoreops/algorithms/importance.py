"""Truncated importance sampling (TIS): the correction of the trainer/sampler mismatch.

The rollout engine samples token ``y_t`` from its own distribution ``μ`` (vLLM: other kernels,
other precision, its own sampler), while the trainer differentiates ``π``, the same weights
evaluated by the training forward pass. The policy gradient ``E_π[A·∇log π]`` estimated on
``μ``'s samples is biased by the difference. The per-token importance ratio
``ρ_t = π(y_t|·) / μ(y_t|·)`` removes the bias; truncated at ``C`` it keeps the variance
bounded (a token ``μ`` drew that ``π`` finds much likelier gets weight ``C``, not ``ρ``)::

    w_t = min(exp(log π(y_t) − log μ(y_t)), C)       detached: a weight, not a gradient path
    policy-gradient term of token t:  −A · w_t · ∇log π(y_t)

as TRL's ``vllm_importance_sampling_correction`` (cap ``vllm_importance_sampling_cap``) and
verl's token-level rollout correction, after Yao et al., 2025 ("Your efficient RL framework
secretly brings you off-policy RL training"). The truncation is one-sided: ``ρ < 1`` is kept
as it is (a token the trainer finds less likely than the sampler did counts less). Only the
policy-gradient term is weighted; the KL to the reference is not (as TRL). When the two
distributions agree (``log μ = log π``), every weight is exactly 1 and the gradient is the
uncorrected one.

Both log-probs must be of the same distribution: the trainer's at the sampling temperature
(:func:`scoreops.training.steps.backward.policy_loss`), the sampler's as the engine drew the
token (vLLM's ``processed_logprobs``: after the temperature and top-p; with top-p < 1 the
sampler renormalises over the nucleus, so ``ρ = π_T(y)/μ(y) = Z_nucleus ≤ 1`` for a kept
token, which the weight then corrects for too).

Statistics (per step, over the tokens the weights apply to): ``is_ratio_mean``,
``is_ratio_max``, ``is_ratio_min`` (of ``ρ`` before truncation), ``is_clipped_fraction``
(the share of tokens with ``ρ > C``) and ``is_logp_gap_mean`` (mean ``|log π − log μ|``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

ImportanceMode = Literal["none", "truncated"]

__all__ = ["ImportanceMode", "ImportanceStats", "TruncatedImportance", "truncated_is_weights"]

#: log-ratios are clamped here before ``exp`` (float32 overflows near 88); above any cap
_MAX_LOG_RATIO = 60.0


def truncated_is_weights(logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                         cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, ρ)``: the truncated weights ``min(ρ, cap)`` and the ratios ``ρ = exp(logp −
    sampler_logp)``, both ``[B, T]``, detached, 1 outside ``mask``.

    Args:
        logp: the trainer's log-probs of the sampled tokens (gradient ignored).
        sampler_logp: the engine's log-probs of the same tokens.
        mask: ``[B, T]`` the tokens to weight (bool or 0/1).
        cap: ``C >= 1``.
    """
    import torch

    if cap < 1.0:
        raise ValueError(f"the importance-sampling cap must be >= 1, got {cap}")
    if logp.shape != sampler_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"logp {tuple(logp.shape)}, sampler_logp {tuple(sampler_logp.shape)} "
                         f"and mask {tuple(mask.shape)} must share one shape")
    log_ratio = (logp.detach().float() - sampler_logp.detach().float().to(logp.device))
    log_ratio = torch.where(mask.bool(), log_ratio.clamp(max=_MAX_LOG_RATIO),
                            torch.zeros_like(log_ratio))
    ratio = torch.exp(log_ratio)
    return ratio.clamp(max=cap).to(logp.dtype), ratio


class ImportanceStats:
    """The ratio statistics of a step, accumulated over its micro-batches."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.tokens = 0
        self.ratio_sum = 0.0
        self.ratio_max = -math.inf
        self.ratio_min = math.inf
        self.clipped = 0
        self.gap_sum = 0.0

    def add(self, ratio: torch.Tensor, mask: torch.Tensor) -> None:
        m = mask.bool()
        n = int(m.sum())
        if n == 0:
            return
        r = ratio[m].double()
        self.tokens += n
        self.ratio_sum += float(r.sum())
        self.ratio_max = max(self.ratio_max, float(r.max()))
        self.ratio_min = min(self.ratio_min, float(r.min()))
        self.clipped += int((r > self.cap).sum())
        self.gap_sum += float(r.log().abs().sum())

    def as_dict(self) -> dict[str, float]:
        if self.tokens == 0:
            return {}
        return {
            "is_ratio_mean": self.ratio_sum / self.tokens,
            "is_ratio_max": self.ratio_max,
            "is_ratio_min": self.ratio_min,
            "is_clipped_fraction": self.clipped / self.tokens,
            "is_logp_gap_mean": self.gap_sum / self.tokens,
        }


class TruncatedImportance:
    """TIS over one training batch: the sampler's log-probs ``[B, T]`` of its rows (aligned
    with the batch's token positions, see
    :func:`scoreops.rollout.episodes.sampling_token_logprobs`), the cap, and the statistics
    of every micro-batch weighted so far."""

    def __init__(self, sampler_logp: torch.Tensor, cap: float) -> None:
        if cap < 1.0:
            raise ValueError(f"the importance-sampling cap must be >= 1, got {cap}")
        self.sampler_logp = sampler_logp
        self.cap = cap
        self.stats = ImportanceStats(cap)

    def weights(self, rows: slice, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The weights ``[b, T]`` of the micro-batch of ``rows`` (its trainer log-probs
        ``logp`` and the tokens ``mask`` of the policy-gradient term); records the ratios."""
        w, ratio = truncated_is_weights(logp, self.sampler_logp[rows], mask, self.cap)
        self.stats.add(ratio, mask)
        return w
