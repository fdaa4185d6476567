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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from scoreops.api import (
    CorrectorService,
    EvalSuite,
    FieldError,
    InvalidResource,
    Resource,
    ScoreRun,
    parse_resource,
)
from scoreops.api.base import duration_seconds
from scoreops.k8s import status as st
from scoreops.k8s.builders import (
    PYTORCHJOB_API_VERSION,
    build_children,
    eval_uses_batch_job,
    referenced_runs,
    spec_hash,
)
from scoreops.k8s.checks import cluster_errors
from scoreops.k8s.client import ApiError, KubeClient
from scoreops.k8s.config import (
    ANNOTATION_SPEC_HASH,
    OperatorConfig,
    eval_job_name,
    run_spec_name,
    suite_spec_name,
    train_job_name,
)
from scoreops.k8s.progress import read_progress, read_summary

log = logging.getLogger(__name__)

JOB_BACKED = ("ScoreRun", "EvalSuite")
Action = Literal["applied", "invalid", "waiting", "refused", "skipped", "synced"]


@dataclass(frozen=True)
class Outcome:
    """What a call did; ``message`` is for the log (and kopf's error, when there is one)."""

    action: Action
    message: str = ""
    status: dict[str, Any] | None = None


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


def validate(body: Mapping[str, Any]) -> tuple[Resource | None, list[FieldError]]:
    """The resource and its problems (API model rules, then cluster-only rules)."""
    try:
        resource = resource_from_body(body)
    except InvalidResource as exc:
        return None, list(exc.errors)
    return resource, cluster_errors(resource)


def scorerun_model_uri(run: Mapping[str, Any]) -> str | None:
    """The weights a Succeeded ScoreRun produced: the loadable model at ``<output>/final``
    (written by the trainer as a complete artifact before it reports Succeeded)."""
    status = run.get("status") or {}
    if status.get("phase") != "Succeeded":
        return None
    output = ((run.get("spec") or {}).get("output") or {}).get("uri")
    return f"{str(output).rstrip('/')}/final" if output else None


def spec_config_map_name(kind: str, name: str) -> str | None:
    return {"ScoreRun": run_spec_name, "EvalSuite": suite_spec_name}.get(kind, lambda _: None)(
        name)


