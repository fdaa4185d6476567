"""The correction layer without the HTTP server: request checks, admission and the strategy run.

:class:`Corrector` owns one backend and an :class:`~scoreops.serving.scheduler.Admission`.
Protocol handlers (OpenAI routes, KServe v1 ``predict``) turn a request into a
:class:`PreparedRequest` with :meth:`Corrector.prepare` — which enforces the limits and the
model's context (:mod:`scoreops.serving.checks`) and raises :class:`~scoreops.serving.protocol.ServingError` (HTTP 400) naming
the field — and await :meth:`Corrector.run` for one list of
:class:`~scoreops.strategies.StrategyResult` per conversation (``n`` each).

Each running request runs :func:`scoreops.strategies.run_strategy` (the same code evaluation
runs) in its own worker thread, with per-request turn state (turn 1, correction prompt,
turn 2, ...). Its engine calls go to the backend's step-level scheduler when it has one (the
``hf`` backend's :class:`~scoreops.serving.decode.DecodeLoop`: every turn of every request
joins the running batch between decoding steps), else to the engine directly (remote
predictor) or merged with other requests' calls (in-process engines without one; see
:mod:`scoreops.serving.calls`).

Cancellation (client gone, timeout) goes through a
:class:`~scoreops.serving.requests.RequestControl`: the request's rows leave the batch at the
next decoding step and its slot is freed at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from scoreops.serving.backends import LoadedBackend
from scoreops.serving.calls import CallEngine, Coalescer, Recording, ServedResult
from scoreops.serving.checks import PreparedRequest, RequestChecks
from scoreops.serving.config import ServingConfig
from scoreops.serving.decode import Cancelled
from scoreops.serving.metrics import serving_metrics
from scoreops.serving.protocol import ServingError
from scoreops.serving.requests import RequestControl, RequestEngine, TextStream
from scoreops.serving.scheduler import Admission, QueueFull, Slot
from scoreops.strategies.registry import get_strategy

log = logging.getLogger("scoreops.serving")

__all__ = ["Corrector", "PreparedRequest", "ServedResult"]

Conversation = list[dict[str, str]]


def _consume(future: asyncio.Future) -> None:
    """Retrieve an abandoned request's outcome (nobody awaits it any more)."""
    if not future.cancelled():
        future.exception()


def _error_from(exc: BaseException) -> ServingError:
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, QueueFull):
        return ServingError(429, str(exc), headers={"Retry-After": "1"})
    name = type(exc).__name__
    if name == "RemoteEngineError":
        text = str(exc)
        if "HTTP 400" in text:
            return ServingError(400, f"the predictor rejected the request: {text}",
                                param="messages")
        return ServingError(502, f"the predictor failed: {text}")
    return ServingError(500, f"generation failed: {name}: {exc}")


class ClientGone(Exception):
    """The client disconnected; its request was cancelled (status ``cancelled``)."""


