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

__all__ = ["MAX_SEQUENCE_TOKENS", "Rollout", "rollout_stats", "sample_episodes", "sleep_wake",
           "step_seconds"]

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
    :func:`~scoreops.rollout.continuation.oracle_message` of the previous turn's verdict
    (extrinsic feedback, ``rollout.oracle``'s messages)."""
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
        episodes = oracle_turns(ctx.engine, episodes, ep_items, ctx.verifier, turns, params,
                                right=ro.oracle.correct, wrong=ro.oracle.incorrect,
                                stop_when_correct=ro.oracle.stop_when_correct)
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


def sleep_wake(engine: Any) -> dict[str, float]:
    """The engine's cumulative sleep and wake seconds by phase (``sleep``, ``wake_weights``,
    ``wake_kv_cache``; see :class:`scoreops.rollout.vllm.VLLMEngine`), empty for an engine
    that never sleeps."""
    return dict(getattr(engine, "sleep_wake_seconds", None) or {})


def step_seconds(stats: dict[str, float], until_sync: float, sync: float,
                 before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """A step's wall time split into parts that add up to it: ``generate_seconds`` (the
    rollout, ``rollout_seconds``, less waking the KV cache), ``sync_seconds`` (pushing the
    weights into the rollout engine, less waking its weights), ``sleep_wake_seconds``
    (releasing the engine's memory before training and waking it again) and
    ``train_seconds`` (the rest: rewards, forward and backward passes, the optimiser step).
    ``until_sync``: seconds from the step's start to the end of the optimiser step; ``sync``:
    of the weight sync; ``before``/``after``: :func:`sleep_wake` at the step's start and end.
    Empty for a step that does not report ``rollout_seconds``."""
    if "rollout_seconds" not in stats:
        return {}
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    generate = float(stats["rollout_seconds"])
    return {
        "generate_seconds": generate - delta.get("wake_kv_cache", 0.0),
        "sync_seconds": sync - delta.get("wake_weights", 0.0),
        "sleep_wake_seconds": sum(delta.values(), 0.0),
        "train_seconds": until_sync - generate - delta.get("sleep", 0.0),
    }
