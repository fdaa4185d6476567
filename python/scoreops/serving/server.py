"""Start the real KServe model server with the correction layer.

KServe parses ``sys.argv`` when ``kserve.model_server`` is imported, and its REST server binds
``0.0.0.0``. :func:`run_server` therefore (1) sets ``sys.argv`` to only the KServe options it
is given before the first import of kserve, and (2) starts the REST server through
:class:`ScoreopsModelServer`, a ``kserve.ModelServer`` whose ``start`` takes a bind address
(``127.0.0.1`` by default locally; the container entrypoint passes ``0.0.0.0``). gRPC is off:
the correction layer speaks HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from scoreops.serving.config import ServingConfig

log = logging.getLogger("scoreops.serving")

__all__ = ["prepare_kserve_argv", "run_server"]


def prepare_kserve_argv(kserve_args: Sequence[str] = ()) -> None:
    """Give kserve only ``kserve_args`` to parse (it reads ``sys.argv`` on import)."""
    if "kserve.model_server" in sys.modules:
        if kserve_args:
            log.warning("kserve is already imported; ignoring %s", list(kserve_args))
        return
    sys.argv = [sys.argv[0] if sys.argv else "scoreops-serve", *kserve_args]


def _server_class() -> Any:
    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.rest.server import RESTServer

    from scoreops.serving.openai_errors import register_error_handler

    class ScoreopsRESTServer(RESTServer):
        """KServe's REST server with the correction layer's error handlers registered after
        KServe's own (which would otherwise replace them)."""

        def _add_exception_handlers(self, app: Any) -> None:
            super()._add_exception_handlers(app)
            register_error_handler(app)

    class ScoreopsModelServer(ModelServer):
        """``kserve.ModelServer`` with a bind address (one REST worker, no gRPC)."""

        def __init__(self, host: str = "127.0.0.1", **kwargs: Any) -> None:
            kwargs.setdefault("enable_grpc", False)
            kwargs.setdefault("workers", 1)
            super().__init__(**kwargs)
            self.host = host

        def start(self, models: list[Any]) -> None:
            if self.workers != 1 or self.enable_grpc:
                super().start(models)  # KServe's own path (binds 0.0.0.0)
                return
            self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = ScoreopsRESTServer(
                FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension,
                self.http_port, access_log_format=self.access_log_format, workers=1,
                grace_period=self.grace_period, event_loop=self.event_loop,
                timeout_keep_alive=self.timeout_keep_alive, ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
            )
            self._rest_server.config.host = self.host
            self.servers.append(self._rest_server.start())
            self.setup_event_loop()
            # uvicorn handles SIGINT/SIGTERM itself while serving (graceful shutdown) and
            # re-raises the signal afterwards; exit cleanly then.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, _exit_on_signal)
            asyncio.run(self._serve())

    return ScoreopsModelServer


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def run_server(config: ServingConfig, host: str = "127.0.0.1", port: int = 8080, *,
               kserve_args: Sequence[str] = ()) -> int:
    """Load the model and serve until SIGINT/SIGTERM. Returns the exit status."""
    prepare_kserve_argv(kserve_args)
    from kserve import model_server

    from scoreops.serving.model import CorrectorModel
    from scoreops.serving.openai_routes import register_error_handler, register_openai_routes

    model = CorrectorModel(config)
    model.load()
    assert model.corrector is not None
    register_error_handler(model_server.app)  # again once KServe added its handlers
    register_openai_routes(model_server.app, model.corrector)
    server = _server_class()(host=host, http_port=port)
    log.info("scoreops serving %r on http://%s:%d (OpenAI API under /openai/v1)",
             config.name, host, port)
    try:
        server.start([model])
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        model.stop()
    return 0
