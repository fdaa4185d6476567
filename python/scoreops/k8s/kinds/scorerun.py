"""ScoreRun -> ConfigMap ``<run>-spec`` (``run.json``) + PyTorchJob ``<run>-train``.

The PyTorchJob (``kubeflow.org/v1``) has a Master and ``workers - 1`` Workers, each running
``jobs/launch.sh``: one torchrun with ``nprocPerNode`` = ``gpusPerWorker`` (1 on CPU)
processes of ``python -m scoreops.train --spec /etc/scoreops/run.json``. Its status mirrors
the PyTorchJob and the trainer's ``progress.json``; a run whose progress stops advancing for
``stallTimeout`` fails as Stalled and its job is suspended, which releases the GPUs.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from scoreops.api import FieldError, ScoreRun
from scoreops.api.base import duration_seconds
from scoreops.api.common import WorkerResources
from scoreops.api.scorerun import ScoreRunStatus
from scoreops.k8s import status as st
from scoreops.k8s.client import ApiError
from scoreops.k8s.config import (
    ANNOTATION_SPEC_HASH,
    LABEL_RUN,
    SPEC_DIR,
    OperatorConfig,
    run_spec_name,
    train_job_name,
)
from scoreops.k8s.kindspec import KindSpec, Outcome, SyncContext, job_to_sync, no_runs
from scoreops.k8s.pods import (
    PYTORCH_CONTAINER,
    PYTORCHJOB_API_VERSION,
    job_pod_template,
    metadata,
    namespace_of,
    resource_document,
    spec_config_map,
    spec_hash,
)
from scoreops.k8s.progress import read_progress
from scoreops.k8s.rules import name_fits, not_local, s3_output

# torchrun with one process per GPU of the pod (jobs/launch.sh, in the trainer image)
TRAIN_COMMAND = ["/opt/scoreops/jobs/launch.sh", "--spec", f"{SPEC_DIR}/run.json"]


# --- children --------------------------------------------------------------------------------


def build_run_config_map(run: ScoreRun, config: OperatorConfig,
                         namespace: str | None = None) -> dict[str, Any]:
    """ConfigMap ``<run>-spec`` with key ``run.json``: the ScoreRun as the trainer reads it."""
    ns = namespace_of(run, namespace)
    return spec_config_map(SCORERUN, run, run_spec_name(run.metadata.name), ns, "run.json",
                           resource_document(run, ns), spec_hash(run))


def build_pytorchjob(run: ScoreRun, config: OperatorConfig,
                     namespace: str | None = None) -> dict[str, Any]:
    """PyTorchJob ``<run>-train``: Master + ``workers - 1`` Workers of the trainer image.

    ``restartPolicy: OnFailure`` restarts a crashed container in place (the trainer resumes
    from its newest complete checkpoint); ``backoffLimit`` caps the restarts of the whole
    job (see :func:`job_backoff_limit`); ``cleanPodPolicy: Running`` removes pods still running when the job ends (a failed
    Master must not leave Workers holding GPUs) and keeps finished pods for their logs.

    ``nprocPerNode`` is the pod's GPU count, 1 on a CPU pod: left out, the training operator
    sets it to ``auto``, which torchrun turns into one process per CPU on a CPU-only pod.
    ``terminationGracePeriodSeconds`` (the spec's, else the platform's) gives the trainer the
    time to finish its step and checkpoint after SIGTERM; see :func:`train_grace_seconds`.
    """
    ns = namespace_of(run, namespace)
    res = run.spec.resources
    template = job_pod_template(
        SCORERUN, run, container=PYTORCH_CONTAINER, image=res.image or config.image("trainer"),
        command=TRAIN_COMMAND, spec_map_name=run_spec_name(run.metadata.name), res=res,
        output=run.spec.output, config=config, restart_policy=None,
        grace_seconds=train_grace_seconds(run, config),
    )
    replicas: dict[str, Any] = {
        "Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template},
    }
    if res.workers > 1:
        replicas["Worker"] = {
            "replicas": res.workers - 1, "restartPolicy": "OnFailure",
            "template": copy.deepcopy(template),
        }
    return {
        "apiVersion": PYTORCHJOB_API_VERSION,
        "kind": "PyTorchJob",
        "metadata": metadata(SCORERUN, run, train_job_name(run.metadata.name), ns,
                             {ANNOTATION_SPEC_HASH: spec_hash(run)}),
        "spec": {
            "nprocPerNode": nproc_per_node(res),
            "runPolicy": {"cleanPodPolicy": "Running",
                          "backoffLimit": job_backoff_limit(res.backoff_limit, res.workers)},
            "pytorchReplicaSpecs": replicas,
        },
    }


def job_backoff_limit(incidents: int, pods: int) -> int:
    """The PyTorchJob's ``runPolicy.backoffLimit`` for a run that may survive ``incidents``
    restarts of the whole job (``resources.backoffLimit``).

    The training operator fails a job once the container restarts of its running pods add
    up to ``backoffLimit`` (``pkg/core/job.go``, ``PastBackoffLimit``). One incident restarts
    every pod: an evicted pod is recreated (a new pod, no restart counted) while the other
    ``pods - 1`` stop at the agreed step, exit non-zero and restart in place (one count
    each); a crash of one rank costs up to ``pods``. Counting in pods keeps the budget in
    incidents: ``incidents x pods``. A 4-pod run with the default 3 gets 12: three evictions
    count 3 x 3 = 9 < 12 and it goes on, where a limit of 3 failed it at the first (3 >= 3);
    the third crash (3 x 4 = 12) fails it, as the third crash fails a one-pod run.
    """
    return incidents * max(1, pods)


def nproc_per_node(res: WorkerResources) -> str:
    """Processes per pod, as the PyTorchJob's ``nprocPerNode`` (a string in its schema): one
    per GPU, one on a CPU pod."""
    return str(max(1, res.gpus_per_worker))


def train_grace_seconds(run: ScoreRun, config: OperatorConfig) -> int:
    """The trainer pods' grace period: the ScoreRun's, else the platform's."""
    own = run.spec.resources.termination_grace_period_seconds
    return own if own is not None else config.train_grace_seconds


