"""Per-token estimators of KL(π ‖ π_ref) from samples of π.

With tokens sampled from the policy π and ``log_r = log π_ref(y_t) − log π(y_t)``
(Schulman, "Approximating KL divergence", 2020):

* ``k1 = −log_r``                    unbiased, high variance, can be negative;
* ``k2 = ½·log_r²``                  biased, low variance, always ≥ 0;
* ``k3 = exp(log_r) − log_r − 1``    unbiased, low variance, always ≥ 0 (GRPO's choice).

All three have expectation ≈ KL(π ‖ π_ref) for small divergences. Summed over the tokens of a
sequence they estimate the KL between the sequence distributions (the chain rule of KL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

KLEstimator = Literal["k1", "k2", "k3"]

__all__ = ["KLEstimator", "per_token_kl"]


def per_token_kl(
    logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k3"
) -> torch.Tensor:
    """Per-token KL estimate, same shape as ``logp``.

    Args:
        logp: log π(y_t | y_<t) of the sampled tokens under the policy (carries the gradient).
        ref_logp: the same under the frozen reference model (no gradient is taken through it).
        estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (see the module docstring).

    Positions outside the sequence are not masked here: multiply by a mask before reducing.
    """
    import torch

    log_r = ref_logp.detach() - logp
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r.pow(2)
    if estimator == "k3":
        # exp(x) − x − 1 loses precision near 0 as written; expm1 keeps it.
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of 'k1', 'k2', 'k3'")
