"""SCoRe's training step: two-turn episodes, stage I then stage II (see
:mod:`scoreops.algorithms.score`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scoreops.training.steps import TrainingStep, register
from scoreops.training.steps.backward import (
    LossTerm,
    backward_micro_batches,
    importance_correction,
    micro_batch_rows,
    policy_loss,
)
from scoreops.training.steps.rollouts import MAX_SEQUENCE_TOKENS, rollout_stats, sample_episodes

if TYPE_CHECKING:
    import torch

    from scoreops.data import Item
    from scoreops.rollout import TrainingBatch
    from scoreops.training.context import StepContext

__all__ = ["ScoreAlgorithm"]


@register("score")
class ScoreAlgorithm(TrainingStep):
    """SCoRe stage I for ``stage1Steps`` steps, then stage II (see scoreops.algorithms.score)."""

    def __init__(self, spec: Any) -> None:
        self.cfg = spec.algorithm.score

    def stage(self, step: int) -> str:
        return "stage1" if step < self.cfg.stage1_steps else "stage2"

    def backward(self, ctx: StepContext, step: int, prompts: list[Item]) -> dict[str, float]:
        from scoreops.algorithms.score import stage1_loss, stage2_loss
        from scoreops.rollout import build_training_batch

        g = ctx.spec.rollout.samples_per_prompt
        turns = ctx.spec.rollout.turns
        ro = sample_episodes(ctx, [p.question for p in prompts], prompts,
                             turns=turns, n=g, seed=ctx.step_seed(step))
        batch = build_training_batch(ctx.tokenizer, ro.episodes, MAX_SEQUENCE_TOKENS)
        r1, r2 = ro.reward_tensor(0), ro.reward_tensor(turns - 1)
        cfg, stage = self.cfg, self.stage(step)
        tis = importance_correction(ctx, ro.episodes, batch)  # None: weights of 1

        def loss_fn(rows: slice, mb: TrainingBatch, logp: torch.Tensor, ref: torch.Tensor):
            m1, m2 = mb.mask(1), mb.mask(turns)
            w = None if tis is None else tis.weights(rows, logp, m1 | m2)
            parts: dict[str, torch.Tensor] = {}
            if stage == "stage1":
                loss, st = stage1_loss(
                    logp, ref, logp, ref, m1, m2, r2[rows],
                    beta1=cfg.beta1, beta2=cfg.beta2, baseline=cfg.baseline,
                    kl_estimator=cfg.kl_estimator, group_size=g, r1=r1[rows],
                    term_scale=cfg.term_scale, terms_out=parts, pg_weight=w,
                )
            else:
                loss, st = stage2_loss(
                    logp, ref, logp, ref, m1, m2, r1[rows], r2[rows],
                    alpha=cfg.alpha, beta1=cfg.beta1, baseline=cfg.baseline,
                    kl_estimator=cfg.kl_estimator, group_size=g,
                    bonus_on_turn1=cfg.bonus_on_turn1, term_scale=cfg.term_scale,
                    terms_out=parts, pg_weight=w,
                )
            return loss, st, parts

        # grad_norm_turn1 / grad_norm_turn2 (cfg.term_grad_norms): the norms of the gradients
        # of the turn-1 and turn-2 parts of this step's loss (policy gradient + KL of each
        # turn's tokens), before clipping; see backward_micro_batches
        stats = backward_micro_batches(
            ctx, [LossTerm(batch, micro_batch_rows(ctx, g), policy_loss(ctx, loss_fn))],
            part_grad_norms=cfg.term_grad_norms)
        if tis is not None:
            stats.update(tis.stats.as_dict())
        return {**stats, **rollout_stats(ro, turns)}
