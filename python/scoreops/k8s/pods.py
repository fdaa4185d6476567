"""The pieces every child shares: metadata and owner references, the spec ConfigMap, the S3
environment, compute requests, placement and the pod of a training or evaluation job.

Pure functions of their inputs; each kind's module in :mod:`scoreops.k8s.kinds` assembles
its children from them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from scoreops.api import Resource
from scoreops.api.base import Placement
from scoreops.api.common import OutputSpec, WorkerResources
from scoreops.k8s.config import ANNOTATION_SPEC_HASH, OWNER_API_VERSION, SPEC_DIR, OperatorConfig
from scoreops.k8s.kindspec import KindSpec

# The training operator gives every container of a PyTorchJob pod the rendezvous variables
# (MASTER_ADDR, RANK, PET_*: controller.v1/pytorch/envvar.go), but reads the exit code of, and
# opens the port on, the container named "pytorch" (PyTorchJobDefaultContainerName).
PYTORCH_CONTAINER = "pytorch"
PYTORCHJOB_API_VERSION = "kubeflow.org/v1"


class UnresolvedModel(ValueError):
    """A model refers to a ScoreRun whose weights are not known (yet)."""

    def __init__(self, score_run: str) -> None:
        self.score_run = score_run
        super().__init__(
            f"ScoreRun {score_run!r} has no trained weights yet (it must reach Succeeded)"
        )


# --- shared pieces -----------------------------------------------------------------------------


def spec_hash(resource: Resource) -> str:
    """A short, stable digest of the spec (defaults filled in); changes when the spec does."""
    text = json.dumps(resource.spec.to_wire(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def owner_references(resource: Resource) -> list[dict[str, Any]]:
    """The controller reference to ``resource``; empty before the API server assigned a uid."""
    if not resource.metadata.uid:
        return []
    return [{
        "apiVersion": OWNER_API_VERSION,
        "kind": resource.kind,
        "name": resource.metadata.name,
        "uid": resource.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }]


def metadata(kind: KindSpec, resource: Resource, name: str, namespace: str,
             annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A child's metadata: its owner's labels and controller reference, ``annotations``."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": kind.labels(resource.metadata.name),
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    owners = owner_references(resource)
    if owners:
        meta["ownerReferences"] = owners
    return meta


def namespace_of(resource: Resource, namespace: str | None = None) -> str:
    """The namespace children go to: the resource's own, else ``namespace``, else default."""
    return resource.metadata.namespace or namespace or "default"


def resource_document(resource: Resource, namespace: str) -> dict[str, Any]:
    """The resource as the job reads it: apiVersion, kind, name/namespace and the full spec.

    The spec is written with every default filled in, so the job runs exactly what the
    operator validated, whatever version of the defaults the job's image carries.
    """
    return {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": resource.metadata.name, "namespace": namespace},
        "spec": resource.spec.to_wire(),
    }


