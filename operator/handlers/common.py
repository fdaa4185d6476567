"""Operator-wide pieces: settings, login, the shared client, child indexes, outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from scoreops.api.base import GROUP
from scoreops.k8s.client import KubeClient
from scoreops.k8s.config import FINALIZER, OperatorConfig
from scoreops.k8s.kinds import KINDS
from scoreops.k8s.reconcile import Outcome, Reconciler, child_key, slim_body

# Read once at import: a malformed setting stops the operator before it touches anything.
CONFIG = OperatorConfig.from_env()
# Opt-in clean-up of a resource's S3 output when it is deleted (adds our finalizer).
DELETE_OUTPUT_ANNOTATION = f"{GROUP}/delete-output"
# Retry delay while an EvalSuite/CorrectorService waits for a referenced ScoreRun.
WAIT_DELAY = max(3 * CONFIG.sync_interval, 5.0)
# What the indexes keep of each child's status (enough to mirror it, little memory).
_KEPT = ("conditions", "startTime", "completionTime", "active", "succeeded", "failed", "url",
         "modelStatus")


def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: the kubeconfig. No client library needed."""
    return (kopf.login_with_service_account(settings=settings)
            or kopf.login_with_kubeconfig(settings=settings))


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo,
                    pytorchjobs: kopf.Index[Any, Any], jobs: kopf.Index[Any, Any],
                    inferenceservices: kopf.Index[Any, Any], **indexes: Any) -> None:
    """kopf settings for many small objects, the client the handlers write with, and the
    operator-wide status sync over the indexed resources (one index per kind, named by its
    plural, among ``indexes``)."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    # Events only for warnings and errors (an invalid spec, a refused change): at 500 runs,
    # an Event per successful handler doubles the API traffic for nothing.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "scoreops-operator"
    settings.networking.request_timeout = 60
    settings.watching.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 4  # only the S3 reads use threads
    info = login(settings)
    if info is None:
        raise kopf.LoginError("no service account and no kubeconfig to log in with")
    reconciler = Reconciler(KubeClient.from_connection_info(info), CONFIG)
    memo.reconciler = reconciler
    owners = [indexes[spec.plural] for spec in KINDS.values()]
    children = {"PyTorchJob": pytorchjobs, "Job": jobs, "InferenceService": inferenceservices}

    def resources() -> list[dict[str, Any]]:
        return [body for index in owners for store in index.values() for body in store]

    memo.sync_task = asyncio.create_task(reconciler.sync_forever(
        resources, lambda body: child_status(body, children), CONFIG.sync_interval))


async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    task: asyncio.Task[None] | None = memo.get("sync_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is not None:
        await reconciler.client.close()


def finish(outcome: Outcome, body: kopf.Body,
           logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """Turn an outcome into kopf's terms. Handlers return None: nothing lands in status.

    An invalid spec and a refused change are also posted as Warning events, so that
    ``kubectl describe`` shows them next to the resource.
    """
    if outcome.action == "invalid":
        kopf.warn(body, reason="InvalidSpec", message=outcome.message)
        raise kopf.PermanentError(f"InvalidSpec: {outcome.message}")
    if outcome.action == "waiting":
        raise kopf.TemporaryError(outcome.message, delay=WAIT_DELAY)
    if outcome.action == "refused":
        kopf.warn(body, reason="SpecChangeRefused", message=outcome.message)
        logger.warning(outcome.message)
    elif outcome.message:
        logger.info(f"{outcome.action}: {outcome.message}")


# --- indexes, keyed by (namespace, name): our resources and their children's status -------


def _compact(status: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: status[k] for k in _KEPT if status and k in status}


def index_child(namespace: str, name: str, status: Mapping[str, Any],
                **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, name): _compact(status)}


def index_resource(namespace: str, name: str, body: kopf.Body,
                   **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, name): slim_body(body)}


def child_status(body: Mapping[str, Any], indexes: Mapping[str, kopf.Index[Any, Any]]
                 ) -> dict[str, Any] | None:
    """The indexed status of the child ``body`` mirrors; None if it does not exist (yet)."""
    kind, ns, name = child_key(body)
    store = indexes[kind].get((ns, name))
    return next(iter(store), None) if store is not None else None
