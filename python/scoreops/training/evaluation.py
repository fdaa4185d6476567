"""Held-out evaluation during and after training: greedy, two turns, correction metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
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


def _answer_of(text: str) -> str | None:
    """A turn's answer for the record and the change rates: the extracted final answer, else
    the whole output, stripped (what the ``exact`` verifier judges: a bare "False" has no
    extractable number or "answer is"); None for an empty output."""
    from scoreops.rewards import extract_final_answer

    answer = extract_final_answer(text)
    if answer is None:
        answer = " ".join(text.split()) or None
    return answer


def evaluate_items(
    engine: RolloutEngine,
    items: list[Item],
    verifier: Verifier,
    *,
    instruction: str,
    turns: int = 2,
    max_new_tokens: int,
    system_prompt: str | None = None,
    guide_phrases: Sequence[str] | None = None,
    guide_form: str = "same-turn",
    feedback: str = "none",
    oracle: Any = None,
    samples: int = 1,
    temperature: float = 0.0,
    seed: int = 0,
) -> EvalResult:
    """``turns``-turn episodes on ``items``; per-sample records and the metrics.

    Greedy by default; with ``temperature > 0`` each item gets ``samples`` episodes sampled
    at that temperature (seeded by ``seed``), each a record of its own (the metrics are then
    over item × sample).

    The second attempt follows ``instruction`` (a new user turn), or with ``guide_phrases``
    a guide phrase (MGRPO's training distribution: phrase ``i % len`` for item i, in
    ``guide_form``, see :func:`scoreops.rollout.continuation.guided_corrections`; two turns), or
    with ``feedback="oracle"`` the verifier's verdict (``oracle``: an object with ``correct``,
    ``incorrect`` and ``stop_when_correct``, as ``rollout.oracle``; extrinsic).

    Each record holds the question, the gold answer, every turn's output (for a guided
    correction, what the model wrote after the guide phrase: the text judged), the final
    answer extracted from each turn and whether it was judged correct — the data behind Acc@t1, Acc@t2, Δi→c, Δc→i and the change rates.
    """
    from scoreops.api.common import ORACLE_RIGHT, ORACLE_WRONG
    from scoreops.metrics import correction_metrics
    from scoreops.rollout import SamplingParams, run_episodes
    from scoreops.rollout.continuation import guided_corrections, oracle_turns

    sampled = temperature > 0.0
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature if sampled
                            else 0.0, n=max(1, samples) if sampled else 1, seed=seed)
    special = guide_phrases is not None or feedback == "oracle"
    episodes = run_episodes(
        engine, [it.question for it in items], instruction=instruction,
        turns=1 if special else max(1, turns), params=params, system_prompt=system_prompt,
    )
    texts = [[t.text for t in ep.turns] for ep in episodes]
    if guide_phrases is not None and turns >= 2:
        phrases = [guide_phrases[ep.question_index % len(guide_phrases)] for ep in episodes]
        _, answers = guided_corrections(engine, episodes, phrases,
                                        dataclasses.replace(params, n=1), form=guide_form)
        texts = [[*tx, a] for tx, a in zip(texts, answers, strict=True)]
    elif feedback == "oracle" and turns >= 2:
        right = getattr(oracle, "correct", ORACLE_RIGHT)
        wrong = getattr(oracle, "incorrect", ORACLE_WRONG)
        stop = bool(getattr(oracle, "stop_when_correct", False))
        episodes = oracle_turns(engine, episodes, [items[ep.question_index] for ep in episodes],
                                verifier, turns, dataclasses.replace(params, n=1),
                                right=right, wrong=wrong, stop_when_correct=stop)
        texts = [[t.text for t in ep.turns] for ep in episodes]
    records, correct = [], []
    for ep, outputs in zip(episodes, texts, strict=True):
        item = items[ep.question_index]
        per_turn = [bool(verifier(t, item) >= 0.5) for t in outputs]
        correct.append(per_turn)
        rec = {
            "id": item.id,
            "question": item.question,
            "answer": item.answer,
            "outputs": outputs,
            "extracted": [_answer_of(t) for t in outputs],
            "correct": per_turn,
        }
        if sampled:
            rec["sample"] = ep.sample
        records.append(rec)
    return EvalResult(correction_metrics(correct), records)
