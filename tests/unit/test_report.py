"""Report rendering: markdown and rich tables, SCoRe-style rows, PNG charts."""

from __future__ import annotations

import io

from rich.console import Console

from scoreops.report import (
    bar_chart,
    correction_rows,
    format_value,
    line_chart,
    results_table,
    rich_table,
    with_ci,
)


def test_markdown_table_exact() -> None:
    rows = [{"model": "base", "acc": 0.5, "n": 24},
            {"model": "a|b", "acc": None, "n": 3, "extra": "x"}]
    assert results_table(rows, ["model", "acc", "n"], headers={"acc": "Acc@t1"}) == (
        "| model | Acc@t1 | n |\n"
        "|:---|---:|---:|\n"
        "| base | 0.500 | 24 |\n"
        "| a\\|b | — | 3 |\n"
    )
    # default columns: every key in first-seen order
    assert results_table(rows).splitlines()[0] == "| model | acc | n | extra |"
    assert results_table([]) == ""


def test_format_value() -> None:
    assert format_value(float("nan")) == "—"
    assert format_value(True) == "yes"
    assert format_value(0.12345, ".1%") == "12.3%"
    assert with_ci(0.1, [-0.05, 0.25], signed=True) == "+0.100 [-0.05, +0.25]"
    assert with_ci(None, None) == "—"


def test_rich_table_renders_the_same_cells() -> None:
    console = Console(record=True, width=120)
    console.print(rich_table([{"model": "base", "acc": 0.25}], title="Results"))
    text = console.export_text()
    assert "Results" in text and "base" in text and "0.250" in text


def test_correction_rows_carry_intervals() -> None:
    metrics = {"base": {"acc_t1": 0.5, "acc_t2": 0.625, "delta": 0.125, "delta_i2c": 0.125,
                        "delta_c2i": 0.0, "n": 8,
                        "ci": {"acc_t1": [0.2, 0.8], "delta": [-0.1, 0.4]}}}
    (row,) = correction_rows(metrics)
    assert row["Approach"] == "base" and row["n"] == 8
    assert row["Acc@t1"] == "0.500 [0.20, 0.80]"
    assert row["Δ(t1,t2)"] == "+0.125 [-0.10, +0.40]"
    assert row["Δc→i(t1,t2)"] == "0.000"  # no interval given: the value alone
    (plain,) = correction_rows(metrics, ci=False, label="model")
    assert plain["Acc@t2"] == 0.625 and plain["model"] == "base"


def _png_size(data: bytes) -> tuple[int, int]:
    from matplotlib.image import imread

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(io.BytesIO(data), format="png")
    return img.shape[1], img.shape[0]


def test_bar_chart_is_a_png_and_grows_with_groups() -> None:
    small = bar_chart({"gsm8k": {"t1": 0.2, "t2": 0.3}}, title="x", ylabel="accuracy")
    big = bar_chart(
        {f"bench{i}": {"t1": 0.1 * i, "t2": None, "t3": 0.5} for i in range(8)},
        errors={"bench1": {"t1": (0.0, 0.3)}}, ylim=(0, 1))
    w_small, _ = _png_size(small)
    w_big, _ = _png_size(big)
    assert w_big > w_small


def test_line_chart_is_a_png() -> None:
    w, h = _png_size(line_chart({"reward": [(0, 0.1), (1, 0.4), (2, 0.5)], "empty": []},
                                title="training", xlabel="step"))
    assert w > 100 and h > 100


def test_what_it_shows_calls_an_accuracy_gain_with_delta_zero_what_it_is() -> None:
    from scoreops.metrics import correction_metrics
    from scoreops.training.evaluation import EvalResult
    from scoreops.training.report import what_it_shows

    # base: 30 of 60 right first, 3 more fixed by the second attempt; trained: 56 of 60 at
    # both turns (the demo's 0.933 / 0.933)
    base = [[True, True]] * 30 + [[False, True]] * 3 + [[False, False]] * 27
    trained = [[True, True]] * 56 + [[False, False]] * 4
    evals = {"base": EvalResult(correction_metrics(base), []),
             "trained": EvalResult(correction_metrics(trained), [])}
    text = " ".join(what_it_shows(evals))
    assert "0.500 before, 0.933 after" in text
    assert "No correction gain shown: Δ(t1,t2) = +0.000" in text
    assert "accuracy gain, not self-correction" in text
    # a real correction gain: 20 of 60 fixed, none broken, first attempt as the base's
    fixed = [[True, True]] * 30 + [[False, True]] * 20 + [[False, False]] * 10
    evals["trained"] = EvalResult(correction_metrics(fixed), [])
    text = " ".join(what_it_shows(evals))
    assert "Correction gain: the second attempt adds Δ = +0.333" in text
    assert "20 of 60 items wrong -> right, 0 right -> wrong" in text
    assert "not self-correction" not in text


def test_evalsuite_metrics_and_table_carry_the_change_rates() -> None:
    """An EvalSuite benchmark's metrics (from the per-turn records) hold the change rates
    with intervals, and the report table shows them."""
    from types import SimpleNamespace

    from scoreops.evaluate.generation import _generative_metrics

    def turns(a1: str, c1: bool, a2: str, c2: bool) -> list[dict]:
        return [{"extracted": a1, "correct": c1}, {"extracted": a2, "correct": c2}]

    rows = [turns("3", False, "5", True), turns("4", False, "4", False),
            turns("9", True, "9", True), turns("9", True, "1", False)]
    records = [{"completion_tokens": 10} for _ in rows]
    m = _generative_metrics(SimpleNamespace(side_metrics={}), "self-correct", rows, records,
                            set())
    assert m["change_if_wrong"] == 0.5 and m["change_if_right"] == 0.5
    assert m["changes_fixing"] == 0.5 and m["changed"] == 2
    assert m["ci"]["change_if_wrong"][0] < 0.5 < m["ci"]["change_if_wrong"][1]
    (row,) = correction_rows({"model": m})
    assert row["P(change|t1 wrong)"].startswith("0.500 [")
    assert row["changes fixing"].startswith("0.500 [")
    assert list(row)[-1] == "n"
