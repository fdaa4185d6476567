"""``python -m scoreops.evaluate --spec FILE``: the evaluator job's entrypoint (what an
evaluator pod runs)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from scoreops.evaluate.suite import EXIT_INVALID, run_evalsuite

if TYPE_CHECKING:
    from scoreops.api import EvalSuiteSpec

__all__ = ["main"]


def _read_spec(path: str) -> tuple[str, EvalSuiteSpec]:
    import yaml

    from scoreops.api import EvalSuite, parse_resource
    from scoreops.api.evalsuite import EvalSuiteSpec

    doc = yaml.safe_load(Path(path).read_text())  # JSON is YAML
    if isinstance(doc, dict) and "kind" in doc:
        resource = parse_resource(doc)
        if not isinstance(resource, EvalSuite):
            raise ValueError(f"{path} holds a {resource.kind}, not an EvalSuite")
        return resource.metadata.name, resource.spec
    if isinstance(doc, dict) and "spec" in doc:
        doc = doc["spec"]
    return "evalsuite", EvalSuiteSpec.model_validate(doc)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scoreops.evaluate --spec FILE``: the evaluator job's entrypoint."""
    parser = argparse.ArgumentParser(
        prog="python -m scoreops.evaluate",
        description="Run an EvalSuite (the resource, or just its spec, as JSON or YAML).")
    parser.add_argument("--spec", required=True, help="EvalSuite JSON/YAML file")
    parser.add_argument("--limit", type=int, help="items per benchmark")
    parser.add_argument("--output", help="override spec.output.uri")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pydantic import ValidationError

    from scoreops.api import InvalidResource

    try:
        name, spec = _read_spec(args.spec)
    except FileNotFoundError:
        print(f"error: {args.spec}: no such file", file=sys.stderr)
        return EXIT_INVALID
    except (InvalidResource, ValidationError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    from scoreops.api import EvalSuite
    from scoreops.api.base import ObjectMeta
    from scoreops.vllm_env import vllm_refusal

    resource = EvalSuite(metadata=ObjectMeta(name=name), spec=spec)
    refusal = vllm_refusal(resource)
    if refusal:  # before any model is loaded
        print(f"error: {args.spec}: {refusal}", file=sys.stderr)
        return EXIT_INVALID
    return run_evalsuite(resource, limit=args.limit, output=args.output)
