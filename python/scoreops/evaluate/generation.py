"""The generative run of one benchmark: the suite's strategy over every item, each turn's
answer read with the benchmark's extractor and scored with its scorer, then the
self-correction metrics (and the benchmark's side metrics) over the turns.

Turns and metrics: for strategies whose attempts are turns (``self-correct``, ``single``)
turn t is the t-th attempt; an item that stopped early carries its last answer into the
remaining turns, so Acc@tK counts every item. For the others "turn 1" is the first single
sample and "turn 2" the strategy's final answer, so Δ is the strategy's gain over one
attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scoreops.api import EvalSuiteSpec
    from scoreops.benchmarks import Benchmark
    from scoreops.evaluate.models import LoadedModel
    from scoreops.rollout import RolloutEngine, SamplingParams
    from scoreops.strategies import StrategyResult

__all__ = ["answer_extractor", "passed", "run_generative"]

#: (item, its chat prompt) pairs ready to run
Ready = Sequence[tuple[dict[str, Any], Any]]
#: the metrics computed per turn sequence, reported again for each side metric
TURN_METRICS = ("acc_t1", "acc_t2", "acc_tk", "delta", "delta_i2c", "delta_c2i")


def answer_extractor(bench: Benchmark, item: dict[str, Any]) -> Callable[[str], str | None]:
    """What a completion of ``item`` answers, in the terms the benchmark's scorer checks
    (:attr:`Benchmark.extract`: GSM8K the flexible last number, math the final answer,
    multiple choice the option letter, BBH the text after "the answer is")."""
    return lambda text: bench.extract(text, item)


def passed(x: Any) -> bool:
    """A scorer's 0/1 metric as a record's boolean."""
    return bool(x) and float(x) > 0.5


def _safe_score(bench: Benchmark, text: str, item: dict[str, Any]) -> dict[str, Any]:
    try:
        return dict(bench.score(text, item))
    except Exception as exc:  # a scorer crash on odd output scores wrong, visibly
        return {"correct": 0.0, "error": f"{type(exc).__name__}: {exc}"}


def _turns_for_metrics(strategy: str, result: StrategyResult) -> list[tuple[str, Any]]:
    """(label, attempt) pairs whose correctness are "turns" 1..K (see the module doc)."""
    from scoreops.strategies import Attempt, get_strategy

    if get_strategy(strategy).attempts_are_turns:
        return [(f"t{a.turn}", a) for a in result.attempts]
    final = Attempt(text=result.final_text, answer=result.final_answer, turn=2, messages=[])
    return [("t1", result.attempts[0]), ("t2", final)]


def _sampling_params(bench: Benchmark, spec: EvalSuiteSpec) -> SamplingParams:
    from scoreops.rollout import SamplingParams

    gen = spec.generation
    return SamplingParams(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
                          top_p=gen.top_p, n=1, seed=spec.seed, stop=bench.stop)


def _turn_records(bench: Benchmark, strategy: str, item: dict[str, Any],
                  result: StrategyResult) -> list[dict[str, Any]]:
    """One record per turn: the output, its extracted answer, whether it (and each side
    metric) was correct, whether it was carried over from an early stop."""
    turns = []
    for tag, att in _turns_for_metrics(strategy, result):
        s = _safe_score(bench, att.text, item)
        turn = {"turn": tag, "output": att.text, "extracted": att.answer,
                "correct": passed(s.get("correct")), "carried": att.carried}
        for key in bench.side_metrics:
            if key in s:
                turn[key] = passed(s[key])
        if "error" in s:
            turn["error"] = s["error"]
        turns.append(turn)
    return turns


def _item_record(index: int, item: dict[str, Any], prompt: Any, result: StrategyResult,
                 turns: list[dict[str, Any]], strategy: str) -> dict[str, Any]:
    """The per-sample record of one item (``records/<model>/<benchmark>.jsonl``); for a
    strategy whose attempts are not turns, every attempt too."""
    from scoreops.strategies import get_strategy

    rec: dict[str, Any] = {
        "index": index, "id": item.get("id"), "prompt": prompt,
        "gold": item["answer"], "turns": turns,
        "final": {"output": result.final_text, "extracted": result.final_answer},
        "turns_taken": result.turns_taken,
        "completion_tokens": result.completion_tokens,
        "prompt_tokens": result.prompt_tokens,
    }
    if not get_strategy(strategy).attempts_are_turns:
        rec["attempts"] = [
            {"turn": a.turn, "agent": a.agent, "output": a.text,
             "extracted": a.answer, "score": a.score} for a in result.attempts]
    if result.search is not None:  # guided: the compact search tree
        rec["search"] = result.search
    return rec


def search_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the records that carry a guided search tree: mean steps of the answers, tokens
    per item (candidates; the critic's verdicts apart), candidates pruned per item, and how
    often the critic rejected a step the answer would otherwise have used (the sibling the
    model preferred, scored lower than the chosen step): per chosen step and per item."""
    searches = [r["search"] for r in records if r.get("search")]
    if not searches:
        return {}
    n = len(searches)
    steps = sum(s["steps"] for s in searches)
    return {"search": {
        "items": n, "mean_steps": steps / n,
        "tokens_per_item": sum(r["completion_tokens"] for r in records if r.get("search")) / n,
        "critic_tokens_per_item": sum(s.get("critic_tokens", 0) for s in searches) / n,
        "pruned_per_item": sum(s["pruned"] for s in searches) / n,
        "override_rate": sum(s["overrides"] for s in searches) / steps if steps else 0.0,
        "items_overridden": sum(1 for s in searches if s["overrides"]) / n,
        "budget_stops": sum(1 for s in searches if s.get("stopped")),
    }}


