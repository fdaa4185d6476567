"""STaR's training step: sample with the round's starting model, keep verified answers,
fine-tune the policy on them with cross-entropy. See :mod:`scoreops.algorithms.star`.

A round is ``star.stepsPerRound`` optimiser steps. Solutions are always sampled from the model
as it was when the round began — the base model in round 1 — never from the weights being
fine-tuned, so one round here is exactly STaR's "generate with M, filter, fine-tune on the
kept set" with the generation spread over the steps that consume it (each step samples the
prompts it trains on). With ``externalCorrection`` episodes have two turns (attempt,
correction instruction, attempt) and correct revisions are kept too.

Resuming inside round 1 is exact (the sampler is the base model again). Inside a later round
the sampler is re-taken from the resumed weights, which is where that round's start would
have been only if the checkpoint falls on the round boundary (checkpoint every
``stepsPerRound`` steps for exact resumes). Unlike the original STaR, later rounds keep
fine-tuning the current weights rather than restarting from the base.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from scoreops.training.steps import TrainingStep, register
from scoreops.training.steps.backward import (
    LossTerm,
    backward_micro_batches,
    micro_batch_rows,
    policy_loss,
)
from scoreops.training.steps.rollouts import MAX_SEQUENCE_TOKENS, rollout_stats, sample_episodes

if TYPE_CHECKING:
    import torch

    from scoreops.data import Item
    from scoreops.rollout import RolloutEngine, TrainingBatch
    from scoreops.training.context import StepContext

__all__ = ["STaRAlgorithm"]


@register("star")
class STaRAlgorithm(TrainingStep):
    """STaR rounds: sample with the round's starting model, fine-tune on the verified
    answers (see the module docstring)."""

    def __init__(self, spec: Any) -> None:
        self.cfg = spec.algorithm.star
        self._sampler: torch.nn.Module | None = None
        self._sampler_engine: RolloutEngine | None = None
        self._sampler_round: int | None = None

    def round_of(self, step: int) -> int:
        return step // self.cfg.steps_per_round

    def stage(self, step: int) -> str:
        return f"round{self.round_of(step) + 1}"

    def _engine_for_round(self, ctx: StepContext, rnd: int) -> RolloutEngine:
        """An engine that generates with the weights the policy had when round ``rnd`` began."""
        if self._sampler is None:
            from scoreops.models import load_model

            dtype = ctx.rollout_dtype or next(ctx.policy.parameters()).dtype
            self._sampler, _ = load_model(ctx.spec.model.uri, dtype=dtype, device=ctx.device)
            self._sampler.eval().requires_grad_(False)
            self._sampler_round = 0
        if self._sampler_round != rnd:
            # a later round (or a resume inside one): snapshot the policy (full weights on every
            # rank, also where ZeRO-3 partitions them; all ranks change round at the same step)
            assert ctx.backend is not None  # set by the loop before any step
            with ctx.backend.gathered_state_dict() as state:
                self._sampler.load_state_dict(state)
            self._sampler_round = rnd
        if ctx.spec.rollout.engine == "vllm":
            # one colocated engine: load the round's weights; the loop pushes the policy back
            ctx.engine.sync_weights(self._sampler)
            return ctx.engine
        if self._sampler_engine is None:
            from scoreops.rollout import HFEngine

            self._sampler_engine = HFEngine(self._sampler, ctx.tokenizer, max_batch_size=64)
        return self._sampler_engine

    def backward(self, ctx: StepContext, step: int, prompts: list[Item]) -> dict[str, float]:
        import torch

        from scoreops.algorithms.star import select_verified, sft_loss
        from scoreops.rollout import build_training_batch
        from scoreops.rollout.vllm import release_generation_memory

        cfg = self.cfg
        turns = max(2, ctx.spec.rollout.turns) if cfg.external_correction else 1
        g = ctx.spec.rollout.samples_per_prompt
        sampler_ctx = dataclasses.replace(ctx, engine=self._engine_for_round(ctx, self.round_of(step)))
        ro = sample_episodes(sampler_ctx, [p.question for p in prompts], prompts, turns=turns,
                             n=g, seed=ctx.step_seed(step))
        keep = select_verified(ro.rewards, external_correction=cfg.external_correction)
        release_generation_memory(sampler_ctx.engine)
        batch = None
        turn_of = torch.tensor([t for _, t in keep], dtype=torch.long)
        if keep:
            batch = build_training_batch(ctx.tokenizer, [ro.episodes[e] for e, _ in keep],
                                         MAX_SEQUENCE_TOKENS)

        def loss_fn(rows: slice, mb: TrainingBatch, logp: torch.Tensor, ref: torch.Tensor):
            return sft_loss(logp, mb.turn_mask == turn_of[rows].unsqueeze(1).to(
                mb.turn_mask.device))

        # one term on every rank, also one that kept nothing: the mean is over all ranks' rows
        stats = {"loss": 0.0, "nll": 0.0, "tokens": 0.0}
        stats.update(backward_micro_batches(
            ctx, [LossTerm(batch, micro_batch_rows(ctx, 1),
                           policy_loss(ctx, loss_fn, temperature=1.0))]))
        n_episodes = max(1, len(ro.episodes))
        stats.update(rollout_stats(ro, turns))
        stats["kept"] = float(len(keep))
        stats["kept_first_attempts"] = float(sum(1 for _, t in keep if t == 1)) / n_episodes
        stats["kept_revisions"] = float(sum(1 for _, t in keep if t > 1)) / n_episodes
        return stats
