"""How a request's strategy reaches the engine: one request's view of the engine.

* :class:`Recording` wraps whatever engine a request uses: it checks for cancellation
  before and after each call and remembers every completion, so the answer's
  ``finish_reason`` (and log-probabilities) can be found afterwards.
* :class:`CallEngine` is the request's engine for backends without a decode loop: the
  remote predictor (called directly: it is thread-safe and batches on its side) or an
  in-process engine whose calls a :class:`Coalescer` merges across requests.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from scoreops.serving.decode import Cancelled
from scoreops.serving.requests import RequestControl

__all__ = ["CallEngine", "Coalescer", "Recording", "ServedResult"]

Conversation = list[dict[str, str]]


@dataclass
class ServedResult:
    """One answer (one of ``n``) for one conversation."""

    result: Any  # scoreops.strategies.StrategyResult
    finish_reason: str
    completion: Any = None  # the final attempt's Completion, when the engine returned it


class Recording:
    """The engine as seen by one request's strategy: checks for cancellation before each
    call, remembers each completion (for ``finish_reason``) and holds the request to its
    generated-token ``budget``: a call gets at most the budget left, shared over its rows
    (``max_new_tokens`` lowered), and a call for which not one token per row is left is
    refused (HTTP 400 naming ``scoreops.max_total_tokens``)."""

    def __init__(self, inner: Any, control: RequestControl, budget: int | None = None) -> None:
        self._inner = inner
        self._control = control
        self.tokenizer = getattr(inner, "tokenizer", None)
        self.completions: dict[str, list[Any]] = {}
        self.budget = budget
        self.generated = 0

    def _within_budget(self, rows: int, params: Any) -> Any:
        if self.budget is None:
            return params
        import dataclasses

        from scoreops.serving.protocol import bad_request

        left = self.budget - self.generated
        if left < rows:
            raise bad_request("scoreops.max_total_tokens",
                              f"the strategy needs more than the request's budget of "
                              f"{self.budget} generated tokens ({self.generated} spent)")
        if params.max_new_tokens * rows > left:
            params = dataclasses.replace(params, max_new_tokens=left // rows)
        return params

    def generate(self, conversations: Sequence[Conversation], params: Any, *,
                 prompt_token_ids: Sequence[Sequence[int]] | None = None) -> list[list[Any]]:
        self._control.check()
        params = self._within_budget(len(conversations) * max(1, params.n), params)
        if prompt_token_ids is None:
            outs = self._inner.generate(conversations, params)
        else:
            outs = self._inner.generate(conversations, params, prompt_token_ids=prompt_token_ids)
        self._control.check()
        for conv, cs in zip(conversations, outs, strict=False):
            self.completions.setdefault(_conv_key(conv), []).extend(cs)
            for c in cs:
                counted = getattr(c, "num_tokens", None)
                self.generated += int(counted) if counted is not None else len(
                    c.token_ids or [])
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


class Coalescer:
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


class CallEngine:
    """A request's engine for backends without a decode loop: the remote predictor (called
    directly: it is thread-safe and batches on its side) or a coalesced in-process engine."""

    def __init__(self, engine: Any, coalescer: Coalescer | None,
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


def _conv_key(conv: Sequence[dict[str, Any]]) -> str:
    return json.dumps([[m.get("role"), m.get("content")] for m in conv])
