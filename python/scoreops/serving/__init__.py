"""Serving: a model as a self-correcting endpoint on the KServe model server.

* :class:`~scoreops.serving.model.CorrectorModel` — a ``kserve.Model`` whose ``predict``
  runs the configured strategy (``self-correct``, ``best-of-n``, ``moa``,
  ``self-consistency``, ``single``) through :func:`scoreops.strategies.run_strategy`;
* :mod:`~scoreops.serving.core` — the correction layer without HTTP: admission and the
  strategy run of each request (:mod:`~scoreops.serving.checks`: the request checks and the
  context budget; :mod:`~scoreops.serving.calls`: how a request's calls reach the engine);
* :mod:`~scoreops.serving.openai_routes` — ``/openai/v1/chat/completions``,
  ``/openai/v1/completions`` and ``/openai/v1/models`` on KServe's FastAPI app
  (:mod:`~scoreops.serving.streaming`: ``stream: true``; :mod:`~scoreops.serving.openai_errors`:
  error shapes); :mod:`~scoreops.serving.protocol` — the request models and refusals;
* :mod:`~scoreops.serving.backends` — transformers or vLLM in-process, or a remote
  OpenAI-compatible predictor;
* :mod:`~scoreops.serving.scheduler` — bounded admission (429 when full or after the
  queue-wait limit);
* :mod:`~scoreops.serving.decode` — continuous batching for the hf backend: every turn of
  every request joins the running batch between decoding steps;
  :mod:`~scoreops.serving.vllm_async` — the same contract on vLLM's async engine (vllm
  backend: vLLM's scheduler batches, streams and aborts);
  :mod:`~scoreops.serving.requests` — one request's view of it (streaming, cancellation);
* :mod:`~scoreops.serving.cli` — ``scoreops serve``, ``scoreops query`` and the entrypoint
  ``python -m scoreops.serving``, their options written once in
  :mod:`~scoreops.serving.options`.

Importing this package imports neither kserve nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scoreops.serving.config import Backend, ServingConfig

__all__ = ["Backend", "ServingConfig"]


def __getattr__(name: str) -> Any:
    """``Backend`` and ``ServingConfig`` on first use: importing the package (as ``scoreops
    --help`` does for the serve options) stays free of pydantic."""
    if name in __all__:
        from scoreops.serving import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