def spec_config_map(kind: KindSpec, resource: Resource, name: str, namespace: str, key: str,
                    document: Mapping[str, Any], digest: str) -> dict[str, Any]:
    """The ConfigMap a job mounts its resource's spec from (``key`` in ``SPEC_DIR``)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(kind, resource, name, namespace, {ANNOTATION_SPEC_HASH: digest}),
        "data": {key: json.dumps(document, indent=2, sort_keys=True) + "\n"},
    }


def s3_env(output: OutputSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    """AWS_* variables from the credentials Secret (referenced, never copied).

    The Secret is ``output.credentialsSecret``, else the platform default
    (``SCOREOPS_S3_SECRET``); with neither, no credentials are set (pods then use whatever
    identity the cluster gives them, e.g. workload identity). The endpoint is the platform's
    (``SCOREOPS_S3_ENDPOINT``) when set, else ``AWS_ENDPOINT_URL`` from the Secret if present;
    the region likewise (``SCOREOPS_S3_REGION``, else the Secret's ``AWS_DEFAULT_REGION``, the
    name boto3 and KServe's storage initializer read).
    """
    secret = output.credentials_secret or config.s3_secret
    env: list[dict[str, Any]] = []
    if secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    if config.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": config.s3_endpoint})
    elif secret:
        env.append({"name": "AWS_ENDPOINT_URL", "valueFrom": {"secretKeyRef": {
            "name": secret, "key": "AWS_ENDPOINT_URL", "optional": True}}})
    if config.s3_region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": config.s3_region})
    elif secret:
        env.append({"name": "AWS_DEFAULT_REGION", "valueFrom": {"secretKeyRef": {
            "name": secret, "key": "AWS_DEFAULT_REGION", "optional": True}}})
    return env


def common_env(kind: str, name: str) -> list[dict[str, Any]]:
    return [
        {"name": "SCOREOPS_RESOURCE_KIND", "value": kind},
        {"name": "SCOREOPS_RESOURCE_NAME", "value": name},
        {"name": "SCOREOPS_NAMESPACE",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # weights and data come from s3:// or the image, never from a model hub
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]


def compute_resources(cpu: str | None, memory: str | None, gpus: int,
             gpu_resource: str) -> dict[str, Any]:
    """Requests = limits for CPU and memory (a Guaranteed pod); GPUs as an extended resource."""
    amounts: dict[str, Any] = {}
    if cpu:
        amounts["cpu"] = cpu
    if memory:
        amounts["memory"] = memory
    limits = dict(amounts)
    if gpus > 0:
        limits[gpu_resource] = str(gpus)  # a quantity
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = limits
    if amounts:
        out["requests"] = dict(amounts)
    return out


def placement(where: Placement, gpus: int, config: OperatorConfig) -> dict[str, Any]:
    """nodeSelector / tolerations / affinity; GPU pods inherit the platform's GPU pool."""
    out: dict[str, Any] = {}
    selector = dict(where.node_selector)
    if not selector and gpus > 0:
        selector = dict(config.gpu_node_selector)
    if selector:
        out["nodeSelector"] = selector
    tolerations = [t.to_wire() for t in where.tolerations]
    if not tolerations and gpus > 0:
        tolerations = [dict(t) for t in config.gpu_tolerations]
    if tolerations:
        out["tolerations"] = tolerations
    if where.affinity:
        out["affinity"] = where.affinity
    return out


def torchrun_shutdown_seconds(grace_seconds: int) -> int:
    """How long torchrun lets its workers stop after SIGTERM before it SIGKILLs them.

    The pod's grace period less a margin (a twentieth, at least 5 s) in which torchrun itself
    exits before the kubelet's SIGKILL at the end of the grace period.
    """
    return grace_seconds - max(5, grace_seconds // 20)


def job_pod_template(kind: KindSpec, resource: Resource, *, container: str, image: str,
                     command: list[str], spec_map_name: str, res: WorkerResources,
                     output: OutputSpec, config: OperatorConfig, restart_policy: str | None,
                     grace_seconds: int | None = None) -> dict[str, Any]:
    """The pod of a training or evaluation job: spec mounted, /dev/shm, S3 env, placement.

    ``restart_policy`` is set for batch Jobs only: the training operator takes a PyTorchJob
    pod's restart policy from its replica spec. ``grace_seconds`` (trainer pods) sets the
    pod's ``terminationGracePeriodSeconds`` and torchrun's shutdown window inside it
    (``SCOREOPS_SHUTDOWN_TIMEOUT``, read by ``jobs/launch.sh``).
    """
    gpus = res.gpus_per_worker
    shutdown = ([{"name": "SCOREOPS_SHUTDOWN_TIMEOUT",
                  "value": str(torchrun_shutdown_seconds(grace_seconds))}]
                if grace_seconds is not None else [])
    main: dict[str, Any] = {
        "name": container,
        "image": image,
        "imagePullPolicy": config.pull_policy,
        "command": command,
        "env": [*common_env(resource.kind, resource.metadata.name),
                *([{"name": "SCOREOPS_GPUS_PER_WORKER", "value": str(gpus)}] if gpus else []),
                *shutdown,
                *s3_env(output, config)],
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    compute = compute_resources(res.cpu, res.memory, gpus, res.gpu_resource_name)
    if compute:
        main["resources"] = compute
    pod: dict[str, Any] = {}
    if restart_policy:
        pod["restartPolicy"] = restart_policy
    if grace_seconds is not None:
        pod["terminationGracePeriodSeconds"] = grace_seconds
    pod["containers"] = [main]
    if config.pull_secrets:
        pod["imagePullSecrets"] = config.pod_pull_secrets()
    pod.update(placement(res, gpus, config))
    pod["volumes"] = [
        {"name": "spec", "configMap": {"name": spec_map_name}},
        # NCCL and the dataloader workers exchange tensors through shared memory
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shm_size}},
    ]
    return {
        "metadata": {"labels": kind.labels(resource.metadata.name)},
        "spec": pod,
    }
