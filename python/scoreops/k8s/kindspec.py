"""What the operator knows about one resource kind: :class:`KindSpec`, and the types its
behaviour is written against (:class:`Outcome`, :class:`SyncContext`).

The specs themselves, one per kind, are in :mod:`scoreops.k8s.kinds`; everything generic
(the reconciler, the builders' shared pieces, the client, the operator's registrations)
reads a kind's facts from its spec instead of comparing kind names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from scoreops.api import FieldError, InvalidResource, Resource, parse_resource
from scoreops.api.base import API_VERSION
from scoreops.api.crd import CRD_KINDS
from scoreops.k8s.client import KubeClient
from scoreops.k8s.conditions import TERMINAL, Status
from scoreops.k8s.config import (
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    OperatorConfig,
)

Action = Literal["applied", "invalid", "waiting", "refused", "skipped", "synced"]
Children = list[dict[str, Any]]


@dataclass(frozen=True)
class Outcome:
    """What a call did; ``message`` is for the log (and kopf's error, when there is one)."""

    action: Action
    message: str = ""
    status: Status | None = None  # the status now stored, when the call wrote one


class SyncContext(Protocol):
    """What a kind's periodic sync may use of the reconciler."""

    client: KubeClient

    def clock(self) -> datetime: ...

    async def write_status(self, body: Mapping[str, Any],
                           compute: Callable[[Any], Status]) -> Status | None: ...


# (resource, config, namespace, model_uris, model_secrets): the two maps are keyed by the
# referenced ScoreRuns' names (their weights' URI, their output.credentialsSecret).
Build = Callable[[Any, OperatorConfig, str | None, Mapping[str, str] | None,
                  Mapping[str, str] | None], Children]
Sync = Callable[[SyncContext, Mapping[str, Any], Mapping[str, Any] | None], Awaitable[Outcome]]


@dataclass(frozen=True)
class KindSpec:
    """One custom-resource kind, as the operator handles it.

    - ``resource_type`` / ``status_type``: its typed models (the CRD's source); the kind's
      name and plural come from them and from :data:`scoreops.api.crd.CRD_KINDS`.
    - ``owner_label`` / ``component``: the labels that tie a child to its owner.
    - ``children``: the kinds of the children it may create, in the order they are applied.
    - ``job_backed``: its children run a job to completion, so a spec change after they
      exist is refused (recorded, not applied) and Succeeded/Failed are final; otherwise
      (a service) a change rolls out and the status follows the child for as long as it runs.
    - ``spec_config_map``: the name of the ConfigMap holding its spec (job-backed kinds).
    - ``child``: (kind, name) of the child whose status it mirrors, from its name and raw
      spec (the spec may no longer parse).
    - ``status_extras``: the kind's own status fields set when its children are applied.
    - ``cluster_errors``: the rules it must also meet to run on a cluster.
    - ``build``: its children, in the order they are applied.
    - ``referenced_runs``: the ScoreRuns whose weights it uses.
    - ``sync``: one periodic status sync from its child's observed status.
    """

    resource_type: type[Resource]
    status_type: type[Status]
    owner_label: str
    component: str
    children: tuple[str, ...]
    job_backed: bool
    spec_config_map: Callable[[str], str] | None
    child: Callable[[str, Mapping[str, Any]], tuple[str, str]]
    status_extras: Callable[[Any, Status], dict[str, Any]]
    cluster_errors: Callable[[Any], list[FieldError]]
    build: Build
    referenced_runs: Callable[[Any], list[str]]
    sync: Sync

    @property
    def name(self) -> str:
        """The kind, as in ``kind:`` (``ScoreRun``)."""
        return str(self.resource_type.model_fields["kind"].default)

    @property
    def api_version(self) -> str:
        return API_VERSION

    @property
    def plural(self) -> str:
        """The resource name in API paths (``scoreruns``)."""
        return str(CRD_KINDS[self.name]["plural"])

    @property
    def has_output(self) -> bool:
        """Whether its spec has an ``output`` (which the operator can delete on request)."""
        spec_type = self.resource_type.model_fields["spec"].annotation
        return "output" in getattr(spec_type, "model_fields", {})

    def validate(self, body: Mapping[str, Any]) -> tuple[Resource | None, list[FieldError]]:
        """The resource of a watched object and its problems (API model rules, then the
        kind's cluster rules)."""
        try:
            resource = resource_from_body(body)
        except InvalidResource as exc:
            return None, list(exc.errors)
        return resource, self.cluster_errors(resource)

    def labels(self, name: str) -> dict[str, str]:
        """The labels every child of the resource ``name`` of this kind carries."""
        return {
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_NAME: "scoreops",
            LABEL_INSTANCE: name,
            LABEL_COMPONENT: self.component,
            self.owner_label: name,
        }


def no_runs(_resource: Any) -> list[str]:
    """``referenced_runs`` of a kind that uses no ScoreRun's weights."""
    return []


def resource_from_body(body: Mapping[str, Any]) -> Resource:
    """The typed resource of a watched object (status and server-set metadata left out)."""
    meta = body.get("metadata") or {}
    doc = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "generation", "labels")
                     if k in meta},
        "spec": body.get("spec"),
    }
    return parse_resource(doc)


def job_to_sync(kind: KindSpec, body: Mapping[str, Any],
                child_status: Mapping[str, Any] | None) -> Resource | Outcome:
    """The resource of a job-backed kind whose child is worth mirroring, else why not: a
    final phase stays final, a child not seen yet has nothing to mirror."""
    phase = (body.get("status") or {}).get("phase") or "Pending"
    if phase in TERMINAL or child_status is None:
        return Outcome("skipped", "")
    resource, _ = kind.validate(body)
    return resource if resource is not None else Outcome("skipped", "spec no longer parses")
