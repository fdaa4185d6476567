"""The registry of resource kinds: one :class:`~scoreops.k8s.kindspec.KindSpec` per kind,
each defined with its children's builders and its status sync in its own module.

Generic code looks a kind up here (``kind_spec(body["kind"])``, ``spec_of(resource)``) and
reads its facts; no other module compares kind names.
"""

from __future__ import annotations

from scoreops.api import Resource
from scoreops.k8s.kinds.correctorservice import CORRECTORSERVICE
from scoreops.k8s.kinds.evalsuite import EVALSUITE
from scoreops.k8s.kinds.scorerun import SCORERUN
from scoreops.k8s.kindspec import KindSpec

KINDS: dict[str, KindSpec] = {spec.name: spec for spec in (SCORERUN, EVALSUITE, CORRECTORSERVICE)}

__all__ = ["CORRECTORSERVICE", "EVALSUITE", "KINDS", "SCORERUN", "KindSpec", "kind_spec",
           "spec_of"]


def kind_spec(kind: str) -> KindSpec:
    """The spec of ``kind`` (as in a manifest's ``kind:``); ValueError for any other."""
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"not a scoreops kind: {kind!r} (expected one of {sorted(KINDS)})"
                         ) from None


def spec_of(resource: Resource) -> KindSpec:
    """The spec of a typed resource's kind."""
    return kind_spec(resource.kind)