class Corrector:
    """A served model with its strategy, limits, admission control and request execution."""

    def __init__(self, config: ServingConfig, backend: LoadedBackend) -> None:
        self.config = config
        self.backend = backend
        self.name = config.name
        self.metrics = serving_metrics()
        self.checks = RequestChecks(config, backend)
        self._tokenizer = self.checks.tokenizer
        lim = config.limits
        self.admission = Admission(max_concurrency=lim.max_concurrency,
                                   max_queue=lim.max_queue, max_queue_wait=config.queue_wait)
        # One daemon thread per running request runs its strategy (a cancelled request's
        # thread may linger until its engine call returns; it never holds up the exit).
        self._thread_name = f"scoreops-{config.name}-request"
        self.decoder = backend.decoder
        self._coalescer = (None if self.decoder is not None or backend.thread_safe
                           else Coalescer(backend.engine, config.batch_workers))
        batch_size = self.metrics.batch_size.labels(model=self.name)
        if self._coalescer is not None:
            self._coalescer.step_hook = batch_size.observe
        if self.decoder is not None:
            self.decoder.step_hook = lambda rows: batch_size.observe(len(rows))
            self.metrics.decode_rows.labels(model=self.name).set_function(
                lambda: self.decoder.running)
        load = getattr(self.decoder, "load", None)
        if load is not None and self.metrics.engine_requests is not None:  # vLLM's scheduler
            for state in ("running", "waiting"):
                self.metrics.engine_requests.labels(model=self.name, state=state).set_function(
                    lambda state=state: getattr(self.decoder.load, state))
            self.metrics.engine_kv_usage.labels(model=self.name).set_function(
                lambda: self.decoder.load.kv_cache_usage)
        # read at scrape time, so they never go stale
        self.metrics.queued.labels(model=self.name).set_function(lambda: self.admission.queued)
        self.metrics.running.labels(model=self.name).set_function(
            lambda: self.admission.running)

    @classmethod
    def load(cls, config: ServingConfig) -> Corrector:
        from scoreops.serving.backends import load_backend

        backend = load_backend(config)
        log.info("serving %r: %s, strategy %s", config.name, backend.description,
                 config.strategy.name)
        return cls(config, backend)

    def close(self) -> None:
        self.admission.close()
        if self._coalescer is not None:
            self._coalescer.close()
        try:
            if self.decoder is not None:
                self.decoder.close()
            self.backend.engine.close()
        except Exception as exc:  # closing must not mask the shutdown
            log.warning("closing the engine: %s", exc)

    def prepare(self, conversations: list[Conversation], **settings: Any) -> PreparedRequest:
        """Check a request against the limits and the context; raise ServingError (400).

        ``settings``: the keyword arguments of :meth:`RequestChecks.prepare`.
        """
        return self.checks.prepare(conversations, **settings)

    # -- running ------------------------------------------------------------------------------

    async def admit(self, request: PreparedRequest) -> Slot:
        """A running slot for ``request``; ServingError 429 when the server is full or no
        slot frees up within the queue-wait limit."""
        try:
            return await self.admission.enter(request.queue_wait)
        except QueueFull as exc:
            raise ServingError(429, str(exc), headers={"Retry-After": "1"}) from None

    async def run(self, request: PreparedRequest, *, control: RequestControl | None = None,
                  emit: Callable[[int, str], None] | None = None,
                  slot: Slot | None = None) -> list[list[ServedResult]]:
        """The request's answers: per conversation, ``n`` results.

        ``emit(choice, text)`` receives the final turn's text as it is generated (from the
        decode thread; backends with a decoder only): pieces that concatenate to a prefix of
        each choice's final text (the rest is the caller's to send from the answers).

        Takes a running slot (or uses ``slot``) and releases it on return. Raises
        ServingError: 429 when no slot is free in time, 504 once the request ran for its
        timeout (its work is cancelled). If the awaiting task is cancelled (the client went
        away) the request's work stops at the next decoding step.
        """
        control = control or RequestControl()
        stream = None
        if emit is not None and self.decoder is not None:
            stream = TextStream(self.decoder.tokenizer, emit, request.params.stop)
        steps = emit if get_strategy(request.strategy.name).streams_steps else None
        if slot is None:
            slot = await self.admit(request)
        loop = asyncio.get_running_loop()
        try:
            work = self._start(loop, request, control, stream, steps)
            try:
                return await asyncio.wait_for(asyncio.shield(work), timeout=request.timeout)
            except TimeoutError:
                control.cancel("timeout")
                work.add_done_callback(_consume)
                raise ServingError(
                    504, f"the request did not finish within its {request.timeout:g} s "
                    "timeout; it was cancelled and its slot freed") from None
            except asyncio.CancelledError:  # the client went away or the server stops
                control.cancel("client disconnected")
                work.add_done_callback(_consume)
                raise
            except Cancelled:
                raise ServingError(499, f"the request was cancelled ({control.reason})") from None
            except ServingError:
                raise
            except Exception as exc:
                raise _error_from(exc) from exc
        finally:
            slot.release()

    def _start(self, loop: asyncio.AbstractEventLoop, request: PreparedRequest,
               control: RequestControl, stream: TextStream | None,
               steps: Callable[[int, str], None] | None = None) -> asyncio.Future:
        """Run the request in its own daemon thread; an asyncio future of its answers."""
        future: asyncio.Future = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if future.done():
                return
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        def target() -> None:
            try:
                answers = self._execute(request, control, stream, steps)
            except BaseException as exc:  # handed to the awaiting task
                if not loop.is_closed():
                    loop.call_soon_threadsafe(settle, False, exc)
                return
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, True, answers)

        threading.Thread(target=target, name=self._thread_name, daemon=True).start()
        return future

    def _engine_for(self, request: PreparedRequest, control: RequestControl,
                    stream: TextStream | None) -> Any:
        if self.decoder is not None:
            return RequestEngine(self.decoder, control, stream=stream,
                                 stream_call=request.stream_call, choices=request.choices)
        return CallEngine(self.backend.engine, self._coalescer, control)

    def _execute(self, request: PreparedRequest, control: RequestControl,
                 stream: TextStream | None,
                 steps: Callable[[int, str], None] | None = None) -> list[list[ServedResult]]:
        """Run the request's strategy (in a worker thread). ``steps(choice, text)`` receives
        the steps a step-wise strategy (guided) has fixed, as they are fixed."""
        from scoreops.strategies import run_strategy

        control.check()
        convs: list[Conversation] = []
        for conv in request.conversations:
            convs.extend([conv] * request.n)
        engine = Recording(self._engine_for(request, control, stream), control,
                           budget=request.token_budget)
        results = run_strategy(engine, convs, request.strategy, request.params,
                               on_step=steps)
        answers: list[list[ServedResult]] = []
        at = 0
        for _ in request.conversations:
            chunk = results[at: at + request.n]
            at += request.n
            answers.append([engine.served(r) for r in chunk])
        self._account(request.strategy.name, answers)
        return answers

    def token_logprobs(self, completion: Any) -> list[dict[str, Any]]:
        """OpenAI's ``logprobs.content`` of a completion (its end-of-sequence token left
        out)."""
        tok = self._tokenizer
        if completion is None or completion.logprobs is None or tok is None:
            return []
        eos = self.decoder.eos if self.decoder is not None else set()
        out = []
        for token, lp in zip(completion.token_ids, completion.logprobs, strict=False):
            if token in eos:
                break
            text = tok.decode([token])
            out.append({"token": text, "logprob": lp, "bytes": list(text.encode()),
                        "top_logprobs": []})
        return out

    def _account(self, strategy: str, answers: list[list[ServedResult]]) -> None:
        m = self.metrics
        for per_conv in answers:
            for a in per_conv:
                m.turns.labels(model=self.name, strategy=strategy).observe(a.result.turns_taken)
                m.prompt_tokens.labels(model=self.name).inc(a.result.prompt_tokens)
                m.completion_tokens.labels(model=self.name).inc(a.result.completion_tokens)


def attempts_trace(result: Any) -> dict[str, Any]:
    """The ``scoreops`` object of one answer: strategy notes and every attempt."""
    return {
        "turns_taken": result.turns_taken,
        "final_answer": result.final_answer,
        "notes": list(result.notes),
        "attempts": [
            {"turn": a.turn, "text": a.text, "answer": a.answer, "messages": a.messages,
             **({"agent": a.agent} if a.agent is not None else {}),
             **({"score": a.score} if a.score is not None else {}),
             **({"carried": True} if a.carried else {})}
            for a in result.attempts
        ],
        **({"search": result.search} if getattr(result, "search", None) is not None else {}),
    }
