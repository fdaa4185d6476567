"""One optimiser step of each algorithm: rollouts → rewards → loss → backward.

Each algorithm is a class with ``stage(step)`` and ``backward(ctx, step, prompts)``; the loop
does everything else (zeroing, clipping, the optimiser and scheduler step, checkpoints).
``backward`` accumulates gradients over micro-batches and returns scalar statistics of the
step (``reward_t1``, ``reward_t2``, ``loss``, ``kl_turn1``, ...). New algorithms register
with :func:`register`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from scoreops.data import Item
    from scoreops.rollout import Episode, TrainingBatch
    from scoreops.training.context import StepContext

MAX_SEQUENCE_TOKENS = 8192


class StepAlgorithm(Protocol):
    name: str

    def stage(self, step: int) -> str: ...

    def backward(self, ctx: StepContext, step: int, prompts: list[Item]) -> dict[str, float]: ...


_REGISTRY: dict[str, Callable[[Any], StepAlgorithm]] = {}


def register(name: str) -> Callable[[Callable[[Any], StepAlgorithm]], Callable[[Any], StepAlgorithm]]:
    def deco(factory: Callable[[Any], StepAlgorithm]) -> Callable[[Any], StepAlgorithm]:
        _REGISTRY[name] = factory
        return factory

    return deco


def make_algorithm(spec: Any) -> StepAlgorithm:
    """The step algorithm for ``spec.algorithm`` (a ScoreRunSpec)."""
    name = spec.algorithm.name
    if name not in _REGISTRY:
        import importlib

        try:  # algorithms beyond SCoRe/GRPO live in scoreops.training.<name> and register there
            importlib.import_module(f"scoreops.training.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"scoreops.training.{name}":
                raise
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise NotImplementedError(f"algorithm {name!r} has no trainer here; available: {known}")
    return _REGISTRY[name](spec)


# --- shared pieces ----------------------------------------------------------------------------


@dataclass
class Rollout:
    """Episodes of a step with their per-turn rewards (``rewards[i][t]``)."""

    episodes: list[Episode]
    items: list[Item]
    rewards: list[list[float]]
    generated_tokens: int
    seconds: float

    def reward_tensor(self, turn: int) -> torch.Tensor:
        import torch

        return torch.tensor([r[turn] for r in self.rewards], dtype=torch.float32)


def sample_episodes(
    ctx: StepContext,
    questions: Sequence[str],
    items: Sequence[Item],
    *,
    turns: int,
    n: int,
    seed: int,
    instruction: str | None = None,
    temperature: float | None = None,
) -> Rollout:
    """``n`` ``turns``-turn episodes per question, each turn scored by the run's verifier."""
    from scoreops.rollout import SamplingParams, run_episodes

    ro = ctx.spec.rollout
    params = SamplingParams(
        max_new_tokens=ro.max_new_tokens,
        temperature=ro.temperature if temperature is None else temperature,
        top_p=ro.top_p,
        n=n,
        seed=seed,
    )
    start = time.perf_counter()
    episodes = run_episodes(
        ctx.engine,
        list(questions),
        instruction=instruction or ro.correction_instruction,
        turns=turns,
        params=params,
        system_prompt=ro.system_prompt,
    )
    seconds = time.perf_counter() - start
    ep_items = [items[ep.question_index] for ep in episodes]
    rewards = [[ctx.verifier(t.text, item) for t in ep.turns] for ep, item in zip(episodes, ep_items, strict=True)]
    tokens = sum(len(t.completion.token_ids) for ep in episodes for t in ep.turns)
    return Rollout(list(episodes), ep_items, rewards, tokens, seconds)


