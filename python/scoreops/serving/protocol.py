"""Request models of the OpenAI-compatible API and the errors the server answers with.

Bodies are validated with pydantic in strict mode (``"max_tokens": "5"`` is a type error, as
with OpenAI); every failure becomes an HTTP 400 whose JSON names the offending field::

    {"error": {"message": "messages.0.role: Input should be 'system', 'user', 'assistant' or
     'developer'", "type": "invalid_request_error", "param": "messages.0.role", "code": null}}

Nothing a client asks for is silently ignored. Fields that would change the answer and are
not implemented (``tools``, ``tool_choice``, ``functions``, ``function_call``,
``response_format`` other than text, ``top_logprobs``, legacy ``logprobs``, penalties,
``logit_bias``, ``best_of``, ``suffix``, audio, …) are accepted only at their neutral value
(``null``, ``false``, ``0``, ``[]``, ``{"type": "text"}``) and otherwise refused with a 400
naming the field; so is any field this server does not know. Metadata that does not change
the answer (``user``, ``metadata``, ``store``, ``service_tier``, ...) is accepted. The
``scoreops`` extension object is strict too, so a misspelt option is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from scoreops.api.common import CriticName, StrategyName

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "ScoreopsOptions",
    "ServingError",
    "parse_body",
]

Role = Literal["system", "user", "assistant", "developer"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "overloaded_error",
    500: "server_error",
    502: "upstream_error",
    503: "unavailable_error",
    504: "timeout_error",
}


class ServingError(Exception):
    """An error answered as JSON with an HTTP status (never a crash of the server)."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return _ERROR_TYPES.get(self.status, "server_error")

    def openai_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": None}}

    def kserve_body(self) -> dict[str, Any]:
        return {"error": self.message, "param": self.param}


def bad_request(param: str, message: str) -> ServingError:
    return ServingError(400, f"{param}: {message}", param=param)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"}


def _loc(loc: tuple[Any, ...]) -> str:
    # pydantic puts union members ("str", "list[str]") and validators into loc: keep fields
    parts = [str(p) for p in loc if not (isinstance(p, str) and (
        "[" in p or p in _TYPE_TAGS or p.startswith("function-")))]
    return ".".join(parts) or "body"


def validation_error(exc: ValidationError) -> ServingError:
    errors = exc.errors(include_url=False)
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        return ServingError(400, f"body: not valid JSON ({detail.get('ctx', {}).get('error')})",
                            param="body")
    if errors and errors[0].get("type") == "model_type" and not errors[0].get("loc"):
        return ServingError(400, "body: must be a JSON object", param="body")
    first = _loc(tuple(errors[0].get("loc", ())))
    described = "; ".join(dict.fromkeys(
        f"{_loc(tuple(e.get('loc', ())))}: {_msg(e)}" for e in errors))
    return ServingError(400, described, param=first)


def _msg(error: Any) -> str:
    if error.get("type") == "extra_forbidden":
        return "not supported by this server (unknown field)"
    return str(error.get("msg", "")).removeprefix("Value error, ")


#: accepted and ignored: they do not change the answer
_METADATA = ("user", "metadata", "store", "service_tier", "safety_identifier",
             "prompt_cache_key", "parallel_tool_calls")

_UNSUPPORTED = "not supported by this server"


def _neutral(value: Any, *neutral: Any) -> bool:
    return value is None or any(value == n and type(value) is type(n) for n in neutral)


@dataclass(frozen=True)
class _Refusal:
    """A field accepted only at a neutral value: null or one of ``neutral`` (same type);
    any other value is refused with ``message``."""

    neutral: tuple[Any, ...]
    message: str


def _refusals(*rows: tuple[tuple[str, ...], tuple[Any, ...], str]) -> Any:
    """One field validator for a table of ``(fields, neutral values, message)`` rows: the
    single loop that refuses what a request model does not implement."""
    table = {f: _Refusal(neutral, message) for fields, neutral, message in rows for f in fields}

    def refuse(cls: type, value: Any, info: ValidationInfo) -> Any:
        rule = table[str(info.field_name)]
        if not _neutral(value, *rule.neutral):
            raise ValueError(rule.message)
        return value

    return field_validator(*table)(classmethod(refuse))


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_metadata(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in _METADATA}
        return data


