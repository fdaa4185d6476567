"""Pure RL objectives on tensors: KL estimators, advantages, SCoRe stages, GRPO.

No I/O, no models: every function takes log-probabilities, masks and rewards and returns a
loss (to minimise) and/or tensors. torch is imported lazily inside the functions.
"""

from scoreops.algorithms.advantages import group_normalized, leave_one_out
from scoreops.algorithms.grpo import LossAggregation, grpo_loss
from scoreops.algorithms.kl import KLEstimator, per_token_kl
from scoreops.algorithms.score import Baseline, shaped_turn2_reward, stage1_loss, stage2_loss

__all__ = [
    "Baseline",
    "KLEstimator",
    "LossAggregation",
    "group_normalized",
    "grpo_loss",
    "leave_one_out",
    "per_token_kl",
    "shaped_turn2_reward",
    "stage1_loss",
    "stage2_loss",
]
