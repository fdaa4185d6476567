"""EvalSuite -> ConfigMap ``<suite>-eval-spec`` (``suite.json``) + job ``<suite>-eval``.

The job is a one-replica PyTorchJob (vLLM or transformers in-process), or a plain batch Job
when every model under test is a served endpoint (the job only sends requests; it needs no
GPU). ``scoreRun`` models are resolved to that run's weights before the spec is written.
Its status mirrors the job and, once it succeeded, the ``summary.json`` it wrote.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from scoreops.api import EvalSuite, FieldError
from scoreops.api.evalsuite import EvalSuiteSpec, EvalSuiteStatus
from scoreops.k8s import status as st
from scoreops.k8s.config import (
    ANNOTATION_SPEC_HASH,
    LABEL_EVALSUITE,
    SPEC_DIR,
    OperatorConfig,
    eval_job_name,
    suite_spec_name,
)
from scoreops.k8s.kindspec import KindSpec, Outcome, SyncContext, job_to_sync
from scoreops.k8s.pods import (
    PYTORCH_CONTAINER,
    PYTORCHJOB_API_VERSION,
    UnresolvedModel,
    job_pod_template,
    metadata,
    namespace_of,
    resource_document,
    spec_config_map,
    spec_hash,
)
from scoreops.k8s.progress import read_summary
from scoreops.k8s.rules import name_fits, not_local, s3_output

EVAL_BACKOFF_LIMIT = 2
EVAL_COMMAND = ["python", "-m", "scoreops.evaluate", "--spec", f"{SPEC_DIR}/suite.json"]


# --- children --------------------------------------------------------------------------------


def eval_uses_batch_job(suite: EvalSuite) -> bool:
    """True when every model under test is a served endpoint: a plain Job calls them."""
    return suite.endpoints_only


def resolve_suite(suite: EvalSuite, model_uris: Mapping[str, str]) -> EvalSuite:
    """The suite with each ``scoreRun`` model replaced by that run's weights URI.

    ``model_uris`` maps ScoreRun name -> URI; raises :class:`UnresolvedModel` for a
    reference it lacks.
    """
    if not any(m.score_run for m in suite.spec.models):
        return suite
    models = []
    for model in suite.spec.models:
        if model.score_run is not None:
            uri = model_uris.get(model.score_run)
            if uri is None:
                raise UnresolvedModel(model.score_run)
            model = model.model_copy(update={"uri": uri, "score_run": None})
        models.append(model)
    spec = suite.spec.model_copy(update={"models": models})
    return suite.model_copy(update={"spec": spec})


def build_suite_config_map(suite: EvalSuite, config: OperatorConfig,
                           namespace: str | None = None,
                           digest: str | None = None) -> dict[str, Any]:
    """ConfigMap ``<suite>-eval-spec`` with key ``suite.json`` (references resolved).

    ``digest`` is the spec hash of the suite as the user wrote it (before resolving).
    """
    ns = namespace_of(suite, namespace)
    return spec_config_map(EVALSUITE, suite, suite_spec_name(suite.metadata.name), ns,
                           "suite.json", resource_document(suite, ns),
                           digest or spec_hash(suite))


def build_eval_job(suite: EvalSuite, config: OperatorConfig,
                   namespace: str | None = None, digest: str | None = None) -> dict[str, Any]:
    """``<suite>-eval``: a one-replica PyTorchJob, or a batch Job for endpoints only."""
    ns = namespace_of(suite, namespace)
    res = suite.spec.resources
    name = eval_job_name(suite.metadata.name)
    meta = metadata(EVALSUITE, suite, name, ns,
                    {ANNOTATION_SPEC_HASH: digest or spec_hash(suite)})
    image = res.image or config.image("evaluator")
    spec_cm = suite_spec_name(suite.metadata.name)
    if eval_uses_batch_job(suite):
        template = job_pod_template(
            EVALSUITE, suite, container="evaluator", image=image, command=EVAL_COMMAND,
            spec_map_name=spec_cm, res=res, output=suite.spec.output, config=config,
            restart_policy="Never",
        )
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": meta,
            "spec": {"backoffLimit": EVAL_BACKOFF_LIMIT, "template": template},
        }
    template = job_pod_template(
        EVALSUITE, suite, container=PYTORCH_CONTAINER, image=image, command=EVAL_COMMAND,
        spec_map_name=spec_cm, res=res, output=suite.spec.output, config=config,
        restart_policy=None,
    )
    return {
        "apiVersion": PYTORCHJOB_API_VERSION,
        "kind": "PyTorchJob",
        "metadata": meta,
        "spec": {
            # one evaluator process per pod (it runs without torchrun)
            "nprocPerNode": "1",
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": EVAL_BACKOFF_LIMIT},
            "pytorchReplicaSpecs": {
                "Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template},
            },
        },
    }


def build_evalsuite_children(suite: EvalSuite, config: OperatorConfig,
                             namespace: str | None = None,
                             model_uris: Mapping[str, str] | None = None,
                             model_secrets: Mapping[str, str] | None = None
                             ) -> list[dict[str, Any]]:
    """ConfigMap then job; ``scoreRun`` models must be resolvable through ``model_uris``."""
    resolved = resolve_suite(suite, model_uris or {})
    digest = spec_hash(suite)
    return [build_suite_config_map(resolved, config, namespace, digest),
            build_eval_job(resolved, config, namespace, digest)]


def referenced_runs(suite: EvalSuite) -> list[str]:
    return sorted({m.score_run for m in suite.spec.models if m.score_run})


# --- cluster rules ---------------------------------------------------------------------------


def cluster_errors(suite: EvalSuite) -> list[FieldError]:
    """s3:// output, models and data the pod can reach, one pod, a name that fits."""
    errors: list[FieldError] = []
    spec = suite.spec
    s3_output(spec.output.uri, "spec.output.uri", errors)
    not_local(spec.data_root, "spec.dataRoot", errors)
    for i, model in enumerate(spec.models):
        not_local(model.uri, f"spec.models[{i}].uri", errors)
    if spec.strategy.reward_model is not None:
        not_local(spec.strategy.reward_model, "spec.strategy.rewardModel", errors)
    if spec.resources.workers != 1:
        errors.append(FieldError(
            "spec.resources.workers",
            "an EvalSuite runs as one pod (vLLM in-process); set workers to 1",
        ))
    name_fits(suite.metadata.name, eval_job_name("") + "-master-0", errors)
    return errors


