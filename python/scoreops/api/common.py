"""Spec pieces shared by several kinds: model references, outputs, rollouts, strategies."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from scoreops.api.base import ApiModel, ModelUri, OutputUri, Placement, ResourceName
from scoreops.strategies.registry import get_strategy

DEFAULT_CORRECTION_INSTRUCTION = (
    "There might be an error in the solution above because of lack of understanding of the "
    "question. Please correct the error, if any, and rewrite the solution. Only output the "
    "final solution! At the end of the Solution, when you give your final answer, write it "
    "in the form \"Final Answer: The final answer is $answer$. I hope it is correct.\""
)

ORACLE_RIGHT = "Your previous answer is correct."
ORACLE_WRONG = "Your previous answer is incorrect. Try again."
"""The oracle's verdicts (``rollout.oracle``): after a right answer nothing that invites doubt,
after a wrong one a plain request for another attempt."""

Engine = Literal["hf", "vllm"]
Precision = Literal["fp32", "bf16", "fp16"]
TORCH_DTYPE: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""A ``Precision`` as the name of its torch dtype (``getattr(torch, TORCH_DTYPE[p])``): the one
place this mapping is written."""


class ModelRef(ApiModel):
    """The weights to start from or to evaluate."""

    uri: ModelUri = Field(
        description=(
            "Where the weights are: s3://bucket/prefix, a local path, store://KEY in the "
            "embedded store, or builtin://NAME for a model shipped in a Python package "
            "(builtin://smollm2-135m-instruct)."
        )
    )
    dtype: Precision | None = Field(
        None, description="Weights precision to load with; defaults to the run's precision."
    )


class OutputSpec(ApiModel):
    """Where checkpoints, metrics, reports and per-sample records are written."""

    uri: OutputUri = Field(
        description="s3://bucket/prefix, file:///path, store://KEY or a path. Required."
    )
    credentials_secret: ResourceName | None = Field(
        None,
        description=(
            "Name of a Secret in the resource's namespace with keys AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY and optionally AWS_ENDPOINT_URL; referenced, never copied."
        ),
    )


class GenerationSpec(ApiModel):
    """Sampling settings for one generation pass."""

    engine: Engine = Field("hf", description="hf (transformers, CPU or GPU) or vllm (GPU).")
    max_new_tokens: int = Field(512, ge=1, le=32768, description="Tokens generated per turn.")
    temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 means greedy."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    batch_size: int = Field(16, ge=1, le=4096, description="Prompts generated together.")
    system_prompt: str | None = Field(None, description="Optional system message.")


StrategyName = Literal["single", "self-correct", "self-consistency", "best-of-n", "moa",
                       "guided"]
CriticName = Literal["self-eval", "tool", "reward-model"]
"""The step critics of ``guided`` (``scoreops.strategies.critics.CRITICS``)."""


class CriticWeight(ApiModel):
    """One critic of a weighted combination."""

    name: CriticName = Field(description="self-eval, tool or reward-model.")
    weight: float = Field(1.0, gt=0.0, le=100.0, description="Its weight in the mean.")


class StrategySpec(ApiModel):
    """An inference-time strategy: how many attempts and how they are combined."""

    name: StrategyName = Field(
        "self-correct",
        description=(
            "single: one attempt. self-correct: K turns, each after the correction "
            "instruction. self-consistency: N samples, majority vote. best-of-n: N samples "
            "ranked by a verifier. moa: layers x agents with an aggregator. guided: "
            "step-level beam search steered by a critic."
        ),
    )
    turns: int = Field(2, ge=1, le=8, description="Attempts for self-correct (K).")
    instruction: str = Field(
        DEFAULT_CORRECTION_INSTRUCTION,
        min_length=1,
        description="The correction instruction appended after each attempt.",
    )
    samples: int = Field(
        5, ge=1, le=64, description="N for self-consistency and best-of-n."
    )
    verifier: Literal["self-eval", "reward-model"] = Field(
        "self-eval", description="How best-of-n ranks its candidates."
    )
    reward_model: ModelUri | None = Field(
        None, description="Reward model for verifier=reward-model."
    )
    layers: int = Field(2, ge=1, le=8, description="Mixture-of-agents layers (L).")
    agents: int = Field(3, ge=1, le=16, description="Mixture-of-agents agents per layer (A).")
    agent_models: list[ModelUri] = Field(
        default_factory=list,
        description="Models of the agents (default: the model under test for each agent).",
    )
    aggregator_prompt: str | None = Field(
        None, description="Prompt that asks the aggregator to synthesise the agents' answers."
    )
    early_stop: bool = Field(
        True, description="Stop self-correcting once an attempt repeats the previous answer."
    )
    beam: int = Field(2, ge=1, le=16, description="guided: partial answers kept per step.")
    expand: int = Field(
        2, ge=1, le=16, description="guided: candidate next steps sampled per partial answer."
    )
    max_steps: int = Field(10, ge=1, le=64, description="guided: most steps per answer.")
    step_delimiter: str = Field(
        "\n", min_length=1, max_length=16, description="guided: the text that ends a step."
    )
    critic: CriticName = Field(
        "self-eval",
        description=(
            "guided: what scores each step. self-eval: the model's probability that the step "
            "is correct; tool: exact check of every 'a op b = c'; reward-model: a process "
            "reward model (rewardModel)."
        ),
    )
    critic_weights: list[CriticWeight] = Field(
        default_factory=list,
        max_length=3,
        description="guided: several critics, their weighted mean (replaces critic).",
    )
    token_budget: int | None = Field(
        None, ge=1, le=1_048_576,
        description="guided: most tokens generated per answer (candidates and critic verdicts).",
    )

    @model_validator(mode="after")
    def _coherent(self) -> StrategySpec:
        strategy = get_strategy(self.name)
        if self.verifier == "reward-model" and strategy.uses_verifier and not self.reward_model:
            raise ValueError("rewardModel is required when verifier is reward-model")
        critics = [w.name for w in self.critic_weights] or [self.critic]
        if strategy.uses_critic and "reward-model" in critics and not self.reward_model:
            raise ValueError("rewardModel is required when a critic is reward-model")
        if len(set(critics)) != len(critics):
            raise ValueError("criticWeights: each critic at most once")
        if self.turns < strategy.min_turns:
            raise ValueError(f"turns must be at least {strategy.min_turns} for strategy "
                             f"{self.name}")
        return self


class WorkerResources(Placement):
    """Compute for a job: replicas, GPUs, CPU, memory and where the pods are placed."""

    workers: int = Field(1, ge=1, le=256, description="Training processes (pods).")
    gpus_per_worker: int = Field(0, ge=0, le=16, description="GPUs per worker pod.")
    gpu_resource_name: str = Field("nvidia.com/gpu", description="Extended resource for GPUs.")
    cpu: str | None = Field(None, description="CPU request/limit per pod, e.g. '8'.")
    memory: str | None = Field(None, description="Memory request/limit per pod, e.g. '64Gi'.")
    shm_size: str = Field("16Gi", description="Size of the /dev/shm memory volume.")
    image: str | None = Field(None, description="Override the platform's default image.")
