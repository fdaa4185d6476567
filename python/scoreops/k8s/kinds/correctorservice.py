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
# KServe's storage initializer reads the S3 endpoint, scheme and region from these
# annotations (pkg/credentials/s3/s3_secret.go).
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

    ``model_uri`` resolves a ``scoreRun`` model; a ``uri`` model needs none. See
    :func:`predictor` and :func:`transformer` for the two components.
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
                             {ANNOTATION_SPEC_HASH: spec_hash(service)}),
        "spec": {"predictor": predictor(service, config, uri),
                 "transformer": transformer(service, config, ns)},
    }


def predictor(service: CorrectorService, config: OperatorConfig, uri: str) -> dict[str, Any]:
    """KServe's ``huggingface`` runtime serving the weights at ``uri``.

    It runs as ``spec.serviceAccountName``, else as the ServiceAccount
    :func:`build_storage_service_account` makes when the platform has an S3 Secret, so that
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
    compute = compute_resources(res.cpu, res.memory, res.gpus, res.gpu_resource_name)
    if compute:
        model["resources"] = compute
    out: dict[str, Any] = {
        "minReplicas": res.min_replicas,
        "maxReplicas": res.max_replicas,
    }
    account = predictor_service_account(service, config)
    if account:
        out["serviceAccountName"] = account
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
    return {
        "minReplicas": res.min_replicas,
        "maxReplicas": res.max_replicas,
        "containers": [{
            "name": KSERVE_CONTAINER,
            "image": res.image or config.image("server"),
            "imagePullPolicy": "IfNotPresent",
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
        }],
    }


# --- the predictor's ServiceAccount ----------------------------------------------------------


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
        "metadata": metadata(CORRECTORSERVICE, service,
                             storage_service_account_name(service.metadata.name), ns,
                             kserve_s3_annotations(config)),
        "automountServiceAccountToken": False,
        "secrets": [{"name": config.s3_secret}],
    }


def build_correctorservice_children(service: CorrectorService, config: OperatorConfig,
                                    namespace: str | None = None,
                                    model_uris: Mapping[str, str] | None = None
                                    ) -> list[dict[str, Any]]:
    """The ServiceAccount (if any) first: the predictor's pods are admitted with it.

    ``model_uris`` maps ScoreRun name -> weights URI (for a ``scoreRun`` model).
    """
    ref = service.spec.model.score_run
    uri = (model_uris or {}).get(ref) if ref else None
    account = build_storage_service_account(service, config, namespace)
    isvc = build_inference_service(service, config, namespace, uri)
    return [account, isvc] if account else [isvc]


def referenced_runs(service: CorrectorService) -> list[str]:
    return [service.spec.model.score_run] if service.spec.model.score_run else []


# --- cluster rules ---------------------------------------------------------------------------


def cluster_errors(service: CorrectorService) -> list[FieldError]:
    """Weights KServe's storage initializer can fetch (s3://), a name that fits."""
    errors: list[FieldError] = []
    uri = service.spec.model.uri
    if uri is not None and not uri.startswith("s3://"):
        errors.append(FieldError(
            "spec.model.uri",
            f"{uri!r}: KServe's storage initializer fetches the weights; give s3://",
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
