"""Loading training items from JSONL or Parquet files (local, ``s3://`` or ``store://``).

Each row needs a question and an answer. Accepted column names, first found wins:

* question: ``question``, ``problem``, ``input``, ``prompt`` (a string)
* answer: ``answer``, ``target``, ``short_answer``; or, for MATH-style rows with none of
  these, the last ``\\boxed{}`` of ``solution``

A GSM8K-style answer (``"... #### 72"``) is reduced to ``72`` and its worked solution kept in
``meta["rationale"]``. ``id`` is optional (default ``<file stem>-<row>``); a ``meta`` object
and any other columns land in ``Item.meta``. Rows that do not fit are skipped, counted and
reported - one bad line never sinks a dataset.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from scoreops.data.items import Item, json_safe
from scoreops.data.uri import describe, read_bytes, write_bytes

__all__ = ["LoadReport", "load_items", "read_items", "save_items"]

log = logging.getLogger(__name__)

_QUESTION_KEYS = ("question", "problem", "input", "prompt")
_ANSWER_KEYS = ("answer", "target", "short_answer")
_MAX_REASONS = 20


@dataclass
class LoadReport:
    """What :func:`read_items` found: the items, and what it skipped and why."""

    uri: str
    items: list[Item] = field(default_factory=list)
    rows: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def skip(self, where: str, why: str) -> None:
        self.skipped += 1
        if len(self.reasons) < _MAX_REASONS:
            self.reasons.append(f"{where}: {why}")

    def summary(self) -> str:
        text = f"{self.uri}: {len(self.items)} items from {self.rows} rows"
        if self.skipped:
            text += f", {self.skipped} malformed rows skipped (first: {self.reasons[0]})"
        return text


def _format_of(uri: str) -> str:
    name = uri.lower().rstrip("/")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")):
        return "jsonl"
    raise ValueError(f"{uri}: unknown file type; use .jsonl, .jsonl.gz, .json or .parquet")


def _stem(uri: str) -> str:
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".gz", ".jsonl", ".json", ".ndjson", ".parquet", ".pq"):
        name = name.removesuffix(suffix)
    return name or "item"


def _rows_jsonl(data: bytes, report: LoadReport) -> list[tuple[str, Any]]:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    text = data.decode("utf-8", errors="replace")
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array file
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as exc:
            report.skip("file", f"invalid JSON array: {exc}")
            return []
        return [(f"row {i + 1}", r) for i, r in enumerate(rows)]
    out = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as exc:
            report.rows += 1
            report.skip(f"line {lineno}", f"invalid JSON ({exc.msg})")
    return out


def _rows_parquet(data: bytes) -> list[tuple[str, Any]]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    return [(f"row {i + 1}", r) for i, r in enumerate(table.to_pylist())]


def _gold_from_solution(solution: str) -> str | None:
    from scoreops.rewards.extract import extract_boxed

    return extract_boxed(solution)


def row_to_item(row: Any, default_id: str, source: str) -> Item:
    """One item from one row; ValueError saying what is wrong otherwise."""
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    question_key = next((k for k in _QUESTION_KEYS if isinstance(row.get(k), str)), None)
    question = row[question_key] if question_key else ""
    if not question.strip():
        raise ValueError(f"no question (one of {', '.join(_QUESTION_KEYS)})")
    answer_key = next((k for k in _ANSWER_KEYS if row.get(k) is not None), None)
    meta: dict[str, Any] = {}
    if answer_key is not None:
        raw = row[answer_key]
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise ValueError(f"answer must be a string or a number, got {type(raw).__name__}")
        answer = str(raw).strip()
        if "####" in answer:
            meta["rationale"] = answer
            answer = answer.rsplit("####", 1)[1].strip()
    elif isinstance(row.get("solution"), str):
        boxed = _gold_from_solution(row["solution"])
        if boxed is None:
            raise ValueError("no answer and no \\boxed{} in solution")
        answer = boxed
    else:
        raise ValueError(f"no answer (one of {', '.join(_ANSWER_KEYS)}, or a solution)")
    if not answer:
        raise ValueError("empty answer")
    used = {"id", "meta", "source", question_key, answer_key}
    extra = row.get("meta")
    if isinstance(extra, str):  # Parquet files written by save_items keep meta as JSON text
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except json.JSONDecodeError:
            raise ValueError("meta is not valid JSON") from None
    if extra is not None and not isinstance(extra, dict):
        raise ValueError("meta must be an object")
    meta.update(json_safe({k: v for k, v in row.items() if k not in used}))
    meta.update(json_safe(extra or {}))
    item_id = row.get("id")
    return Item(
        id=str(item_id) if item_id is not None and str(item_id) != "" else default_id,
        question=question,
        answer=answer,
        source=str(row.get("source") or source),
        meta=meta,
    )


def read_items(uri: str) -> LoadReport:
    """Items of the file at ``uri`` with a report of skipped rows.

    FileNotFoundError (saying where it looked and how to get data there) if there is no file.
    """
    fmt = _format_of(uri)
    try:
        data = read_bytes(uri)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no dataset at {describe(uri)}. Write a JSONL file with one "
            '{"question": ..., "answer": ...} object per line (or a Parquet file with those '
            "columns) there, e.g. with scoreops.data.save_items(items, uri); benchmarks are "
            "imported with `scoreops data import <name>`."
        ) from None
    report = LoadReport(uri=uri)
    rows = _rows_jsonl(data, report) if fmt == "jsonl" else _rows_parquet(data)
    stem = _stem(uri)
    seen: set[str] = set()
    for index, (where, row) in enumerate(rows):
        report.rows += 1
        try:
            item = row_to_item(row, f"{stem}-{index}", source=uri)
        except ValueError as exc:
            report.skip(where, str(exc))
            continue
        if item.id in seen:
            report.skip(where, f"duplicate id {item.id!r}")
            continue
        seen.add(item.id)
        report.items.append(item)
    if report.skipped:
        log.warning("%s", report.summary())
    return report


def load_items(uri: str) -> list[Item]:
    """Items of a JSONL or Parquet file at a path, ``s3://`` or ``store://`` URI.

    Malformed rows are skipped with a logged warning (see :func:`read_items` for the counts).
    """
    return read_items(uri).items


def save_items(items: list[Item], uri: str) -> None:
    """Write items as JSONL (``.jsonl``) or Parquet (``.parquet``) at ``uri``."""
    fmt = _format_of(uri)
    rows = [it.to_dict() for it in items]
    if fmt == "jsonl":
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        if uri.endswith(".gz"):
            data = gzip.compress(data)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for r in rows:
            r["meta"] = json.dumps(r["meta"])
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        data = buf.getvalue()
    write_bytes(uri, data)
