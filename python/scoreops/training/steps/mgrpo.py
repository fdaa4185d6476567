"""MGRPO's training step: GRPO on the question (layer 1), then GRPO on the corrections that
guide phrases elicit from the layer-1 answers (layer 2). See :mod:`scoreops.algorithms.mgrpo`;
the guided corrections themselves are :func:`scoreops.rollout.continuation.guided_corrections`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scoreops.rollout.continuation import guided_corrections
from scoreops.training.steps import TrainingStep, register
from scoreops.training.steps.backward import (
    LossTerm,
    backward_micro_batches,
    micro_batch_rows,
    policy_loss,
)
from scoreops.training.steps.rollouts import MAX_SEQUENCE_TOKENS, Rollout, sample_episodes

if TYPE_CHECKING:
    import torch

    from scoreops.data import Item
    from scoreops.rollout import Episode, TrainingBatch
    from scoreops.training.context import StepContext

__all__ = ["MGRPOAlgorithm"]


def _tokens(episodes: Sequence[Episode], turn: int) -> int:
    return sum(len(ep.turns[turn].completion.token_ids) for ep in episodes)


@dataclass
class _Layer2:
    """Layer 2 of a step: the guided correction of every layer-1 answer and the GRPO groups
    of the kept ones."""

    rewards: list[float]
    """The reward of each layer-1 answer's guided correction."""
    kept: list[int]
    """The layer-1 answers whose correction was accepted (one layer-2 group each)."""
    advantages: torch.Tensor
    generated: int
    """Tokens generated for layer 2 (corrections and variations)."""
    group: list[Episode] = field(default_factory=list)
    """The layer-2 episodes, group-contiguous; their last turn is trained."""
    reward: float = 0.0
    """Mean reward of the kept corrections' variations."""


