"""Reading resources from YAML/JSON and turning validation errors into field-named messages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from scoreops.api.base import API_VERSION
from scoreops.api.correctorservice import CorrectorService
from scoreops.api.evalsuite import EvalSuite
from scoreops.api.scorerun import ScoreRun

Resource = ScoreRun | EvalSuite | CorrectorService
KINDS: dict[str, type[ScoreRun] | type[EvalSuite] | type[CorrectorService]] = {
    "ScoreRun": ScoreRun,
    "EvalSuite": EvalSuite,
    "CorrectorService": CorrectorService,
}


@dataclass(frozen=True)
class FieldError:
    """One problem, at a dotted path such as ``spec.algorithm.score.alpha``."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidResource(ValueError):
    """A resource failed validation; ``errors`` names each offending field."""

    def __init__(self, kind: str, name: str | None, errors: list[FieldError]) -> None:
        self.kind, self.name, self.errors = kind, name, errors
        head = f"invalid {kind}" + (f" {name!r}" if name else "")
        super().__init__(head + ":\n" + "\n".join(f"  - {e}" for e in errors))


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "literal[")):
            continue  # pydantic's internal validator labels
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


def field_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        errors.append(FieldError(_path(tuple(err["loc"])), msg))
    return errors


def parse_resource(doc: dict[str, Any]) -> Resource:
    """Validate one resource document (a dict as from YAML) into its typed model."""
    if not isinstance(doc, dict):
        raise InvalidResource("resource", None, [FieldError("(root)", "expected a mapping")])
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
    if kind not in KINDS:
        raise InvalidResource(
            "resource", name,
            [FieldError("kind", f"expected one of {sorted(KINDS)}, got {kind!r}")],
        )
    if doc.get("apiVersion") != API_VERSION:
        raise InvalidResource(
            kind, name,
            [FieldError("apiVersion", f"expected {API_VERSION!r}, got {doc.get('apiVersion')!r}")],
        )
    try:
        return KINDS[kind].model_validate(doc)
    except ValidationError as exc:
        raise InvalidResource(kind, name, field_errors(exc)) from None


def load_documents(path: str | Path) -> list[dict[str, Any]]:
    text = Path(path).read_text() if str(path) != "-" else __import__("sys").stdin.read()
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise InvalidResource("resource", None, [FieldError("(yaml)", str(exc))]) from None


def load_resources(path: str | Path) -> list[Resource]:
    """All resources in a YAML file (multi-document allowed)."""
    docs = load_documents(path)
    if not docs:
        raise InvalidResource("resource", None, [FieldError("(root)", f"{path} has no documents")])
    return [parse_resource(d) for d in docs]


def load_resource(path: str | Path) -> Resource:
    """Exactly one resource from a file."""
    resources = load_resources(path)
    if len(resources) != 1:
        raise InvalidResource(
            "resource", None, [FieldError("(root)", f"{path} holds {len(resources)} resources")]
        )
    return resources[0]
