"""Errors in the right shape, whoever raises them: the app-wide exception handlers.

* a :class:`~scoreops.serving.protocol.ServingError` raised anywhere (e.g. in KServe's v1
  ``predict`` path): its status, OpenAI's error shape under ``/openai``, KServe's
  ``{"error": ...}`` elsewhere;
* the framework's own errors under ``/openai`` (404 unknown route, 405 wrong method, 422,
  500): OpenAI's error shape with the same status;
* KServe's "model not found" (v1/v2 routes for an unknown model): a 404 without a logged
  traceback (a client mistake, not a server fault).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, Response

from scoreops.serving.protocol import ServingError

__all__ = ["OPENAI_PREFIX", "error_response", "register_error_handler"]

log = logging.getLogger("scoreops.serving")

OPENAI_PREFIX = "/openai/v1"
_ROUTES = ("/models", "/chat/completions", "/completions")


def error_response(exc: ServingError) -> Response:
    """``exc`` as an OpenAI error response."""
    from fastapi.responses import JSONResponse

    return JSONResponse(exc.openai_body(), status_code=exc.status, headers=exc.headers)


def _openai_path(request: Request) -> bool:
    return request.url.path.startswith("/openai")


async def _serving_error(request: Request, exc: Exception) -> Response:
    from fastapi.responses import JSONResponse

    assert isinstance(exc, ServingError)
    body = exc.openai_body() if _openai_path(request) else exc.kserve_body()
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    assert isinstance(exc, HTTPException)
    if not _openai_path(request):
        from fastapi.exception_handlers import http_exception_handler

        return await http_exception_handler(request, exc)
    if exc.status_code == 404:
        message = f"{request.url.path}: no such route; this server serves " + ", ".join(
            f"{OPENAI_PREFIX}{r}" for r in _ROUTES)
    elif exc.status_code == 405:
        message = f"{request.method} {request.url.path}: method not allowed"
    else:
        message = str(exc.detail)
    err = ServingError(exc.status_code, message)
    return JSONResponse(err.openai_body(), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> Response:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    assert isinstance(exc, RequestValidationError)
    if not _openai_path(request):
        from fastapi.exception_handlers import request_validation_exception_handler

        return await request_validation_exception_handler(request, exc)
    errors = exc.errors()
    param = ".".join(str(p) for p in errors[0].get("loc", ())) if errors else None
    err = ServingError(400, f"{param}: {errors[0].get('msg')}" if errors else "bad request",
                       param=param)
    return JSONResponse(err.openai_body(), status_code=400)


async def _model_not_found(request: Request, exc: Exception) -> Response:
    from fastapi.responses import JSONResponse

    body: dict[str, Any] = {"error": str(exc)}
    if _openai_path(request):
        body = ServingError(404, str(exc), param="model").openai_body()
    return JSONResponse(body, status_code=404)


async def _unexpected(request: Request, exc: Exception) -> Response:
    from fastapi.responses import JSONResponse

    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    err = ServingError(500, f"internal error: {type(exc).__name__}: {exc}")
    body = err.openai_body() if _openai_path(request) else {"error": err.message}
    return JSONResponse(body, status_code=500)


def register_error_handler(app: FastAPI) -> None:
    """Install the handlers above on ``app``.

    Call it after KServe added its own handlers (they replace earlier ones for the same
    exception class): :mod:`scoreops.serving.server` does so when the app is built.
    """
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    try:
        from kserve.errors import ModelNotFound
    except ImportError:  # the app is not KServe's
        return
    app.add_exception_handler(ModelNotFound, _model_not_found)
