"""The benchmarks by name: the declarations of :mod:`scoreops.benchmarks.definitions`, plus
any added with :func:`register`."""

from __future__ import annotations

from scoreops.benchmarks.base import Benchmark
from scoreops.benchmarks.definitions import BENCHMARKS

__all__ = ["get_benchmark", "list_benchmarks", "register"]

_REGISTRY: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    """Add a benchmark to the registry (a name can be registered once)."""
    if benchmark.name in _REGISTRY:
        raise ValueError(f"benchmark {benchmark.name!r} is already registered")
    _REGISTRY[benchmark.name] = benchmark
    return benchmark


for _bench in BENCHMARKS:
    register(_bench)


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark; ValueError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown benchmark {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_benchmarks() -> list[str]:
    """Registered benchmark names, sorted."""
    return sorted(_REGISTRY)
