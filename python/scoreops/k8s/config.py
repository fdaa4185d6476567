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
        )


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
