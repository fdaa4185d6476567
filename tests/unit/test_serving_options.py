"""The serve options are written once: both parsers come from them, and serve_args renders
them as the entrypoint reads them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from scoreops.api import load_resource
from scoreops.api.correctorservice import ServingLimits
from scoreops.cli import build_parser
from scoreops.k8s.builders import build_inference_service, predictor_url
from scoreops.k8s.config import OperatorConfig
from scoreops.serving.cli import build_entrypoint_parser
from scoreops.serving.options import OPTIONS, SERVE_COMMAND, serve_args
from scoreops.strategies import STRATEGIES

INPUTS = Path(__file__).parent / "golden" / "inputs"


def _serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def test_limit_defaults_are_the_api_defaults() -> None:
    limits = ServingLimits()
    assert OPTIONS["max_tokens"].default == limits.max_tokens
    assert OPTIONS["max_n"].default == limits.max_n
    assert OPTIONS["max_concurrency"].default == limits.max_concurrency
    assert OPTIONS["request_timeout"].default == limits.request_timeout_seconds
    assert dict(SERVE_COMMAND)["max_queue"]["default"] == limits.max_queue


def test_both_parsers_offer_the_registered_strategies() -> None:
    for parser in (_serve_parser(), build_entrypoint_parser()):
        action = next(a for a in parser._actions if a.dest == "strategy")
        assert list(action.choices) == list(STRATEGIES)


def test_the_serve_command_keeps_its_local_defaults_and_gains_max_queue_wait() -> None:
    args = _serve_parser().parse_args(["--model", "builtin://tiny", "--max-queue-wait", "3"])
    assert (args.name, args.strategy, args.turns, args.host, args.port, args.max_queue) == (
        "corrector", "self-correct", 2, "127.0.0.1", 8080, 512)
    assert args.max_queue_wait == 3.0
    with pytest.raises(SystemExit):
        _serve_parser().parse_args([])  # --model is required


def test_the_entrypoint_keeps_the_kserve_spellings() -> None:
    args, unknown = build_entrypoint_parser().parse_known_args([
        "--model_name=m", "--http_port", "9000", "--predictor_host", "p.ns",
        "--predictor_use_ssl", "true", "--workers", "2"])
    assert (args.model_name, args.http_port, args.predictor_host) == ("m", 9000, "p.ns")
    assert args.predictor_use_ssl is True
    assert (args.strategy, args.turns, args.max_queue, args.host) == (None, None, None, "0.0.0.0")
    assert unknown == ["--workers", "2"]


def test_serve_args_round_trips_through_the_entrypoint() -> None:
    args = serve_args(model_name="demo", backend="openai", predictor_url="http://p",
                      strategy="best-of-n", turns=3, max_tokens=64, max_queue_wait=2.5,
                      dtype=None)
    assert args[0] == "--model_name=demo" and "--dtype" not in args
    parsed = build_entrypoint_parser().parse_args(args)
    assert (parsed.model_name, parsed.backend, parsed.predictor_url, parsed.strategy,
            parsed.turns, parsed.max_tokens, parsed.max_queue_wait) == (
        "demo", "openai", "http://p", "best-of-n", 3, 64, 2.5)
    with pytest.raises(TypeError, match="unknown option"):
        serve_args(port=1)


def test_serve_args_renders_the_inference_service_transformer_args() -> None:
    service = load_resource(INPUTS / "correctorservice-vllm.yaml")
    isvc = build_inference_service(service, OperatorConfig(tag="1.2.3"))
    spec, lim = service.spec, service.spec.limits
    ns = isvc["metadata"]["namespace"]
    expected = serve_args(
        model_name=isvc["metadata"]["name"] if spec.model.served_name is None
        else spec.model.served_name,
        backend="openai", predictor_url=predictor_url(service, ns),
        strategy=spec.strategy.name, turns=spec.strategy.turns, max_tokens=lim.max_tokens,
        max_n=lim.max_n, max_concurrency=lim.max_concurrency,
        request_timeout=lim.request_timeout_seconds)
    assert isvc["spec"]["transformer"]["containers"][0]["args"] == expected


def test_auto_dtype_is_bf16_on_a_gpu_or_a_cpu_with_native_bf16(monkeypatch) -> None:
    from scoreops.serving import backends

    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)
    assert backends.resolve_dtype("auto", "cpu") == "float32"
    assert backends.resolve_dtype("auto", "cuda:0") == "bfloat16"
    assert backends.resolve_dtype("float16", "cpu") == "float16"
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: True)
    assert backends.resolve_dtype("auto", "cpu") == "bfloat16"
    assert backends.resolve_dtype("float32", "cpu") == "float32"
