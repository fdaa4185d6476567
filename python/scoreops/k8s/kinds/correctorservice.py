"""CorrectorService -> ServiceAccount ``<name>-storage`` (when the platform has an S3 Secret
and the resource names no ServiceAccount) + InferenceService ``<name>``
(``serving.kserve.io/v1beta1``); see :func:`build_inference_service` for the
predictor/transformer split.

A CorrectorService is long-running: a spec change rolls out through KServe (reconciled, not
refused), and its status follows the InferenceService for as long as it exists.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from scoreops.api import CorrectorService, FieldError
from scoreops.api.common import TORCH_DTYPE
from scoreops.api.correctorservice import CorrectorServiceStatus
from scoreops.k8s import status as st
from scoreops.k8s.config import (
    ANNOTATION_SPEC_HASH,
    LABEL_SERVICE,
    OperatorConfig,
    inference_service_name,
    storage_service_account_name,
)
from scoreops.k8s.kindspec import KindSpec, Outcome, SyncContext
from scoreops.k8s.pods import (
    UnresolvedModel,
    common_env,
    compute_resources,
    metadata,
    namespace_of,
    placement,
    spec_hash,
)
from scoreops.k8s.rules import name_fits

INFERENCESERVICE_API_VERSION = "serving.kserve.io/v1beta1"
# KServe looks for the container named "kserve-container" in custom components.
KSERVE_CONTAINER = "kserve-container"
# The annotation that picks KServe's deployment mode for one InferenceService
# (pkg/constants/constants.go, DeploymentMode).
KSERVE_DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
# Predictor CPU and memory per GPU (a CPU-only predictor counts as one) when the
# CorrectorService sets none: without them KServe's runtime defaults apply (the stock
# kserve-huggingfaceserver runtime: 1 CPU, 2Gi), and vLLM loading a 7-8B model is OOM-killed.
PREDICTOR_CPU_PER_GPU = 4
PREDICTOR_MEMORY_GI_PER_GPU = 32
# KServe's storage initializer reads the S3 endpoint, scheme and region from these annotations
# on the credentials Secret, and on a ServiceAccount only next to an IAM-role annotation
# (pkg/credentials/s3/s3_secret.go, service_account_credentials.go).
KSERVE_S3_ENDPOINT = "serving.kserve.io/s3-endpoint"
KSERVE_S3_USE_HTTPS = "serving.kserve.io/s3-usehttps"
KSERVE_S3_REGION = "serving.kserve.io/s3-region"


# --- the InferenceService --------------------------------------------------------------------


def predictor_url(service: CorrectorService, namespace: str) -> str:
    """The in-cluster URL of the predictor (KServe's ``<isvc>-predictor`` Service)."""
    return f"http://{inference_service_name(service.metadata.name)}-predictor.{namespace}"


def served_name(service: CorrectorService) -> str:
    """The model name clients send: ``spec.model.servedName``, else the resource's name."""
    return service.spec.model.served_name or service.metadata.name


def build_inference_service(service: CorrectorService, config: OperatorConfig,
                            namespace: str | None = None,
                            model_uri: str | None = None,
                            model_secret: str | None = None) -> dict[str, Any]:
    """InferenceService ``<name>``: KServe's vLLM runtime as predictor, scoreops as transformer.

    Why a transformer rather than a custom predictor: the self-correction layer only
    orchestrates turns (attempt -> correction instruction -> attempt, or N samples and a
    vote) over an OpenAI-compatible model; it needs no GPU and holds no weights. Keeping the
    predictor KServe's stock ``huggingface`` runtime (vLLM backend, ``modelFormat:
    huggingface``, weights fetched by the storage initializer from ``storageUri``) keeps
    continuous batching, the runtime's upgrades and GPU autoscaling untouched, lets the CPU
    transformer scale on its own, and means our server image carries no CUDA stack (no torch,
    no vLLM: images/server/Dockerfile). A custom predictor would have to embed vLLM and the
    weights in our image to gain one network hop.

    ``model_uri`` resolves a ``scoreRun`` model; a ``uri`` model needs none. See
    :func:`predictor` and :func:`transformer` for the two components.

    The annotation ``serving.kserve.io/deploymentMode`` is the platform's
    (``SCOREOPS_KSERVE_DEPLOYMENT_MODE``, ``RawDeployment`` by default): KServe's installs
    default to Serverless, where Knative refuses the GPU pool's tolerations and node selector
    unless its ``kubernetes.podspec-*`` flags are on.
    """
    ns = namespace_of(service, namespace)
    uri = service.spec.model.uri or model_uri
    if uri is None:
        raise UnresolvedModel(service.spec.model.score_run or "")
    name = inference_service_name(service.metadata.name)
    return {
        "apiVersion": INFERENCESERVICE_API_VERSION,
        "kind": "InferenceService",
        "metadata": metadata(CORRECTORSERVICE, service, name, ns,
                             {ANNOTATION_SPEC_HASH: spec_hash(service),
                              KSERVE_DEPLOYMENT_MODE: config.kserve_deployment_mode}),
        "spec": {"predictor": predictor(service, config, uri, model_secret),
                 "transformer": transformer(service, config, ns)},
    }


def predictor_compute(service: CorrectorService) -> dict[str, Any]:
    """The predictor's CPU, memory and GPUs: the CorrectorService's, and for what it leaves
    out :data:`PREDICTOR_CPU_PER_GPU` / :data:`PREDICTOR_MEMORY_GI_PER_GPU` per GPU.

    KServe merges these over the runtime container's own (``MergeRuntimeContainers``), so a
    value left out here is the runtime's: 1 CPU and 2Gi in KServe's stock runtime."""
    res = service.spec.resources
    per = max(1, res.gpus)
    cpu = res.cpu or str(PREDICTOR_CPU_PER_GPU * per)
    memory = res.memory or f"{PREDICTOR_MEMORY_GI_PER_GPU * per}Gi"
    return compute_resources(cpu, memory, res.gpus, res.gpu_resource_name)


def predictor(service: CorrectorService, config: OperatorConfig, uri: str,
              model_secret: str | None = None) -> dict[str, Any]:
    """KServe's ``huggingface`` runtime serving the weights at ``uri``.

    It runs as ``spec.serviceAccountName``, else as the ServiceAccount
    :func:`build_storage_service_account` makes when there is an S3 Secret to give it (the
    ScoreRun's own ``credentialsSecret``, ``model_secret``, else the platform's), so that
    KServe's storage initializer can fetch private weights.
    """
    rt, res = service.spec.runtime, service.spec.resources
    backend = "vllm" if rt.engine == "vllm" else "huggingface"
    args = [f"--model_name={served_name(service)}", f"--backend={backend}",
            f"--dtype={TORCH_DTYPE[rt.dtype]}", f"--max_model_len={rt.max_model_len}"]
    if rt.engine == "vllm":
        args.append(f"--gpu-memory-utilization={rt.gpu_memory_utilization}")
    model: dict[str, Any] = {
        "modelFormat": {"name": "huggingface"},
        "storageUri": uri,
        "args": args,
    }
    model["resources"] = predictor_compute(service)
    out: dict[str, Any] = {
        "minReplicas": res.min_replicas,
        "maxReplicas": res.max_replicas,
    }
    account = predictor_service_account(service, config, model_secret)
    if account:
        out["serviceAccountName"] = account
    if config.pull_secrets:
        out["imagePullSecrets"] = config.pod_pull_secrets()
    out.update(placement(res, res.gpus, config))
    out["model"] = model
    return out


def transformer_args(service: CorrectorService, namespace: str) -> list[str]:
    """The arguments of ``python -m scoreops.serving`` in the transformer.

    ``--model_name=NAME --backend openai --predictor-url http://<isvc>-predictor.<ns>
    --strategy S --turns K ...``. KServe appends ``--model_name <isvc-name>`` unless an
    argument already starts with ``--model_name`` (the underscore spelling: ``--model-name``
    would not stop it, and the appended name would win), and appends ``--predictor_host`` and
    ``--http_port``, which the server accepts.
    """
    from scoreops.serving.options import serve_args

    strategy, lim = service.spec.strategy, service.spec.limits
    return serve_args(
        model_name=served_name(service), backend="openai",
        predictor_url=predictor_url(service, namespace), strategy=strategy.name,
        turns=strategy.turns, max_tokens=lim.max_tokens, max_n=lim.max_n,
        max_concurrency=lim.max_concurrency, request_timeout=lim.request_timeout_seconds,
        max_total_tokens=lim.max_total_tokens)


def transformer(service: CorrectorService, config: OperatorConfig,
                namespace: str) -> dict[str, Any]:
    """The self-correction layer (CPU): the full strategy (instruction, samples, verifier,
    mixture-of-agents) in ``SCOREOPS_STRATEGY_JSON``, arguments from
    :func:`transformer_args`."""
    res, lim = service.spec.resources, service.spec.limits
    out: dict[str, Any] = {
        "minReplicas": res.min_replicas,
        "maxReplicas": res.max_replicas,
    }
    if config.pull_secrets:
        out["imagePullSecrets"] = config.pod_pull_secrets()
    out["containers"] = [{
        "name": KSERVE_CONTAINER,
        "image": res.image or config.image("server"),
        "imagePullPolicy": config.pull_policy,
        "command": ["python", "-m", "scoreops.serving"],
        "args": transformer_args(service, namespace),
        "env": [
            *common_env(service.kind, service.metadata.name),
            {"name": "SCOREOPS_STRATEGY_JSON",
             "value": json.dumps(service.spec.strategy.to_wire(), sort_keys=True)},
            {"name": "SCOREOPS_MAX_QUEUE", "value": str(lim.max_queue)},
        ],
        "resources": {
            "requests": {"cpu": "500m", "memory": "512Mi"},
            "limits": {"cpu": "2", "memory": "2Gi"},
        },
    }]
    return out


# --- the predictor's ServiceAccount ----------------------------------------------------------


def storage_secret(config: OperatorConfig, model_secret: str | None = None) -> str | None:
    """The Secret the predictor's storage initializer reads the weights with: the one the
    ScoreRun wrote them with (its ``output.credentialsSecret``), else the platform's."""
    return model_secret or config.s3_secret


def predictor_service_account(service: CorrectorService, config: OperatorConfig,
                              model_secret: str | None = None) -> str | None:
    """The predictor's ServiceAccount: the resource's own, else the operator-made one that
    carries :func:`storage_secret`, else none (the namespace's default)."""
    if service.spec.service_account_name:
        return service.spec.service_account_name
    if storage_secret(config, model_secret):
        return storage_service_account_name(service.metadata.name)
    return None


def kserve_s3_annotations(config: OperatorConfig) -> dict[str, str]:
    """KServe's S3 annotations for the platform endpoint and region, as they belong on the
    credentials Secret (docs/cluster.md): KServe reads them there, and on a ServiceAccount
    only next to ``eks.amazonaws.com/role-arn``, so the storage ServiceAccount carries none.

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
                                  namespace: str | None = None,
                                  model_secret: str | None = None) -> dict[str, Any] | None:
    """ServiceAccount ``<name>-storage`` listing :func:`storage_secret`, or None.

    Made only when the resource names no ServiceAccount of its own and there is a Secret: the
    ``output.credentialsSecret`` of the ScoreRun whose weights are served (``model_secret``),
    else the platform's (``SCOREOPS_S3_SECRET``). KServe's storage initializer reads the
    credentials from the Secrets a predictor's ServiceAccount lists (one only: with two, the
    later one's variables win); the Secret is named, never read or copied. The endpoint,
    scheme and region KServe reads from that Secret's annotations or keys, or from its
    ``inferenceservice-config`` (docs/cluster.md), not from this ServiceAccount. Least
    privilege: no token is mounted into the pods that use it and nothing binds a role to it,
    so it grants no access to the Kubernetes API.
    """
    secret = storage_secret(config, model_secret)
    if service.spec.service_account_name or not secret:
        return None
    ns = namespace_of(service, namespace)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(CORRECTORSERVICE, service,
                             storage_service_account_name(service.metadata.name), ns),
        "automountServiceAccountToken": False,
        "secrets": [{"name": secret}],
    }


def build_correctorservice_children(service: CorrectorService, config: OperatorConfig,
                                    namespace: str | None = None,
                                    model_uris: Mapping[str, str] | None = None,
                                    model_secrets: Mapping[str, str] | None = None
                                    ) -> list[dict[str, Any]]:
    """The ServiceAccount (if any) first: the predictor's pods are admitted with it.

    ``model_uris`` maps ScoreRun name -> weights URI (for a ``scoreRun`` model),
    ``model_secrets`` ScoreRun name -> the ``output.credentialsSecret`` it wrote them with.
    """
    ref = service.spec.model.score_run
    uri = (model_uris or {}).get(ref) if ref else None
    secret = (model_secrets or {}).get(ref) if ref else None
    account = build_storage_service_account(service, config, namespace, secret)
    isvc = build_inference_service(service, config, namespace, uri, secret)
    return [account, isvc] if account else [isvc]


def referenced_runs(service: CorrectorService) -> list[str]:
    return [service.spec.model.score_run] if service.spec.model.score_run else []


# --- cluster rules ---------------------------------------------------------------------------


def uses_reward_model(service: CorrectorService) -> bool:
    """Whether the transformer would load a reward model in-process (torch, transformers)."""
    strategy = service.spec.strategy
    critics = [w.name for w in strategy.critic_weights] or [strategy.critic]
    return strategy.reward_model is not None and (
        strategy.verifier == "reward-model" or "reward-model" in critics)


def cluster_errors(service: CorrectorService) -> list[FieldError]:
    """Weights KServe's storage initializer can fetch (s3://), a name that fits, and no
    reward model in the default transformer image (which carries no torch)."""
    errors: list[FieldError] = []
    uri = service.spec.model.uri
    if uri is not None and not uri.startswith("s3://"):
        errors.append(FieldError(
            "spec.model.uri",
            f"{uri!r}: KServe's storage initializer fetches the weights; give s3://",
        ))
    if uses_reward_model(service) and not service.spec.resources.image:
        errors.append(FieldError(
            "spec.strategy.rewardModel",
            "the transformer loads the reward model in-process, and the scoreops server "
            "image carries no torch: set spec.resources.image to an image with "
            "scoreops[serve], or score with self-eval",
        ))
    name_fits(inference_service_name(service.metadata.name), "-transformer", errors)
    return errors


# --- status ----------------------------------------------------------------------------------


def child(name: str, _spec: Mapping[str, Any]) -> tuple[str, str]:
    return "InferenceService", inference_service_name(name)


def status_extras(service: CorrectorService, _status: CorrectorServiceStatus) -> dict[str, Any]:
    return {"inference_service": service.metadata.name}


async def sync(ctx: SyncContext, body: Mapping[str, Any],
               child_status: Mapping[str, Any] | None) -> Outcome:
    """Follow the InferenceService (Ready, URL, a failed model load)."""
    now = ctx.clock()
    new = await ctx.write_status(
        body, lambda s: st.sync_correctorservice_status(s, child_status, now))
    return Outcome("synced", "", new)


CORRECTORSERVICE = KindSpec(
    resource_type=CorrectorService,
    status_type=CorrectorServiceStatus,
    owner_label=LABEL_SERVICE,
    component="corrector",
    children=("ServiceAccount", "InferenceService"),
    job_backed=False,
    spec_config_map=None,
    child=child,
    status_extras=status_extras,
    build=build_correctorservice_children,
    cluster_errors=cluster_errors,
    referenced_runs=referenced_runs,
    sync=sync,
)
