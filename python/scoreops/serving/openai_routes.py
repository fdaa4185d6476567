"""OpenAI-compatible routes added to the KServe model server's FastAPI app.

KServe's own OpenAI data plane serves ``OpenAIModel`` subclasses and pulls in vLLM (CUDA);
the correction layer is a plain ``kserve.Model``, so these routes are registered on the same
app (``kserve.model_server.app``) before the server starts, next to KServe's ``/v1``, ``/v2``,
health and ``/metrics`` routes:

* ``GET  /openai/v1/models`` and ``GET /openai/v1/models/{id}``
* ``POST /openai/v1/chat/completions`` — ``messages``, ``model``, ``temperature``, ``top_p``,
  ``max_tokens`` (or ``max_completion_tokens``), ``n``, ``stop``, ``seed``, ``stream``
  (fields this server does not implement are refused with a 400 naming them, see
  :mod:`scoreops.serving.protocol`);
* ``POST /openai/v1/completions`` — ``prompt`` (a string or a list), each sent to the model as
  one user message through its chat template (the correction layer is conversational).

Responses have the standard shape. ``usage`` counts the tokens of *every* turn (a
self-correcting answer really generates them). ``"scoreops": {"return_attempts": true}`` adds
a ``scoreops`` object to each choice with every attempt and the exact messages it answered.
With ``stream: true`` the response starts once the request gets a running slot (a 429 is
still a real status): a role chunk, then ``: keep-alive`` SSE comments every few seconds
while earlier turns run (they are not the answer), then the final turn's text as it is
generated (hf backend; other backends send it when it is complete), the finish chunk and
``[DONE]``. An error after the stream started is sent as an ``{"error": ...}`` event.

A client that goes away (closed connection, streaming or not) cancels its request: its
rows leave the decode batch at the next step, its slot is freed and it is counted as
``status="cancelled"`` in ``scoreops_requests_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from scoreops.serving.core import (
    ClientGone,
    Corrector,
    PreparedRequest,
    ServedResult,
    attempts_trace,
)
from scoreops.serving.decode import RequestControl
from scoreops.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ServingError,
    parse_body,
)

__all__ = ["register_error_handler", "register_openai_routes"]

log = logging.getLogger("scoreops.serving")

PREFIX = "/openai/v1"
KEEPALIVE_SECONDS = 5.0  # SSE comment interval while earlier turns run
T = TypeVar("T")


def _check_model(corrector: Corrector, model: str | None) -> None:
    if model is not None and model != corrector.name:
        raise ServingError(404, f"model: {model!r} is not served here; this server serves "
                           f"{corrector.name!r}", param="model")


def _usage(answers: list[list[ServedResult]]) -> dict[str, int]:
    prompt = sum(a.result.prompt_tokens for per in answers for a in per)
    completion = sum(a.result.completion_tokens for per in answers for a in per)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _error_response(exc: ServingError) -> Response:
    from fastapi.responses import JSONResponse

    return JSONResponse(exc.openai_body(), status_code=exc.status, headers=exc.headers)


async def _timed(corrector: Corrector, route: str,
                 handler: Callable[[], Awaitable[Response]]) -> Response:
    start = time.monotonic()
    status: int | str = 500
    try:
        response = await handler()
        if isinstance(response, _TrackedStream):
            response.started(route, start)  # the stream counts itself when it ends
            status = ""
        else:
            status = response.status_code
        return response
    except ServingError as exc:
        status = exc.status
        return _error_response(exc)
    except ClientGone:
        status = "cancelled"
        return Response(status_code=499)
    finally:
        if status != "":
            corrector.metrics.observe_request(corrector.name, route, status,
                                              time.monotonic() - start)


async def _disconnected(request: Request) -> None:
    """Return once the client has closed the connection (the body was read already)."""
    while True:
        try:
            message = await request.receive()
        except Exception:  # no way to tell: never report a disconnect
            await asyncio.Future()
        if message.get("type") == "http.disconnect":
            return


async def _unless_gone(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` unless the client disconnects first: then cancel it and raise
    :class:`ClientGone`."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


class _TrackedStream(StreamingResponse):
    """A streamed answer that frees its slot and counts its outcome when it ends (also when
    the client goes away before it is sent)."""

    def __init__(self, corrector: Corrector, content: Callable[[_TrackedStream],
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


async def _serve(corrector: Corrector, request: Request, req: ChatCompletionRequest |
                 CompletionRequest, prepared: PreparedRequest,
                 body: Callable[[list[list[ServedResult]]], dict[str, Any]],
                 streamer: _Streamer) -> Response:
    """Run ``prepared``: a JSON answer, or a stream once the request has a running slot."""
    from fastapi.responses import JSONResponse

    if not req.stream:
        answers = await _unless_gone(request, corrector.run(prepared))
        return JSONResponse(body(answers))
    slot = await _unless_gone(request, corrector.admit(prepared))
    usage = bool(req.stream_options and req.stream_options.include_usage)

    def content(response: _TrackedStream) -> AsyncIterator[bytes]:
        return _stream(corrector, request, prepared, slot, body, streamer, usage, response)

    return _TrackedStream(corrector, content, slot.release)


class _Streamer:
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


class _ChatStreamer(_Streamer):
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


class _CompletionStreamer(_Streamer):
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


async def _stream(corrector: Corrector, request: Request, prepared: PreparedRequest,
                  slot: Any, body: Callable[[list[list[ServedResult]]], dict[str, Any]],
                  streamer: _Streamer, include_usage: bool,
                  response: _TrackedStream) -> AsyncIterator[bytes]:
    """The server-sent events of one streamed request."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

    def emit(choice: int, text: str) -> None:  # called in the decode thread
        loop.call_soon_threadsafe(queue.put_nowait, (choice, text))

    control = RequestControl()
    run = asyncio.ensure_future(corrector.run(prepared, control=control, slot=slot, emit=emit))
    gone = asyncio.ensure_future(_disconnected(request))
    sent = {i: streamer.prefix(i, prepared.choices) for i in range(prepared.choices)}
    try:
        for chunk in streamer.opening(prepared.choices):
            yield _sse(chunk)
        while True:
            get = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({get, run, gone}, timeout=KEEPALIVE_SECONDS,
                                         return_when=asyncio.FIRST_COMPLETED)
            if get.done():
                choice, text = get.result()
                sent[choice] = sent.get(choice, "") + text
                yield _sse(streamer.delta(choice, text))
                continue
            get.cancel()
            if gone in done:
                return  # the finally clause cancels the request
            if run in done:
                break
            yield b": keep-alive\n\n"
        while not queue.empty():
            choice, text = queue.get_nowait()
            sent[choice] = sent.get(choice, "") + text
            yield _sse(streamer.delta(choice, text))
        try:
            answers = run.result()
        except ServingError as exc:
            response.outcome = exc.status
            yield _sse(exc.openai_body())
            yield b"data: [DONE]\n\n"
            return
        except Exception as exc:  # reported in the stream: the status line is gone
            err = ServingError(500, f"generation failed: {type(exc).__name__}: {exc}")
            log.exception("streamed request failed")
            response.outcome = 500
            yield _sse(err.openai_body())
            yield b"data: [DONE]\n\n"
            return
        full = body(answers)
        for ch in full["choices"]:
            text = streamer.text_of(ch)
            already = sent.get(ch["index"], "")
            rest = text[len(already):] if text.startswith(already) else ""
            if rest:
                yield _sse(streamer.delta(ch["index"], rest))
            yield _sse(streamer.last(ch))
        if include_usage:
            yield _sse(streamer.chunk([], usage=full["usage"]))
        yield b"data: [DONE]\n\n"
        response.outcome = 200
    finally:
        gone.cancel()
        if not run.done():
            run.cancel()  # the client went away: stop generating


