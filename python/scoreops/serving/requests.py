"""One request's view of the continuous batch (:class:`scoreops.serving.decode.DecodeLoop`).

* :class:`RequestControl` — the request's cancellation, set by the HTTP layer (client gone,
  timeout) and seen by its engine calls and its rows;
* :class:`RequestEngine` — the :class:`~scoreops.rollout.RolloutEngine` one request's strategy
  runs on (in its own thread): each ``generate`` call (a turn) submits its rows to the shared
  loop and waits for them, so requests at different turns are decoded together. It can stream
  the tokens of one call (the final turn) as they are generated;
* :class:`TextStream` — those tokens as text pieces for the response stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import wait as wait_futures
from typing import Any

from scoreops.rollout.types import Completion, Conversation, SamplingParams
from scoreops.serving.decode import Cancelled, DecodeLoop, Row

log = logging.getLogger("scoreops.serving")

__all__ = ["RequestControl", "RequestEngine", "TextStream", "wait_idle"]


class RequestControl:
    """Cancellation of one request: set by the HTTP layer, seen by its engine calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cancelled = False
        self.reason = ""
        self._on_cancel: list[Callable[[], None]] = []

    def cancel(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self.cancelled:
                return
            self.cancelled, self.reason = True, reason
            callbacks, self._on_cancel = self._on_cancel, []
        for cb in callbacks:
            cb()

    def on_cancel(self, cb: Callable[[], None]) -> Callable[[], None]:
        """Run ``cb`` on cancellation (at once if already cancelled); returns a remover."""
        with self._lock:
            if not self.cancelled:
                self._on_cancel.append(cb)
                return lambda: self._remove(cb)
        cb()
        return lambda: None

    def _remove(self, cb: Callable[[], None]) -> None:
        with self._lock:
            if cb in self._on_cancel:
                self._on_cancel.remove(cb)

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled(self.reason)


class TextStream:
    """Incremental text of streamed rows: ``(choice, text)`` pieces to ``emit``.

    Only text that cannot change any more is emitted: a trailing incomplete UTF-8 character is
    held back, and so is a tail that could still become a stop string. :meth:`finish` emits the
    rest of the final text.
    """

    def __init__(self, tokenizer: Any, emit: Callable[[int, str], None],
                 stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.emit = emit
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.stop = tuple(stop)
        self.sent: dict[int, str] = {}

    def on_token(self, choice: int) -> Callable[[Row], None]:
        def callback(row: Row) -> None:
            if row.finish is not None:
                return  # the final text (stop strings cut) is sent by finish()
            text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
            text = text.rstrip("\ufffd")
            if self.hold:
                text = text[: max(0, len(text) - self.hold)]
            sent = self.sent.get(choice, "")
            if len(text) > len(sent) and text.startswith(sent):
                self.sent[choice] = text
                self.emit(choice, text[len(sent):])

        return callback

    def finish(self, choice: int, final: str) -> None:
        sent = self.sent.get(choice, "")
        if not final.startswith(sent):  # cannot happen with prefix-stable decoding
            log.warning("streamed text is not a prefix of the final text")
            return
        if len(final) > len(sent):
            self.sent[choice] = final
            self.emit(choice, final[len(sent):])


class RequestEngine:
    """The RolloutEngine one request's strategy runs on: each call's rows go to the shared
    :class:`DecodeLoop`; the request's :class:`RequestControl` cancels them.

    ``stream_call`` (1-based) is the call whose rows are streamed through ``stream`` when it
    has one row per choice (the final turn); other calls are not streamed.
    """

    def __init__(self, loop: DecodeLoop, control: RequestControl, *,
                 stream: TextStream | None = None, stream_call: int | None = None,
                 choices: int = 1) -> None:
        self.loop = loop
        self.tokenizer = loop.tokenizer
        self.control = control
        self.stream = stream
        self.stream_call = stream_call
        self.choices = choices
        self.calls = 0
        self.streamed_call = False

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams, *,
                 prompt_token_ids: Sequence[Sequence[int]] | None = None
                 ) -> list[list[Completion]]:
        import random

        from scoreops.rollout.chat import encode_conversation
        from scoreops.rollout.hf import row_seed

        self.control.check()
        self.calls += 1
        if prompt_token_ids is None:
            prompts = [encode_conversation(self.tokenizer, c) for c in conversations]
        else:
            prompts = [list(p) for p in prompt_token_ids]
        base = params.seed if params.seed is not None else random.getrandbits(62)
        one = SamplingParams(max_new_tokens=params.max_new_tokens,
                             temperature=params.temperature, top_p=params.top_p, n=1,
                             seed=params.seed, stop=params.stop)
        stream = (self.stream is not None and self.calls == self.stream_call
                  and len(prompts) * params.n == self.choices)
        rows: list[Row] = []
        for c, prompt in enumerate(prompts):
            for s in range(params.n):
                hook = self.stream.on_token(len(rows)) if stream and self.stream else None
                rows.append(Row(prompt=prompt, params=one, seed=row_seed(base, c, s),
                                on_token=hook))
        self.streamed_call = self.streamed_call or stream
        remove = self.control.on_cancel(lambda: self.loop.cancel(rows))
        try:
            self.loop.submit(rows)
            wait_futures([r.future for r in rows])
        finally:
            remove()
        self.control.check()
        outs = [r.future.result() for r in rows]
        return [outs[c * params.n:(c + 1) * params.n] for c in range(len(prompts))]

    def sync_weights(self, model: Any) -> None:
        raise NotImplementedError("a served model's weights do not change")

    def close(self) -> None:
        pass


def wait_idle(loop: DecodeLoop, seconds: float = 10.0) -> bool:
    """True once the loop holds no rows (tests)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not loop.running and not loop.waiting:
            return True
        time.sleep(0.01)
    return False
