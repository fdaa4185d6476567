"""Kubernetes side of scoreops: pure builders, status logic and the operator's reconciler.

Importable without a cluster and without kopf: ``builders`` and ``render`` turn a resource
into the objects the operator creates (``scoreops render``); ``status`` and ``progress`` hold
the pure status logic; ``reconcile`` and ``client`` are what the kopf handlers in
``operator/`` call.
"""

from scoreops.k8s.builders import (
    build_children,
    build_eval_job,
    build_inference_service,
    build_pytorchjob,
    build_run_config_map,
    build_suite_config_map,
)
from scoreops.k8s.checks import cluster_errors
from scoreops.k8s.config import FIELD_MANAGER, FINALIZER, OperatorConfig

__all__ = [
    "FIELD_MANAGER",
    "FINALIZER",
    "OperatorConfig",
    "build_children",
    "build_eval_job",
    "build_inference_service",
    "build_pytorchjob",
    "build_run_config_map",
    "build_suite_config_map",
    "cluster_errors",
]
