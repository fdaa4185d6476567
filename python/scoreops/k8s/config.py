"""Names, labels and the operator's settings: everything the builders share.

Child objects get deterministic names derived from their owner (``<run>-train``,
``<run>-spec``, ``<suite>-eval``, ...), so reconciling twice can never create a second copy,
and the operator's own labels so that ``kubectl get -l app.kubernetes.io/managed-by=scoreops``
finds everything it made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import scoreops
from scoreops.api.base import API_VERSION, GROUP

FIELD_MANAGER = "scoreops-operator"
FINALIZER_PREFIX = "scoreops.io"
FINALIZER = f"{FINALIZER_PREFIX}/finalizer"

DEFAULT_REGISTRY = "ghcr.io/scoreops"
# Seconds a trainer pod has from SIGTERM to SIGKILL when neither the ScoreRun nor the chart
# says otherwise: a step of an 8B model's RL loop plus a sharded checkpoint write.
DEFAULT_TRAIN_GRACE_SECONDS = 600
SPEC_DIR = "/etc/scoreops"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
# KServe's deployment modes (pkg/constants/constants.go: "RawDeployment" is the legacy name of
# "Standard" and "Serverless" of "Knative"; KServe normalises them, and releases before 0.16
# know only the legacy names, so the operator writes those).
KSERVE_RAW = "RawDeployment"
KSERVE_SERVERLESS = "Serverless"
KSERVE_MODES = {"RawDeployment": KSERVE_RAW, "Standard": KSERVE_RAW,
                "Serverless": KSERVE_SERVERLESS, "Knative": KSERVE_SERVERLESS}
# The Knative feature flags (config-features in knative-serving) without which Knative refuses
# a pod spec with tolerations, a node selector or affinity (pkg/apis/config/features.go).
KNATIVE_PODSPEC_FLAGS = ("kubernetes.podspec-tolerations", "kubernetes.podspec-nodeselector",
                         "kubernetes.podspec-affinity")

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
# The label that ties a child to its owner, one per owner kind (see scoreops.k8s.kinds).
LABEL_RUN = f"{GROUP}/run"
LABEL_EVALSUITE = f"{GROUP}/evalsuite"
LABEL_SERVICE = f"{GROUP}/correctorservice"
ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"
MANAGED_BY = "scoreops"

OWNER_API_VERSION = API_VERSION


# --- child names -------------------------------------------------------------------------------


def train_job_name(run: str) -> str:
    """The PyTorchJob of a ScoreRun."""
    return f"{run}-train"


def run_spec_name(run: str) -> str:
    """The ConfigMap holding a ScoreRun's spec as ``run.json``."""
    return f"{run}-spec"


def eval_job_name(suite: str) -> str:
    """The PyTorchJob or Job of an EvalSuite."""
    return f"{suite}-eval"


def suite_spec_name(suite: str) -> str:
    """The ConfigMap holding an EvalSuite's spec as ``suite.json``."""
    return f"{suite}-eval-spec"


def inference_service_name(service: str) -> str:
    """The InferenceService of a CorrectorService (same name: the URL carries it)."""
    return service


def storage_service_account_name(service: str) -> str:
    """The ServiceAccount that gives a CorrectorService's predictor the platform's S3 Secret."""
    return f"{service}-storage"


# --- settings ----------------------------------------------------------------------------------


class ConfigError(ValueError):
    """An operator setting (environment variable) is malformed."""


