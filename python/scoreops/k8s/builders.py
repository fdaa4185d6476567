"""Pure builders: a validated resource in, the Kubernetes objects it becomes out.

No cluster, no client, no clock: each function maps its inputs to plain dicts, so the result
can be compared with a golden file, printed by ``scoreops render`` and server-side applied by
the operator, and all three agree.

- ScoreRun -> ConfigMap ``<run>-spec`` (``run.json``) + PyTorchJob ``<run>-train``
  (``kubeflow.org/v1``): a Master and ``workers - 1`` Workers, each running
  ``jobs/launch.sh``: one torchrun with ``nprocPerNode`` = ``gpusPerWorker`` (1 on CPU)
  processes of ``python -m scoreops.train --spec /etc/scoreops/run.json``.
- EvalSuite -> ConfigMap ``<suite>-eval-spec`` (``suite.json``) + a one-replica PyTorchJob
  ``<suite>-eval`` (vLLM or transformers in-process), or a plain batch Job when every model
  under test is a served endpoint (the job only sends requests; it needs no GPU).
- CorrectorService -> ServiceAccount ``<name>-storage`` (when the platform has an S3 Secret
  and the resource names no ServiceAccount) + InferenceService (``serving.kserve.io/v1beta1``),
  see :func:`build_inference_service` for the predictor/transformer split.

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

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from scoreops.api import CorrectorService, EvalSuite, Resource, ScoreRun
from scoreops.api.base import Placement
from scoreops.api.common import OutputSpec, WorkerResources
from scoreops.k8s.config import (
    ANNOTATION_SPEC_HASH,
    OWNER_API_VERSION,
    SPEC_DIR,
    OperatorConfig,
    eval_job_name,
    inference_service_name,
    labels_for,
    run_spec_name,
    storage_service_account_name,
    suite_spec_name,
    train_job_name,
)

PYTORCHJOB_API_VERSION = "kubeflow.org/v1"
INFERENCESERVICE_API_VERSION = "serving.kserve.io/v1beta1"
# The training operator only wires up (MASTER_ADDR, RANK, ...) a container named "pytorch".
PYTORCH_CONTAINER = "pytorch"
# KServe looks for the container named "kserve-container" in custom components.
KSERVE_CONTAINER = "kserve-container"
# KServe's storage initializer reads the S3 endpoint, scheme and region from these
# annotations (pkg/credentials/s3/s3_secret.go).
KSERVE_S3_ENDPOINT = "serving.kserve.io/s3-endpoint"
KSERVE_S3_USE_HTTPS = "serving.kserve.io/s3-usehttps"
KSERVE_S3_REGION = "serving.kserve.io/s3-region"
EVAL_BACKOFF_LIMIT = 2

# torchrun with one process per GPU of the pod (jobs/launch.sh, in the trainer image)
TRAIN_COMMAND = ["/opt/scoreops/jobs/launch.sh", "--spec", f"{SPEC_DIR}/run.json"]
EVAL_COMMAND = ["python", "-m", "scoreops.evaluate", "--spec", f"{SPEC_DIR}/suite.json"]

_TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


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


def _metadata(resource: Resource, name: str, namespace: str,
              annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": labels_for(resource.kind, resource.metadata.name),
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


def _config_map(resource: Resource, name: str, namespace: str, key: str,
                document: Mapping[str, Any], digest: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(resource, name, namespace, {ANNOTATION_SPEC_HASH: digest}),
        "data": {key: json.dumps(document, indent=2, sort_keys=True) + "\n"},
    }


def s3_env(output: OutputSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    """AWS_* variables from the credentials Secret (referenced, never copied).

    The Secret is ``output.credentialsSecret``, else the platform default
    (``SCOREOPS_S3_SECRET``); with neither, no credentials are set (pods then use whatever
    identity the cluster gives them, e.g. workload identity). The endpoint is the platform's
    (``SCOREOPS_S3_ENDPOINT``) when set, else ``AWS_ENDPOINT_URL`` from the Secret if present.
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
    return env


