"""The correction layer without the HTTP server: request checks, admission and the strategy run.

:class:`Corrector` owns one backend and an :class:`~scoreops.serving.scheduler.Admission`.
Protocol handlers (OpenAI routes, KServe v1 ``predict``) turn a request into a
:class:`PreparedRequest` with :meth:`Corrector.prepare` — which enforces the limits and the
model's context and raises :class:`~scoreops.serving.protocol.ServingError` (HTTP 400) naming
the field — and await :meth:`Corrector.run` for one list of
:class:`~scoreops.strategies.StrategyResult` per conversation (``n`` each).

Each running request runs :func:`scoreops.strategies.run_strategy` (the same code evaluation
runs) in its own worker thread, with per-request turn state (turn 1, correction prompt,
turn 2, ...). Its engine calls go to the backend's step-level scheduler when it has one (the
``hf`` backend's :class:`~scoreops.serving.decode.DecodeLoop`: every turn of every request
joins the running batch between decoding steps), else to the engine directly (remote
predictor) or merged with other requests' calls (in-process engines without one).

Cancellation (client gone, timeout) goes through a
:class:`~scoreops.serving.decode.RequestControl`: the request's rows leave the batch at the
next decoding step and its slot is freed at once.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from scoreops.api.common import StrategySpec
from scoreops.serving.backends import LoadedBackend
from scoreops.serving.config import ServingConfig
from scoreops.serving.decode import Cancelled, RequestControl, RequestEngine, TextStream
from scoreops.serving.metrics import serving_metrics
from scoreops.serving.protocol import ScoreopsOptions, ServingError, bad_request
from scoreops.serving.scheduler import Admission, QueueFull, Slot

log = logging.getLogger("scoreops.serving")

__all__ = ["Corrector", "PreparedRequest", "ServedResult"]

Conversation = list[dict[str, str]]


@dataclass
class ServedResult:
    """One answer (one of ``n``) for one conversation."""

    result: Any  # scoreops.strategies.StrategyResult
    finish_reason: str
    completion: Any = None  # the final attempt's Completion, when the engine returned it


@dataclass
class PreparedRequest:
    """A checked request, ready to run."""

    conversations: list[Conversation]
    n: int
    strategy: StrategySpec
    params: Any  # scoreops.rollout.SamplingParams
    timeout: float
    arrival: float
    return_attempts: bool
    prompt_tokens: list[int | None] = field(default_factory=list)
    queue_wait: float | None = None
    logprobs: bool = False

    @property
    def choices(self) -> int:
        return len(self.conversations) * self.n

    @property
    def stream_call(self) -> int | None:
        """Which engine call of the strategy generates the final answer (streamable)."""
        name = self.strategy.name
        if name == "single":
            return 1
        if name == "self-correct":
            return self.strategy.turns
        if name == "moa":
            return self.strategy.layers + 1
        return None  # the answer is chosen among samples after they are all generated


class _Recording:
    """The engine as seen by one request's strategy: checks for cancellation before each
    call and remembers each completion (for ``finish_reason``)."""

    def __init__(self, inner: Any, control: RequestControl) -> None:
        self._inner = inner
        self._control = control
        self.tokenizer = getattr(inner, "tokenizer", None)
        self.completions: dict[str, list[Any]] = {}

    def generate(self, conversations: Sequence[Conversation], params: Any, *,
                 prompt_token_ids: Sequence[Sequence[int]] | None = None) -> list[list[Any]]:
        self._control.check()
        if prompt_token_ids is None:
            outs = self._inner.generate(conversations, params)
        else:
            outs = self._inner.generate(conversations, params, prompt_token_ids=prompt_token_ids)
        self._control.check()
        for conv, cs in zip(conversations, outs, strict=False):
            self.completions.setdefault(_conv_key(conv), []).extend(cs)
        return outs

    def completion(self, messages: Conversation, text: str) -> Any | None:
        """The completion of ``messages`` whose text is ``text`` (the final attempt)."""
        for c in self.completions.get(_conv_key(messages), []):
            if c.text == text:
                return c
        return None

    def served(self, result: Any) -> ServedResult:
        c = self.completion(result.attempts[-1].messages, result.final_text)
        return ServedResult(result, str(c.finish_reason) if c is not None else "stop", c)

    def sync_weights(self, model: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass(eq=False)
class _Call:
    conversations: list[Conversation]
    params: Any
    prompt_token_ids: list[list[int]] | None
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> Any:
        if self.params.seed is not None:
            return ("seeded", id(self))  # a seeded call's samples must not depend on others
        return (self.params, self.prompt_token_ids is None)


class _Coalescer:
    """Concurrent ``generate`` calls of several requests merged into one engine call, for an
    in-process engine without step-level scheduling of its own (one call at a time)."""

    def __init__(self, engine: Any, workers: int = 1) -> None:
        self.engine = engine
        self.tokenizer = getattr(engine, "tokenizer", None)
        self._queue: deque[_Call] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.step_hook: Any = None  # called with the rows of every merged engine call
        for i in range(workers):
            threading.Thread(target=self._work, name=f"scoreops-engine-{i}",
                             daemon=True).start()

    def call(self, control: RequestControl, conversations: Sequence[Conversation], params: Any,
             prompt_token_ids: Sequence[Sequence[int]] | None) -> list[list[Any]]:
        call = _Call(list(conversations), params,
                     None if prompt_token_ids is None else [list(p) for p in prompt_token_ids])
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._queue.append(call)
            self._cond.notify()

        def withdraw() -> None:
            with self._cond:
                if call in self._queue:
                    self._queue.remove(call)
                    call.future.set_exception(Cancelled(control.reason))

        remove = control.on_cancel(withdraw)
        try:
            return call.future.result()
        finally:
            remove()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                head = self._queue[0]
                batch = [c for c in self._queue if c.key == head.key]
                for c in batch:
                    self._queue.remove(c)
            convs = [conv for c in batch for conv in c.conversations]
            if self.step_hook is not None:
                self.step_hook(len(convs) * max(1, getattr(head.params, "n", 1)))
            try:
                if head.prompt_token_ids is None:
                    outs = self.engine.generate(convs, head.params)
                else:
                    ids = [p for c in batch for p in (c.prompt_token_ids or [])]
                    outs = self.engine.generate(convs, head.params, prompt_token_ids=ids)
            except Exception as exc:
                for c in batch:
                    if not c.future.done():
                        c.future.set_exception(exc)
                continue
            at = 0
            for c in batch:
                c.future.set_result(outs[at: at + len(c.conversations)])
                at += len(c.conversations)


class _CallEngine:
    """A request's engine for backends without a decode loop: the remote predictor (called
    directly: it is thread-safe and batches on its side) or a coalesced in-process engine."""

    def __init__(self, engine: Any, coalescer: _Coalescer | None,
                 control: RequestControl) -> None:
        self._engine = engine
        self._coalescer = coalescer
        self._control = control
        self.tokenizer = getattr(engine, "tokenizer", None)

    def generate(self, conversations: Sequence[Conversation], params: Any, *,
                 prompt_token_ids: Sequence[Sequence[int]] | None = None) -> list[list[Any]]:
        if self._coalescer is not None:
            return self._coalescer.call(self._control, conversations, params, prompt_token_ids)
        if prompt_token_ids is None:
            return self._engine.generate(conversations, params)
        return self._engine.generate(conversations, params, prompt_token_ids=prompt_token_ids)


def _consume(future: asyncio.Future) -> None:
    """Retrieve an abandoned request's outcome (nobody awaits it any more)."""
    if not future.cancelled():
        future.exception()


