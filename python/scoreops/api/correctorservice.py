"""CorrectorService: a model served as a self-correcting, OpenAI-compatible endpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from scoreops.api.base import (
    API_VERSION,
    ApiModel,
    Condition,
    ModelUri,
    ObjectMeta,
    Phase,
    Placement,
    ResourceName,
)
from scoreops.api.common import Engine, Precision, StrategySpec


class ServedModel(ApiModel):
    """The weights to serve: a URI or the output of a ScoreRun."""

    uri: ModelUri | None = Field(None, description="s3://, a path, store:// or builtin://.")
    score_run: ResourceName | None = Field(
        None, description="Name of a ScoreRun in the same namespace; its final weights are served."
    )
    served_name: str | None = Field(
        None, description="Model name clients send; defaults to the resource name."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ServedModel:
        if (self.uri is None) == (self.score_run is None):
            raise ValueError("set exactly one of uri or scoreRun")
        return self


class RuntimeSpec(ApiModel):
    """The generation backend behind the correction layer."""

    engine: Engine = Field("vllm", description="vllm (GPU predictor) or hf (transformers).")
    dtype: Precision = Field("bf16", description="Serving precision.")
    max_model_len: int = Field(4096, ge=16, le=1_048_576, description="Context length.")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=0.95, description="vLLM memory share.")


class ServingLimits(ApiModel):
    """Per-request ceilings; requests beyond them get HTTP 400."""

    max_tokens: int = Field(1024, ge=1, le=32768, description="Ceiling on max_tokens per turn.")
    max_n: int = Field(4, ge=1, le=64, description="Ceiling on n.")
    max_concurrency: int = Field(64, ge=1, le=10000, description="Requests processed at once.")
    max_queue: int = Field(512, ge=0, le=100000, description="Requests waiting beyond that.")
    request_timeout_seconds: float = Field(120.0, gt=0.0, le=3600, description="504 after this.")
    max_total_tokens: int | None = Field(
        None, ge=1, le=100_000_000,
        description="Ceiling on the tokens one request generates in all (every engine call of "
        "its strategy, every choice); none: only maxTokens per generation.")


class ServingResources(Placement):
    """Compute of the serving pods."""

    gpus: int = Field(1, ge=0, le=16, description="GPUs per predictor pod.")
    gpu_resource_name: str = Field("nvidia.com/gpu", description="Extended resource for GPUs.")
    cpu: str | None = Field(None, description="CPU per pod.")
    memory: str | None = Field(None, description="Memory per pod.")
    min_replicas: int = Field(1, ge=0, le=1000, description="Minimum replicas.")
    max_replicas: int = Field(1, ge=1, le=1000, description="Maximum replicas.")
    image: str | None = Field(None, description="Override the correction layer's image.")

    @model_validator(mode="after")
    def _replicas(self) -> ServingResources:
        if self.max_replicas < self.min_replicas:
            raise ValueError("maxReplicas must be >= minReplicas")
        return self


class CorrectorServiceSpec(ApiModel):
    """What to serve and how answers are corrected."""

    model: ServedModel = Field(description="Weights to serve.")
    strategy: StrategySpec = Field(default_factory=StrategySpec, description="Correction strategy.")
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec, description="Generation backend.")
    limits: ServingLimits = Field(default_factory=ServingLimits, description="Request ceilings.")
    resources: ServingResources = Field(default_factory=ServingResources, description="Compute.")
    service_account_name: ResourceName | None = Field(
        None, description="ServiceAccount whose Secret grants S3 access (KServe convention)."
    )

    @model_validator(mode="after")
    def _coherent(self) -> CorrectorServiceSpec:
        if self.runtime.engine == "vllm" and self.resources.gpus == 0:
            raise ValueError("runtime.engine vllm needs resources.gpus >= 1")
        return self


class CorrectorServiceStatus(ApiModel):
    """Observed state."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    phase: Phase = Field("Pending", description="Pending, Running, Succeeded or Failed.")
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    url: str | None = Field(None, description="Base URL of the OpenAI-compatible endpoint.")
    inference_service: str | None = Field(None, description="Name of the InferenceService.")


class CorrectorService(ApiModel):
    """A CorrectorService resource."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["scoreops.io/v1alpha1"] = API_VERSION
    kind: Literal["CorrectorService"] = "CorrectorService"
    metadata: ObjectMeta
    spec: CorrectorServiceSpec
    status: CorrectorServiceStatus | None = None
