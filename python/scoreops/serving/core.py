"""The correction layer without the HTTP server: request checks, batching and the strategy run.

:class:`Corrector` owns one backend engine and a :class:`~scoreops.serving.scheduler.Batcher`.
Protocol handlers (OpenAI routes, KServe v1 ``predict``) turn a request into a
:class:`PreparedRequest` with :meth:`Corrector.prepare` — which enforces the limits and the
model's context and raises :class:`~scoreops.serving.protocol.ServingError` (HTTP 400) naming
the field — and await :meth:`Corrector.run` for one list of
:class:`~scoreops.strategies.StrategyResult` per conversation (``n`` each).

The strategy itself is :func:`scoreops.strategies.run_strategy`, the same code evaluation
runs, applied to every request of a batch at once.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from scoreops.api.common import StrategySpec
from scoreops.serving.backends import LoadedBackend
from scoreops.serving.config import ServingConfig
from scoreops.serving.metrics import serving_metrics
from scoreops.serving.protocol import ScoreopsOptions, ServingError, bad_request
from scoreops.serving.scheduler import Abandoned, Batcher, Job, QueueFull

log = logging.getLogger("scoreops.serving")

__all__ = ["Corrector", "PreparedRequest", "ServedResult"]

Conversation = list[dict[str, str]]


@dataclass
class ServedResult:
    """One answer (one of ``n``) for one conversation."""

    result: Any  # scoreops.strategies.StrategyResult
    finish_reason: str


@dataclass
class PreparedRequest:
    """A checked request, ready to be batched."""

    conversations: list[Conversation]
    n: int
    strategy: StrategySpec
    params: Any  # scoreops.rollout.SamplingParams
    timeout: float
    arrival: float
    return_attempts: bool
    prompt_tokens: list[int | None] = field(default_factory=list)

    @property
    def key(self) -> Any:
        if self.params.seed is not None:
            # a seeded request runs alone: its samples must not depend on its batch-mates
            return ("seeded", id(self))
        return (self.strategy.model_dump_json(), self.params)

    def remaining(self) -> float:
        return self.timeout - (time.monotonic() - self.arrival)


class _BatchEngine:
    """The backend engine as seen by one batch: stops the batch at a turn boundary once every
    request in it was abandoned, and remembers each completion (for ``finish_reason``)."""

    def __init__(self, inner: Any, jobs: Sequence[Job]) -> None:
        self._inner = inner
        self._jobs = jobs
        self.tokenizer = getattr(inner, "tokenizer", None)
        self.completions: dict[str, list[Any]] = {}

    def generate(self, conversations: Sequence[Conversation], params: Any, *,
                 prompt_token_ids: Sequence[Sequence[int]] | None = None) -> list[list[Any]]:
        if all(j.abandoned for j in self._jobs):
            raise Abandoned("every request of the batch timed out")
        if prompt_token_ids is None:
            outs = self._inner.generate(conversations, params)
        else:
            outs = self._inner.generate(conversations, params, prompt_token_ids=prompt_token_ids)
        for conv, cs in zip(conversations, outs, strict=False):
            self.completions.setdefault(_conv_key(conv), []).extend(cs)
        return outs

    def finish_reason(self, messages: Conversation, text: str) -> str:
        for c in self.completions.get(_conv_key(messages), []):
            if c.text == text:
                return str(c.finish_reason)
        return "stop"

    def sync_weights(self, model: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _consume(future: asyncio.Future) -> None:
    """Retrieve an abandoned request's outcome (nobody awaits it any more)."""
    if not future.cancelled():
        future.exception()


def _conv_key(conv: Sequence[dict[str, Any]]) -> str:
    return json.dumps([[m.get("role"), m.get("content")] for m in conv])


def _error_from(exc: BaseException) -> ServingError:
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, Abandoned):
        return ServingError(504, str(exc))
    if isinstance(exc, QueueFull):
        return ServingError(503, str(exc))
    name = type(exc).__name__
    if name == "RemoteEngineError":
        text = str(exc)
        if "HTTP 400" in text:
            return ServingError(400, f"the predictor rejected the request: {text}",
                                param="messages")
        return ServingError(502, f"the predictor failed: {text}")
    return ServingError(500, f"generation failed: {name}: {exc}")


