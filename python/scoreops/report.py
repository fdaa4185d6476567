"""Tables (markdown and rich) and PNG charts for training and evaluation reports.

The functions are generic: a table is a list of row mappings (column -> value), a chart a
mapping of groups to series values. Charts are drawn with matplotlib's Agg canvas on a
private ``Figure`` (no pyplot global state, safe in threads and without a display) and
returned as PNG bytes for the caller to store where it likes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "CORRECTION_COLUMNS",
    "bar_chart",
    "correction_rows",
    "format_value",
    "line_chart",
    "print_table",
    "results_table",
    "rich_table",
    "with_ci",
]

Row = Mapping[str, Any]

#: Column headers of a SCoRe-style results table (keys of :func:`correction_rows` rows).
CORRECTION_COLUMNS = ("Acc@t1", "Acc@t2", "Δ(t1,t2)", "Δi→c(t1,t2)", "Δc→i(t1,t2)", "n")


def format_value(value: Any, floatfmt: str = ".3f") -> str:
    """A cell's text: None → "—", floats with ``floatfmt`` (NaN → "—"), the rest ``str``."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return format(value, floatfmt)
    return str(value)


def with_ci(value: float | None, ci: Sequence[float] | None, digits: int = 3,
            signed: bool = False) -> str:
    """``0.512 [0.43, 0.59]``: a value and its confidence interval, for one cell."""
    if value is None:
        return "—"
    sign = "+" if signed else ""
    text = f"{value:{sign}.{digits}f}"
    if ci is not None and len(ci) == 2:
        text += f" [{ci[0]:{sign}.{digits - 1}f}, {ci[1]:{sign}.{digits - 1}f}]"
    return text


def _columns(rows: Sequence[Row], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def results_table(
    rows: Sequence[Row],
    columns: Sequence[str] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    floatfmt: str = ".3f",
) -> str:
    """A GitHub-flavoured markdown table.

    Args:
        rows: one mapping per row; a missing key is an empty ("—") cell.
        columns: the keys to show, in order (default: every key, in first-seen order).
        headers: display names for some keys (default: the key itself).
        floatfmt: format of float cells; numbers are right-aligned, text left-aligned.
    """
    cols = _columns(rows, columns)
    if not cols:
        return ""
    names = [_escape((headers or {}).get(c, c)) for c in cols]
    numeric = [
        all(isinstance(r.get(c), int | float) and not isinstance(r.get(c), bool)
            for r in rows if r.get(c) is not None) and any(r.get(c) is not None for r in rows)
        for c in cols
    ]
    lines = ["| " + " | ".join(names) + " |",
             "|" + "|".join("---:" if num else ":---" for num in numeric) + "|"]
    for row in rows:
        cells = [_escape(format_value(row.get(c), floatfmt)) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rich_table(
    rows: Sequence[Row],
    columns: Sequence[str] | None = None,
    *,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    floatfmt: str = ".3f",
) -> Table:
    """The same table as :func:`results_table`, as a ``rich.table.Table`` for the console."""
    from rich.table import Table

    cols = _columns(rows, columns)
    table = Table(title=title, show_lines=False)
    for c in cols:
        numeric = any(isinstance(r.get(c), int | float) for r in rows)
        table.add_column((headers or {}).get(c, c), justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(format_value(row.get(c), floatfmt) for c in cols))
    return table


def print_table(
    rows: Sequence[Row],
    columns: Sequence[str] | None = None,
    *,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    floatfmt: str = ".3f",
    console: Console | None = None,
) -> None:
    """Print :func:`rich_table` to ``console`` (default: a new stdout console)."""
    from rich.console import Console

    (console or Console()).print(
        rich_table(rows, columns, title=title, headers=headers, floatfmt=floatfmt))


def correction_rows(
    results: Mapping[str, Mapping[str, Any]],
    *,
    label: str = "Approach",
    ci: bool = True,
) -> list[dict[str, Any]]:
    """Rows of a SCoRe-style table (Acc@t1, Acc@t2, Δ, Δi→c, Δc→i, n), one per entry; with
    the change rates (``change_if_wrong``, ``change_if_right``, ``changes_fixing``) where the
    metrics have them.

    ``results`` maps a row label (a model, "base" / "trained", …) to metrics with the keys
    of :meth:`scoreops.metrics.CorrectionMetrics.to_dict` (``acc_t1``, ``acc_t2``,
    ``delta``, ``delta_i2c``, ``delta_c2i``, ``n`` and optionally ``ci``). With ``ci`` the
    cells carry their 95% intervals as text.
    """
    rows = []
    for name, m in results.items():
        intervals = m.get("ci", {}) if ci else {}

        def cell(key: str, signed: bool = False, m: Mapping[str, Any] = m,
                 intervals: Mapping[str, Any] = intervals) -> Any:
            value = m.get(key)
            if value is None or not ci:
                return value
            return with_ci(value, intervals.get(key), signed=signed)

        rows.append({
            label: name,
            "Acc@t1": cell("acc_t1"),
            "Acc@t2": cell("acc_t2"),
            "Δ(t1,t2)": cell("delta", signed=True),
            "Δi→c(t1,t2)": cell("delta_i2c"),
            "Δc→i(t1,t2)": cell("delta_c2i"),
        })
        if "change_if_wrong" in m:  # the change rates (scoreops.metrics.change_rates)
            rows[-1].update({
                "P(change|t1 wrong)": cell("change_if_wrong"),
                "P(change|t1 right)": cell("change_if_right"),
                "changes fixing": cell("changes_fixing"),
            })
        rows[-1]["n"] = m.get("n")
    return rows


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def bar_chart(
    data: Mapping[str, Mapping[str, float | None]],
    *,
    title: str = "",
    ylabel: str = "",
    errors: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    ylim: tuple[float, float] | None = None,
    annotate: bool = True,
) -> bytes:
    """A grouped bar chart as PNG bytes.

    Args:
        data: group (x-axis label) -> series name -> value; a missing or None value leaves
            a gap. Groups keep their order; series are ordered by first appearance.
        errors: the same shape with ``(low, high)`` interval bounds, drawn as error bars.
        ylim: y-axis range (default: matplotlib's choice, including 0).
        annotate: write each bar's value above it.
    """
    from matplotlib.figure import Figure

    groups = list(data)
    series: list[str] = []
    for g in groups:
        for s in data[g]:
            if s not in series:
                series.append(s)
    width = 0.8 / max(1, len(series))
    fig = Figure(figsize=(max(4.0, 1.2 + 0.9 * len(groups) * max(1, len(series)) * 0.6), 3.6))
    ax = fig.add_subplot()
    for k, s in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for gi, g in enumerate(groups):
            value = data[g].get(s)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            xs.append(gi - 0.4 + width * (k + 0.5))
            ys.append(float(value))
            bounds = (errors or {}).get(g, {}).get(s)
            lo.append(max(0.0, value - bounds[0]) if bounds else 0.0)
            hi.append(max(0.0, bounds[1] - value) if bounds else 0.0)
        has_err = errors is not None
        bars = ax.bar(xs, ys, width=width * 0.95, label=s,
                      yerr=[lo, hi] if has_err else None, capsize=3 if has_err else 0)
        if annotate:
            ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20 if len(groups) > 4 else 0, ha="right"
                       if len(groups) > 4 else "center")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(0.0, color="black", linewidth=0.6)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
) -> bytes:
    """Lines (e.g. training curves) as PNG bytes: series name -> [(x, y), ...]."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.add_subplot()
    for name, points in series.items():
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, label=name, marker="o" if len(points) < 30 else None, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return _png(fig)
