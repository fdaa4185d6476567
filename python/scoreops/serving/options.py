"""The serving process's command-line options, written once.

:data:`OPTIONS` holds every option of the container entrypoint ``python -m scoreops.serving``
(its flag spellings, type, default and help). Both parsers are generated from it:

* :func:`add_entrypoint_options` — the entrypoint (every option, as listed here);
* :func:`add_serve_command_options` — ``scoreops serve``, a local selection of the same
  options (:data:`SERVE_COMMAND`) with a few local defaults: it binds 127.0.0.1 on ``--port``,
  requires ``--model``, calls the served name ``--name`` and fills in the strategy, turns and
  queue length instead of leaving them to the environment.

:func:`serve_args` renders option values as entrypoint arguments, in the spelling the
entrypoint accepts, for whoever writes a container's command line (the InferenceService
transformer)::

    serve_args(model_name="demo", backend="openai", turns=2)
    # ['--model_name=demo', '--backend', 'openai', '--turns', '2']

The module imports only argparse-level code (the strategy names come from the plain-data
registry), so ``scoreops --help`` stays light. The limit defaults equal
:class:`scoreops.api.correctorservice.ServingLimits`'s (a unit test holds them together).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scoreops.strategies.registry import DEFAULT_STRATEGY, STRATEGY_NAMES

__all__ = [
    "OPTIONS",
    "SERVE_COMMAND",
    "ServeOption",
    "add_entrypoint_options",
    "add_serve_command_options",
    "serve_args",
]

BACKENDS = ("hf", "vllm", "openai")


def _flag(value: str) -> bool:
    """A boolean option's text (KServe passes ``--predictor_use_ssl true``)."""
    return str(value).lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class ServeOption:
    """One option of the serving entrypoint.

    Attributes:
        dest: the attribute of the parsed namespace (and the keyword of :func:`serve_args`).
        flags: every spelling the entrypoint accepts; the first is the one
            :func:`serve_args` writes, unless ``render`` says otherwise.
        type: converts the text (None: kept as text).
        default: the entrypoint's default.
        help: the entrypoint's help text.
        choices: the accepted values, if limited.
        render: the spelling :func:`serve_args` writes (default: ``flags[0]``).
        joined: :func:`serve_args` writes ``FLAG=VALUE`` as one argument instead of two.
    """

    dest: str
    flags: tuple[str, ...]
    type: Callable[[str], Any] | None = None
    default: Any = None
    help: str | None = None
    choices: tuple[str, ...] | None = None
    render: str | None = None
    joined: bool = False

    def add_to(self, parser: argparse.ArgumentParser, **overrides: Any) -> None:
        """Add the option to ``parser``; ``overrides`` replace any of argparse's keywords
        (``flags`` replaces the spellings)."""
        flags = overrides.pop("flags", self.flags)
        kwargs: dict[str, Any] = {"dest": self.dest, "default": self.default}
        if self.help is not None:
            kwargs["help"] = self.help
        if self.type is not None:
            kwargs["type"] = self.type
        if self.choices is not None:
            kwargs["choices"] = list(self.choices)
        kwargs.update(overrides)
        parser.add_argument(*flags, **kwargs)

    def arguments(self, value: Any) -> list[str]:
        """``value`` as entrypoint arguments."""
        flag = self.render or self.flags[0]
        return [f"{flag}={value}"] if self.joined else [flag, str(value)]


OPTIONS: dict[str, ServeOption] = {o.dest: o for o in (
    ServeOption("config", ("--config",), help="a CorrectorService file (YAML/JSON) to serve"),
    # KServe appends its own --model_name unless an argument starts with it: hence joined
    ServeOption("model_name", ("--model-name", "--model_name"), render="--model_name",
                joined=True, help="model name clients use (default: corrector)"),
    ServeOption("model", ("--model",), help="weights for --backend hf/vllm"),
    ServeOption("backend", ("--backend",), default="hf", choices=BACKENDS),
    ServeOption("predictor_url", ("--predictor-url",),
                help="remote OpenAI-compatible predictor for --backend openai"),
    ServeOption("predictor_host", ("--predictor_host", "--predictor-host"),
                help="KServe's predictor host (used when --predictor-url is not given)"),
    ServeOption("predictor_use_ssl", ("--predictor_use_ssl",), type=_flag, default="false"),
    ServeOption("remote_model", ("--remote-model",),
                help="model name at the predictor (default: the first it lists)"),
    ServeOption("strategy", ("--strategy",), choices=STRATEGY_NAMES),
    ServeOption("turns", ("--turns",), type=int),
    ServeOption("strategy_json", ("--strategy-json",),
                help="full StrategySpec as JSON (default: $SCOREOPS_STRATEGY_JSON)"),
    ServeOption("max_tokens", ("--max-tokens",), type=int, default=1024),
    ServeOption("default_max_tokens", ("--default-max-tokens",), type=int),
    ServeOption("max_n", ("--max-n",), type=int, default=4),
    ServeOption("max_concurrency", ("--max-concurrency",), type=int, default=64),
    ServeOption("max_queue", ("--max-queue",), type=int,
                help="default: $SCOREOPS_MAX_QUEUE or 512"),
    ServeOption("request_timeout", ("--request-timeout",), type=float, default=120.0,
                help="seconds of service (from the start of running) before 504"),
    ServeOption("max_total_tokens", ("--max-total-tokens",), type=int,
                help="tokens one request may generate in all, every call of its strategy "
                     "(default: no ceiling beyond --max-tokens per generation)"),
    ServeOption("max_queue_wait", ("--max-queue-wait",), type=float,
                help="seconds a request may wait for a running slot before 429 (default: "
                     "$SCOREOPS_MAX_QUEUE_WAIT or half the request timeout)"),
    ServeOption("max_model_len", ("--max-model-len",), type=int),
    ServeOption("dtype", ("--dtype",)),
    ServeOption("device", ("--device",)),
    ServeOption("engine_batch_size", ("--engine-batch-size",), type=int),
    ServeOption("torch_threads", ("--torch-threads",), type=int,
                help="torch CPU threads (1 avoids thrashing on a shared machine)"),
    ServeOption("host", ("--host",), default="0.0.0.0", help="bind address"),
    ServeOption("http_port", ("--http-port", "--http_port"), type=int, default=8080),
)}

