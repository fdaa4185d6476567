"""OpenAI-compatible routes added to the KServe model server's FastAPI app.

KServe's own OpenAI data plane serves ``OpenAIModel`` subclasses and pulls in vLLM (CUDA);
the correction layer is a plain ``kserve.Model``, so these routes are registered on the same
app (``kserve.model_server.app``) before the server starts, next to KServe's ``/v1``, ``/v2``,
health and ``/metrics`` routes:

* ``GET  /openai/v1/models``
* ``POST /openai/v1/chat/completions`` — ``messages``, ``model``, ``temperature``, ``top_p``,
  ``max_tokens`` (or ``max_completion_tokens``), ``n``, ``stop``, ``seed``, ``stream``;
* ``POST /openai/v1/completions`` — ``prompt`` (a string or a list), each sent to the model as
  one user message through its chat template (the correction layer is conversational).

Responses have the standard shape. ``usage`` counts the tokens of *every* turn (a
self-correcting answer really generates them). ``"scoreops": {"return_attempts": true}`` adds
a ``scoreops`` object to each choice with every attempt and the exact messages it answered.
With ``stream: true`` the answer is sent as server-sent events in OpenAI's chunk format once
the final turn is known (earlier turns are not streamed: they are not the answer).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response

from scoreops.serving.core import Corrector, PreparedRequest, ServedResult, attempts_trace
from scoreops.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ServingError,
    parse_body,
)

__all__ = ["register_error_handler", "register_openai_routes"]

PREFIX = "/openai/v1"
_STREAM_PIECE = 24  # characters per streamed chunk


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
    status = 500
    try:
        response = await handler()
        status = response.status_code
        return response
    except ServingError as exc:
        status = exc.status
        return _error_response(exc)
    finally:
        corrector.metrics.observe_request(corrector.name, route, status,
                                          time.monotonic() - start)


def _sse(chunks: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return gen()


def _pieces(text: str) -> list[str]:
    return [text[i:i + _STREAM_PIECE] for i in range(0, len(text), _STREAM_PIECE)] or [""]


def _chat_response(corrector: Corrector, req: ChatCompletionRequest, prepared: PreparedRequest,
                   answers: list[list[ServedResult]]) -> dict[str, Any]:
    choices = []
    for i, a in enumerate(answers[0]):
        choice: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": a.result.final_text},
            "logprobs": None,
            "finish_reason": a.finish_reason,
        }
        if prepared.return_attempts:
            choice["scoreops"] = {"strategy": prepared.strategy.name, **attempts_trace(a.result)}
        choices.append(choice)
    return _envelope("chatcmpl", "chat.completion", corrector, choices, answers)


def _reply(req: ChatCompletionRequest | CompletionRequest, body: dict[str, Any],
           chunks: Callable[[dict[str, Any], bool], list[dict[str, Any]]]) -> Response:
    """The body as JSON, or as server-sent chunks when the request asked to stream."""
    from fastapi.responses import JSONResponse, StreamingResponse

    if req.stream:
        usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_sse(chunks(body, usage)), media_type="text/event-stream")
    return JSONResponse(body)


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


def _chat_chunks(body: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    base = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"],
            "model": body["model"]}
    chunks: list[dict[str, Any]] = []
    for ch in body["choices"]:
        i = ch["index"]
        chunks.append({**base, "choices": [{"index": i, "delta": {"role": "assistant",
                                                                  "content": ""},
                                            "logprobs": None, "finish_reason": None}]})
        for piece in _pieces(ch["message"]["content"]):
            chunks.append({**base, "choices": [{"index": i, "delta": {"content": piece},
                                                "logprobs": None, "finish_reason": None}]})
        last: dict[str, Any] = {"index": i, "delta": {}, "logprobs": None,
                                "finish_reason": ch["finish_reason"]}
        if "scoreops" in ch:
            last["scoreops"] = ch["scoreops"]
        chunks.append({**base, "choices": [last]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": body["usage"]})
    return chunks


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


def _completion_chunks(body: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    base = {"id": body["id"], "object": "text_completion", "created": body["created"],
            "model": body["model"]}
    chunks: list[dict[str, Any]] = []
    for ch in body["choices"]:
        for piece in _pieces(ch["text"]):
            chunks.append({**base, "choices": [{"index": ch["index"], "text": piece,
                                                "logprobs": None, "finish_reason": None}]})
        last = {"index": ch["index"], "text": "", "logprobs": None,
                "finish_reason": ch["finish_reason"]}
        if "scoreops" in ch:
            last["scoreops"] = ch["scoreops"]
        chunks.append({**base, "choices": [last]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": body["usage"]})
    return chunks


def register_openai_routes(app: FastAPI, corrector: Corrector) -> None:
    """Add the ``/openai/v1`` routes for ``corrector`` to ``app`` (before the server starts)."""
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse

    router = APIRouter(prefix=PREFIX, tags=["OpenAI"])

    async def list_models() -> Response:
        async def handle() -> Response:
            return JSONResponse({"object": "list", "data": [{
                "id": corrector.name, "object": "model", "created": 0, "owned_by": "scoreops",
                "scoreops": {"strategy": corrector.config.strategy.name,
                             "turns": corrector.config.strategy.turns,
                             "backend": corrector.config.backend},
            }]})

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
                stop=req.stop_list, seed=req.seed, options=req.scoreops, arrival=arrival)
            answers = await corrector.run(prepared)
            return _reply(req, _chat_response(corrector, req, prepared, answers), _chat_chunks)

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
            answers = await corrector.run(prepared)
            return _reply(req, _completion_response(corrector, req, prepared, answers),
                          _completion_chunks)

        return await _timed(corrector, "completions", handle)

    router.add_api_route("/models", list_models, methods=["GET"])
    router.add_api_route("/chat/completions", chat_completions, methods=["POST"])
    router.add_api_route("/completions", completions, methods=["POST"])
    app.include_router(router)


def register_error_handler(app: FastAPI) -> None:
    """Answer a :class:`ServingError` raised anywhere (e.g. in KServe's v1 ``predict`` path)
    with its status: OpenAI's error shape under ``/openai``, KServe's ``{"error": ...}``
    elsewhere."""
    from fastapi.responses import JSONResponse

    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServingError)
        body = (exc.openai_body() if request.url.path.startswith("/openai")
                else exc.kserve_body())
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    app.add_exception_handler(ServingError, handler)