@dataclass(frozen=True)
class OperatorConfig:
    """Platform-wide defaults, set by the Helm chart through the operator's environment.

    ``from_env()`` reads:

    - ``SCOREOPS_IMAGE_REGISTRY`` (default ``ghcr.io/scoreops``) and ``SCOREOPS_IMAGE_TAG``
      (default: this package's version): images are ``<registry>/<component>:<tag>``.
    - ``SCOREOPS_GPU_NODE_SELECTOR`` (JSON object) and ``SCOREOPS_GPU_TOLERATIONS`` (JSON
      list): the GPU pool; pods that request GPUs inherit them unless their resource sets
      its own node selector / tolerations.
    - ``SCOREOPS_S3_SECRET``: the Secret with S3 credentials when a resource names none.
    - ``SCOREOPS_S3_ENDPOINT``: the S3 endpoint given to every pod as ``AWS_ENDPOINT_URL``
      (when unset, pods take ``AWS_ENDPOINT_URL`` from the credentials Secret, if it has one).
    - ``SCOREOPS_S3_REGION``: the bucket region, for KServe's storage initializer (an
      annotation of the predictor's ServiceAccount).
    - ``SCOREOPS_TRAIN_GRACE_SECONDS``: the trainer pods' ``terminationGracePeriodSeconds``
      when a ScoreRun sets none (default 600).
    - ``SCOREOPS_SYNC_INTERVAL``: seconds between status syncs of a running resource
      (PyTorchJob/Job/InferenceService conditions, progress file, stall check); default 10.
    - ``SCOREOPS_IMAGE_PULL_POLICY`` (default ``IfNotPresent``) and
      ``SCOREOPS_IMAGE_PULL_SECRETS`` (JSON list of Secret names): the ``imagePullPolicy`` of
      every container and the ``imagePullSecrets`` of every pod the operator creates.
    - ``SCOREOPS_KSERVE_DEPLOYMENT_MODE``: ``RawDeployment`` (default) or ``Serverless``, the
      ``serving.kserve.io/deploymentMode`` of every InferenceService. ``Serverless`` is
      refused unless ``SCOREOPS_KNATIVE_PODSPEC_FLAGS`` is ``true``: the GPU pool's
      tolerations and node selector need Knative's :data:`KNATIVE_PODSPEC_FLAGS`.
    """

    registry: str = DEFAULT_REGISTRY
    tag: str = scoreops.__version__
    gpu_node_selector: Mapping[str, str] = field(default_factory=dict)
    gpu_tolerations: tuple[Mapping[str, Any], ...] = ()
    s3_secret: str | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    train_grace_seconds: int = DEFAULT_TRAIN_GRACE_SECONDS
    sync_interval: float = 10.0
    pull_policy: str = "IfNotPresent"
    pull_secrets: tuple[str, ...] = ()
    kserve_deployment_mode: str = KSERVE_RAW
    knative_podspec_flags: bool = False

    def pod_pull_secrets(self) -> list[dict[str, str]]:
        """``imagePullSecrets`` of a pod the operator creates."""
        return [{"name": name} for name in self.pull_secrets]

    def image(self, component: str) -> str:
        """``<registry>/<component>:<tag>`` for trainer, evaluator, server or operator."""
        return f"{self.registry.rstrip('/')}/{component}:{self.tag}"

    def with_tag(self, tag: str | None) -> OperatorConfig:
        return self if not tag else replace(self, tag=tag)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        selector = _json_env(env, "SCOREOPS_GPU_NODE_SELECTOR", dict)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
            raise ConfigError("SCOREOPS_GPU_NODE_SELECTOR: keys and values must be strings")
        tolerations = _json_env(env, "SCOREOPS_GPU_TOLERATIONS", list)
        if not all(isinstance(t, dict) for t in tolerations):
            raise ConfigError("SCOREOPS_GPU_TOLERATIONS: expected a JSON list of objects")
        interval_text = env.get("SCOREOPS_SYNC_INTERVAL", "").strip() or "10"
        try:
            interval = float(interval_text)
        except ValueError:
            raise ConfigError(
                f"SCOREOPS_SYNC_INTERVAL: {interval_text!r} is not a number of seconds"
            ) from None
        if interval <= 0:
            raise ConfigError("SCOREOPS_SYNC_INTERVAL must be > 0")
        grace_text = env.get("SCOREOPS_TRAIN_GRACE_SECONDS", "").strip() or str(
            DEFAULT_TRAIN_GRACE_SECONDS)
        if not grace_text.isdigit() or int(grace_text) < 10:
            raise ConfigError(f"SCOREOPS_TRAIN_GRACE_SECONDS: {grace_text!r} is not a whole "
                              "number of seconds >= 10")
        policy = env.get("SCOREOPS_IMAGE_PULL_POLICY", "").strip() or "IfNotPresent"
        if policy not in PULL_POLICIES:
            raise ConfigError(f"SCOREOPS_IMAGE_PULL_POLICY: {policy!r} is not one of "
                              f"{', '.join(PULL_POLICIES)}")
        secrets = _json_env(env, "SCOREOPS_IMAGE_PULL_SECRETS", list)
        if not all(isinstance(s, str) and s for s in secrets):
            raise ConfigError("SCOREOPS_IMAGE_PULL_SECRETS: expected a JSON list of Secret names")
        return cls(
            registry=env.get("SCOREOPS_IMAGE_REGISTRY", "").strip() or DEFAULT_REGISTRY,
            tag=env.get("SCOREOPS_IMAGE_TAG", "").strip() or scoreops.__version__,
            gpu_node_selector=selector,
            gpu_tolerations=tuple(tolerations),
            s3_secret=env.get("SCOREOPS_S3_SECRET", "").strip() or None,
            s3_endpoint=env.get("SCOREOPS_S3_ENDPOINT", "").strip() or None,
            s3_region=env.get("SCOREOPS_S3_REGION", "").strip() or None,
            train_grace_seconds=int(grace_text),
            sync_interval=interval,
            pull_policy=policy,
            pull_secrets=tuple(secrets),
            kserve_deployment_mode=_deployment_mode(env),
            knative_podspec_flags=_knative_flags(env),
        )


def _knative_flags(env: Mapping[str, str]) -> bool:
    return env.get("SCOREOPS_KNATIVE_PODSPEC_FLAGS", "").strip().lower() == "true"


def _deployment_mode(env: Mapping[str, str]) -> str:
    text = env.get("SCOREOPS_KSERVE_DEPLOYMENT_MODE", "").strip() or KSERVE_RAW
    mode = KSERVE_MODES.get(text)
    if mode is None:
        raise ConfigError(f"SCOREOPS_KSERVE_DEPLOYMENT_MODE: {text!r} is not RawDeployment "
                          "or Serverless")
    if mode == KSERVE_SERVERLESS and not _knative_flags(env):
        raise ConfigError(
            "SCOREOPS_KSERVE_DEPLOYMENT_MODE=Serverless: Knative refuses the GPU pool's "
            "tolerations and node selector unless the knative-serving ConfigMap "
            f"config-features sets {', '.join(f'{f}: enabled' for f in KNATIVE_PODSPEC_FLAGS)}"
            "; turn them on and set SCOREOPS_KNATIVE_PODSPEC_FLAGS=true "
            "(kserve.knativePodspecFlags), or use RawDeployment")
    return mode


def _json_env(env: Mapping[str, str], name: str, kind: type) -> Any:
    text = env.get(name, "").strip()
    if not text:
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{name}: expected a JSON {'object' if kind is dict else 'list'}")
    return value
