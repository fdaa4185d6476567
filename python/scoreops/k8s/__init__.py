"""Kubernetes side of scoreops: pure builders, status logic and the operator's reconciler.

Importable without a cluster and without kopf:

- ``kinds``: the registry of resource kinds (a ``KindSpec`` each, see ``kindspec``), one
  module per kind with its children's builders, child key, status extras and status sync;
- ``pods``: the pieces every child shares; ``builders`` and ``render`` turn any resource
  into the objects the operator creates (``scoreops render``);
- ``status`` (with ``conditions`` and ``childstate``) and ``progress``: the pure status
  logic, on the typed status models;
- ``reconcile`` and ``client``: what the kopf handlers in ``operator/`` call.
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