def _chat_response(corrector: Corrector, req: ChatCompletionRequest, prepared: PreparedRequest,
                   answers: list[list[ServedResult]]) -> dict[str, Any]:
    choices = []
    for i, a in enumerate(answers[0]):
        choice: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": a.result.final_text},
            "logprobs": ({"content": corrector.token_logprobs(a.completion), "refusal": None}
                         if prepared.logprobs else None),
            "finish_reason": a.finish_reason,
        }
        if prepared.return_attempts:
            choice["scoreops"] = {"strategy": prepared.strategy.name, **attempts_trace(a.result)}
        choices.append(choice)
    return _envelope("chatcmpl", "chat.completion", corrector, choices, answers)


def _envelope(id_prefix: str, object_name: str, corrector: Corrector,
              choices: list[dict[str, Any]], answers: list[list[ServedResult]]) -> dict[str, Any]:
    """The fields every OpenAI response shares around its choices."""
    return {
        "id": f"{id_prefix}-{uuid.uuid4().hex}",
        "object": object_name,
        "created": int(time.time()),
        "model": corrector.name,
        "choices": choices,
        "usage": _usage(answers),
    }


def _completion_response(corrector: Corrector, req: CompletionRequest,
                         prepared: PreparedRequest,
                         answers: list[list[ServedResult]]) -> dict[str, Any]:
    choices = []
    for p, per in enumerate(answers):
        for j, a in enumerate(per):
            text = a.result.final_text
            if req.echo:
                text = req.prompts[p] + text
            choice: dict[str, Any] = {"index": p * req.n + j, "text": text, "logprobs": None,
                                      "finish_reason": a.finish_reason}
            if prepared.return_attempts:
                choice["scoreops"] = {"strategy": prepared.strategy.name,
                                      **attempts_trace(a.result)}
            choices.append(choice)
    return _envelope("cmpl", "text_completion", corrector, choices, answers)


