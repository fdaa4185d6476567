"""Single-turn GRPO's training step (see :mod:`scoreops.algorithms.grpo`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scoreops.training.steps import TrainingStep, register
from scoreops.training.steps.backward import accumulate, importance_correction, micro_batch_rows
from scoreops.training.steps.rollouts import MAX_SEQUENCE_TOKENS, rollout_stats, sample_episodes

if TYPE_CHECKING:
    import torch

    from scoreops.data import Item
    from scoreops.rollout import TrainingBatch
    from scoreops.training.context import StepContext

__all__ = ["GRPOAlgorithm"]


@register("grpo")
class GRPOAlgorithm(TrainingStep):
    """Single-turn GRPO: G samples per prompt, group-normalised advantages, clipped ratio."""

    def __init__(self, spec: Any) -> None:
        self.cfg = spec.algorithm.grpo

    def backward(self, ctx: StepContext, step: int, prompts: list[Item]) -> dict[str, float]:
        from scoreops.algorithms.advantages import group_normalized
        from scoreops.algorithms.grpo import grpo_loss
        from scoreops.rollout import build_training_batch

        g = ctx.spec.rollout.samples_per_prompt
        ro = sample_episodes(ctx, [p.question for p in prompts], prompts,
                             turns=1, n=g, seed=ctx.step_seed(step))
        batch = build_training_batch(ctx.tokenizer, ro.episodes, MAX_SEQUENCE_TOKENS)
        adv = group_normalized(ro.reward_tensor(0).reshape(-1, g),
                               scale=self.cfg.scale_rewards).reshape(-1)
        cfg = self.cfg
        tis = importance_correction(ctx, ro.episodes, batch)  # None: weights of 1

        def loss_fn(rows: slice, mb: TrainingBatch, logp: torch.Tensor, ref: torch.Tensor):
            mask = mb.mask(1)
            w = None if tis is None else tis.weights(rows, logp, mask)
            return grpo_loss(logp, None, ref, adv[rows], mask, clip_eps=cfg.clip_epsilon,
                             beta=cfg.beta, kl_estimator=cfg.kl_estimator, pg_weight=w)

        stats = accumulate(ctx, batch, micro_batch_rows(ctx, g), loss_fn)
        if tis is not None:
            stats.update(tis.stats.as_dict())
        return {**stats, **rollout_stats(ro, 1)}