class ChatMessage(BaseModel):
    """One message. ``content`` is a string or a list of ``{"type": "text", "text": …}``;
    tool calls and audio are refused."""

    model_config = ConfigDict(strict=True, extra="forbid")

    role: Role
    content: str
    name: str | None = None
    tool_calls: Any = None
    function_call: Any = None
    audio: Any = None
    refusal: Any = None

    _refused = _refusals(
        (("tool_calls", "function_call", "audio"), ([],),
         f"{_UNSUPPORTED}: messages carry text only"),
    )

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if isinstance(value, list):
            texts = []
            for part in value:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(
                        part.get("text"), str):
                    raise ValueError("only text content parts ({'type': 'text', 'text': ...}) "
                                     "are supported")
                texts.append(part["text"])
            return "".join(texts)
        if not isinstance(value, str):
            raise ValueError("must be a string or a list of text parts")
        return value

    def as_message(self) -> dict[str, str]:
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.content}


class ScoreopsOptions(BaseModel):
    """The ``scoreops`` extension object of a request body."""

    model_config = ConfigDict(strict=True, extra="forbid")

    return_attempts: bool = Field(False, description="Return every attempt of the strategy.")
    strategy: StrategyName | None = Field(None, description="Override the served strategy.")
    turns: int | None = Field(None, ge=1, le=8, description="Override self-correct turns.")
    timeout_seconds: float | None = Field(
        None, gt=0, description="Shorter deadline than the server's (more is refused).")
    max_total_tokens: int | None = Field(
        None, ge=1, description="Budget of tokens the request generates in all (more than "
        "the server's limits.max_total_tokens is refused).")
    critic: CriticName | None = Field(None, description="Override the guided strategy's critic.")


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    include_usage: bool = False
    include_obfuscation: bool | None = None  # no obfuscation padding is sent


Stop = str | Annotated[list[str], Field(max_length=4)]


class _Generation(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: Stop | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    scoreops: ScoreopsOptions = Field(default_factory=ScoreopsOptions)
    # accepted only at their neutral values: anything else is refused, naming the field
    logprobs: Any = None
    top_logprobs: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None

    _generation_refused = _refusals(
        (("top_logprobs",), (0,), f"{_UNSUPPORTED}: only the sampled tokens' "
         "log-probabilities are returned (logprobs: true)"),
        (("presence_penalty", "frequency_penalty"), (0, 0.0),
         f"{_UNSUPPORTED}: only 0 (no penalty) is accepted"),
        (("logit_bias",), ({},), f"{_UNSUPPORTED}: only an empty bias is accepted"),
    )

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: Stop | None) -> Stop | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        return value

    @property
    def requested_max_tokens(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_Generation):
    """``POST /openai/v1/chat/completions``. ``logprobs: true`` returns the log-probability
    of each token of the final answer (hf backend; in the finish chunk when streaming)."""

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None

    _chat_refused = _refusals(
        (("tools", "functions"), ([],), f"{_UNSUPPORTED}: the model answers in text; tool "
         "and function calling are not available"),
        (("tool_choice", "function_call"), ("none",),
         f"{_UNSUPPORTED}: only \"none\" is accepted (no tools)"),
        (("response_format",), ({"type": "text"},), f"{_UNSUPPORTED}: only "
         "{\"type\": \"text\"} is accepted (structured JSON output is not enforced)"),
        (("modalities",), (["text"],), f"{_UNSUPPORTED}: only [\"text\"] is accepted"),
        (("audio", "prediction", "web_search_options", "reasoning_effort"), (),
         _UNSUPPORTED),
    )


class CompletionRequest(_Generation):
    """``POST /openai/v1/completions``; each prompt is sent as one user message."""

    prompt: str | list[str]
    echo: bool = False
    best_of: Any = None
    suffix: Any = None

    _completion_refused = _refusals(
        (("logprobs",), (), f"{_UNSUPPORTED} on /completions; use /chat/completions with "
         "logprobs: true"),
        (("best_of",), (1,), f"{_UNSUPPORTED}: use \"scoreops\": {{\"strategy\": "
         "\"best-of-n\"} to rank several samples"),
        (("suffix",), ("",), f"{_UNSUPPORTED}: no insertion after the completion"),
    )

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if not prompts:
            raise ValueError("must hold at least one prompt")
        if any(not p.strip() for p in prompts):
            raise ValueError("prompts must be non-empty strings")
        return value

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


T = TypeVar("T", bound=BaseModel)


def parse_body(cls: type[T], body: bytes) -> T:
    """Validate a JSON body into ``cls``; a :class:`ServingError` (400) naming the field."""
    if not body.strip():
        raise ServingError(400, "body: empty; send a JSON object", param="body")
    try:
        return cls.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