def _model_card(corrector: Corrector) -> dict[str, Any]:
    return {"id": corrector.name, "object": "model", "created": 0, "owned_by": "scoreops",
            "scoreops": {"strategy": corrector.config.strategy.name,
                         "turns": corrector.config.strategy.turns,
                         "backend": corrector.config.backend}}


def register_openai_routes(app: FastAPI, corrector: Corrector) -> None:
    """Add the ``/openai/v1`` routes for ``corrector`` to ``app`` (before the server starts)."""
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse

    router = APIRouter(prefix=PREFIX, tags=["OpenAI"])

    async def list_models() -> Response:
        async def handle() -> Response:
            return JSONResponse({"object": "list", "data": [_model_card(corrector)]})

        return await _timed(corrector, "models", handle)

    async def retrieve_model(model_id: str) -> Response:
        async def handle() -> Response:
            if model_id != corrector.name:
                raise ServingError(404, f"model: {model_id!r} is not served here; this server "
                                   f"serves {corrector.name!r}", param="model")
            return JSONResponse(_model_card(corrector))

        return await _timed(corrector, "models", handle)

    async def chat_completions(request: Request) -> Response:
        arrival = time.monotonic()

        async def handle() -> Response:
            req = parse_body(ChatCompletionRequest, await request.body())
            _check_model(corrector, req.model)
            if req.messages[-1].role == "assistant":
                where = f"messages.{len(req.messages) - 1}.role"
                raise ServingError(400, f"{where}: the last message must not be the "
                                   "assistant's; end with the user's turn", param=where)
            max_tokens, mt_param = req.requested_max_tokens
            prepared = corrector.prepare(
                [[m.as_message() for m in req.messages]], n=req.n, max_tokens=max_tokens,
                max_tokens_param=mt_param, temperature=req.temperature, top_p=req.top_p,
                stop=req.stop_list, seed=req.seed, options=req.scoreops, arrival=arrival,
                logprobs=bool(req.logprobs))
            return await _serve(
                corrector, request, req, prepared,
                lambda answers: _chat_response(corrector, req, prepared, answers),
                _ChatStreamer("chat.completion.chunk", "chatcmpl", corrector))

        return await _timed(corrector, "chat", handle)

    async def completions(request: Request) -> Response:
        arrival = time.monotonic()

        async def handle() -> Response:
            req = parse_body(CompletionRequest, await request.body())
            _check_model(corrector, req.model)
            max_tokens, mt_param = req.requested_max_tokens
            prepared = corrector.prepare(
                [[{"role": "user", "content": p}] for p in req.prompts], prompt_param="prompt",
                n=req.n, max_tokens=max_tokens, max_tokens_param=mt_param,
                temperature=req.temperature, top_p=req.top_p, stop=req.stop_list,
                seed=req.seed, options=req.scoreops, arrival=arrival)
            return await _serve(
                corrector, request, req, prepared,
                lambda answers: _completion_response(corrector, req, prepared, answers),
                _CompletionStreamer("text_completion", "cmpl", corrector,
                                    req.prompts if req.echo else None))

        return await _timed(corrector, "completions", handle)

    router.add_api_route("/models", list_models, methods=["GET"])
    router.add_api_route("/models/{model_id:path}", retrieve_model, methods=["GET"])
    router.add_api_route("/chat/completions", chat_completions, methods=["POST"])
    router.add_api_route("/completions", completions, methods=["POST"])
    app.include_router(router)