class Reconciler:
    """The operator's behaviour for one API server; ``clock`` is injectable for tests."""

    def __init__(self, client: KubeClient, config: OperatorConfig,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.client = client
        self.config = config
        self.clock = clock or (lambda: datetime.now(UTC))

    # -- status ------------------------------------------------------------------------------

    async def write_status(self, body: Mapping[str, Any],
                           compute: Callable[[dict[str, Any]], dict[str, Any]],
                           attempts: int = 8) -> dict[str, Any] | None:
        """Compute the next status from the current one and write the difference, if any.

        Returns the status now stored, or None if the object is gone.
        """
        meta = body["metadata"]
        api_version, kind = body["apiVersion"], body["kind"]
        ns, name = meta.get("namespace"), meta["name"]
        current: dict[str, Any] = dict(body.get("status") or {})
        version = meta.get("resourceVersion")
        for _ in range(attempts):
            new = compute(current)
            diff = st.changed(current, new)
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
        meta = body["metadata"]
        kind, generation = body["kind"], meta.get("generation")
        status = body.get("status") or {}
        created = st.condition_true(status, st.CREATED)
        if kind in JOB_BACKED and created:
            if status.get("observedGeneration") != generation:
                return await self.spec_changed(body)  # changed while the operator was away
            if st.is_terminal(status):
                return Outcome("skipped", f"{kind} is {st.phase_of(status)}; nothing to do")
        resource, errors = validate(body)
        if errors or resource is None:
            if kind in JOB_BACKED and created:
                # never fail a run that is already going because of a rule it predates
                return Outcome("skipped", "children exist; " + st.format_errors(errors))
            now = self.clock()
            new = await self.write_status(
                body, lambda s: st.invalid_status(s, errors, now, generation))
            return Outcome("invalid", st.format_errors(errors), new)
        if kind in JOB_BACKED and st.is_terminal(status) and not _failed_invalid(status):
            return Outcome("skipped", f"{kind} is {st.phase_of(status)}; nothing to do")

        model_uris, waiting = await self._resolve(resource)
        if waiting:
            now = self.clock()
            new = await self.write_status(
                body, lambda s: st.waiting_status(s, waiting, now, generation))
            return Outcome("waiting", waiting, new)

        children = build_children(resource, self.config, meta.get("namespace"), model_uris)
        for child in children:
            await self.client.apply(child)
        extra: dict[str, Any] = {}
        if isinstance(resource, ScoreRun):
            extra = {"jobName": train_job_name(resource.metadata.name),
                     "totalSteps": status.get("totalSteps")
                     or resource.spec.algorithm.total_steps()}
        elif isinstance(resource, EvalSuite):
            extra = {"jobName": eval_job_name(resource.metadata.name)}
        elif isinstance(resource, CorrectorService):
            extra = {"inferenceService": resource.metadata.name}
        now = self.clock()
        new = await self.write_status(
            body, lambda s: st.created_status(s, children, now, generation, extra))
        return Outcome("applied", ", ".join(f"{c['kind']} {c['metadata']['name']}"
                                            for c in children), new)

    async def _resolve(self, resource: Resource) -> tuple[dict[str, str], str]:
        """ScoreRun name -> weights URI for each referenced run; a message if one is missing."""
        uris: dict[str, str] = {}
        missing: list[str] = []
        ns = resource.metadata.namespace
        for run_name in referenced_runs(resource):
            run = await self.client.get("scoreops.io/v1alpha1", "ScoreRun", ns, run_name)
            uri = scorerun_model_uri(run) if run is not None else None
            if uri is None:
                state = "does not exist" if run is None else \
                    f"is {st.phase_of(run.get('status'))}"
                missing.append(f"ScoreRun {run_name} {state}")
            else:
                uris[run_name] = uri
        if missing:
            return uris, "waiting for trained weights: " + "; ".join(missing) + \
                " (a referenced ScoreRun must reach Succeeded)"
        return uris, ""

    # -- update --------------------------------------------------------------------------------

    async def spec_changed(self, body: Mapping[str, Any]) -> Outcome:
        """A new generation. Job-backed resources whose children exist refuse it.

        A training or evaluation job cannot change its spec halfway (the pods already run
        the old one), so the change is recorded in the SpecApplied condition and not applied;
        changing it back clears the condition. Before the children exist (an invalid spec,
        or waiting for a ScoreRun) and for CorrectorServices (KServe rolls out a new
        revision), the change is simply reconciled.
        """
        kind = body["kind"]
        status = body.get("status") or {}
        if kind not in JOB_BACKED or not st.condition_true(status, st.CREATED):
            return await self.reconcile(body)
        meta = body["metadata"]
        cm_name = spec_config_map_name(kind, meta["name"])
        applied_hash = None
        if cm_name:
            cm = await self.client.get("v1", "ConfigMap", meta.get("namespace"), cm_name)
            applied_hash = ((cm or {}).get("metadata") or {}).get("annotations", {}).get(
                ANNOTATION_SPEC_HASH)
        resource, _errors = validate(body)
        same = resource is not None and applied_hash is not None and \
            spec_hash(resource) == applied_hash
        now = self.clock()
        generation = meta.get("generation")
        new = await self.write_status(
            body, lambda s: st.refused_status(s, kind, now, generation, applied=same))
        if same:
            return Outcome("synced", "spec is back to the one the children run", new)
        message = (st.get_condition(new, st.SPEC_APPLIED) or {}).get("message", "") if new else ""
        return Outcome("refused", message, new)

    # -- periodic sync -------------------------------------------------------------------------

    async def sync(self, body: Mapping[str, Any],
                   child_status: Mapping[str, Any] | None) -> Outcome:
        """Mirror the child's state (and progress/summary files) into the status."""
        status = body.get("status") or {}
        kind = body["kind"]
        if not st.condition_true(status, st.CREATED):
            return Outcome("skipped", "children not applied yet")
        if kind == "CorrectorService":
            now = self.clock()
            new = await self.write_status(
                body, lambda s: st.sync_correctorservice_status(s, child_status, now))
            return Outcome("synced", "", new)
        if st.is_terminal(status) or child_status is None:
            return Outcome("skipped", "")
        resource, _ = validate(body)
        if resource is None:
            return Outcome("skipped", "spec no longer parses")
        if isinstance(resource, ScoreRun):
            return await self._sync_scorerun(body, resource, child_status)
        assert isinstance(resource, EvalSuite)
        return await self._sync_evalsuite(body, resource, child_status)

    async def _sync_scorerun(self, body: Mapping[str, Any], run: ScoreRun,
                             child_status: Mapping[str, Any]) -> Outcome:
        child = st.pytorchjob_state(child_status)
        progress, error = None, None
        if child.phase != "Pending":
            try:
                progress = await asyncio.to_thread(read_progress, run.spec.output.uri)
            except Exception as exc:  # storage or format problem: recorded, never fatal
                error = f"cannot read {run.spec.output.uri}/progress.json: {exc}"
        stall = timedelta(seconds=duration_seconds(run.spec.stall_timeout))
        now = self.clock()
        new = await self.write_status(body, lambda s: st.sync_scorerun_status(
            s, child=child, progress=progress, progress_error=error, now=now,
            stall_timeout=stall, results_uri=run.spec.output.uri))
        if new is not None and (st.get_condition(new, st.FAILED) or {}).get("reason") == \
                st.STALLED:
            await self._suspend(body, train_job_name(run.metadata.name))
            return Outcome("synced", "stalled: job suspended", new)
        return Outcome("synced", "", new)

    async def _suspend(self, body: Mapping[str, Any], job_name: str) -> None:
        """Suspend a stalled PyTorchJob so that its pods release their GPUs."""
        try:
            await self.client.merge_patch(
                PYTORCHJOB_API_VERSION, "PyTorchJob", body["metadata"].get("namespace"),
                job_name, {"spec": {"runPolicy": {"suspend": True}}})
        except ApiError as exc:
            if not exc.not_found:
                raise

    async def _sync_evalsuite(self, body: Mapping[str, Any], suite: EvalSuite,
                              child_status: Mapping[str, Any]) -> Outcome:
        batch = eval_uses_batch_job(suite)
        child = st.batch_job_state(child_status) if batch else st.pytorchjob_state(child_status)
        summary, error = None, None
        if child.phase == "Succeeded":
            try:
                summary = await asyncio.to_thread(read_summary, suite.spec.output.uri)
            except Exception as exc:
                error = f"cannot read {suite.spec.output.uri}/summary.json: {exc}"
        now = self.clock()
        new = await self.write_status(body, lambda s: st.sync_evalsuite_status(
            s, child=child, summary=summary, summary_error=error, now=now,
            output_uri=suite.spec.output.uri))
        return Outcome("synced", "", new)

    # -- the periodic sync of every resource --------------------------------------------------

    @staticmethod
    def needs_sync(body: Mapping[str, Any]) -> bool:
        """Whether a resource has children to follow: created, and not final (a job) or not
        refused as invalid (a service, which is long-running)."""
        status = body.get("status") or {}
        if not st.condition_true(status, st.CREATED):
            return False
        if body.get("kind") == "CorrectorService":
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


def _failed_invalid(status: Mapping[str, Any]) -> bool:
    return (st.get_condition(status, st.FAILED) or {}).get("reason") == st.INVALID_SPEC


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
    ns, name, kind = meta.get("namespace") or "", meta["name"], body["kind"]
    if kind == "ScoreRun":
        return "PyTorchJob", ns, train_job_name(name)
    if kind == "EvalSuite":
        endpoints_only = all("endpoint" in (m or {})
                             for m in (body.get("spec") or {}).get("models") or [{}])
        return ("Job" if endpoints_only else "PyTorchJob"), ns, eval_job_name(name)
    return "InferenceService", ns, name
