"""The rollout half of a training step: sample scored episodes, and the statistics of them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from scoreops.data import Item
    from scoreops.rollout import Episode
    from scoreops.training.context import StepContext

__all__ = ["MAX_SEQUENCE_TOKENS", "Rollout", "rollout_stats", "sample_episodes"]

MAX_SEQUENCE_TOKENS = 8192
"""The longest packed episode (all turns) a training batch holds."""


@dataclass
class Rollout:
    """Episodes of a step with their per-turn rewards (``rewards[i][t]``)."""

    episodes: list[Episode]
    items: list[Item]
    rewards: list[list[float]]
    generated_tokens: int
    seconds: float
    device: Any = None
    """Where :meth:`reward_tensor` puts the rewards: the policy's device (``ctx.device``), so
    that rewards, advantages and the losses built from them meet the log-probs there."""

    def reward_tensor(self, turn: int) -> torch.Tensor:
        import torch

        return torch.tensor([r[turn] for r in self.rewards], dtype=torch.float32,
                            device=self.device)


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
    """``n`` ``turns``-turn episodes per question, each turn scored by the run's verifier.

    With ``rollout.feedback: oracle`` every later turn's message is
    :func:`~scoreops.rollout.continuation.oracle_message` of the previous turn's verdict (extrinsic feedback)."""
    from scoreops.rollout import SamplingParams, run_episodes
    from scoreops.rollout.continuation import oracle_turns

    ro = ctx.spec.rollout
    params = SamplingParams(
        max_new_tokens=ro.max_new_tokens,
        temperature=ro.temperature if temperature is None else temperature,
        top_p=ro.top_p,
        n=n,
        seed=seed,
    )
    start = time.perf_counter()
    oracle = ro.feedback == "oracle"
    episodes = run_episodes(
        ctx.engine,
        list(questions),
        instruction=instruction or ro.correction_instruction,
        turns=1 if oracle else turns,
        params=params,
        system_prompt=ro.system_prompt,
    )
    ep_items = [items[ep.question_index] for ep in episodes]
    if oracle:
        episodes = oracle_turns(ctx.engine, episodes, ep_items, ctx.verifier,
                                instruction or ro.correction_instruction, turns, params)
    seconds = time.perf_counter() - start
    rewards = [[ctx.verifier(t.text, item) for t in ep.turns] for ep, item in zip(episodes, ep_items, strict=True)]
    tokens = sum(len(t.completion.token_ids) for ep in episodes for t in ep.turns)
    return Rollout(list(episodes), ep_items, rewards, tokens, seconds, device=ctx.device)


def rollout_stats(ro: Rollout, turns: int) -> dict[str, float]:
    """The statistics every step logs about its rollout: tokens, speed, the mean reward of
    each turn and, with two turns or more, the fractions fixed (``i2c``) and broken (``c2i``)
    by the second attempt."""
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
