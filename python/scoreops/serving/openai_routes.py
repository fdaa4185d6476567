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

The streamed answers are written by :mod:`scoreops.serving.streaming`, errors shaped by
:mod:`scoreops.serving.openai_errors`.

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
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response

from scoreops.serving.core import (
    ClientGone,
    Corrector,
    PreparedRequest,
    ServedResult,
    attempts_trace,
)
from scoreops.serving.openai_errors import OPENAI_PREFIX as PREFIX
from scoreops.serving.openai_errors import error_response, register_error_handler
from scoreops.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ServingError,
    parse_body,
)
from scoreops.serving.streaming import (
    ChatStreamer,
    CompletionStreamer,
    Streamer,
    TrackedStream,
    disconnected,
    stream_events,
)

__all__ = ["register_error_handler", "register_openai_routes"]

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


async def _timed(corrector: Corrector, route: str,
                 handler: Callable[[], Awaitable[Response]]) -> Response:
    start = time.monotonic()
    status: int | str = 500
    try:
        response = await handler()
        if isinstance(response, TrackedStream):
            response.started(route, start)  # the stream counts itself when it ends
            status = ""
        else:
            status = response.status_code
        return response
    except ServingError as exc:
        status = exc.status
        return error_response(exc)
    except ClientGone:
        status = "cancelled"
        return Response(status_code=499)
    finally:
        if status != "":
            corrector.metrics.observe_request(corrector.name, route, status,
                                              time.monotonic() - start)


async def _unless_gone(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` unless the client disconnects first: then cancel it and raise
    :class:`ClientGone`."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected(request))
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


async def _serve(corrector: Corrector, request: Request, req: ChatCompletionRequest |
                 CompletionRequest, prepared: PreparedRequest,
                 body: Callable[[list[list[ServedResult]]], dict[str, Any]],
                 streamer: Streamer) -> Response:
    """Run ``prepared``: a JSON answer, or a stream once the request has a running slot."""
    from fastapi.responses import JSONResponse

    if not req.stream:
        answers = await _unless_gone(request, corrector.run(prepared))
        return JSONResponse(body(answers))
    slot = await _unless_gone(request, corrector.admit(prepared))
    usage = bool(req.stream_options and req.stream_options.include_usage)

    def content(response: TrackedStream) -> AsyncIterator[bytes]:
        return stream_events(corrector, request, prepared, slot, body, streamer, usage,
                             response)

    return TrackedStream(corrector, content, slot.release)


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


async def _chat(corrector: Corrector, request: Request, arrival: float) -> Response:
    """``POST /chat/completions``: the conversation's answers, as JSON or a stream."""
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
        ChatStreamer("chat.completion.chunk", "chatcmpl", corrector))


async def _completions(corrector: Corrector, request: Request, arrival: float) -> Response:
    """``POST /completions``: each prompt's answers, as JSON or a stream."""
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
        CompletionStreamer("text_completion", "cmpl", corrector,
                           req.prompts if req.echo else None))


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
        return await _timed(corrector, "chat", lambda: _chat(corrector, request, arrival))

    async def completions(request: Request) -> Response:
        arrival = time.monotonic()
        return await _timed(corrector, "completions",
                            lambda: _completions(corrector, request, arrival))

    router.add_api_route("/models", list_models, methods=["GET"])
    router.add_api_route("/models/{model_id:path}", retrieve_model, methods=["GET"])
    router.add_api_route("/chat/completions", chat_completions, methods=["POST"])
    router.add_api_route("/completions", completions, methods=["POST"])
    app.include_router(router)