#: ``scoreops serve``: the options it offers, in its help's order, each with the argparse
#: keywords it sets differently from the entrypoint.
SERVE_COMMAND: tuple[tuple[str, dict[str, Any]], ...] = (
    ("model", {"required": True, "help": "PATH, s3://..., store://... or builtin://NAME"}),
    ("model_name", {"flags": ("--name",), "dest": "name", "default": "corrector",
                    "help": "model name clients use"}),
    ("strategy", {"default": DEFAULT_STRATEGY}),
    ("turns", {"default": 2, "help": "self-correct attempts"}),
    ("strategy_json", {"help": "the rest of the StrategySpec as JSON, e.g. "
                               "'{\"critic\": \"tool\", \"beam\": 2}' for guided"}),
    ("backend", {"help": "generation backend: in-process transformers or vLLM, or a remote "
                         "OpenAI-compatible predictor (--predictor-url)"}),
    ("predictor_url", {"help": "remote predictor base URL for --backend openai"}),
    ("host", {"default": "127.0.0.1", "help": None}),
    ("http_port", {"flags": ("--port",), "dest": "port"}),
    ("max_tokens", {"help": "ceiling on max_tokens"}),
    ("max_n", {"help": "ceiling on n"}),
    ("max_concurrency", {}),
    ("max_queue", {"default": 512,
                   "help": "requests waiting beyond --max-concurrency; more get HTTP 429"}),
    ("request_timeout", {"help": "seconds before 504"}),
    ("max_total_tokens", {}),
    ("max_queue_wait", {}),
    ("default_max_tokens", {"help": "max_tokens of a request that sets none (default 256, "
                                    "capped)"}),
    ("dtype", {"default": "auto",
               "help": "auto (default): bfloat16 on a GPU or on a CPU with native bf16 matrix "
                       "instructions (AMX-BF16 or AVX512-BF16), else float32; or float32, "
                       "bfloat16, float16"}),
    ("torch_threads", {"help": "torch CPU threads (default: torch's choice)"}),
)


def add_entrypoint_options(parser: argparse.ArgumentParser) -> None:
    """Every option of ``python -m scoreops.serving``."""
    for option in OPTIONS.values():
        option.add_to(parser)


def add_serve_command_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``scoreops serve`` (see :data:`SERVE_COMMAND`)."""
    for dest, overrides in SERVE_COMMAND:
        OPTIONS[dest].add_to(parser, **overrides)


def serve_args(**values: Any) -> list[str]:
    """Option values as ``python -m scoreops.serving`` arguments.

    Keywords are :data:`OPTIONS`' ``dest`` names (``model_name``, ``backend``,
    ``predictor_url``, ``strategy``, ``turns``, ``max_tokens``, ``max_n``,
    ``max_concurrency``, ``request_timeout``, ...); they are written in the order given, each
    value with ``str``, None values left out. ``model_name`` is written ``--model_name=NAME``
    (KServe adds its own ``--model_name`` unless an argument starts with it), the others as
    ``--flag VALUE`` pairs. An unknown keyword raises ``TypeError``.
    """
    args: list[str] = []
    for dest, value in values.items():
        option = OPTIONS.get(dest)
        if option is None:
            raise TypeError(f"serve_args() got an unknown option {dest!r}; "
                            f"known: {', '.join(OPTIONS)}")
        if value is not None:
            args.extend(option.arguments(value))
    return args
