"""The whole suite: every model × benchmark (items checked before any model is loaded), the
per-sample records, ``summary.json`` (rewritten after each benchmark, so a long suite shows
progress), ``chart.png`` and ``report.md``."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from scoreops.evaluate.benchmark import evaluate_benchmark
from scoreops.evaluate.models import load_agent_models, load_eval_model
from scoreops.evaluate.report import chart_png, report_markdown

if TYPE_CHECKING:
    from rich.console import Console

    from scoreops.api import EvalSuite, EvalSuiteSpec
    from scoreops.api.evalsuite import BenchmarkRef, EvalModel
    from scoreops.rollout import RolloutEngine

__all__ = ["EXIT_FAILED", "EXIT_INVALID", "EXIT_OK", "evaluate_suite", "run_evalsuite"]

log = logging.getLogger("scoreops.evaluate")

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

#: result key -> (benchmark, its ref, test items, few-shot pool or None)
Plan = dict[str, Any]


def _jsonl(records: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)


def _load_items(spec: EvalSuiteSpec, limit: int | None) -> Plan:
    """Benchmarks and their items, all checked before any model is loaded."""
    from scoreops.benchmarks import get_benchmark, load_benchmark_items, load_fewshot_items

    loaded: Plan = {}
    for ref in spec.benchmarks:
        bench = get_benchmark(ref.name)  # ValueError listing the known names
        if ref.mode == "loglikelihood" and not bench.supports_loglikelihood:
            raise ValueError(f"benchmark {ref.name} has no loglikelihood mode")
        caps = [x for x in (limit, ref.limit) if x is not None]
        n = min(caps) if caps else None
        items = load_benchmark_items(ref.name, root=spec.data_root, limit=n,
                                     subjects=ref.subjects)
        pool = load_fewshot_items(ref.name, root=spec.data_root) if ref.fewshot else None
        key = _bench_key(ref)
        loaded[key] = (bench, ref, items, pool)
    return loaded


def _bench_key(ref: BenchmarkRef) -> str:
    return ref.name + ("_ll" if ref.mode == "loglikelihood" else "")


def _evaluate_model(
    ref: EvalModel, spec: EvalSuiteSpec, plan: Plan, out: str, summary: dict[str, Any],
    agent_engines: list[RolloutEngine] | None, console: Console | None,
) -> None:
    """One model on every benchmark: its records written, its metrics into ``summary``."""
    from scoreops import storage

    loaded = load_eval_model(ref, spec)
    try:
        per_bench: dict[str, Any] = {}
        for key, (bench, bref, items, pool) in plan.items():
            result = evaluate_benchmark(loaded, bench, bref, items, spec,
                                        fewshot_pool=pool, agent_engines=agent_engines,
                                        console=console)
            uri = storage.join(out, "records", ref.name, f"{key}.jsonl")
            storage.write_text(uri, _jsonl(result.records))
            summary["records"].setdefault(ref.name, {})[key] = uri
            per_bench[key] = result.metrics
            summary["models"][ref.name] = per_bench
            # the summary so far, so a long suite shows progress
            storage.write_json(summary["summary"], summary)
    finally:
        loaded.close()


def _write_outputs(name: str, spec: EvalSuiteSpec, plan: Plan, out: str,
                   summary: dict[str, Any]) -> None:
    """``chart.png`` (never failing the evaluation), ``report.md`` and ``summary.json``."""
    from scoreops import storage

    chart_uri = storage.join(out, "chart.png")
    try:
        storage.write_bytes(chart_uri, chart_png(summary))
        summary["chart"] = chart_uri
    except Exception as exc:  # a chart must never fail an evaluation
        log.warning("could not draw the chart: %s", exc)
    benchmarks = {key: bench for key, (bench, *_) in plan.items()}
    storage.write_text(summary["report"],
                       report_markdown(name, spec, summary, summary.get("chart"), benchmarks))
    storage.write_json(summary["summary"], summary)


def _print_tables(plan: Plan, summary: dict[str, Any], console: Console | None) -> None:
    """The correction table of each generative benchmark, on the console."""
    from scoreops.report import correction_rows, print_table

    for key in plan:
        gen = {m: b[key] for m, b in summary["models"].items()
               if key in b and b[key].get("mode") == "generative" and b[key].get("n")}
        if gen:
            print_table(correction_rows(gen, label="model"), title=key, console=console)


def evaluate_suite(
    spec: EvalSuiteSpec,
    *,
    name: str = "evalsuite",
    limit: int | None = None,
    output: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the whole suite and write its outputs; returns the summary (``summary.json``)."""
    from scoreops import storage

    out = output or spec.output.uri
    started = time.perf_counter()
    plan = _load_items(spec, limit)
    summary: dict[str, Any] = {
        "name": name, "strategy": spec.strategy.to_wire(), "models": {},
        "records": {}, "report": storage.join(out, "report.md"),
        "summary": storage.join(out, "summary.json"),
    }
    agents = load_agent_models(spec)
    agent_engines = [a.engine for a in agents] if agents else None
    try:
        for ref in spec.models:
            _evaluate_model(ref, spec, plan, out, summary, agent_engines, console)
    finally:
        for a in agents:
            a.close()
    summary["seconds"] = round(time.perf_counter() - started, 3)
    _write_outputs(name, spec, plan, out, summary)
    _print_tables(plan, summary, console)
    return summary


def run_evalsuite(resource: EvalSuite, limit: int | None = None,
                  output: str | None = None) -> int:
    """``scoreops eval`` / ``scoreops run`` for an EvalSuite: evaluate in-process, print the
    tables and where the report is. Exit status 0, 2 for a bad suite (unknown benchmark,
    data not imported), 1 when the run failed."""
    from rich.console import Console

    console = Console(stderr=True)
    try:
        summary = evaluate_suite(resource.spec, name=resource.metadata.name, limit=limit,
                                 output=output, console=console)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except Exception as exc:
        log.exception("evaluation failed")
        print(f"error: evaluation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    console.print(f"report: {summary['report']}\nsummary: {summary['summary']}")
    return EXIT_OK
