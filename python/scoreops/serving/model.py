"""The KServe model: the correction layer as a ``kserve.Model`` (v1 ``:predict``).

``POST /v1/models/NAME:predict`` takes ``{"instances": [...], "parameters": {...}}`` where an
instance is a question (a string), ``{"messages": [...]}`` or ``{"prompt": "..."}``, and the
optional parameters are ``max_tokens``, ``temperature``, ``top_p``, ``n``, ``stop``, ``seed``
and the ``scoreops`` options (``return_attempts``, ``strategy``, ``turns``,
``timeout_seconds``) — given flat or under ``"scoreops"``. It answers
``{"predictions": [{"text", "answer", "finish_reason", "turns_taken"}, ...]}`` (plus
``"scoreops"`` with the attempts when asked, and ``"choices"`` when ``n > 1``).

Importing this module imports kserve, which parses ``sys.argv``: import it through
:mod:`scoreops.serving.server`, which prepares the arguments first.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kserve
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scoreops.serving.config import ServingConfig
from scoreops.serving.core import Corrector, ServedResult, attempts_trace
from scoreops.serving.protocol import (
    ChatMessage,
    ScoreopsOptions,
    ServingError,
    Stop,
    validation_error,
)

log = logging.getLogger("scoreops.serving")

__all__ = ["CorrectorModel"]


class _MessagesInstance(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1)


class _PromptInstance(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    prompt: str = Field(min_length=1)


class _Parameters(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: Stop | None = None
    seed: int | None = None
    return_attempts: bool = False
    strategy: str | None = None
    turns: int | None = None
    timeout_seconds: float | None = None
    scoreops: ScoreopsOptions | None = None


class _V1Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    instances: list[Any] = Field(min_length=1)
    parameters: _Parameters = Field(default_factory=_Parameters)


def _conversation(index: int, instance: Any) -> list[dict[str, str]]:
    where = f"instances.{index}"
    try:
        if isinstance(instance, str):
            if not instance.strip():
                raise ServingError(400, f"{where}: an empty question", param=where)
            return [{"role": "user", "content": instance}]
        if isinstance(instance, dict) and "messages" in instance:
            msgs = _MessagesInstance.model_validate(instance).messages
            if msgs[-1].role == "assistant":
                raise ServingError(400, f"{where}.messages: must end with the user's turn",
                                   param=f"{where}.messages")
            return [m.as_message() for m in msgs]
        if isinstance(instance, dict) and "prompt" in instance:
            return [{"role": "user", "content": _PromptInstance.model_validate(instance).prompt}]
    except ValidationError as exc:
        err = validation_error(exc)
        param = f"{where}.{err.param}" if err.param and err.param != "body" else where
        message = "; ".join(f"{where}.{part}" for part in err.message.split("; "))
        raise ServingError(400, message, param=param) from None
    raise ServingError(400, f"{where}: expected a question string, {{\"messages\": [...]}} or "
                       f"{{\"prompt\": \"...\"}}", param=where)


def _prediction(a: ServedResult, strategy: str, trace: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"text": a.result.final_text, "answer": a.result.final_answer,
                           "finish_reason": a.finish_reason, "turns_taken": a.result.turns_taken}
    if trace:
        out["scoreops"] = {"strategy": strategy, **attempts_trace(a.result)}
    return out


class CorrectorModel(kserve.Model):
    """A self-correcting model: ``load`` builds the backend, ``predict`` runs the strategy.

    Args:
        config: what to serve (:class:`ServingConfig`).
        corrector: an already loaded :class:`Corrector` (``load`` then only marks ready).
    """

    def __init__(self, config: ServingConfig, corrector: Corrector | None = None) -> None:
        super().__init__(config.name)
        self.config = config
        self.corrector = corrector

    def load(self) -> bool:
        if self.corrector is None:
            self.corrector = Corrector.load(self.config)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        if self.corrector is not None:
            self.corrector.close()
        super().stop()

    def _require(self) -> Corrector:
        if self.corrector is None or not self.ready:
            raise ServingError(503, f"model {self.name} is not loaded")
        return self.corrector

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> dict[str, Any]:
        corrector = self._require()
        start = time.monotonic()
        status = 500
        try:
            result = await self._predict(corrector, payload, start)
            status = 200
            return result
        except ServingError as exc:
            status = exc.status
            raise
        finally:
            corrector.metrics.observe_request(self.name, "v1_predict", status,
                                              time.monotonic() - start)

    async def _predict(self, corrector: Corrector, payload: Any,
                       arrival: float) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise ServingError(400, "body: expected a JSON object with \"instances\"",
                               param="body")
        try:
            req = _V1Request.model_validate(payload)
        except ValidationError as exc:
            raise validation_error(exc) from None
        p = req.parameters
        options = p.scoreops or ScoreopsOptions()
        flat = {k: getattr(p, k) for k in ("return_attempts", "strategy", "turns",
                                           "timeout_seconds")}
        merged = {**options.model_dump(exclude_defaults=True),
                  **{k: v for k, v in flat.items() if v not in (None, False)}}
        try:
            options = ScoreopsOptions.model_validate(merged)
        except ValidationError as exc:
            err = validation_error(exc)
            raise ServingError(400, f"parameters.{err.message}",
                               param=f"parameters.{err.param}") from None
        conversations = [_conversation(i, inst) for i, inst in enumerate(req.instances)]
        stop = () if p.stop is None else ((p.stop,) if isinstance(p.stop, str) else p.stop)
        try:
            prepared = corrector.prepare(
                conversations, prompt_param="instances", n=p.n, max_tokens=p.max_tokens,
                max_tokens_param="parameters.max_tokens", temperature=p.temperature,
                top_p=p.top_p, stop=stop, seed=p.seed, options=options, arrival=arrival)
        except ServingError as exc:
            if exc.param in ("n",):
                exc.param = f"parameters.{exc.param}"
                exc.message = f"parameters.{exc.message}"
            raise
        answers = await corrector.run(prepared)
        predictions = []
        for per in answers:
            first = _prediction(per[0], prepared.strategy.name, prepared.return_attempts)
            if prepared.n > 1:
                first["choices"] = [_prediction(a, prepared.strategy.name,
                                                prepared.return_attempts) for a in per]
            predictions.append(first)
        return {"predictions": predictions}
