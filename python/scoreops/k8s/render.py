"""``scoreops render``: the children the operator would create, as a YAML stream.

A dry run users can diff and review (like ``helm template``). Two things only a cluster knows
are marked instead of invented: owner references (the API server assigns the owner's uid;
the operator adds them) and the weights URI of a referenced ScoreRun (known once it succeeds).
A resource the operator would refuse renders as the reasons, and no objects.
"""

from __future__ import annotations

from typing import Any

import yaml

from scoreops.api import Resource
from scoreops.k8s.builders import build_children, namespace_of, referenced_runs
from scoreops.k8s.checks import cluster_errors
from scoreops.k8s.config import OperatorConfig


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (the ConfigMap's JSON stays readable), no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def to_yaml(documents: list[dict[str, Any]]) -> str:
    """Documents as a ``---``-separated YAML stream, keys in builder order."""
    return "---\n".join(
        yaml.dump(d, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
        for d in documents
    )


def placeholder_uri(run_name: str) -> str:
    return f"<spec.output.uri of ScoreRun {run_name}>/final"


def render_children(resource: Resource, namespace: str = "default",
                    image_tag: str | None = None) -> str:
    """The objects the operator creates for ``resource``, as YAML.

    ``namespace`` applies when the resource names none; ``image_tag`` overrides the image tag
    (default: ``SCOREOPS_IMAGE_TAG``, else this version). The operator's other settings come
    from the same environment variables it reads (``SCOREOPS_IMAGE_REGISTRY``,
    ``SCOREOPS_GPU_NODE_SELECTOR``, ...), so exporting the chart's values reproduces it.
    """
    config = OperatorConfig.from_env().with_tag(image_tag)
    ns = namespace_of(resource, namespace)
    head = f"# {resource.kind} {resource.metadata.name} (namespace {ns}): "
    errors = cluster_errors(resource)
    if errors:
        lines = [head + "the operator would create nothing and set phase Failed, "
                 "reason InvalidSpec:"]
        lines += [f"#   - {e}" for e in errors]
        return "\n".join(lines) + "\n"
    runs = referenced_runs(resource)
    docs = build_children(resource, config, ns, {r: placeholder_uri(r) for r in runs})
    lines = [head + f"{len(docs)} object(s) the operator applies (server-side, field manager "
             "scoreops-operator).",
             "# The operator also sets ownerReferences to the resource (its uid comes from "
             "the API server)."]
    if runs:
        lines.append("# Weights of " + ", ".join(f"ScoreRun {r}" for r in runs)
                     + " are filled in once the run has succeeded.")
    return "\n".join(lines) + "\n" + to_yaml(docs)