def _openai_path(request: Request) -> bool:
    return request.url.path.startswith("/openai")


def register_error_handler(app: FastAPI) -> None:
    """Answer errors in the right shape, whoever raises them.

    * a :class:`ServingError` raised anywhere (e.g. in KServe's v1 ``predict`` path): its
      status, OpenAI's error shape under ``/openai``, KServe's ``{"error": ...}`` elsewhere;
    * the framework's own errors under ``/openai`` (404 unknown route, 405 wrong method,
      422, 500): OpenAI's error shape with the same status;
    * KServe's "model not found" (v1/v2 routes for an unknown model): a 404 without a
      logged traceback (a client mistake, not a server fault).

    Call it after KServe added its own handlers (they replace earlier ones for the same
    exception class): :mod:`scoreops.serving.server` does so when the app is built.
    """
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def serving_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServingError)
        body = exc.openai_body() if _openai_path(request) else exc.kserve_body()
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if not _openai_path(request):
            from fastapi.exception_handlers import http_exception_handler

            return await http_exception_handler(request, exc)
        if exc.status_code == 404:
            message = f"{request.url.path}: no such route; this server serves " + ", ".join(
                f"{PREFIX}{r}" for r in ("/models", "/chat/completions", "/completions"))
        elif exc.status_code == 405:
            message = f"{request.method} {request.url.path}: method not allowed"
        else:
            message = str(exc.detail)
        err = ServingError(exc.status_code, message)
        return JSONResponse(err.openai_body(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if not _openai_path(request):
            from fastapi.exception_handlers import request_validation_exception_handler

            return await request_validation_exception_handler(request, exc)
        errors = exc.errors()
        param = ".".join(str(p) for p in errors[0].get("loc", ())) if errors else None
        err = ServingError(400, f"{param}: {errors[0].get('msg')}" if errors else "bad request",
                           param=param)
        return JSONResponse(err.openai_body(), status_code=400)

    async def model_not_found(request: Request, exc: Exception) -> Response:
        body: dict[str, Any] = {"error": str(exc)}
        if _openai_path(request):
            body = ServingError(404, str(exc), param="model").openai_body()
        return JSONResponse(body, status_code=404)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        err = ServingError(500, f"internal error: {type(exc).__name__}: {exc}")
        body = err.openai_body() if _openai_path(request) else {"error": err.message}
        return JSONResponse(body, status_code=500)

    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
    try:
        from kserve.errors import ModelNotFound
    except ImportError:  # the app is not KServe's
        return
    app.add_exception_handler(ModelNotFound, model_not_found)
