"""GRPO's clipped surrogate with a KL penalty to the reference (Shao et al., 2024).

Per token t of sequence i, with ``ρ = exp(logp − old_logp)`` and sequence advantage ``A_i``::

    ℓ_{i,t} = −min(ρ·A_i, clip(ρ, 1−ε, 1+ε)·A_i) + β · k(logp, ref_logp)

``old_logp`` are the log-probs of the policy that sampled the tokens. scoreops makes one
optimiser step per batch of rollouts (one epoch, no mini-batch reuse), so they equal
``logp.detach()`` (``old_logp=None``): ρ ≡ 1 in value, the clip never binds, and the gradient
of the surrogate is exactly the policy gradient ``−A_i·∇log π(y_t)`` per token (ρ's gradient
is ``∇log π`` at ρ = 1), aggregated as below, plus ``β·∇k``. The clip only acts when a caller
passes log-probs of an older policy (several updates per batch). Both ``logp`` and
``old_logp`` are taken at the sampling temperature (see
:func:`scoreops.training.steps.backward.policy_loss`). The mismatch between the trainer and a
rollout engine other than the policy's own forward (vLLM) is a separate factor, ``pg_weight``
(truncated importance sampling, :mod:`scoreops.algorithms.importance`).

Aggregation over tokens:

* ``"token-mean"``: Σ_{i,t} ℓ / Σ_{i,t} 1 over all valid tokens of the batch (DAPO, TRL's
  default): every token weighs the same, long answers are not down-weighted.
* ``"seq-mean"``: mean_i( Σ_t ℓ_{i,t} / |y_i| ) (the GRPO paper): every sequence weighs the same.

With gradient accumulation, ``"token-mean"`` normalises by the tokens of *this* call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from scoreops.algorithms.kl import KLEstimator, per_token_kl

if TYPE_CHECKING:
    import torch

LossAggregation = Literal["token-mean", "seq-mean"]

__all__ = ["LossAggregation", "grpo_loss"]


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    kl_estimator: KLEstimator = "k3",
    loss_agg: LossAggregation = "token-mean",
    pg_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped-ratio GRPO loss (to minimise).

    Args:
        logp: ``[B, T]`` log-probs of the sampled tokens under the current policy (gradient).
        old_logp: ``[B, T]`` log-probs under the sampling policy; ``None`` means on-policy
            (``logp.detach()``).
        ref_logp: ``[B, T]`` reference log-probs; may be ``None`` only when ``beta == 0``.
        advantages: ``[B]`` per sequence (broadcast over its tokens) or ``[B, T]`` per token.
        mask: ``[B, T]`` 1 for completion tokens, 0 for prompt and padding.
        pg_weight: ``[B, T]`` per-token weights of the policy-gradient term (detached; the
            truncated trainer/sampler importance weights of
            :mod:`scoreops.algorithms.importance`); ``None`` weighs every token 1.

    Returns:
        ``(loss, stats)``; stats: ``loss``, ``pg_loss``, ``kl`` (mean per token),
        ``clip_fraction`` (share of tokens whose clipped term was the active one),
        ``ratio_mean``, ``tokens``.
    """
    import torch

    if logp.shape != mask.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and mask {tuple(mask.shape)} differ in shape")
    if loss_agg not in ("token-mean", "seq-mean"):
        raise ValueError(f"unknown loss_agg {loss_agg!r}; expected 'token-mean' or 'seq-mean'")
    m = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype).detach()
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    old = logp.detach() if old_logp is None else old_logp.detach()

    ratio = torch.exp(logp - old)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    pg_tok = -torch.minimum(unclipped, clipped)
    if pg_weight is not None:
        pg_tok = pg_tok * pg_weight.detach().to(pg_tok.dtype)
    kl_tok = _kl_tokens(logp, ref_logp, beta, kl_estimator)
    tok_loss = pg_tok + beta * kl_tok
    loss = _aggregate(tok_loss, m, loss_agg)
    with torch.no_grad():
        n_tok = m.sum().clamp(min=1.0)
        clipped_active = (clipped < unclipped).to(logp.dtype)
        stats = {
            "loss": loss.item(),
            "pg_loss": _aggregate(pg_tok, m, loss_agg).item(),
            "kl": ((kl_tok * m).sum() / n_tok).item(),
            "clip_fraction": ((clipped_active * m).sum() / n_tok).item(),
            "ratio_mean": ((ratio * m).sum() / n_tok).item(),
            "tokens": m.sum().item(),
        }
    return loss, stats


def _kl_tokens(logp: torch.Tensor, ref_logp: torch.Tensor | None, beta: float,
               kl_estimator: KLEstimator) -> torch.Tensor:
    """Per-token KL estimates to the reference ``[B, T]`` (zeros when ``beta == 0``)."""
    import torch

    if beta == 0.0:
        return torch.zeros_like(logp)
    if ref_logp is None:
        raise ValueError("ref_logp is required when beta != 0")
    return per_token_kl(logp, ref_logp, kl_estimator)


def _aggregate(x: torch.Tensor, m: torch.Tensor, loss_agg: LossAggregation) -> torch.Tensor:
    """Per-token values ``x`` over the tokens of mask ``m``, aggregated as ``loss_agg`` says
    (see the module docstring)."""
    if loss_agg == "token-mean":
        return (x * m).sum() / m.sum().clamp(min=1.0)
    per_seq = (x * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)
    return per_seq.mean()
