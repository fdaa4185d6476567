"""What the operator does for each event, independent of kopf: validate -> build -> apply -> record.

The kopf handlers in ``operator/handlers`` translate kopf's arguments into calls on
:class:`Reconciler` and its :class:`Outcome` into kopf's exceptions (``PermanentError`` for an
invalid spec, ``TemporaryError`` while waiting for a referenced ScoreRun). Nothing here
imports kopf.

Writes are idempotent by construction:

- children are server-side applied under deterministic names with one field manager, so a
  repeated reconcile (a restarted operator, a retried handler, an operator killed between
  two calls) converges on exactly one child of each kind and, when nothing changed, writes
  nothing;
- status is a pure function of what was observed; it is written only when it differs, as
  a merge patch guarded by the resourceVersion it was computed from (a concurrent write,
  e.g. a timer racing a handler, makes it re-read and recompute instead of overwriting).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from scoreops.api import Resource
from scoreops.api.base import API_VERSION
from scoreops.k8s import status as st
from scoreops.k8s.builders import spec_hash
from scoreops.k8s.client import ApiError, KubeClient
from scoreops.k8s.config import ANNOTATION_SPEC_HASH, OperatorConfig
from scoreops.k8s.kinds import SCORERUN, kind_spec
from scoreops.k8s.kindspec import Action, Outcome, resource_from_body

__all__ = ["Action", "Outcome", "Reconciler", "child_key", "resource_from_body",
           "scorerun_credentials_secret", "scorerun_model_uri", "slim_body"]

log = logging.getLogger(__name__)


def scorerun_model_uri(run: Mapping[str, Any]) -> str | None:
    """The weights a Succeeded ScoreRun produced: the loadable model at ``<output>/final``
    (written by the trainer as a complete artifact before it reports Succeeded)."""
    status = run.get("status") or {}
    if status.get("phase") != "Succeeded":
        return None
    output = ((run.get("spec") or {}).get("output") or {}).get("uri")
    return f"{str(output).rstrip('/')}/final" if output else None


def scorerun_credentials_secret(run: Mapping[str, Any]) -> str | None:
    """The Secret a ScoreRun wrote its weights with (``spec.output.credentialsSecret``)."""
    output = (run.get("spec") or {}).get("output") or {}
    secret = output.get("credentialsSecret")
    return str(secret) if secret else None


class Reconciler:
    """The operator's behaviour for one API server; ``clock`` is injectable for tests.

    Generic over kinds: what differs between them is read from their
    :class:`~scoreops.k8s.kindspec.KindSpec` (``scoreops.k8s.kinds``).
    """

    def __init__(self, client: KubeClient, config: OperatorConfig,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.client = client
        self.config = config
        self.clock = clock or (lambda: datetime.now(UTC))

    # -- status ------------------------------------------------------------------------------

    async def write_status(self, body: Mapping[str, Any],
                           compute: Callable[[Any], st.Status],
                           attempts: int = 8) -> st.Status | None:
        """Compute the next status from the current one and write the difference, if any.

        ``compute`` maps the typed current status to the next; the difference of their wire
        forms is the merge patch. Returns the status now stored, or None if the object is gone.
        """
        meta = body["metadata"]
        api_version, kind = body["apiVersion"], body["kind"]
        status_type = kind_spec(kind).status_type
        ns, name = meta.get("namespace"), meta["name"]
        current: dict[str, Any] = dict(body.get("status") or {})
        version = meta.get("resourceVersion")
        for _ in range(attempts):
            new = compute(st.parse(status_type, current))
            diff = st.changed(current, st.to_wire(new))
            if not diff:
                return new
            try:
                await self.client.merge_patch(api_version, kind, ns, name, {"status": diff},
                                              subresource="status", resource_version=version)
                return new
            except ApiError as exc:
                if not exc.conflict:
                    raise
            fresh = await self.client.get(api_version, kind, ns, name)
            if fresh is None:
                return None
            current = dict(fresh.get("status") or {})
            version = fresh["metadata"].get("resourceVersion")
        raise RuntimeError(f"{kind} {ns}/{name}: status kept changing under the operator")

    # -- create / resume ---------------------------------------------------------------------

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        """Make the children match the spec (create, resume, or an allowed update)."""
        spec = kind_spec(body["kind"])
        generation = body["metadata"].get("generation")
        status = st.parse(spec.status_type, body.get("status"))
        created = spec.job_backed and st.condition_true(status, st.CREATED)
        if created:
            if status.observed_generation != generation:
                return await self.spec_changed(body)  # changed while the operator was away
            if st.is_terminal(status):
                return Outcome("skipped", f"{spec.name} is {st.phase_of(status)}; nothing to do")
        resource, errors = spec.validate(body)
        if errors or resource is None:
            if created:
                # never fail a run that is already going because of a rule it predates
                return Outcome("skipped", "children exist; " + st.format_errors(errors))
            now = self.clock()
            new = await self.write_status(
                body, lambda s: st.invalid_status(s, errors, now, generation))
            return Outcome("invalid", st.format_errors(errors), new)
        if spec.job_backed and st.is_terminal(status) and not _failed_invalid(status):
            return Outcome("skipped", f"{spec.name} is {st.phase_of(status)}; nothing to do")
        return await self._apply(body, resource, status)

    async def _apply(self, body: Mapping[str, Any], resource: Resource,
                     status: st.Status) -> Outcome:
        """Resolve the referenced ScoreRuns, apply the children and record them."""
        spec = kind_spec(body["kind"])
        generation = body["metadata"].get("generation")
        model_uris, model_secrets, waiting = await self._resolve(resource)
        if waiting:
            now = self.clock()
            new = await self.write_status(
                body, lambda s: st.waiting_status(s, waiting, now, generation))
            return Outcome("waiting", waiting, new)
        children = spec.build(resource, self.config, body["metadata"].get("namespace"),
                              model_uris, model_secrets)
        for child in children:
            await self.client.apply(child)
        extra = spec.status_extras(resource, status)
        now = self.clock()
        new = await self.write_status(
            body, lambda s: st.created_status(s, children, now, generation, extra))
        return Outcome("applied", ", ".join(f"{c['kind']} {c['metadata']['name']}"
                                            for c in children), new)

    async def _resolve(self, resource: Resource
                       ) -> tuple[dict[str, str], dict[str, str], str]:
        """ScoreRun name -> weights URI for each referenced run, ScoreRun name -> the
        ``output.credentialsSecret`` it wrote them with (where it named one); a message if
        one is missing."""
        uris: dict[str, str] = {}
        secrets: dict[str, str] = {}
        missing: list[str] = []
        ns = resource.metadata.namespace
        for run_name in kind_spec(resource.kind).referenced_runs(resource):
            run = await self.client.get(API_VERSION, SCORERUN.name, ns, run_name)
            uri = scorerun_model_uri(run) if run is not None else None
            if uri is None:
                state = "does not exist" if run is None else \
                    f"is {st.phase_of(st.parse(SCORERUN.status_type, run.get('status')))}"
                missing.append(f"ScoreRun {run_name} {state}")
            else:
                uris[run_name] = uri
                secret = scorerun_credentials_secret(run)
                if secret:
                    secrets[run_name] = secret
        if missing:
            return uris, secrets, "waiting for trained weights: " + "; ".join(missing) + \
                " (a referenced ScoreRun must reach Succeeded)"
        return uris, secrets, ""

    # -- update --------------------------------------------------------------------------------

    async def spec_changed(self, body: Mapping[str, Any]) -> Outcome:
        """A new generation. Job-backed resources whose children exist refuse it.

        A training or evaluation job cannot change its spec halfway (the pods already run
        the old one), so the change is recorded in the SpecApplied condition and not applied;
        changing it back clears the condition. Before the children exist (an invalid spec,
        or waiting for a ScoreRun) and for long-running kinds (a CorrectorService: KServe
        rolls out a new revision), the change is simply reconciled.
        """
        spec = kind_spec(body["kind"])
        status = st.parse(spec.status_type, body.get("status"))
        if not spec.job_backed or not st.condition_true(status, st.CREATED):
            return await self.reconcile(body)
        meta = body["metadata"]
        applied_hash = None
        if spec.spec_config_map is not None:
            cm = await self.client.get("v1", "ConfigMap", meta.get("namespace"),
                                       spec.spec_config_map(meta["name"]))
            applied_hash = ((cm or {}).get("metadata") or {}).get("annotations", {}).get(
                ANNOTATION_SPEC_HASH)
        resource, _errors = spec.validate(body)
        same = resource is not None and applied_hash is not None and \
            spec_hash(resource) == applied_hash
        now = self.clock()
        generation = meta.get("generation")
        new = await self.write_status(
            body, lambda s: st.refused_status(s, spec.name, now, generation, applied=same))
        if same:
            return Outcome("synced", "spec is back to the one the children run", new)
        refused = st.get_condition(new, st.SPEC_APPLIED)
        return Outcome("refused", refused.message if refused is not None else "", new)

    # -- periodic sync -------------------------------------------------------------------------

    async def sync(self, body: Mapping[str, Any],
                   child_status: Mapping[str, Any] | None) -> Outcome:
        """Mirror the child's state (and progress/summary files) into the status."""
        spec = kind_spec(body["kind"])
        if not st.condition_true(st.parse(spec.status_type, body.get("status")), st.CREATED):
            return Outcome("skipped", "children not applied yet")
        return await spec.sync(self, body, child_status)

    # -- the periodic sync of every resource --------------------------------------------------

    @staticmethod
    def needs_sync(body: Mapping[str, Any]) -> bool:
        """Whether a resource has children to follow: created, and not final (a job) or not
        refused as invalid (a service, which is long-running)."""
        spec = kind_spec(body["kind"])
        try:
            status = st.parse(spec.status_type, body.get("status"))
        except ValidationError as exc:  # not written by this operator: leave it alone
            log.warning("%s %s: status not understood: %s", body["kind"],
                        (body.get("metadata") or {}).get("name"), exc)
            return False
        if not st.condition_true(status, st.CREATED):
            return False
        if not spec.job_backed:
            return not _failed_invalid(status)
        return not st.is_terminal(status)

    async def sync_forever(self, resources: Callable[[], Iterable[Mapping[str, Any]]],
                           child_status: Callable[[Mapping[str, Any]],
                                                  Mapping[str, Any] | None],
                           interval: float, concurrency: int = 16) -> None:
        """Every ``interval`` seconds, :meth:`sync` each resource that :meth:`needs_sync`.

        One loop for the whole operator rather than a timer per object: no finalizer is
        needed to stop per-object timers (deleting a resource never waits for the operator),
        memory does not grow with a task per resource, and ``concurrency`` bounds the burst of
        requests a sweep sends to the API server.
        """
        limit = asyncio.Semaphore(concurrency)
        loop = asyncio.get_running_loop()

        async def one(body: Mapping[str, Any]) -> None:
            async with limit:
                meta = body.get("metadata") or {}
                try:
                    await self.sync(body, child_status(body))
                except ApiError as exc:
                    if not exc.not_found:  # deleted meanwhile: nothing to record
                        log.warning("sync of %s %s/%s failed: %s", body.get("kind"),
                                    meta.get("namespace"), meta.get("name"), exc)
                except Exception:
                    log.exception("sync of %s %s/%s failed", body.get("kind"),
                                  meta.get("namespace"), meta.get("name"))

        while True:
            started = loop.time()
            bodies = [b for b in resources() if self.needs_sync(b)]
            await asyncio.gather(*(one(b) for b in bodies))
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))

    # -- deletion ------------------------------------------------------------------------------

    async def delete_output(self, body: Mapping[str, Any]) -> Outcome:
        """Remove everything under ``spec.output.uri`` (asked for by annotation)."""
        from scoreops import storage

        uri = ((body.get("spec") or {}).get("output") or {}).get("uri")
        if not uri or not str(uri).startswith("s3://"):
            return Outcome("skipped", f"output {uri!r} is not on s3://; nothing to delete")
        await asyncio.to_thread(storage.delete_prefix, uri)
        return Outcome("applied", f"deleted {uri}")


def _failed_invalid(status: st.Status) -> bool:
    failed = st.get_condition(status, st.FAILED)
    return failed is not None and failed.reason == st.INVALID_SPEC


def slim_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the sync needs of a resource (no managedFields, no annotations): kept in memory
    for every resource, so kept small."""
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "generation",
                                          "resourceVersion", "labels") if k in meta},
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def child_key(body: Mapping[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name) of the child whose status a resource mirrors."""
    meta = body["metadata"]
    kind, name = kind_spec(body["kind"]).child(meta["name"], body.get("spec") or {})
    return kind, meta.get("namespace") or "", name
