"""``scoreops serve``, ``scoreops query``, ``scoreops run corrector.yaml`` and the container
entrypoint ``python -m scoreops.serving``.

Entrypoint arguments (what the operator's InferenceService transformer passes; KServe adds
``--predictor_host`` and ``--http_port``, accepted as aliases, and ``--model_name`` only when
no argument starts with it)::

    python -m scoreops.serving --model_name=NAME --backend openai \\
        --predictor-url http://NAME-predictor.NS [--strategy self-correct --turns 2] \\
        [--max-tokens 1024 --max-n 4 --max-concurrency 64 --max-queue 512] \\
        [--request-timeout 120] [--max-queue-wait 60] [--http-port 8080] [--host 0.0.0.0]

    python -m scoreops.serving --model-name NAME --backend hf --model s3://bucket/model ...
    python -m scoreops.serving --config corrector.yaml      # a CorrectorService file

Environment: ``SCOREOPS_STRATEGY_JSON`` (the full ``spec.strategy`` of the CorrectorService,
camelCase JSON: instruction, samples, verifier, moa settings; ``--strategy``/``--turns``
override its name/turns), ``SCOREOPS_MAX_QUEUE`` and ``SCOREOPS_MAX_QUEUE_WAIT``. Options this
parser does not know are handed to KServe's own parser (``--workers``, ``--log_config_file``, …).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("scoreops.serving")

__all__ = [
    "build_entrypoint_parser",
    "config_from_args",
    "main",
    "query_command",
    "serve_command",
    "serve_resource",
]

def _setup_logging() -> None:
    logger = logging.getLogger("scoreops")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _describe(exc: Exception) -> str:
    """A pydantic error as ``field: message`` lines; other errors as their text."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for e in errors(include_url=False):
        where = ".".join(str(x) for x in e.get("loc", ())) or "settings"
        parts.append(f"{where}: {str(e.get('msg', '')).removeprefix('Value error, ')}")
    return "; ".join(parts)


def _strategy(name: str | None, turns: int | None, strategy_json: str | None) -> Any:
    from scoreops.api.common import StrategySpec

    data: dict[str, Any] = json.loads(strategy_json) if strategy_json else {}
    if name is not None:
        data["name"] = name
    if turns is not None:
        data["turns"] = turns
    return StrategySpec.model_validate(data)


def config_from_args(args: argparse.Namespace) -> Any:
    """A :class:`ServingConfig` from a ``scoreops serve`` or entrypoint namespace."""
    from scoreops.api.correctorservice import ServingLimits
    from scoreops.serving.config import ServingConfig

    g = vars(args)
    if args.backend == "vllm":  # refused here, not in a traceback once the server starts
        from scoreops.vllm_env import vllm_missing

        refusal = vllm_missing("--backend")
        if refusal:
            raise ValueError(refusal)
    limits = ServingLimits(
        max_tokens=args.max_tokens, max_n=args.max_n, max_concurrency=args.max_concurrency,
        max_queue=g.get("max_queue") if g.get("max_queue") is not None else int(
            os.environ.get("SCOREOPS_MAX_QUEUE", "512")),
        request_timeout_seconds=args.request_timeout,
        max_total_tokens=g.get("max_total_tokens"),
    )
    predictor_url = g.get("predictor_url")
    if not predictor_url and g.get("predictor_host"):
        scheme = "https" if g.get("predictor_use_ssl") else "http"
        predictor_url = f"{scheme}://{g['predictor_host']}"
    values: dict[str, Any] = {
        "name": g.get("name") or g.get("model_name") or "corrector",
        "backend": args.backend,
        "model_uri": g.get("model"),
        "predictor_url": predictor_url,
        "strategy": _strategy(g.get("strategy"), g.get("turns"),
                              g.get("strategy_json") or os.environ.get("SCOREOPS_STRATEGY_JSON")),
        "limits": limits,
    }
    for key in ("dtype", "device", "max_model_len", "default_max_tokens", "remote_model",
                "engine_batch_size", "torch_threads"):
        if g.get(key) is not None:
            values[key] = g[key]
    if args.backend == "vllm" and g.get("dtype") is None and _cuda_available():
        # vLLM's fast attention backends take bf16/fp16, not the float32 default
        values["dtype"] = "bfloat16"
    queue_wait = _queue_wait(g.get("max_queue_wait"))
    if queue_wait is not None:
        values["max_queue_wait_seconds"] = queue_wait
    return ServingConfig(**values)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _queue_wait(flag: float | None) -> float | None:
    """``--max-queue-wait``, else ``$SCOREOPS_MAX_QUEUE_WAIT``, else None (the default)."""
    if flag is not None:
        return flag
    env = os.environ.get("SCOREOPS_MAX_QUEUE_WAIT")
    return float(env) if env else None