def build_scorerun_children(run: ScoreRun, config: OperatorConfig,
                            namespace: str | None = None,
                            model_uris: Mapping[str, str] | None = None,
                            model_secrets: Mapping[str, str] | None = None
                            ) -> list[dict[str, Any]]:
    """The ConfigMap first (the job mounts it), then the PyTorchJob."""
    return [build_run_config_map(run, config, namespace), build_pytorchjob(run, config, namespace)]


# --- cluster rules ---------------------------------------------------------------------------


def cluster_errors(run: ScoreRun) -> list[FieldError]:
    """s3:// output, inputs the pods can reach, names that leave room for the pods' suffixes."""
    errors: list[FieldError] = []
    spec = run.spec
    s3_output(spec.output.uri, "spec.output.uri", errors)
    not_local(spec.model.uri, "spec.model.uri", errors)
    not_local(spec.dataset.train.uri, "spec.dataset.train.uri", errors)
    if spec.dataset.eval is not None:
        not_local(spec.dataset.eval.uri, "spec.dataset.eval.uri", errors)
    workers = spec.resources.workers
    role = f"-worker-{workers - 2}" if workers > 1 else "-master-0"
    name_fits(run.metadata.name, train_job_name("") + role, errors)
    return errors


# --- status ----------------------------------------------------------------------------------


def child(name: str, _spec: Mapping[str, Any]) -> tuple[str, str]:
    return "PyTorchJob", train_job_name(name)


def status_extras(run: ScoreRun, status: ScoreRunStatus) -> dict[str, Any]:
    """The job's name and the run's length (kept once known: the trainer may refine it)."""
    return {"job_name": train_job_name(run.metadata.name),
            "total_steps": status.total_steps or run.spec.algorithm.total_steps()}


async def sync(ctx: SyncContext, body: Mapping[str, Any],
               child_status: Mapping[str, Any] | None) -> Outcome:
    """Mirror the PyTorchJob and ``progress.json``; suspend the job of a stalled run."""
    run = job_to_sync(SCORERUN, body, child_status)
    if isinstance(run, Outcome):
        return run
    assert isinstance(run, ScoreRun)
    state = st.pytorchjob_state(child_status)
    progress, error = None, None
    if state.phase != "Pending":
        try:
            progress = await asyncio.to_thread(read_progress, run.spec.output.uri)
        except Exception as exc:  # storage or format problem: recorded, never fatal
            error = f"cannot read {run.spec.output.uri}/progress.json: {exc}"
    stall = timedelta(seconds=duration_seconds(run.spec.stall_timeout))
    now = ctx.clock()
    new = await ctx.write_status(body, lambda s: st.sync_scorerun_status(
        s, child=state, progress=progress, progress_error=error, now=now,
        stall_timeout=stall, results_uri=run.spec.output.uri))
    failed = st.get_condition(new, st.FAILED)
    if failed is not None and failed.reason == st.STALLED:
        await _suspend(ctx, body, train_job_name(run.metadata.name))
        return Outcome("synced", "stalled: job suspended", new)
    return Outcome("synced", "", new)


async def _suspend(ctx: SyncContext, body: Mapping[str, Any], job_name: str) -> None:
    """Suspend a stalled PyTorchJob so that its pods release their GPUs."""
    try:
        await ctx.client.merge_patch(
            PYTORCHJOB_API_VERSION, "PyTorchJob", body["metadata"].get("namespace"),
            job_name, {"spec": {"runPolicy": {"suspend": True}}})
    except ApiError as exc:
        if not exc.not_found:
            raise


SCORERUN = KindSpec(
    resource_type=ScoreRun,
    status_type=ScoreRunStatus,
    owner_label=LABEL_RUN,
    component="trainer",
    children=("ConfigMap", "PyTorchJob"),
    job_backed=True,
    spec_config_map=run_spec_name,
    child=child,
    status_extras=status_extras,
    build=build_scorerun_children,
    cluster_errors=cluster_errors,
    referenced_runs=no_runs,
    sync=sync,
)