def _generative_metrics(bench: Benchmark, strategy: str, rows: list[list[dict[str, Any]]],
                        records: list[dict[str, Any]], notes: set[str]) -> dict[str, Any]:
    """The self-correction metrics over the turns, the change rates (how often the second
    attempt changed the first answer, given it was wrong / right, and the share of changes
    that fixed it), the same with ``_<side>`` for each side metric every turn has, and counts
    of unreadable first answers and tokens."""
    from scoreops.metrics import change_rates, correction_metrics

    metrics: dict[str, Any] = {"mode": "generative", "strategy": strategy}
    if rows:
        metrics.update(correction_metrics(
            [[t["correct"] for t in r] for r in rows]).to_dict())
        if all(len(r) >= 2 for r in rows):
            changes = change_rates([[t["extracted"] for t in r] for r in rows],
                                   [[t["correct"] for t in r] for r in rows])
            metrics["ci"].update(changes.pop("ci"))
            metrics.update(changes)
        for key in bench.side_metrics:
            if all(key in t for r in rows for t in r):
                side = correction_metrics([[t[key] for t in r] for r in rows]).to_dict()
                for name in TURN_METRICS:
                    metrics[f"{name}_{key}"] = side[name]
                metrics["ci"].update({f"{k}_{key}": v for k, v in side["ci"].items()})
    else:
        metrics["n"] = 0
    metrics["unparsed_t1"] = sum(1 for r in rows if r and r[0]["extracted"] is None)
    metrics["completion_tokens"] = sum(r["completion_tokens"] for r in records)
    metrics.update(search_metrics(records))
    if notes:
        metrics["notes"] = sorted(notes)
    return metrics


def run_generative(
    loaded: LoadedModel, bench: Benchmark, ready: Ready, spec: EvalSuiteSpec, step: int,
    agent_engines: list[RolloutEngine] | None, advance: Callable[[int], None],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the suite's strategy over ``ready`` in parts of ``step`` items; the per-item
    records and the benchmark's metrics."""
    from scoreops.strategies import run_strategy

    strategy = spec.strategy
    params = _sampling_params(bench, spec)
    records: list[dict[str, Any]] = []
    rows: list[list[dict[str, Any]]] = []
    notes: set[str] = set()
    for start in range(0, len(ready), step):
        part = ready[start:start + step]
        results = run_strategy(
            loaded.engine, [p for _, p in part], strategy, params,
            extract=[answer_extractor(bench, it) for it, _ in part],
            agent_engines=agent_engines, pad_turns=True)
        for (item, prompt), res in zip(part, results, strict=True):
            notes.update(res.notes)
            turns = _turn_records(bench, strategy.name, item, res)
            records.append(_item_record(len(records), item, prompt, res, turns, strategy.name))
            rows.append(turns)
        advance(len(part))
    return records, _generative_metrics(bench, strategy.name, rows, records, notes)