def _conv_key(conv: Sequence[dict[str, Any]]) -> str:
    return json.dumps([[m.get("role"), m.get("content")] for m in conv])


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
        self._overheads: dict[str, int] = {}
        # Request checks run on the event loop while worker threads generate; a fast
        # tokenizer must not be used from two threads at once, so the checks get their own.
        self._tokenizer = (copy.deepcopy(backend.tokenizer)
                           if backend.tokenizer is not None else None)
        lim = config.limits
        self.admission = Admission(max_concurrency=lim.max_concurrency,
                                   max_queue=lim.max_queue, max_queue_wait=config.queue_wait)
        # One daemon thread per running request runs its strategy (a cancelled request's
        # thread may linger until its engine call returns; it never holds up the exit).
        self._thread_name = f"scoreops-{config.name}-request"
        self.decoder = backend.decoder
        self._coalescer = (None if self.decoder is not None or backend.thread_safe
                           else _Coalescer(backend.engine, config.batch_workers))
        batch_size = self.metrics.batch_size.labels(model=self.name)
        if self._coalescer is not None:
            self._coalescer.step_hook = batch_size.observe
        if self.decoder is not None:
            self.decoder.step_hook = lambda rows: batch_size.observe(len(rows))
            self.metrics.decode_rows.labels(model=self.name).set_function(
                lambda: self.decoder.running)
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

    # -- checks -------------------------------------------------------------------------------

    def _strategy(self, options: ScoreopsOptions) -> StrategySpec:
        base = self.config.strategy
        if options.strategy is None and options.turns is None:
            return base
        data = base.model_dump()
        if options.strategy is not None:
            data["name"] = options.strategy
        if options.turns is not None:
            data["turns"] = options.turns
        try:
            return StrategySpec.model_validate(data)
        except ValidationError as exc:
            param = "scoreops.turns" if options.turns is not None else "scoreops.strategy"
            msg = exc.errors(include_url=False)[0].get("msg", str(exc))
            raise bad_request(param, str(msg).removeprefix("Value error, ")) from None

    def _overhead(self, text: str) -> int:
        """Tokens a follow-up user message with ``text`` adds to a conversation."""
        if text not in self._overheads:
            from scoreops.rollout.chat import encode_conversation

            tok = self._tokenizer
            q = [{"role": "user", "content": "q"}]
            longer = [*q, {"role": "assistant", "content": "a"}, {"role": "user", "content": text}]
            self._overheads[text] = (len(encode_conversation(tok, longer))
                                     - len(encode_conversation(tok, q)))
        return self._overheads[text]

    def _budget(self, strategy: StrategySpec) -> tuple[int, int]:
        """(generations a final prompt holds, fixed extra tokens) for the context check."""
        from scoreops.strategies import DEFAULT_AGGREGATOR_PROMPT, SELF_EVAL_PROMPT

        if strategy.name == "self-correct":
            return strategy.turns, (strategy.turns - 1) * self._overhead(strategy.instruction)
        if strategy.name == "best-of-n":
            return 1, self._overhead(SELF_EVAL_PROMPT) + 3
        if strategy.name == "moa":
            prompt = strategy.aggregator_prompt or DEFAULT_AGGREGATOR_PROMPT
            return strategy.agents + 1, self._overhead(prompt) + 4 * strategy.agents
        return 1, 0

    def _count(self, conversations: list[Conversation]) -> list[int | None]:
        tok = self._tokenizer
        if tok is None:
            return [None] * len(conversations)
        from scoreops.rollout.chat import encode_conversation

        counts: list[int | None] = []
        for conv in conversations:
            try:
                counts.append(len(encode_conversation(tok, conv)))
            except Exception as exc:  # the chat template rejects the conversation
                raise bad_request("messages", f"the model's chat template rejects the "
                                  f"conversation: {exc}") from None
        return counts

    def prepare(
        self,
        conversations: list[Conversation],
        *,
        prompt_param: str = "messages",
        n: int = 1,
        max_tokens: int | None = None,
        max_tokens_param: str = "max_tokens",
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
        options: ScoreopsOptions | None = None,
        arrival: float | None = None,
        logprobs: bool = False,
    ) -> PreparedRequest:
        """Check a request against the limits and the context; raise ServingError (400)."""
        from scoreops.rollout import SamplingParams

        arrival = time.monotonic() if arrival is None else arrival
        options = options or ScoreopsOptions()
        lim = self.config.limits
        if n > lim.max_n:
            raise bad_request("n", f"{n} is above this server's limit of {lim.max_n}")
        if logprobs and self.decoder is None and not self.backend.returns_logprobs:
            raise bad_request("logprobs", f"not supported with the {self.config.backend} "
                              "backend (the hf and vllm backends return them)")
        if max_tokens is not None and max_tokens > lim.max_tokens:
            raise bad_request(max_tokens_param,
                              f"{max_tokens} is above this server's ceiling of {lim.max_tokens}")
        strategy = self._strategy(options)
        counts = self._count(conversations)
        ceiling = min(lim.max_tokens, self.config.default_max_tokens)
        context = self.backend.context_length
        known = [c for c in counts if c is not None]
        if context is not None and known:
            longest = max(known)
            if longest >= context:
                raise bad_request(prompt_param, f"the prompt has {longest} tokens; the model's "
                                  f"context is {context} tokens")
            gens, extra = self._budget(strategy)
            room = (context - longest - extra) // gens
            if room < 1:
                raise bad_request(prompt_param, f"the prompt has {longest} tokens, which leaves "
                                  f"no room for the {strategy.name} strategy's {gens} "
                                  f"generations in the model's context of {context} tokens")
            if max_tokens is not None and max_tokens > room:
                raise bad_request(
                    max_tokens_param,
                    f"{max_tokens} tokens per generation do not fit: the prompt has {longest} "
                    f"tokens and the {strategy.name} strategy's final prompt holds {gens} "
                    f"generation(s) plus {extra} tokens of instructions, in the model's context "
                    f"of {context} tokens (at most {room})")
            ceiling = min(ceiling, room)
        timeout = lim.request_timeout_seconds
        if options.timeout_seconds is not None:
            timeout = min(timeout, options.timeout_seconds)
        params = SamplingParams(
            max_new_tokens=max_tokens if max_tokens is not None else ceiling,
            temperature=temperature, top_p=top_p, n=1, seed=seed, stop=tuple(stop))
        return PreparedRequest(
            conversations=conversations, n=n, strategy=strategy, params=params,
            timeout=timeout, arrival=arrival, return_attempts=options.return_attempts,
            prompt_tokens=counts, queue_wait=self.config.queue_wait, logprobs=logprobs)

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
        if slot is None:
            slot = await self.admit(request)
        loop = asyncio.get_running_loop()
        try:
            work = self._start(loop, request, control, stream)
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
               control: RequestControl, stream: TextStream | None) -> asyncio.Future:
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
                answers = self._execute(request, control, stream)
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
        return _CallEngine(self.backend.engine, self._coalescer, control)

    def _execute(self, request: PreparedRequest, control: RequestControl,
                 stream: TextStream | None) -> list[list[ServedResult]]:
        """Run the request's strategy (in a worker thread)."""
        from scoreops.strategies import run_strategy

        control.check()
        convs: list[Conversation] = []
        for conv in request.conversations:
            convs.extend([conv] * request.n)
        engine = _Recording(self._engine_for(request, control, stream), control)
        results = run_strategy(engine, convs, request.strategy, request.params)
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
    }