# --- status ----------------------------------------------------------------------------------


def child(name: str, spec: Mapping[str, Any]) -> tuple[str, str]:
    """The Job of an endpoints-only suite, else the PyTorchJob (also for a spec that no
    longer parses: its sync is skipped anyway)."""
    try:
        batch = EvalSuiteSpec.model_validate(spec).endpoints_only
    except ValidationError:
        batch = False
    return ("Job" if batch else "PyTorchJob"), eval_job_name(name)


def status_extras(suite: EvalSuite, _status: EvalSuiteStatus) -> dict[str, Any]:
    return {"job_name": eval_job_name(suite.metadata.name)}


async def sync(ctx: SyncContext, body: Mapping[str, Any],
               child_status: Mapping[str, Any] | None) -> Outcome:
    """Mirror the job and, once it succeeded, ``summary.json``."""
    suite = job_to_sync(EVALSUITE, body, child_status)
    if isinstance(suite, Outcome):
        return suite
    assert isinstance(suite, EvalSuite)
    batch = eval_uses_batch_job(suite)
    state = st.batch_job_state(child_status) if batch else st.pytorchjob_state(child_status)
    summary, error = None, None
    if state.phase == "Succeeded":
        try:
            summary = await asyncio.to_thread(read_summary, suite.spec.output.uri)
        except Exception as exc:
            error = f"cannot read {suite.spec.output.uri}/summary.json: {exc}"
    now = ctx.clock()
    new = await ctx.write_status(body, lambda s: st.sync_evalsuite_status(
        s, child=state, summary=summary, summary_error=error, now=now,
        output_uri=suite.spec.output.uri))
    return Outcome("synced", "", new)


EVALSUITE = KindSpec(
    resource_type=EvalSuite,
    status_type=EvalSuiteStatus,
    owner_label=LABEL_EVALSUITE,
    component="evaluator",
    children=("ConfigMap", "PyTorchJob", "Job"),
    job_backed=True,
    spec_config_map=suite_spec_name,
    child=child,
    status_extras=status_extras,
    build=build_evalsuite_children,
    cluster_errors=cluster_errors,
    referenced_runs=referenced_runs,
    sync=sync,
)
