"""Held-out evaluation during and after training: greedy, two turns, correction metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scoreops.data import Item
    from scoreops.metrics import CorrectionMetrics
    from scoreops.rewards import Verifier
    from scoreops.rollout import RolloutEngine


@dataclass
class EvalResult:
    metrics: CorrectionMetrics
    records: list[dict[str, Any]]


def evaluate_items(
    engine: RolloutEngine,
    items: list[Item],
    verifier: Verifier,
    *,
    instruction: str,
    turns: int = 2,
    max_new_tokens: int,
    system_prompt: str | None = None,
) -> EvalResult:
    """Greedy ``turns``-turn episodes on ``items``; per-sample records and the metrics.

    Each record holds the question, the gold answer, every turn's output, its extracted final
    answer and whether it was judged correct — the data behind Acc@t1, Acc@t2, Δi→c, Δc→i.
    """
    from scoreops.metrics import correction_metrics
    from scoreops.rewards import extract_final_answer
    from scoreops.rollout import SamplingParams, run_episodes

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, n=1, seed=0)
    episodes = run_episodes(
        engine, [it.question for it in items], instruction=instruction, turns=max(1, turns),
        params=params, system_prompt=system_prompt,
    )
    records, correct = [], []
    for ep in episodes:
        item = items[ep.question_index]
        per_turn = [bool(verifier(t.text, item) >= 0.5) for t in ep.turns]
        correct.append(per_turn)
        records.append({
            "id": item.id,
            "question": item.question,
            "answer": item.answer,
            "outputs": [t.text for t in ep.turns],
            "extracted": [extract_final_answer(t.text) for t in ep.turns],
            "correct": per_turn,
        })
    return EvalResult(correction_metrics(correct), records)
