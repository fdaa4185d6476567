"""EvalSuite: models x benchmarks under an inference-time strategy, with correction metrics."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from scoreops.api.base import (
    API_VERSION,
    ApiModel,
    Condition,
    HttpUrl,
    ModelUri,
    ObjectMeta,
    Phase,
    ResourceName,
    StorageUri,
)
from scoreops.api.common import GenerationSpec, OutputSpec, StrategySpec, WorkerResources

BenchmarkName = Literal[
    "gsm8k",
    "math500",
    "math",
    "mmlu",
    "arc_challenge",
    "hellaswag",
    "bbh",
    "bbh_boolean_expressions",
    "single-digit-addition",
]


class EvalModel(ApiModel):
    """A model under test: weights, the output of a ScoreRun, or a served endpoint."""

    name: str = Field(min_length=1, max_length=63, description="Label in the report.")
    uri: ModelUri | None = Field(None, description="Weights: s3://, a path, store:// or builtin://.")
    score_run: ResourceName | None = Field(
        None, description="Name of a ScoreRun in the same namespace; its final weights are used."
    )
    endpoint: HttpUrl | None = Field(
        None, description="An OpenAI-compatible endpoint (e.g. a CorrectorService URL)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> EvalModel:
        given = [k for k in ("uri", "score_run", "endpoint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of uri, scoreRun or endpoint")
        return self


class BenchmarkRef(ApiModel):
    """One benchmark of the suite."""

    name: BenchmarkName = Field(description="Registered benchmark name.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N items.")
    fewshot: int = Field(0, ge=0, le=25, description="Few-shot examples in the prompt.")
    subjects: list[str] | None = Field(
        None, description="Subsets (MMLU subjects, MATH subjects, BBH tasks)."
    )
    mode: Literal["generative", "loglikelihood"] = Field(
        "generative",
        description="generative (answers can be revised) or loglikelihood (multiple choice).",
    )


class EvalSuiteSpec(ApiModel):
    """Which models, which benchmarks, which strategy."""

    models: list[EvalModel] = Field(min_length=1, description="Models compared side by side.")
    benchmarks: list[BenchmarkRef] = Field(min_length=1, description="Benchmarks to run.")
    strategy: StrategySpec = Field(default_factory=StrategySpec, description="Strategy.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="Sampling.")
    data_root: StorageUri | None = Field(
        None, description="Where imported benchmarks live (default: the embedded store)."
    )
    resources: WorkerResources = Field(default_factory=WorkerResources, description="Compute.")
    output: OutputSpec = Field(description="Where results go.")
    seed: int = Field(0, ge=0, description="Seed for sampling and subsampling.")

    @model_validator(mode="after")
    def _coherent(self) -> EvalSuiteSpec:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models: duplicate name(s) {dupes}")
        if self.generation.engine == "vllm" and self.resources.gpus_per_worker == 0:
            raise ValueError("generation.engine vllm needs resources.gpusPerWorker >= 1")
        for b in self.benchmarks:
            if b.mode == "loglikelihood":
                if b.name not in ("mmlu", "arc_challenge", "hellaswag"):
                    raise ValueError(f"benchmark {b.name}: loglikelihood mode is for multiple choice")
                if any(m.endpoint for m in self.models):
                    raise ValueError("loglikelihood mode cannot run against a chat endpoint")
        return self

    @property
    def endpoints_only(self) -> bool:
        """True when every model under test is a served endpoint: the suite only sends
        requests (a plain batch Job, no GPU, no weights to load)."""
        return all(m.endpoint is not None for m in self.models)


class EvalSuiteStatus(ApiModel):
    """Observed state."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    phase: Phase = Field("Pending", description="Pending, Running, Succeeded or Failed.")
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    job_name: str | None = Field(None, description="Name of the child job.")
    results_uri: str | None = Field(None, description="URI of report.md, summary and records.")
    summary: dict[str, Any] = Field(
        default_factory=dict,
        description="model -> benchmark -> {accT1, accT2, delta, deltaIC, deltaCI, n}.",
    )
    # Mirrored from the job. Not (yet) declared in the CRD's schema, which keeps unknown
    # status fields: declaring them there is a CRD change of its own.
    start_time: SkipJsonSchema[str | None] = None
    completion_time: SkipJsonSchema[str | None] = None


class EvalSuite(ApiModel):
    """An EvalSuite resource."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["scoreops.io/v1alpha1"] = API_VERSION
    kind: Literal["EvalSuite"] = "EvalSuite"
    metadata: ObjectMeta
    spec: EvalSuiteSpec
    status: EvalSuiteStatus | None = None

    @property
    def endpoints_only(self) -> bool:
        """Whether every model under test is a served endpoint (see the spec's)."""
        return self.spec.endpoints_only
