"""The suite's ``report.md`` (an overview of models × benchmarks, then a SCoRe-style table per
benchmark, with its side metrics captioned as the benchmark declares) and ``chart.png``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scoreops.api import EvalSuiteSpec
    from scoreops.benchmarks import Benchmark

__all__ = ["chart_png", "report_markdown"]

Metrics = dict[str, Any]

_T1_NOTE = "t1 is one attempt; t2 is the strategy's final answer."


def _header(name: str, spec: EvalSuiteSpec) -> list[str]:
    """Title, strategy and generation settings, and how to read t1/t2."""
    from scoreops.strategies.registry import get_strategy

    s = spec.strategy
    strategy = get_strategy(s.name)
    lines = [f"# EvalSuite {name}", "",
             f"Strategy: {strategy.caption(s)}. Generation: max "
             f"{spec.generation.max_new_tokens} new tokens, temperature "
             f"{spec.generation.temperature}. Intervals are 95% (Wilson; Δ: Newcombe's paired "
             "score interval).", ""]
    if not strategy.turns_are_attempts_of_one_answer:
        lines += [_T1_NOTE, ""]
    return lines


def _overview(models: dict[str, dict[str, Metrics]], bench_keys: list[str]) -> list[str]:
    """One row per model, one cell per benchmark: Acc@t1 → Acc@t2 (Δ), or acc / norm."""
    from scoreops.report import results_table

    overview = []
    for model, benches in models.items():
        row: dict[str, Any] = {"model": model}
        for key in bench_keys:
            m = benches.get(key)
            if m is None:
                row[key] = None
            elif m.get("mode") == "loglikelihood":
                row[key] = f"acc {m['acc']:.3f} / norm {m['acc_norm']:.3f}"
            elif m.get("n"):
                row[key] = f"{m['acc_t1']:.3f} → {m['acc_t2']:.3f} ({m['delta']:+.3f})"
        overview.append(row)
    return ["## Overview (Acc@t1 → Acc@t2 (Δ))", "", results_table(overview)]


def _loglikelihood_section(per_model: dict[str, Metrics]) -> list[str]:
    from scoreops.report import results_table

    rows = [{"model": m, "acc": f"{v['acc']:.3f} [{v['ci']['acc'][0]:.2f}, "
                                f"{v['ci']['acc'][1]:.2f}]",
             "acc_norm": f"{v['acc_norm']:.3f} [{v['ci']['acc_norm'][0]:.2f}, "
                         f"{v['ci']['acc_norm'][1]:.2f}]", "n": v["n"]}
            for m, v in per_model.items()]
    return [results_table(rows), ""]


def _side_section(per_model: dict[str, Metrics], side: str, caption: str) -> list[str]:
    """The correction table of one side metric (its ``_<side>`` metrics), if every model
    has it."""
    from scoreops.report import correction_rows, results_table

    if not all(f"acc_t1_{side}" in v for v in per_model.values()):
        return []
    side_rows = {f"{m} ({side})": {k.removesuffix(f"_{side}"): v2
                                   for k, v2 in v.items() if k.endswith(f"_{side}")}
                 | {"n": v["n"], "ci": {k.removesuffix(f"_{side}"): v2 for k, v2
                                        in v["ci"].items() if k.endswith(side)}}
                 for m, v in per_model.items()}
    return [f"{caption}:", "", results_table(correction_rows(side_rows, label="model")), ""]


def _search_line(s: Metrics) -> str:
    """The guided search's figures (``search`` of a benchmark's metrics)."""
    line = (f"guided search: {s['mean_steps']:.1f} steps per answer, "
            f"{s['tokens_per_item']:.0f} generated tokens per item"
            + (f" (+{s['critic_tokens_per_item']:.0f} critic tokens)"
               if s.get("critic_tokens_per_item") else "")
            + f", {s['pruned_per_item']:.1f} candidates pruned per item; the critic rejected "
            f"the step the model preferred at {s['override_rate']:.0%} of chosen steps "
            f"({s['items_overridden']:.0%} of items)")
    if s.get("budget_stops"):
        line += f"; {s['budget_stops']} searches stopped at the token budget"
    return line


def _generative_section(per_model: dict[str, Metrics],
                        side_metrics: Mapping[str, str]) -> list[str]:
    """The correction table, one per side metric, and per model what could not be read."""
    from scoreops.report import correction_rows, results_table

    lines = [results_table(correction_rows(
        {m: v for m, v in per_model.items() if v.get("n")}, label="model")), ""]
    for side, caption in side_metrics.items():
        lines += _side_section(per_model, side, caption)
    for m, v in per_model.items():
        extra = []
        if v.get("unparsed_t1"):
            extra.append(f"{v['unparsed_t1']} first attempts had no readable answer")
        if v.get("skipped"):
            extra.append(f"{v['skipped']} malformed items skipped")
        if v.get("search"):
            extra.append(_search_line(v["search"]))
        if extra:
            lines += [f"- {m}: " + "; ".join(extra)]
    lines.append("")
    return lines


def report_markdown(name: str, spec: EvalSuiteSpec, summary: dict[str, Any],
                    chart: str | None, benchmarks: Mapping[str, Benchmark]) -> str:
    """``report.md`` for ``summary``; ``benchmarks`` maps each result key (``gsm8k``,
    ``arc_challenge_ll``) to its benchmark, whose side metrics get their own tables."""
    models = summary["models"]
    bench_keys = list(dict.fromkeys(k for m in models.values() for k in m))
    lines = _header(name, spec) + _overview(models, bench_keys)
    for key in bench_keys:
        per_model = {m: b[key] for m, b in models.items() if key in b}
        lines += [f"## {key}", ""]
        if next(iter(per_model.values())).get("mode") == "loglikelihood":
            lines += _loglikelihood_section(per_model)
            continue
        bench = benchmarks.get(key)
        lines += _generative_section(per_model, bench.side_metrics if bench else {})
    if chart:
        lines += ["![Acc@t1 and Acc@t2](chart.png)", ""]
    lines += ["Per-sample records: `records/<model>/<benchmark>.jsonl`.", ""]
    return "\n".join(lines)


def chart_png(summary: dict[str, Any]) -> bytes:
    """Acc@t1 and Acc@t2 (log-likelihood: acc) per benchmark and model, with 95% intervals."""
    from scoreops.report import bar_chart

    data: dict[str, dict[str, float | None]] = {}
    errors: dict[str, dict[str, Sequence[float]]] = {}
    for model, benches in summary["models"].items():
        for key, m in benches.items():
            group, err = data.setdefault(key, {}), errors.setdefault(key, {})
            if m.get("mode") == "loglikelihood":
                group[f"{model} acc"] = m["acc"]
                err[f"{model} acc"] = m["ci"]["acc"]
            elif m.get("n"):
                for t in ("t1", "t2"):
                    group[f"{model} Acc@{t}"] = m[f"acc_{t}"]
                    err[f"{model} Acc@{t}"] = m["ci"][f"acc_{t}"]
    return bar_chart(data, errors=errors, ylim=(0.0, 1.05), ylabel="accuracy",
                     title="Accuracy per benchmark (95% CI)")
