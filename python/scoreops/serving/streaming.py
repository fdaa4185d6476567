"""Server-sent events of a streamed OpenAI answer (``stream: true``).

A streamed request starts once it has a running slot: a role chunk (chat) or the echoed
prompt (completions), then ``: keep-alive`` comments every :data:`KEEPALIVE_SECONDS` while
earlier turns run (they are not the answer), then the final turn's text as it is generated
(hf and vllm backends; the remote openai backend sends it when it is complete), the finish
chunk, the usage chunk if asked for, and ``[DONE]``. An error after the stream started is sent as an
``{"error": ...}`` event. :class:`TrackedStream` frees the slot and counts the outcome when
the stream ends, also when the client goes away first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from scoreops.serving.protocol import ServingError
from scoreops.serving.requests import RequestControl

if TYPE_CHECKING:
    from scoreops.serving.core import Corrector, PreparedRequest, ServedResult

__all__ = [
    "KEEPALIVE_SECONDS",
    "ChatStreamer",
    "CompletionStreamer",
    "Streamer",
    "TrackedStream",
    "disconnected",
    "stream_events",
]

log = logging.getLogger("scoreops.serving")

KEEPALIVE_SECONDS = 5.0  # SSE comment interval while earlier turns run
_DONE = b"data: [DONE]\n\n"

Body = Callable[[list[list["ServedResult"]]], dict[str, Any]]


async def disconnected(request: Request) -> None:
    """Return once the client has closed the connection (the body was read already)."""
    while True:
        try:
            message = await request.receive()
        except Exception:  # no way to tell: never report a disconnect
            await asyncio.Future()
        if message.get("type") == "http.disconnect":
            return


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


class TrackedStream(StreamingResponse):
    """A streamed answer that frees its slot and counts its outcome when it ends (also when
    the client goes away before it is sent)."""

    def __init__(self, corrector: Corrector, content: Callable[[TrackedStream],
                 AsyncIterator[bytes]], release: Callable[[], None]) -> None:
        self.corrector = corrector
        self.outcome: int | str = "cancelled"
        self._release = release
        self._route = ""
        self._start = time.monotonic()
        super().__init__(content(self), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache"})

    def started(self, route: str, start: float) -> None:
        self._route, self._start = route, start

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
            self.corrector.metrics.observe_request(self.corrector.name, self._route,
                                                   self.outcome, time.monotonic() - self._start)


class Streamer:
    """How one route writes its chunks."""

    def __init__(self, object_name: str, id_prefix: str, corrector: Corrector) -> None:
        self.base = {"id": f"{id_prefix}-{uuid.uuid4().hex}", "object": object_name,
                     "created": int(time.time()), "model": corrector.name}

    def opening(self, choices: int) -> list[dict[str, Any]]:
        return []

    def prefix(self, index: int, choices: int) -> str:
        """Text the opening chunks already sent for a choice (an echoed prompt)."""
        return ""

    def delta(self, index: int, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def last(self, choice: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def text_of(self, choice: dict[str, Any]) -> str:
        raise NotImplementedError

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {**self.base, "choices": choices, **extra}


class ChatStreamer(Streamer):
    """``chat.completion.chunk`` events."""

    def opening(self, choices: int) -> list[dict[str, Any]]:
        return [self.chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None}]) for i in range(choices)]

    def delta(self, index: int, text: str) -> dict[str, Any]:
        return self.chunk([{"index": index, "delta": {"content": text}, "logprobs": None,
                            "finish_reason": None}])

    def last(self, choice: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"index": choice["index"], "delta": {},
                               "logprobs": choice.get("logprobs"),
                               "finish_reason": choice["finish_reason"]}
        if "scoreops" in choice:
            out["scoreops"] = choice["scoreops"]
        return self.chunk([out])

    def text_of(self, choice: dict[str, Any]) -> str:
        return str(choice["message"]["content"])


class CompletionStreamer(Streamer):
    """``text_completion`` events, the echoed prompts first when ``echo`` is set."""

    def __init__(self, object_name: str, id_prefix: str, corrector: Corrector,
                 echo: list[str] | None) -> None:
        super().__init__(object_name, id_prefix, corrector)
        self.echo = echo

    def prefix(self, index: int, choices: int) -> str:
        if not self.echo:
            return ""
        return self.echo[index // (choices // len(self.echo))]

    def opening(self, choices: int) -> list[dict[str, Any]]:
        return [self.delta(i, self.prefix(i, choices)) for i in range(choices)
                if self.prefix(i, choices)]

    def delta(self, index: int, text: str) -> dict[str, Any]:
        return self.chunk([{"index": index, "text": text, "logprobs": None,
                            "finish_reason": None}])

    def last(self, choice: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"index": choice["index"], "text": "", "logprobs": None,
                               "finish_reason": choice["finish_reason"]}
        if "scoreops" in choice:
            out["scoreops"] = choice["scoreops"]
        return self.chunk([out])

    def text_of(self, choice: dict[str, Any]) -> str:
        return str(choice["text"])


class _Events:
    """One streamed request's state: its run, the text pieces the decode thread emits, the
    client's disconnect and what was sent of each choice so far."""

    def __init__(self, corrector: Corrector, request: Request, prepared: PreparedRequest,
                 slot: Any, streamer: Streamer) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

        def emit(choice: int, text: str) -> None:  # called in the decode thread
            loop.call_soon_threadsafe(self.queue.put_nowait, (choice, text))

        self.streamer = streamer
        self.run = asyncio.ensure_future(corrector.run(prepared, control=RequestControl(),
                                                       slot=slot, emit=emit))
        self.gone = asyncio.ensure_future(disconnected(request))
        self.sent = {i: streamer.prefix(i, prepared.choices) for i in range(prepared.choices)}
        self.client_gone = False

    def _delta(self, choice: int, text: str) -> bytes:
        self.sent[choice] = self.sent.get(choice, "") + text
        return _sse(self.streamer.delta(choice, text))

    async def live(self) -> AsyncIterator[bytes]:
        """The pieces of text as they come, keep-alives in between, until the run ends (or
        the client goes away: then ``client_gone`` is set)."""
        while True:
            get = asyncio.ensure_future(self.queue.get())
            done, _ = await asyncio.wait({get, self.run, self.gone}, timeout=KEEPALIVE_SECONDS,
                                         return_when=asyncio.FIRST_COMPLETED)
            if get.done():
                yield self._delta(*get.result())
                continue
            get.cancel()
            if self.gone in done:
                self.client_gone = True
                return
            if self.run in done:
                return
            yield b": keep-alive\n\n"

    def drain(self) -> Iterator[bytes]:
        """The pieces emitted before the run ended that are not sent yet."""
        while not self.queue.empty():
            yield self._delta(*self.queue.get_nowait())

    def finish(self, body: Body, include_usage: bool,
               response: TrackedStream) -> Iterator[bytes]:
        """The rest of each answer, the finish chunks, the usage and ``[DONE]`` (or the
        error event); sets the stream's outcome."""
        try:
            answers = self.run.result()
        except ServingError as exc:
            response.outcome = exc.status
            yield from (_sse(exc.openai_body()), _DONE)
            return
        except Exception as exc:  # reported in the stream: the status line is gone
            err = ServingError(500, f"generation failed: {type(exc).__name__}: {exc}")
            log.exception("streamed request failed")
            response.outcome = 500
            yield from (_sse(err.openai_body()), _DONE)
            return
        full = body(answers)
        for ch in full["choices"]:
            text = self.streamer.text_of(ch)
            already = self.sent.get(ch["index"], "")
            rest = text[len(already):] if text.startswith(already) else ""
            if rest:
                yield _sse(self.streamer.delta(ch["index"], rest))
            yield _sse(self.streamer.last(ch))
        if include_usage:
            yield _sse(self.streamer.chunk([], usage=full["usage"]))
        yield _DONE
        response.outcome = 200


async def stream_events(corrector: Corrector, request: Request, prepared: PreparedRequest,
                        slot: Any, body: Body, streamer: Streamer, include_usage: bool,
                        response: TrackedStream) -> AsyncIterator[bytes]:
    """The server-sent events of one streamed request (``body`` makes the full answer)."""
    events = _Events(corrector, request, prepared, slot, streamer)
    try:
        for chunk in streamer.opening(prepared.choices):
            yield _sse(chunk)
        async for piece in events.live():
            yield piece
        if events.client_gone:
            return  # the client went away: the finally clause cancels the request
        for piece in events.drain():
            yield piece
        for piece in events.finish(body, include_usage, response):
            yield piece
    finally:
        events.gone.cancel()
        if not events.run.done():
            events.run.cancel()  # the client went away: stop generating