@register("mgrpo")
class MGRPOAlgorithm(TrainingStep):
    """Both layers in one optimiser step: ``L = L_layer1 + L_layer2`` on the same policy.

    Statistics per step: ``reward_t1`` (layer-1 answers), ``reward_t2`` (the guided
    corrections of every layer-1 answer: how often one correction fixes or keeps it right),
    ``layer2_groups`` (kept correction prompts, i.e. layer-2 GRPO groups that survived
    selection), ``layer2_reward`` (mean reward of their H variations), ``i2c``/``c2i`` and the
    per-layer losses and KL.
    """

    def __init__(self, spec: Any) -> None:
        self.cfg = spec.algorithm.mgrpo
        if self.cfg.variations < 2 and not self.cfg.keep_selected:
            raise ValueError(
                "algorithm.mgrpo.variations must be >= 2 with keepSelected false: layer 2 "
                "normalises advantages within the H variations of a kept correction, got "
                f"{self.cfg.variations}")
        self.group_size = self.cfg.variations + 1 if self.cfg.keep_selected \
            else self.cfg.variations
        """Rows of a layer-2 group: the H variations (and the selected correction)."""

    def backward(self, ctx: StepContext, step: int, prompts: list[Item]) -> dict[str, float]:
        from scoreops.algorithms.advantages import group_normalized
        from scoreops.rollout.vllm import release_generation_memory

        g = ctx.spec.rollout.samples_per_prompt
        # layer 1: GRPO on the question
        ro = sample_episodes(ctx, [p.question for p in prompts], prompts, turns=1, n=g,
                             seed=ctx.step_seed(step))
        r1 = ro.reward_tensor(0)
        adv1 = group_normalized(r1.reshape(-1, g)).reshape(-1)
        t0 = time.perf_counter()
        layer2 = self._layer2(ctx, step, ro)
        seconds = ro.seconds + time.perf_counter() - t0
        release_generation_memory(ctx.engine)  # vLLM frees its KV cache for the update
        stats = self._backward(ctx, ro, adv1, layer2)
        stats.update(_step_stats(stats, r1, layer2,
                                 ro.generated_tokens + layer2.generated, seconds))
        return stats

    def _layer2(self, ctx: StepContext, step: int, ro: Rollout) -> _Layer2:
        """x' = x ⊕ o_i ⊕ guide phrase for every layer-1 answer; keep the prompts whose
        correction is accepted and sample H variations of each."""
        import torch

        from scoreops.algorithms.mgrpo import (
            assemble_layer2_groups,
            draw_guide_phrases,
            layer2_advantages,
            select_corrections,
        )
        from scoreops.rollout import SamplingParams

        cfg, ro_spec, h = self.cfg, ctx.spec.rollout, self.cfg.variations
        guides = draw_guide_phrases(cfg.guide_phrases, len(ro.episodes), seed=ctx.step_seed(step))
        params = SamplingParams(max_new_tokens=ro_spec.max_new_tokens,
                                temperature=ro_spec.temperature, top_p=ro_spec.top_p, n=1,
                                seed=ctx.step_seed(step, salt=1))
        corrections, answers = guided_corrections(ctx.engine, ro.episodes, guides, params,
                                                  form=cfg.guide_form)
        rc = [ctx.verifier(a, item) for a, item in zip(answers, ro.items, strict=True)]
        kept = select_corrections(rc)
        out = _Layer2(rc, kept, torch.zeros(0), _tokens(corrections, -1))
        if not kept:
            return out
        variations, var_answers = guided_corrections(
            ctx.engine, [ro.episodes[i] for i in kept], [guides[i] for i in kept],
            dataclasses.replace(params, n=h, seed=ctx.step_seed(step, salt=2)),
            form=cfg.guide_form)
        var_items = [ro.items[i] for i in kept for _ in range(h)]
        rv = [ctx.verifier(a, item) for a, item in zip(var_answers, var_items, strict=True)]
        out.generated += _tokens(variations, -1)
        out.group, group_rewards, _ = assemble_layer2_groups(
            kept, corrections, rc, variations, rv, variations_per_group=h,
            keep_selected=cfg.keep_selected)
        r2 = torch.tensor(group_rewards, dtype=torch.float32, device=ctx.device)
        out.reward = float(torch.tensor(rv).mean())
        out.advantages = layer2_advantages(r2.reshape(-1, self.group_size))
        return out

    def _backward(self, ctx: StepContext, ro: Rollout, adv1: torch.Tensor,
                  layer2: _Layer2) -> dict[str, float]:
        """Backward both layers' GRPO losses; layer 2 is a term on every rank, also where no
        group survived: each layer is the mean over all ranks' rows of that layer."""
        from scoreops.algorithms.mgrpo import layer_loss
        from scoreops.rollout import build_training_batch

        cfg = self.cfg
        common = {"clip_eps": cfg.clip_epsilon, "beta": cfg.beta,
                  "kl_estimator": cfg.kl_estimator}
        batch1 = build_training_batch(ctx.tokenizer, ro.episodes, MAX_SEQUENCE_TOKENS)

        def loss1(rows: slice, mb: TrainingBatch, logp: torch.Tensor, ref: torch.Tensor):
            return layer_loss(logp, ref, adv1[rows], mb.mask(1), layer=1, **common)

        group, adv2 = layer2.group, layer2.advantages
        batch2 = build_training_batch(ctx.tokenizer, group, MAX_SEQUENCE_TOKENS) \
            if group else None
        train_turn = len(group[0].turns) if group else 1

        def loss2(rows: slice, mb: TrainingBatch, logp: torch.Tensor, ref: torch.Tensor):
            # only the correction is trained; the layer-1 answer (and the phrase) is context
            return layer_loss(logp, ref, adv2[rows], mb.mask(train_turn), layer=2, **common)

        return backward_micro_batches(ctx, [
            LossTerm(batch1, micro_batch_rows(ctx, ctx.spec.rollout.samples_per_prompt),
                     policy_loss(ctx, loss1)),
            LossTerm(batch2, micro_batch_rows(ctx, self.group_size), policy_loss(ctx, loss2)),
        ])


def _step_stats(stats: dict[str, float], r1_tensor: torch.Tensor, layer2: _Layer2,
                generated: int, seconds: float) -> dict[str, float]:
    """The step's statistics beyond the losses (see :class:`MGRPOAlgorithm`)."""
    rc, r1 = layer2.rewards, r1_tensor.tolist()
    n = max(1, len(rc))
    return {
        "loss": stats.get("layer1_loss", 0.0) + stats.get("layer2_loss", 0.0),
        "reward_t1": float(r1_tensor.mean()),
        "reward_t2": sum(rc) / n,
        "i2c": sum(1 for a, b in zip(r1, rc, strict=True) if a < 0.5 <= b) / n,
        "c2i": sum(1 for a, b in zip(r1, rc, strict=True) if b < 0.5 <= a) / n,
        "layer2_groups": float(len(layer2.kept)),
        "layer2_reward": layer2.reward,
        "generated_tokens": float(generated),
        "rollout_seconds": seconds,
        "tokens_per_second": generated / max(seconds, 1e-9),
    }