def micro_batch_rows(ctx: StepContext, group_size: int) -> int:
    """Rows per forward/backward: ``optim.microBatchSize`` rounded to whole groups, because
    the baselines are computed inside a group of samples of one prompt."""
    size = ctx.spec.optim.micro_batch_size
    return max(group_size, (size // group_size) * group_size)


def accumulate(
    ctx: StepContext,
    batch: TrainingBatch,
    rows_per_micro: int,
    loss_fn: Callable[[slice, TrainingBatch, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]],
) -> dict[str, float]:
    """Backward ``loss_fn`` over micro-batches so gradients equal the full-batch mean's.

    ``loss_fn(rows, micro_batch, logp, ref_logp)`` returns the micro-batch's mean loss and its
    statistics; both are re-weighted by the micro-batch's share of the rows.
    """
    import torch

    from scoreops.rollout import sequence_token_logprobs
    from scoreops.rollout.vllm import release_generation_memory

    release_generation_memory(ctx.engine)  # a colocated vLLM engine frees its KV cache
    total = len(batch)
    stats: dict[str, float] = {}
    for start in range(0, total, rows_per_micro):
        rows = slice(start, min(total, start + rows_per_micro))
        mb = batch.select(rows)
        logp = sequence_token_logprobs(ctx.trainable, mb)
        if ctx.reference is not None:
            with torch.no_grad():
                ref = sequence_token_logprobs(ctx.reference, mb)
        else:
            ref = logp.detach()
        loss, st = loss_fn(rows, mb, logp, ref)
        share = len(mb) / total
        (loss * share).backward()
        for k, v in st.items():
            stats[k] = stats.get(k, 0.0) + v * share
    return stats


def _rollout_stats(ro: Rollout, turns: int) -> dict[str, float]:
    out = {
        "generated_tokens": float(ro.generated_tokens),
        "rollout_seconds": ro.seconds,
        "tokens_per_second": ro.generated_tokens / max(ro.seconds, 1e-9),
    }
    for t in range(turns):
        vals = [r[t] for r in ro.rewards]
        out[f"reward_t{t + 1}"] = sum(vals) / max(1, len(vals))
    if turns >= 2:
        n = max(1, len(ro.rewards))
        out["i2c"] = sum(1 for r in ro.rewards if r[0] < 0.5 <= r[1]) / n
        out["c2i"] = sum(1 for r in ro.rewards if r[1] < 0.5 <= r[0]) / n
    return out


# --- SCoRe ------------------------------------------------------------------------------------


@register("score")
class ScoreAlgorithm:
    """SCoRe stage I for ``stage1Steps`` steps, then stage II (see scoreops.algorithms.score)."""

    name = "score"

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

        def loss_fn(rows: slice, mb: TrainingBatch, logp: torch.Tensor, ref: torch.Tensor):
            m1, m2 = mb.mask(1), mb.mask(turns)
            if stage == "stage1":
                return stage1_loss(
                    logp, ref, logp, ref, m1, m2, r2[rows],
                    beta1=cfg.beta1, beta2=cfg.beta2, baseline=cfg.baseline,
                    kl_estimator=cfg.kl_estimator, group_size=g, r1=r1[rows],
                )
            return stage2_loss(
                logp, ref, logp, ref, m1, m2, r1[rows], r2[rows],
                alpha=cfg.alpha, beta1=cfg.beta1, baseline=cfg.baseline,
                kl_estimator=cfg.kl_estimator, group_size=g, bonus_on_turn1=cfg.bonus_on_turn1,
            )

        stats = accumulate(ctx, batch, micro_batch_rows(ctx, g), loss_fn)
        return {**stats, **_rollout_stats(ro, turns)}


# --- GRPO -------------------------------------------------------------------------------------


@register("grpo")
class GRPOAlgorithm:
    """Single-turn GRPO: G samples per prompt, group-normalised advantages, clipped ratio."""

    name = "grpo"

    def __init__(self, spec: Any) -> None:
        self.cfg = spec.algorithm.grpo

    def stage(self, step: int) -> str:
        return "grpo"

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

        def loss_fn(rows: slice, mb: TrainingBatch, logp: torch.Tensor, ref: torch.Tensor):
            return grpo_loss(logp, None, ref, adv[rows], mb.mask(1), clip_eps=cfg.clip_epsilon,
                             beta=cfg.beta, kl_estimator=cfg.kl_estimator)

        stats = accumulate(ctx, batch, micro_batch_rows(ctx, g), loss_fn)
        return {**stats, **_rollout_stats(ro, 1)}