def _common_env(kind: str, name: str) -> list[dict[str, Any]]:
    return [
        {"name": "SCOREOPS_RESOURCE_KIND", "value": kind},
        {"name": "SCOREOPS_RESOURCE_NAME", "value": name},
        {"name": "SCOREOPS_NAMESPACE",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # weights and data come from s3:// or the image, never from a model hub
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]


def _compute(cpu: str | None, memory: str | None, gpus: int,
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


def _placement(placement: Placement, gpus: int, config: OperatorConfig) -> dict[str, Any]:
    """nodeSelector / tolerations / affinity; GPU pods inherit the platform's GPU pool."""
    out: dict[str, Any] = {}
    selector = dict(placement.node_selector)
    if not selector and gpus > 0:
        selector = dict(config.gpu_node_selector)
    if selector:
        out["nodeSelector"] = selector
    tolerations = [t.to_wire() for t in placement.tolerations]
    if not tolerations and gpus > 0:
        tolerations = [dict(t) for t in config.gpu_tolerations]
    if tolerations:
        out["tolerations"] = tolerations
    if placement.affinity:
        out["affinity"] = placement.affinity
    return out


def torchrun_shutdown_seconds(grace_seconds: int) -> int:
    """How long torchrun lets its workers stop after SIGTERM before it SIGKILLs them.

    The pod's grace period less a margin (a twentieth, at least 5 s) in which torchrun itself
    exits before the kubelet's SIGKILL at the end of the grace period.
    """
    return grace_seconds - max(5, grace_seconds // 20)


def _job_pod_template(resource: Resource, *, container: str, image: str, command: list[str],
                      spec_config_map: str, res: WorkerResources, output: OutputSpec,
                      config: OperatorConfig, restart_policy: str | None,
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
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": [*_common_env(resource.kind, resource.metadata.name),
                *([{"name": "SCOREOPS_GPUS_PER_WORKER", "value": str(gpus)}] if gpus else []),
                *shutdown,
                *s3_env(output, config)],
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    compute = _compute(res.cpu, res.memory, gpus, res.gpu_resource_name)
    if compute:
        main["resources"] = compute
    pod: dict[str, Any] = {}
    if restart_policy:
        pod["restartPolicy"] = restart_policy
    if grace_seconds is not None:
        pod["terminationGracePeriodSeconds"] = grace_seconds
    pod["containers"] = [main]
    pod.update(_placement(res, gpus, config))
    pod["volumes"] = [
        {"name": "spec", "configMap": {"name": spec_config_map}},
        # NCCL and the dataloader workers exchange tensors through shared memory
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shm_size}},
    ]
    return {
        "metadata": {"labels": labels_for(resource.kind, resource.metadata.name)},
        "spec": pod,
    }


# --- ScoreRun ----------------------------------------------------------------------------------


def build_run_config_map(run: ScoreRun, config: OperatorConfig,
                         namespace: str | None = None) -> dict[str, Any]:
    """ConfigMap ``<run>-spec`` with key ``run.json``: the ScoreRun as the trainer reads it."""
    ns = namespace_of(run, namespace)
    return _config_map(run, run_spec_name(run.metadata.name), ns, "run.json",
                       resource_document(run, ns), spec_hash(run))


def build_pytorchjob(run: ScoreRun, config: OperatorConfig,
                     namespace: str | None = None) -> dict[str, Any]:
    """PyTorchJob ``<run>-train``: Master + ``workers - 1`` Workers of the trainer image.

    ``restartPolicy: OnFailure`` restarts a crashed container in place (the trainer resumes
    from its newest complete checkpoint); ``backoffLimit`` caps the restarts of the whole
    job; ``cleanPodPolicy: Running`` removes pods still running when the job ends (a failed
    Master must not leave Workers holding GPUs) and keeps finished pods for their logs.

    ``nprocPerNode`` is the pod's GPU count, 1 on a CPU pod: left out, the training operator
    sets it to ``auto``, which torchrun turns into one process per CPU on a CPU-only pod.
    ``terminationGracePeriodSeconds`` (the spec's, else the platform's) gives the trainer the
    time to finish its step and checkpoint after SIGTERM; see :func:`train_grace_seconds`.
    """
    ns = namespace_of(run, namespace)
    res = run.spec.resources
    template = _job_pod_template(
        run, container=PYTORCH_CONTAINER, image=res.image or config.image("trainer"),
        command=TRAIN_COMMAND, spec_config_map=run_spec_name(run.metadata.name), res=res,
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
        "metadata": _metadata(run, train_job_name(run.metadata.name), ns,
                              {ANNOTATION_SPEC_HASH: spec_hash(run)}),
        "spec": {
            "nprocPerNode": nproc_per_node(res),
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": res.backoff_limit},
            "pytorchReplicaSpecs": replicas,
        },
    }


def nproc_per_node(res: WorkerResources) -> str:
    """Processes per pod, as the PyTorchJob's ``nprocPerNode`` (a string in its schema): one
    per GPU, one on a CPU pod."""
    return str(max(1, res.gpus_per_worker))


def train_grace_seconds(run: ScoreRun, config: OperatorConfig) -> int:
    """The trainer pods' grace period: the ScoreRun's, else the platform's."""
    own = run.spec.resources.termination_grace_period_seconds
    return own if own is not None else config.train_grace_seconds


def build_scorerun_children(run: ScoreRun, config: OperatorConfig,
                            namespace: str | None = None) -> list[dict[str, Any]]:
    """The ConfigMap first (the job mounts it), then the PyTorchJob."""
    return [build_run_config_map(run, config, namespace), build_pytorchjob(run, config, namespace)]


# --- EvalSuite ---------------------------------------------------------------------------------


def eval_uses_batch_job(suite: EvalSuite) -> bool:
    """True when every model under test is a served endpoint: a plain Job calls them."""
    return all(m.endpoint is not None for m in suite.spec.models)


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
    return _config_map(suite, suite_spec_name(suite.metadata.name), ns, "suite.json",
                       resource_document(suite, ns), digest or spec_hash(suite))


def build_eval_job(suite: EvalSuite, config: OperatorConfig,
                   namespace: str | None = None, digest: str | None = None) -> dict[str, Any]:
    """``<suite>-eval``: a one-replica PyTorchJob, or a batch Job for endpoints only."""
    ns = namespace_of(suite, namespace)
    res = suite.spec.resources
    name = eval_job_name(suite.metadata.name)
    meta = _metadata(suite, name, ns, {ANNOTATION_SPEC_HASH: digest or spec_hash(suite)})
    image = res.image or config.image("evaluator")
    spec_cm = suite_spec_name(suite.metadata.name)
    if eval_uses_batch_job(suite):
        template = _job_pod_template(
            suite, container="evaluator", image=image, command=EVAL_COMMAND,
            spec_config_map=spec_cm, res=res, output=suite.spec.output, config=config,
            restart_policy="Never",
        )
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": meta,
            "spec": {"backoffLimit": EVAL_BACKOFF_LIMIT, "template": template},
        }
    template = _job_pod_template(
        suite, container=PYTORCH_CONTAINER, image=image, command=EVAL_COMMAND,
        spec_config_map=spec_cm, res=res, output=suite.spec.output, config=config,
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
                             model_uris: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """ConfigMap then job; ``scoreRun`` models must be resolvable through ``model_uris``."""
    resolved = resolve_suite(suite, model_uris or {})
    digest = spec_hash(suite)
    return [build_suite_config_map(resolved, config, namespace, digest),
            build_eval_job(resolved, config, namespace, digest)]


# --- CorrectorService --------------------------------------------------------------------------


def predictor_url(service: CorrectorService, namespace: str) -> str:
    """The in-cluster URL of the predictor (KServe's ``<isvc>-predictor`` Service)."""
    return f"http://{inference_service_name(service.metadata.name)}-predictor.{namespace}"


def build_inference_service(service: CorrectorService, config: OperatorConfig,
                            namespace: str | None = None,
                            model_uri: str | None = None) -> dict[str, Any]:
    """InferenceService ``<name>``: KServe's vLLM runtime as predictor, scoreops as transformer.

    Why a transformer rather than a custom predictor: the self-correction layer only
    orchestrates turns (attempt -> correction instruction -> attempt, or N samples and a
    vote) over an OpenAI-compatible model; it needs no GPU and holds no weights. Keeping the
    predictor KServe's stock ``huggingface`` runtime (vLLM backend, ``modelFormat:
    huggingface``, weights fetched by the storage initializer from ``storageUri``) keeps
    continuous batching, the runtime's upgrades and GPU autoscaling untouched, lets the CPU
    transformer scale on its own, and means our server image carries no CUDA stack. A custom
    predictor would have to embed vLLM and the weights in our image to gain one network hop.

    The transformer runs ``python -m scoreops.serving --model_name=NAME --backend openai
    --predictor-url http://<isvc>-predictor.<ns> --strategy S --turns K ...``. KServe appends
    ``--model_name <isvc-name>`` unless an argument already starts with ``--model_name``
    (the underscore spelling: ``--model-name`` would not stop it, and the appended name would
    win), and appends ``--predictor_host`` and ``--http_port``, which the server accepts. The
    full strategy (instruction, samples, verifier, mixture-of-agents) is in
    ``SCOREOPS_STRATEGY_JSON``. ``model_uri`` resolves a ``scoreRun`` model; a ``uri`` model
    needs none.

    The predictor runs as ``spec.serviceAccountName``, else as the ServiceAccount
    :func:`build_storage_service_account` makes when the platform has an S3 Secret, so that
    KServe's storage initializer can fetch private weights.
    """
    ns = namespace_of(service, namespace)
    spec = service.spec
    name = inference_service_name(service.metadata.name)
    served = spec.model.served_name or service.metadata.name
    uri = spec.model.uri or model_uri
    if uri is None:
        raise UnresolvedModel(spec.model.score_run or "")
    rt, res, lim = spec.runtime, spec.resources, spec.limits
    backend = "vllm" if rt.engine == "vllm" else "huggingface"
    args = [f"--model_name={served}", f"--backend={backend}", f"--dtype={_TORCH_DTYPE[rt.dtype]}",
            f"--max_model_len={rt.max_model_len}"]
    if rt.engine == "vllm":
        args.append(f"--gpu-memory-utilization={rt.gpu_memory_utilization}")
    model: dict[str, Any] = {
        "modelFormat": {"name": "huggingface"},
        "storageUri": uri,
        "args": args,
    }
    compute = _compute(res.cpu, res.memory, res.gpus, res.gpu_resource_name)
    if compute:
        model["resources"] = compute
    predictor: dict[str, Any] = {
        "minReplicas": res.min_replicas,
        "maxReplicas": res.max_replicas,
    }
    account = predictor_service_account(service, config)
    if account:
        predictor["serviceAccountName"] = account
    predictor.update(_placement(res, res.gpus, config))
    predictor["model"] = model

    strategy = spec.strategy
    transformer_args = [
        f"--model_name={served}",
        "--backend", "openai",
        "--predictor-url", predictor_url(service, ns),
        "--strategy", strategy.name,
        "--turns", str(strategy.turns),
        "--max-tokens", str(lim.max_tokens),
        "--max-n", str(lim.max_n),
        "--max-concurrency", str(lim.max_concurrency),
        "--request-timeout", str(lim.request_timeout_seconds),
    ]
    transformer = {
        "minReplicas": res.min_replicas,
        "maxReplicas": res.max_replicas,
        "containers": [{
            "name": KSERVE_CONTAINER,
            "image": res.image or config.image("server"),
            "imagePullPolicy": "IfNotPresent",
            "command": ["python", "-m", "scoreops.serving"],
            "args": transformer_args,
            "env": [
                *_common_env(service.kind, service.metadata.name),
                {"name": "SCOREOPS_STRATEGY_JSON",
                 "value": json.dumps(strategy.to_wire(), sort_keys=True)},
                {"name": "SCOREOPS_MAX_QUEUE", "value": str(lim.max_queue)},
            ],
            "resources": {
                "requests": {"cpu": "500m", "memory": "512Mi"},
                "limits": {"cpu": "2", "memory": "2Gi"},
            },
        }],
    }
    return {
        "apiVersion": INFERENCESERVICE_API_VERSION,
        "kind": "InferenceService",
        "metadata": _metadata(service, name, ns, {ANNOTATION_SPEC_HASH: spec_hash(service)}),
        "spec": {"predictor": predictor, "transformer": transformer},
    }


def predictor_service_account(service: CorrectorService, config: OperatorConfig) -> str | None:
    """The predictor's ServiceAccount: the resource's own, else the operator-made one that
    carries the platform's S3 Secret, else none (the namespace's default)."""
    if service.spec.service_account_name:
        return service.spec.service_account_name
    if config.s3_secret:
        return storage_service_account_name(service.metadata.name)
    return None


def kserve_s3_annotations(config: OperatorConfig) -> dict[str, str]:
    """KServe's S3 annotations for the platform endpoint and region.

    ``s3-endpoint`` is host[:port] without the scheme; ``s3-usehttps`` says which scheme.
    """
    out: dict[str, str] = {}
    if config.s3_endpoint:
        scheme, sep, rest = config.s3_endpoint.partition("://")
        host = (rest if sep else scheme).rstrip("/")
        out[KSERVE_S3_ENDPOINT] = host
        out[KSERVE_S3_USE_HTTPS] = "0" if sep and scheme.lower() == "http" else "1"
    if config.s3_region:
        out[KSERVE_S3_REGION] = config.s3_region
    return out


def build_storage_service_account(service: CorrectorService, config: OperatorConfig,
                                  namespace: str | None = None) -> dict[str, Any] | None:
    """ServiceAccount ``<name>-storage`` listing the platform's S3 Secret, or None.

    Made only when the resource names no ServiceAccount of its own and the platform has an S3
    Secret (``SCOREOPS_S3_SECRET``). KServe's storage initializer reads the credentials from
    the Secrets a predictor's ServiceAccount lists; the Secret is named, never read or copied.
    The KServe S3 annotations (endpoint, scheme, region) are set on the ServiceAccount too,
    where KServe reads them for workload identity; with keys, KServe reads them from the
    Secret (docs/cluster.md). Least privilege: no token is mounted into the pods that use it
    and nothing binds a role to it, so it grants no access to the Kubernetes API.
    """
    if service.spec.service_account_name or not config.s3_secret:
        return None
    ns = namespace_of(service, namespace)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(service, storage_service_account_name(service.metadata.name), ns,
                              kserve_s3_annotations(config)),
        "automountServiceAccountToken": False,
        "secrets": [{"name": config.s3_secret}],
    }


