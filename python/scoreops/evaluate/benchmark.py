"""One model on one benchmark: the items prepared (malformed rows skipped, not fatal), then
the generative run (:mod:`.generation`) or the log-likelihood run, with a progress bar."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scoreops.evaluate.generation import Ready, passed, run_generative
from scoreops.evaluate.loglik import loglikelihoods

if TYPE_CHECKING:
    from rich.console import Console

    from scoreops.api import EvalSuiteSpec
    from scoreops.api.evalsuite import BenchmarkRef
    from scoreops.benchmarks import Benchmark
    from scoreops.evaluate.models import LoadedModel
    from scoreops.rollout import RolloutEngine

__all__ = ["BenchmarkResult", "evaluate_benchmark"]

log = logging.getLogger("scoreops.evaluate")


@dataclass
class BenchmarkResult:
    """Metrics and records of one model on one benchmark."""

    model: str
    benchmark: str
    mode: str
    metrics: dict[str, Any]
    records: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _progress(console: Console | None) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                    transient=False)


def _prepare_items(
    bench: Benchmark, ref: BenchmarkRef, items: Sequence[dict[str, Any]],
    fewshot_pool: Sequence[dict[str, Any]] | None, system_prompt: str | None, loglik: bool,
) -> tuple[list[tuple[dict[str, Any], Any]], list[str]]:
    """(item, prompt) pairs and a list of skipped rows (why), never raising on a bad row."""
    ready: list[tuple[dict[str, Any], Any]] = []
    skipped: list[str] = []
    for k, item in enumerate(items):
        try:
            if loglik:
                prompt: Any = bench.loglikelihood_requests(item, ref.fewshot, fewshot_pool)
            else:
                prompt = bench.format_prompt(item, ref.fewshot, fewshot_pool)
                if system_prompt and not (prompt and prompt[0].get("role") == "system"):
                    prompt = [{"role": "system", "content": system_prompt}, *prompt]
            if "answer" not in item:
                raise KeyError("answer")
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            skipped.append(f"item {item.get('id', k)}: {type(exc).__name__}: {exc}")
            continue
        ready.append((item, prompt))
    return ready, skipped


def run_loglikelihood(
    loaded: LoadedModel, bench: Benchmark, ready: Ready, spec: EvalSuiteSpec, step: int,
    advance: Callable[[int], None],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every option of every item by log-likelihood; the per-item records and
    ``acc``/``acc_norm`` with their intervals."""
    from scoreops.metrics import accuracy_with_ci

    if loaded.ensure_model() is None:
        raise ValueError(f"{loaded.name}: loglikelihood mode needs local weights")
    records: list[dict[str, Any]] = []
    for start in range(0, len(ready), step):
        part = ready[start:start + step]
        flat = [req for _, reqs in part for req in reqs]
        scores = loglikelihoods(loaded.model, loaded.tokenizer, flat,
                                batch_size=spec.generation.batch_size)
        k = 0
        for item, reqs in part:
            lls = scores[k:k + len(reqs)]
            k += len(reqs)
            s = bench.score_loglikelihood(item, [ll for ll, _ in lls])
            records.append({
                "index": len(records), "id": item.get("id"), "context": reqs[0][0],
                "choices": [c for _, c in reqs], "gold": item["answer"],
                "loglikelihoods": [ll for ll, _ in lls], "greedy": [g for _, g in lls],
                "acc": passed(s.get("acc")), "acc_norm": passed(s.get("acc_norm")),
            })
        advance(len(part))
    acc, acc_ci = accuracy_with_ci([r["acc"] for r in records])
    norm, norm_ci = accuracy_with_ci([r["acc_norm"] for r in records])
    return records, {"mode": "loglikelihood", "n": len(records), "acc": acc, "acc_norm": norm,
                     "ci": {"acc": list(acc_ci), "acc_norm": list(norm_ci)}}


def evaluate_benchmark(
    loaded: LoadedModel,
    bench: Benchmark,
    ref: BenchmarkRef,
    items: Sequence[dict[str, Any]],
    spec: EvalSuiteSpec,
    *,
    fewshot_pool: Sequence[dict[str, Any]] | None = None,
    agent_engines: list[RolloutEngine] | None = None,
    console: Console | None = None,
    chunk: int | None = None,
) -> BenchmarkResult:
    """Evaluate one model on the given items of one benchmark."""
    started = time.perf_counter()
    loglik = ref.mode == "loglikelihood"
    ready, skipped = _prepare_items(bench, ref, items, fewshot_pool,
                                    spec.generation.system_prompt, loglik)
    for why in skipped:
        log.warning("%s: skipped malformed %s", bench.name, why)
    label = f"{loaded.name} · {bench.name}" + (" (loglikelihood)" if loglik else "")
    # Items per call: several batches, so that length sorting has something to work with.
    step = chunk or max(1, spec.generation.batch_size * (8 if loglik else 4))
    with _progress(console) as progress:
        task = progress.add_task(label, total=len(ready))

        def advance(n: int) -> None:
            progress.advance(task, n)

        if loglik:
            records, metrics = run_loglikelihood(loaded, bench, ready, spec, step, advance)
        else:
            records, metrics = run_generative(loaded, bench, ready, spec, step,
                                              agent_engines, advance)
    seconds = time.perf_counter() - started
    metrics["seconds"] = round(seconds, 3)
    if skipped:
        metrics["skipped"] = len(skipped)
    return BenchmarkResult(model=loaded.name, benchmark=bench.name, mode=ref.mode,
                           metrics=metrics, records=records, skipped=skipped, seconds=seconds)
