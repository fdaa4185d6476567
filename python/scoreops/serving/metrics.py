"""Prometheus metrics of the correction layer, in prometheus_client's default registry (the
one KServe's ``/metrics`` route exposes)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["ServingMetrics", "serving_metrics"]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                    300.0)


@dataclass
class ServingMetrics:
    requests: Any
    latency: Any
    turns: Any
    prompt_tokens: Any
    completion_tokens: Any
    queued: Any
    running: Any
    batch_size: Any
    decode_rows: Any
    engine_requests: Any = None
    engine_kv_usage: Any = None

    def observe_request(self, model: str, route: str, status: int | str,
                        seconds: float) -> None:
        """Count one answered request; ``status`` is the HTTP status, or ``cancelled`` for a
        request whose client went away before its answer."""
        self.requests.labels(model=model, route=route, status=str(status)).inc()
        self.latency.labels(model=model, route=route).observe(seconds)


_lock = threading.Lock()
_metrics: ServingMetrics | None = None


def serving_metrics() -> ServingMetrics:
    """The process's metrics (created once: prometheus_client refuses duplicate names)."""
    global _metrics
    with _lock:
        if _metrics is None:
            from prometheus_client import Counter, Gauge, Histogram

            _metrics = ServingMetrics(
                requests=Counter(
                    "scoreops_requests", "Requests by route and outcome: the HTTP status, or "
                    "'cancelled' when the client went away first.",
                    ["model", "route", "status"]),
                latency=Histogram(
                    "scoreops_request_latency_seconds",
                    "Time from arrival to the full answer (queueing included).",
                    ["model", "route"], buckets=_LATENCY_BUCKETS),
                turns=Histogram(
                    "scoreops_turns_taken", "Attempts generated per answer (self-correct turns, "
                    "moa layers + 1; 1 for single).", ["model", "strategy"],
                    buckets=(1, 2, 3, 4, 5, 6, 7, 8, 9)),
                prompt_tokens=Counter(
                    "scoreops_prompt_tokens", "Prompt tokens processed, all turns.", ["model"]),
                completion_tokens=Counter(
                    "scoreops_completion_tokens", "Tokens generated, all turns.", ["model"]),
                queued=Gauge("scoreops_requests_queued", "Admitted requests waiting.",
                             ["model"]),
                running=Gauge("scoreops_requests_running", "Requests being served.",
                              ["model"]),
                batch_size=Histogram(
                    "scoreops_batch_size", "Rows per decoding step (hf backend: every "
                    "running completion of every request shares the step; vllm backend: the "
                    "requests vLLM's scheduler ran in an engine step).", ["model"],
                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)),
                decode_rows=Gauge("scoreops_decode_rows",
                                  "Completions being generated (hf: in the running decode "
                                  "batch; vllm: requests in flight in the engine).",
                                  ["model"]),
                engine_requests=Gauge(
                    "scoreops_engine_requests", "vllm backend: requests in vLLM's scheduler "
                    "after its last engine step, by state (running, waiting).",
                    ["model", "state"]),
                engine_kv_usage=Gauge(
                    "scoreops_engine_kv_cache_usage", "vllm backend: share of vLLM's KV cache "
                    "in use after its last engine step.", ["model"]),
            )
        return _metrics
