"""CORY's training step: a pioneer and an observer, two LoRA adapters on one frozen base.

Memory: the base weights exist once and are frozen; each role is a pair of low-rank matrices
(rank ``cory.loraRank``) on the attention projections, so the optimiser holds state for the
adapters only, and the reference model of the KL term is the base itself (adapters switched
off) — no second copy of the model is loaded. The adapters are a small built-in LoRA
(:class:`scoreops.training.lora.DualLoRA`: forward hooks that add ``scale · x Aᵀ Bᵀ`` of the
active adapter to each target projection), not peft: switching the active adapter is one
attribute, and the base model stays an ordinary transformers model that the HF engine
generates with.

Per step (see :mod:`scoreops.algorithms.cory`): the pioneer adapter answers each prompt G times
(turn 1); the observer adapter answers after the question, the pioneer's answer and the
correction instruction (turn 2); both adapters are updated with the cooperative reward. Roles
swap every ``cory.exchangeEvery`` steps.

At the end of the run the adapter that was the pioneer in the last step is merged into the
base weights and the adapters are removed, so ``<output>/final`` is a plain model and the final
evaluation (Acc@t1 and Acc@t2 from one set of weights) measures it. Checkpoints hold the base
and both adapters. vLLM rollouts and multi-process runs are not supported with CORY yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scoreops.rollout.continuation import extend_episodes
from scoreops.training.steps import TrainingStep, register
from scoreops.training.steps.backward import LossTerm, backward_micro_batches, micro_batch_rows
from scoreops.training.steps.rollouts import (
    MAX_SEQUENCE_TOKENS,
    Rollout,
    rollout_stats,
    sample_episodes,
)

if TYPE_CHECKING:
    import torch

    from scoreops.data import Item
    from scoreops.rollout import TrainingBatch
    from scoreops.training.context import StepContext

__all__ = ["ADAPTER_MODULE", "CoryAlgorithm"]

ADAPTER_MODULE = "cory_adapters"
"""The policy's submodule that holds both adapters while training."""


@register("cory")
class CoryAlgorithm(TrainingStep):
    """Two agents (pioneer, observer) as two LoRA adapters on one frozen base."""

    def __init__(self, spec: Any) -> None:
        self.cfg = spec.algorithm.cory
        self.adapters: Any = None

    def stage(self, step: int) -> str:
        from scoreops.algorithms.cory import roles_for_step

        return f"pioneer-{roles_for_step(step, self.cfg.exchange_every)[0]}"

    # -- hooks the loop calls ------------------------------------------------------------------

    def prepare(self, ctx: StepContext) -> None:
        """Freeze the base and attach both adapters (before the optimiser is built)."""
        from scoreops.algorithms.cory import ROLES, roles_for_step
        from scoreops.training.lora import DualLoRA

        if ctx.spec.rollout.engine == "vllm":
            raise NotImplementedError("algorithm cory generates with per-role adapters; use "
                                      "rollout.engine hf")
        if ctx.dist.distributed:
            raise NotImplementedError("algorithm cory runs in one process for now "
                                      "(resources.workers 1, one GPU)")
        if ctx.spec.resources.deepspeed == "zero3":
            raise NotImplementedError("algorithm cory switches adapters on the base weights, "
                                      "which ZeRO-3 partitions; use resources.deepspeed zero2 "
                                      "or none")
        ctx.policy.requires_grad_(False)
        lora = DualLoRA(ctx.policy, ROLES, self.cfg.lora_rank, seed=ctx.spec.seed)
        ctx.policy.add_module(ADAPTER_MODULE, lora)
        lora.active = roles_for_step(0, self.cfg.exchange_every)[0]
        self.adapters = lora

    def finalize(self, ctx: StepContext, step: int) -> None:
        """Merge the last pioneer into the base weights; drop the adapters."""
        from scoreops.algorithms.cory import roles_for_step

        if self.adapters is None:
            return
        pioneer = roles_for_step(max(0, step - 1), self.cfg.exchange_every)[0]
        self.adapters.merge_and_remove(ctx.policy, pioneer)
        delattr(ctx.policy, ADAPTER_MODULE)
        self.adapters = None

    # -- the step ------------------------------------------------------------------------------

    def backward(self, ctx: StepContext, step: int, prompts: list[Item]) -> dict[str, float]:
        import torch

        from scoreops.algorithms.cory import cory_loss, roles_for_step
        from scoreops.rollout import SamplingParams, build_training_batch, sequence_token_logprobs

        if self.adapters is None:
            raise RuntimeError("CoryAlgorithm.prepare(ctx) was not called")
        lora, cfg, ro_spec = self.adapters, self.cfg, ctx.spec.rollout
        pioneer, observer = roles_for_step(step, cfg.exchange_every)
        g = ro_spec.samples_per_prompt
        seed = ctx.step_seed(step)
        with lora.use(pioneer):
            ro = sample_episodes(ctx, [p.question for p in prompts], prompts, turns=1, n=g,
                                 seed=seed)
        params = SamplingParams(max_new_tokens=ro_spec.max_new_tokens,
                                temperature=ro_spec.temperature, top_p=ro_spec.top_p, n=1,
                                seed=ctx.step_seed(step, salt=1))
        with lora.use(observer):
            episodes = extend_episodes(ctx.engine, ro.episodes,
                                       [ro_spec.correction_instruction] * len(ro.episodes),
                                       params)
        rewards = [[r[0], ctx.verifier(ep.turns[1].text, item)]
                   for r, ep, item in zip(ro.rewards, episodes, ro.items, strict=True)]
        both = Rollout(episodes, ro.items, rewards,
                       ro.generated_tokens + sum(len(e.turns[1].completion.token_ids)
                                                 for e in episodes), ro.seconds,
                       device=ro.device)
        r_p, r_o = both.reward_tensor(0), both.reward_tensor(1)
        batch = build_training_batch(ctx.tokenizer, episodes, MAX_SEQUENCE_TOKENS)
        fused = ctx.fused_head
        temp = ro_spec.temperature  # log-probs of the distribution that was sampled

        def loss_fn(rows: slice, mb: TrainingBatch) -> tuple[torch.Tensor, dict[str, float]]:
            with lora.use(pioneer):
                lp_p = sequence_token_logprobs(ctx.trainable, mb, fused_head=fused,
                                               temperature=temp)
            with lora.use(observer):
                lp_o = sequence_token_logprobs(ctx.trainable, mb, fused_head=fused,
                                               temperature=temp)
            ref = None
            if cfg.beta > 0:
                with torch.no_grad(), lora.use(None):
                    ref = sequence_token_logprobs(ctx.trainable, mb, fused_head=fused,
                                               temperature=temp)
            return cory_loss(lp_p, ref, mb.mask(1).to(lp_p.device), lp_o, ref,
                             mb.mask(2).to(lp_o.device), r_p[rows].to(lp_p.device),
                             r_o[rows].to(lp_p.device), group_size=g, beta=cfg.beta)

        stats = backward_micro_batches(ctx, [LossTerm(batch, micro_batch_rows(ctx, g), loss_fn)])
        # what generates between steps (mid-run evaluation): the next step's pioneer
        lora.active = roles_for_step(step + 1, cfg.exchange_every)[0]
        return {**stats, **rollout_stats(both, 2), "pioneer_is_a": float(pioneer == "a")}