def config_from_resource(resource: Any) -> Any:
    """A :class:`ServingConfig` for a CorrectorService run on this machine."""
    from scoreops.api.common import TORCH_DTYPE
    from scoreops.serving.config import ServingConfig

    spec = resource.spec
    if spec.model.uri is None:
        raise ValueError(
            f"spec.model.scoreRun {spec.model.score_run!r} is resolved by the operator on a "
            "cluster; to serve locally set spec.model.uri to the run's weights (its output "
            "URI's final checkpoint)")
    engine = spec.runtime.engine
    if engine == "vllm":  # served with the engine the spec names, or not at all
        from scoreops.vllm_env import vllm_missing

        refusal = vllm_missing("spec.runtime.engine")
        if refusal:
            raise ValueError(refusal)
    dtype = TORCH_DTYPE[spec.runtime.dtype]
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and dtype != "float32":
        from scoreops.serving.backends import cpu_has_native_bf16

        if dtype != "bfloat16" or not cpu_has_native_bf16():
            log.warning("serving in float32 on CPU (spec.runtime.dtype %s needs a GPU%s)",
                        spec.runtime.dtype,
                        "" if dtype != "bfloat16" else " or a CPU with native bf16")
            dtype = "float32"
    return ServingConfig(
        name=spec.model.served_name or resource.metadata.name,
        backend=engine, model_uri=spec.model.uri, strategy=spec.strategy, limits=spec.limits,
        dtype=dtype, max_model_len=spec.runtime.max_model_len,
        gpu_memory_utilization=spec.runtime.gpu_memory_utilization,
        max_queue_wait_seconds=_queue_wait(None),
    )


def _run(config: Any, host: str, port: int, kserve_args: Sequence[str] = ()) -> int:
    from scoreops.serving.server import run_server

    _setup_logging()
    return run_server(config, host=host, port=port, kserve_args=kserve_args)


def serve_command(args: argparse.Namespace) -> int:
    """``scoreops serve``: the real KServe model server with the correction layer."""
    from pydantic import ValidationError

    try:
        config = config_from_args(args)
    except (ValidationError, ValueError) as exc:
        return _fail(f"invalid serving settings: {_describe(exc)}")
    return _run(config, args.host, args.port)


def serve_resource(resource: Any, host: str = "127.0.0.1", port: int = 8080) -> int:
    """``scoreops run corrector.yaml``: serve a CorrectorService on this machine."""
    from pydantic import ValidationError

    try:
        config = config_from_resource(resource)
    except (ValidationError, ValueError) as exc:
        return _fail(_describe(exc))
    return _run(config, host, port)


# -- query ------------------------------------------------------------------------------------


def _api_base(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/openai/v1") or url.endswith("/v1"):
        return url
    return f"{url}/openai/v1"


def query_command(args: argparse.Namespace) -> int:
    """``scoreops query URL QUESTION``: ask a served model; print the answer (and the turns)."""
    import httpx

    base = _api_base(args.url)
    try:
        with httpx.Client(timeout=600.0) as client:
            model = args.model
            if model is None:
                listed = client.get(f"{base}/models")
                listed.raise_for_status()
                model = listed.json()["data"][0]["id"]
            payload = {
                "model": model,
                "messages": [{"role": "user", "content": args.question}],
                "max_tokens": args.max_tokens,
                "temperature": args.temperature,
                "scoreops": {"return_attempts": bool(args.show_attempts)},
            }
            resp = client.post(f"{base}/chat/completions", json=payload)
    except httpx.HTTPError as exc:
        return _fail(f"{base}: {exc}", 1)
    try:
        body = resp.json()
    except ValueError:
        return _fail(f"{base}: HTTP {resp.status_code}: {resp.text[:500]}", 1)
    if resp.status_code != 200:
        err = body.get("error") if isinstance(body, dict) else body
        message = err.get("message") if isinstance(err, dict) else err
        return _fail(f"HTTP {resp.status_code}: {message}", 1)
    choice = body["choices"][0]
    trace = choice.get("scoreops")
    if args.show_attempts and trace:
        for attempt in trace["attempts"]:
            label = f"turn {attempt['turn']}"
            if attempt.get("agent") is not None:
                label += f", agent {attempt['agent']}"
            print(f"--- {label} (answer: {attempt.get('answer')}) ---")
            print(attempt["text"])
        print(f"--- final ({trace['turns_taken']} turn(s) taken) ---")
    print(choice["message"]["content"])
    return 0


# -- entrypoint -------------------------------------------------------------------------------


def build_entrypoint_parser() -> argparse.ArgumentParser:
    """The entrypoint's parser, from :data:`scoreops.serving.options.OPTIONS`."""
    from scoreops.serving.options import add_entrypoint_options

    p = argparse.ArgumentParser(
        prog="python -m scoreops.serving",
        description="The scoreops correction layer on the KServe model server "
                    "(OpenAI-compatible routes, v1 :predict, health, /metrics).",
        allow_abbrev=False,
    )
    add_entrypoint_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_entrypoint_parser()
    args, kserve_args = parser.parse_known_args(argv)
    from pydantic import ValidationError

    try:
        if args.config:
            from scoreops.api import CorrectorService, InvalidResource, load_resource

            try:
                resource = load_resource(args.config)
            except (FileNotFoundError, InvalidResource) as exc:
                return _fail(str(exc))
            if not isinstance(resource, CorrectorService):
                return _fail(f"{args.config} holds a {resource.kind}, not a CorrectorService")
            config = config_from_resource(resource)
        else:
            config = config_from_args(args)
    except (ValidationError, ValueError) as exc:
        return _fail(f"invalid serving settings: {_describe(exc)}")
    return _run(config, args.host, args.http_port, kserve_args)
