"""CustomResourceDefinitions generated from the pydantic models.

The models are the single source of truth; this module turns their JSON Schema into a
*structural* OpenAPI v3 schema, the subset the Kubernetes API server accepts:

- every ``$ref`` inlined (no ``$defs``),
- ``anyOf: [X, {type: null}]`` (Optional) collapsed into ``X`` with ``nullable: true``,
- no ``title`` noise, no ``const``; ``Literal`` becomes ``type: string`` + ``enum``,
- ``exclusiveMinimum: v`` (JSON Schema 2020) becomes ``minimum: v, exclusiveMinimum: true``,
- free-form objects (``dict[str, Any]``) carry ``x-kubernetes-preserve-unknown-fields``,
- every node has a ``type``.

Cross-field rules (exactly one of uri/generator, engine vllm needs GPUs, ...) cannot be
expressed in a structural schema for every supported server version; the operator checks
them with the same models and marks the resource Failed with reason ``InvalidSpec``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from scoreops.api.base import GROUP, VERSION
from scoreops.api.correctorservice import CorrectorServiceSpec, CorrectorServiceStatus
from scoreops.api.evalsuite import EvalSuiteSpec, EvalSuiteStatus
from scoreops.api.scorerun import ScoreRunSpec, ScoreRunStatus

_DROP = {"title", "$defs", "discriminator", "examples"}

CRD_KINDS: dict[str, dict[str, Any]] = {
    "ScoreRun": {
        "spec": ScoreRunSpec,
        "status": ScoreRunStatus,
        "plural": "scoreruns",
        "short": ["sr"],
        "columns": [
            ("Phase", "string", ".status.phase", "Pending, Running, Succeeded or Failed"),
            ("Algorithm", "string", ".spec.algorithm.name", "Training algorithm"),
            ("Stage", "string", ".status.stage", "Current stage"),
            ("Step", "integer", ".status.step", "Optimiser steps completed"),
            ("Acc@t2", "number", ".status.accT2", "Held-out accuracy after one correction"),
        ],
    },
    "EvalSuite": {
        "spec": EvalSuiteSpec,
        "status": EvalSuiteStatus,
        "plural": "evalsuites",
        "short": ["es"],
        "columns": [
            ("Phase", "string", ".status.phase", "Pending, Running, Succeeded or Failed"),
            ("Strategy", "string", ".spec.strategy.name", "Inference-time strategy"),
            ("Results", "string", ".status.resultsUri", "Where the report is"),
        ],
    },
    "CorrectorService": {
        "spec": CorrectorServiceSpec,
        "status": CorrectorServiceStatus,
        "plural": "correctorservices",
        "short": ["cs"],
        "columns": [
            ("Phase", "string", ".status.phase", "Pending, Running, Succeeded or Failed"),
            ("Strategy", "string", ".spec.strategy.name", "Correction strategy"),
            ("URL", "string", ".status.url", "OpenAI-compatible endpoint"),
        ],
    },
}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs recursively."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            target.update(extra)
            return _resolve(target, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    node = {k: v for k, v in node.items() if k not in _DROP}
    # Optional[X] -> X + nullable
    for key in ("anyOf", "oneOf"):
        if key in node:
            branches = node.pop(key)
            non_null = [b for b in branches if b.get("type") != "null"]
            if len(non_null) != 1:
                raise ValueError(f"unions are not structural: {branches}")
            merged = {**non_null[0], **node}
            if len(non_null) != len(branches):
                merged["nullable"] = True
            node = {k: v for k, v in merged.items() if k not in _DROP}
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**node.pop("allOf")[0], **node}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[plain] = node[bound]
            node[bound] = True
    if node.get("default") in (None, ""):
        # the 1.20 API server rejects an empty-string default; absent means the same here
        node.pop("default", None)
    if node.get("type") == "object" or "properties" in node:
        node["type"] = "object"
        props = node.get("properties")
        if props:
            node["properties"] = {k: _structural(v) for k, v in props.items()}
        addl = node.get("additionalProperties")
        if isinstance(addl, dict):
            if addl:
                node["additionalProperties"] = _structural(addl)
            else:
                node.pop("additionalProperties")
                node["x-kubernetes-preserve-unknown-fields"] = True
        elif addl is True:
            node.pop("additionalProperties")
            node["x-kubernetes-preserve-unknown-fields"] = True
        elif addl is False:
            node.pop("additionalProperties")
        if not props and "additionalProperties" not in node:
            node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("type") == "array" and "items" in node:
        node["items"] = _structural(node["items"])
    if "type" not in node:
        # Any: a free-form value
        node["x-kubernetes-preserve-unknown-fields"] = True
        node["type"] = "object"
    return node


def openapi_schema(model: type) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one pydantic model (by wire names)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")  # type: ignore[attr-defined]
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs))


def build_crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    info = CRD_KINDS[kind]
    plural = info["plural"]
    spec_schema = openapi_schema(info["spec"])
    status_schema = openapi_schema(info["status"])
    status_schema["x-kubernetes-preserve-unknown-fields"] = True
    columns = [
        {"name": name, "type": typ, "jsonPath": path, "description": desc}
        for name, typ, path, desc in info["columns"]
    ] + [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "scoreops"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": info["short"],
                "categories": ["scoreops"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (info["spec"].__doc__ or "").strip(),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


HEADER = "# Generated by `scoreops crds` from python/scoreops/api. Do not edit.\n"


def render_crd(kind: str) -> str:
    return HEADER + yaml.safe_dump(build_crd(kind), sort_keys=False, width=100)


def crd_files() -> dict[str, str]:
    """File name -> YAML text for every kind."""
    return {f"{CRD_KINDS[k]['plural']}.{GROUP}.yaml": render_crd(k) for k in CRD_KINDS}


DEFAULT_DIRS = ("manifests/crds", "charts/scoreops/crds")


def write_crds(root: Path, dirs: tuple[str, ...] = DEFAULT_DIRS) -> list[Path]:
    written = []
    for d in dirs:
        out = root / d
        out.mkdir(parents=True, exist_ok=True)
        for name, text in crd_files().items():
            path = out / name
            path.write_text(text)
            written.append(path)
    return written
