"""Pure builders: a validated resource in, the Kubernetes objects it becomes out.

No cluster, no client, no clock: each function maps its inputs to plain dicts, so the result
can be compared with a golden file, printed by ``scoreops render`` and server-side applied by
the operator, and all three agree.

Each kind's children are built in its module of :mod:`scoreops.k8s.kinds` (ScoreRun:
ConfigMap + PyTorchJob; EvalSuite: ConfigMap + PyTorchJob or batch Job; CorrectorService:
ServiceAccount + InferenceService) from the shared pieces in :mod:`scoreops.k8s.pods`; this
module is the entry point for any kind and keeps the names callers import.

S3 credentials are referenced (``secretKeyRef``, or a ServiceAccount's ``secrets`` list for
KServe's storage initializer), never copied into a child.

The contracts of the controllers that run the children, beyond their CRD schemas, are held by
``tests/unit/test_cluster_contracts.py``: the training operator (release-1.9) wires up only
the container named ``pytorch`` and exports ``spec.nprocPerNode`` (default ``auto``) as
``PET_NPROC_PER_NODE``; KServe appends ``--model_name <isvc>`` to a transformer's arguments
unless one already starts with ``--model_name``, and its storage initializer takes S3
credentials from the Secrets listed by the predictor's ServiceAccount.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scoreops.api import Resource
from scoreops.k8s.config import OperatorConfig
from scoreops.k8s.kinds import spec_of
from scoreops.k8s.kinds.correctorservice import (
    INFERENCESERVICE_API_VERSION,
    KSERVE_CONTAINER,
    KSERVE_S3_ENDPOINT,
    KSERVE_S3_REGION,
    KSERVE_S3_USE_HTTPS,
    build_correctorservice_children,
    build_inference_service,
    build_storage_service_account,
    kserve_s3_annotations,
    predictor_service_account,
    predictor_url,
)
from scoreops.k8s.kinds.evalsuite import (
    EVAL_BACKOFF_LIMIT,
    EVAL_COMMAND,
    build_eval_job,
    build_evalsuite_children,
    build_suite_config_map,
    eval_uses_batch_job,
    resolve_suite,
)
from scoreops.k8s.kinds.scorerun import (
    TRAIN_COMMAND,
    build_pytorchjob,
    build_run_config_map,
    build_scorerun_children,
    nproc_per_node,
    train_grace_seconds,
)
from scoreops.k8s.pods import (
    PYTORCH_CONTAINER,
    PYTORCHJOB_API_VERSION,
    UnresolvedModel,
    namespace_of,
    owner_references,
    resource_document,
    s3_env,
    spec_hash,
    torchrun_shutdown_seconds,
)

__all__ = [
    "EVAL_BACKOFF_LIMIT", "EVAL_COMMAND", "INFERENCESERVICE_API_VERSION", "KSERVE_CONTAINER",
    "KSERVE_S3_ENDPOINT", "KSERVE_S3_REGION", "KSERVE_S3_USE_HTTPS", "PYTORCHJOB_API_VERSION",
    "PYTORCH_CONTAINER", "TRAIN_COMMAND", "UnresolvedModel", "build_children",
    "build_correctorservice_children", "build_eval_job", "build_evalsuite_children",
    "build_inference_service", "build_pytorchjob", "build_run_config_map",
    "build_scorerun_children", "build_storage_service_account", "build_suite_config_map",
    "eval_uses_batch_job", "kserve_s3_annotations", "namespace_of", "nproc_per_node",
    "owner_references", "predictor_service_account", "predictor_url", "referenced_runs",
    "resolve_suite", "resource_document", "s3_env", "spec_hash", "torchrun_shutdown_seconds",
    "train_grace_seconds",
]


def build_children(resource: Resource, config: OperatorConfig, namespace: str | None = None,
                   model_uris: Mapping[str, str] | None = None,
                   model_secrets: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Every child of ``resource``, in the order they are applied (``model_uris`` and
    ``model_secrets``: see :data:`scoreops.k8s.kindspec.Build`)."""
    return spec_of(resource).build(resource, config, namespace, model_uris, model_secrets)


def referenced_runs(resource: Resource) -> list[str]:
    """Names of the ScoreRuns whose weights ``resource`` uses (sorted, no duplicates)."""
    return spec_of(resource).referenced_runs(resource)