class Corrector:
    """A served model with its strategy, limits and request batching."""

    def __init__(self, config: ServingConfig, backend: LoadedBackend) -> None:
        self.config = config
        self.backend = backend
        self.name = config.name
        self.metrics = serving_metrics()
        self._overheads: dict[str, int] = {}
        # Request checks run on the event loop while a worker thread generates; a fast
        # tokenizer must not be used from two threads at once, so the checks get their own.
        self._tokenizer = (copy.deepcopy(backend.tokenizer)
                           if backend.tokenizer is not None else None)
        lim = config.limits
        self.batcher = Batcher(
            self._run_batch, max_concurrency=lim.max_concurrency, max_queue=lim.max_queue,
            workers=config.batch_workers, name=f"scoreops-{config.name}",
        )
        # read at scrape time, so they never go stale
        self.metrics.queued.labels(model=self.name).set_function(lambda: self.batcher.queued)
        self.metrics.running.labels(model=self.name).set_function(lambda: self.batcher.running)

    @classmethod
    def load(cls, config: ServingConfig) -> Corrector:
        from scoreops.serving.backends import load_backend

        backend = load_backend(config)
        log.info("serving %r: %s, strategy %s", config.name, backend.description,
                 config.strategy.name)
        return cls(config, backend)

    def close(self) -> None:
        self.batcher.close()
        try:
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
    ) -> PreparedRequest:
        """Check a request against the limits and the context; raise ServingError (400)."""
        from scoreops.rollout import SamplingParams

        arrival = time.monotonic() if arrival is None else arrival
        options = options or ScoreopsOptions()
        lim = self.config.limits
        if n > lim.max_n:
            raise bad_request("n", f"{n} is above this server's limit of {lim.max_n}")
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
            prompt_tokens=counts)

    # -- running ------------------------------------------------------------------------------

    async def run(self, request: PreparedRequest) -> list[list[ServedResult]]:
        """The request's answers: per conversation, ``n`` results. Raises ServingError:
        429 when the server is full, 504 past the deadline (the slot is freed)."""
        try:
            job = self.batcher.submit(request.key, request)
        except QueueFull as exc:
            raise ServingError(429, str(exc), headers={"Retry-After": "1"}) from None
        waiting = asyncio.wrap_future(job.future)
        try:
            remaining = request.remaining()
            if remaining <= 0:
                raise TimeoutError
            return await asyncio.wait_for(asyncio.shield(waiting), timeout=remaining)
        except TimeoutError:
            self.batcher.abandon(job)
            waiting.add_done_callback(_consume)
            raise ServingError(
                504, f"the request did not finish within its {request.timeout:g} s timeout; "
                "it was abandoned and its slot freed") from None
        except asyncio.CancelledError:  # the client went away or the server stops
            self.batcher.abandon(job)
            waiting.add_done_callback(_consume)
            raise
        except ServingError:
            raise
        except Exception as exc:
            raise _error_from(exc) from exc

    def _run_batch(self, jobs: list[Job]) -> None:
        try:
            self._run_jobs(jobs)
        except Abandoned:
            raise
        except Exception:
            if len(jobs) == 1:
                raise
            # one bad request must not fail its batch-mates: run each alone
            log.warning("a batch of %d failed; running its requests one by one", len(jobs))
            for job in jobs:
                if job.future.done() or job.abandoned:
                    continue
                try:
                    self._run_jobs([job])
                except Exception as exc:
                    if not job.future.done():
                        job.future.set_exception(_error_from(exc))

    def _run_jobs(self, jobs: list[Job]) -> None:
        from scoreops.strategies import run_strategy

        first: PreparedRequest = jobs[0].payload
        convs: list[Conversation] = []
        for job in jobs:
            req: PreparedRequest = job.payload
            for conv in req.conversations:
                convs.extend([conv] * req.n)
        self.metrics.batch_size.labels(model=self.name).observe(len(jobs))
        engine = _BatchEngine(self.backend.engine, jobs)
        results = run_strategy(engine, convs, first.strategy, first.params)
        at = 0
        for job in jobs:
            req = job.payload
            answers: list[list[ServedResult]] = []
            for _ in req.conversations:
                chunk = results[at: at + req.n]
                at += req.n
                answers.append([
                    ServedResult(r, engine.finish_reason(r.attempts[-1].messages, r.final_text))
                    for r in chunk])
            self._account(req.strategy.name, answers)
            if not job.future.done():
                job.future.set_result(answers)

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
