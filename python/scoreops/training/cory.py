"""CORY's optimiser step: a pioneer and an observer, two LoRA adapters on one frozen base.

Memory: the base weights exist once and are frozen; each role is a pair of low-rank matrices
(rank ``cory.loraRank``) on the attention projections, so the optimiser holds state for the
adapters only, and the reference model of the KL term is the base itself (adapters switched
off) — no second copy of the model is loaded. The adapters are a small built-in LoRA
(:class:`DualLoRA`: forward hooks that add ``scale · x Aᵀ Bᵀ`` of the active adapter to each
target projection), not peft: switching the active adapter is one attribute, and the base
model stays an ordinary transformers model that the HF engine generates with.

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

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from scoreops.training.algorithms import (
    LossTerm,
    _rollout_stats,
    backward_micro_batches,
    micro_batch_rows,
    register,
    sample_episodes,
)

if TYPE_CHECKING:
    import torch

    from scoreops.data import Item
    from scoreops.rollout import TrainingBatch
    from scoreops.training.context import StepContext

__all__ = ["ADAPTER_MODULE", "CoryAlgorithm"]

ADAPTER_MODULE = "cory_adapters"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@functools.cache
def _lora_module_class() -> type:
    import math

    import torch
    from torch import nn

    class DualLoRA(nn.Module):
        """LoRA adapters (one per name) on the ``targets`` linear layers of ``model``.

        ``A`` is initialised like a linear layer, ``B`` at zero, so every adapter starts as the
        identity change. Only the active adapter (:meth:`use`) contributes; ``None`` is the
        plain base model. Registered as a submodule of ``model``, the adapters travel in its
        ``state_dict`` (checkpoints) and its ``parameters()`` (the optimiser).
        """

        def __init__(self, model: nn.Module, names: Sequence[str], rank: int,
                     targets: Sequence[str] = DEFAULT_TARGETS, alpha_over_rank: float = 2.0,
                     seed: int = 0) -> None:
            super().__init__()
            self.names = tuple(names)
            self.active: str | None = None
            self.scale = alpha_over_rank
            self.layers: list[str] = []
            self.A = nn.ParameterDict()
            self.B = nn.ParameterDict()
            self._handles: list[Any] = []
            gen = torch.Generator().manual_seed(seed)
            for path, mod in model.named_modules():
                if not isinstance(mod, nn.Linear) or path.rsplit(".", 1)[-1] not in targets:
                    continue
                r = min(rank, mod.in_features, mod.out_features)
                key = path.replace(".", "__")
                for n in self.names:
                    a = torch.empty(r, mod.in_features, dtype=mod.weight.dtype)
                    bound = 1.0 / math.sqrt(mod.in_features)
                    a.uniform_(-bound, bound, generator=gen)
                    self.A[f"{key}__{n}"] = nn.Parameter(a.to(mod.weight.device))
                    self.B[f"{key}__{n}"] = nn.Parameter(torch.zeros(
                        mod.out_features, r, dtype=mod.weight.dtype, device=mod.weight.device))
                self.layers.append(path)
                self._handles.append(mod.register_forward_hook(self._hook(key)))
            if not self.layers:
                raise ValueError(f"the model has no linear layers named {list(targets)} to adapt")

        def _hook(self, key: str) -> Any:
            def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> Any:
                if self.active is None:
                    return output
                a, b = self.A[f"{key}__{self.active}"], self.B[f"{key}__{self.active}"]
                x = inputs[0].to(a.dtype)
                return output + (x @ a.t() @ b.t() * self.scale).to(output.dtype)

            return hook

        @contextlib.contextmanager
        def use(self, name: str | None) -> Iterator[None]:
            """Run with adapter ``name`` active (``None``: the base model)."""
            if name is not None and name not in self.names:
                raise KeyError(f"no adapter {name!r}; have {list(self.names)}")
            before, self.active = self.active, name
            try:
                yield
            finally:
                self.active = before

        @torch.no_grad()
        def merge_and_remove(self, model: nn.Module, name: str) -> None:
            """Add adapter ``name`` into the base weights; remove all adapters from ``model``."""
            for path in self.layers:
                mod = model.get_submodule(path)
                key = path.replace(".", "__")
                a, b = self.A[f"{key}__{name}"], self.B[f"{key}__{name}"]
                mod.weight.add_((b @ a * self.scale).to(mod.weight.dtype))
            for h in self._handles:
                h.remove()
            self._handles.clear()
            self.active = None

    return DualLoRA


def __getattr__(name: str) -> Any:  # DualLoRA is built on first use: torch stays lazy
    if name == "DualLoRA":
        return _lora_module_class()
    raise AttributeError(name)


@register("cory")
class CoryAlgorithm:
    name = "cory"

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
        lora = _lora_module_class()(ctx.policy, ROLES, self.cfg.lora_rank, seed=ctx.spec.seed)
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
        from scoreops.training.algorithms import MAX_SEQUENCE_TOKENS, Rollout
        from scoreops.training.mgrpo import extend_episodes

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
        return {**stats, **_rollout_stats(both, 2), "pioneer_is_a": float(pioneer == "a")}