def build_correctorservice_children(service: CorrectorService, config: OperatorConfig,
                                    namespace: str | None = None,
                                    model_uri: str | None = None) -> list[dict[str, Any]]:
    """The ServiceAccount (if any) first: the predictor's pods are admitted with it."""
    account = build_storage_service_account(service, config, namespace)
    isvc = build_inference_service(service, config, namespace, model_uri)
    return [account, isvc] if account else [isvc]


# --- any kind ----------------------------------------------------------------------------------


def build_children(resource: Resource, config: OperatorConfig, namespace: str | None = None,
                   model_uris: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Every child of ``resource``, in the order they are applied."""
    if isinstance(resource, ScoreRun):
        return build_scorerun_children(resource, config, namespace)
    if isinstance(resource, EvalSuite):
        return build_evalsuite_children(resource, config, namespace, model_uris)
    ref = resource.spec.model.score_run
    uri = (model_uris or {}).get(ref) if ref else None
    return build_correctorservice_children(resource, config, namespace, uri)


def referenced_runs(resource: Resource) -> list[str]:
    """Names of the ScoreRuns whose weights ``resource`` uses (sorted, no duplicates)."""
    if isinstance(resource, EvalSuite):
        return sorted({m.score_run for m in resource.spec.models if m.score_run})
    if isinstance(resource, CorrectorService) and resource.spec.model.score_run:
        return [resource.spec.model.score_run]
    return []
