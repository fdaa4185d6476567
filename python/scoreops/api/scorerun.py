"""ScoreRun: one RL training run that teaches a model to correct itself.

Size: the ScoreRun schema, one kind's wire format with every field's description (the CRD is
generated from it), kept in one file.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from scoreops.algorithms.registry import algorithm_traits
from scoreops.api.base import (
    API_VERSION,
    ApiModel,
    Condition,
    Duration,
    ObjectMeta,
    Phase,
    StorageUri,
)
from scoreops.api.common import (
    DEFAULT_CORRECTION_INSTRUCTION,
    ORACLE_RIGHT,
    ORACLE_WRONG,
    Engine,
    ModelRef,
    OutputSpec,
    Precision,
    WorkerResources,
)

KLEstimator = Literal["k1", "k2", "k3"]

# The guide phrases of the MGRPO paper (Ding et al., 2025, Section 3), verbatim.
MGRPO_GUIDE_PHRASES = [
    "Where might I have gone wrong this time? Let me double-check carefully.",
    "Wait, let me double-check that.",
    "Wait a minute, let me make sure I didn't make a mistake.",
    "Hmm, let me think if there's another way to approach this problem.",
    "Wait, maybe I can think about it like this:",
    "Another thought: maybe I can",
    "But wait, let me just make sure I didn't miss anything in the original problem.",
]


class GeneratorSource(ApiModel):
    """Items produced by a generator: a reasoning-gym task or a built-in one."""

    task: str = Field(
        min_length=1,
        description=(
            "Generator name: a reasoning-gym task (basic_arithmetic, chain_sum, "
            "gsm_symbolic, ...) or single-digit-addition (built in)."
        ),
    )
    size: int = Field(ge=1, le=1_000_000, description="Number of items to generate.")
    seed: int = Field(0, ge=0, description="Generator seed.")
    config: dict[str, Any] = Field(
        default_factory=dict, description="Extra generator settings, passed through."
    )


class DataSource(ApiModel):
    """One dataset split: a JSONL/Parquet file, or a generator. Exactly one of the two."""

    uri: StorageUri | None = Field(
        None, description="JSONL or Parquet with question and answer columns."
    )
    generator: GeneratorSource | None = Field(None, description="Generate the items instead.")

    @model_validator(mode="after")
    def _exactly_one(self) -> DataSource:
        if (self.uri is None) == (self.generator is None):
            raise ValueError("set exactly one of uri or generator")
        return self


class DatasetSpec(ApiModel):
    """Training prompts and held-out evaluation prompts."""

    train: DataSource = Field(description="Training items.")
    eval: DataSource | None = Field(
        None, description="Held-out items; when absent, evalSize items are split off train."
    )
    eval_size: int = Field(
        64, ge=0, le=100_000, description="Items held out of train when eval is not given."
    )
    seed: int = Field(0, ge=0, description="Seed of the split and of the data order.")
    verifier: Literal["auto", "math", "gsm8k-strict", "gsm8k-flexible", "exact", "reasoning-gym"] = (
        Field("auto", description="How answers are checked; auto picks from the source.")
    )


class ScoreConfig(ApiModel):
    """SCoRe: stage I (turn-2 reward, turn 1 held near the base) then stage II (shaped)."""

    stage1_steps: int = Field(300, ge=0, le=1_000_000, description="Optimiser steps in stage I.")
    stage2_steps: int = Field(700, ge=0, le=1_000_000, description="Optimiser steps in stage II.")
    alpha: float = Field(
        10.0, ge=0.0, le=100.0, description="Reward shaping: r2 + alpha*(r2 - r1) in stage II."
    )
    beta1: float = Field(0.01, ge=0.0, le=10.0, description="KL weight on the turns (both stages).")
    beta2: float = Field(
        0.1, ge=0.0, le=10.0, description="Strong KL weight holding turn 1 near the base (stage I)."
    )
    kl_estimator: KLEstimator = Field("k3", description="KL estimator: k1, k2 or k3.")
    baseline: Literal["loo", "mean", "none"] = Field(
        "loo", description="Policy-gradient baseline over the samples of a prompt."
    )
    bonus_on_turn1: bool = Field(
        False,
        description=(
            "Stage II: also credit the shaping bonus to the first attempt's tokens (the exact "
            "return-to-go gradient). With alpha > 1 that pays wrong first attempts that get "
            "corrected and collapses Acc@t1; by default the first attempt is credited with "
            "the unshaped r1 + r2 and the bonus shapes only the correction."
        ),
    )
    term_scale: Literal["shared", "std", "none"] = Field(
        "shared",
        description=(
            "Scale of the policy-gradient terms. shared: both turns' advantages are divided by "
            "one standard deviation over the batch, so the update is normalised and the "
            "(1+alpha) weight of the turn-2 term survives (alpha acts); std: each turn by its "
            "own standard deviation, which divides the (1+alpha) out again (alpha has no "
            "effect with bonusOnTurn1 false); none: raw advantages."
        ),
    )
    term_grad_norms: bool = Field(
        False,
        description=(
            "Log the gradient norm of each turn's part of the loss every step "
            "(grad_norm_turn1, grad_norm_turn2; one extra backward per micro-batch; "
            "not under DeepSpeed)."
        ),
    )

    @model_validator(mode="after")
    def _some_steps(self) -> ScoreConfig:
        if self.stage1_steps + self.stage2_steps == 0:
            raise ValueError("stage1Steps + stage2Steps must be at least 1")
        return self


class GRPOConfig(ApiModel):
    """GRPO: single-turn, group-normalised advantages, clipped ratio, KL to the reference."""

    steps: int = Field(1000, ge=1, le=1_000_000, description="Optimiser steps.")
    beta: float = Field(0.04, ge=0.0, le=10.0, description="KL weight.")
    clip_epsilon: float = Field(0.2, gt=0.0, lt=1.0, description="PPO clip range.")
    kl_estimator: KLEstimator = Field("k3", description="KL estimator.")
    scale_rewards: bool = Field(True, description="Divide advantages by the group's std.")


class MGRPOConfig(ApiModel):
    """Multi-layer GRPO: GRPO on the question, then GRPO on guided corrections."""

    steps: int = Field(1000, ge=1, le=1_000_000, description="Optimiser steps.")
    beta: float = Field(0.001, ge=0.0, le=10.0, description="KL weight.")
    clip_epsilon: float = Field(0.2, gt=0.0, lt=1.0, description="PPO clip range.")
    kl_estimator: KLEstimator = Field("k3", description="KL estimator.")
    guide_phrases: list[str] = Field(
        default_factory=lambda: list(MGRPO_GUIDE_PHRASES),
        min_length=1,
        description=(
            "Pool of phrases appended after a layer-1 answer to invite a correction "
            "(default: the paper's seven)."
        ),
    )
    guide_form: Literal["same-turn", "user-turn"] = Field(
        "same-turn",
        description=(
            "same-turn (the paper's): the phrase continues the model's own answer in the same "
            "assistant turn, q' = q + o + phrase; user-turn: the phrase is sent as a new user "
            "message after the answer."
        ),
    )
    variations: int = Field(
        2, ge=1, le=16, description="H: variations generated of each kept correction."
    )
    keep_selected: bool = Field(
        True,
        description=(
            "Layer 2 trains each kept prompt on its verified correction together with the H "
            "fresh variations (a group of H+1), so the correction that selected the prompt is "
            "reinforced; false trains on the H variations only."
        ),
    )


class STaRConfig(ApiModel):
    """STaR: sample, keep verified solutions, fine-tune on them."""

    rounds: int = Field(1, ge=1, le=20, description="Sample-filter-finetune rounds.")
    steps_per_round: int = Field(
        20, ge=1, le=1_000_000,
        description=(
            "Optimiser steps of fine-tuning per round; each takes batchSize prompts with the "
            "solutions the round's starting model produced for them."
        ),
    )
    external_correction: bool = Field(
        True, description="Also sample corrections after the correction instruction."
    )
    sft_epochs: int = Field(1, ge=1, le=20, description="Epochs over the kept solutions per round.")


class CoryConfig(ApiModel):
    """CORY: pioneer and observer copies of the policy with a cooperative reward."""

    steps: int = Field(1000, ge=1, le=1_000_000, description="Optimiser steps.")
    exchange_every: int = Field(50, ge=1, description="T: swap pioneer and observer every T steps.")
    beta: float = Field(0.01, ge=0.0, le=10.0, description="KL weight.")
    lora_rank: int = Field(16, ge=1, le=512, description="Rank of the per-role LoRA adapters.")


AlgorithmName = Literal["score", "mgrpo", "grpo", "star", "cory"]


class AlgorithmSpec(ApiModel):
    """The training algorithm and its settings (one block, matching name)."""

    name: AlgorithmName = Field(description="score | mgrpo | grpo | star | cory.")
    score: ScoreConfig | None = Field(None, description="Settings when name is score.")
    grpo: GRPOConfig | None = Field(None, description="Settings when name is grpo.")
    mgrpo: MGRPOConfig | None = Field(None, description="Settings when name is mgrpo.")
    star: STaRConfig | None = Field(None, description="Settings when name is star.")
    cory: CoryConfig | None = Field(None, description="Settings when name is cory.")

    @model_validator(mode="after")
    def _one_block(self) -> AlgorithmSpec:
        blocks = {"score": ScoreConfig, "grpo": GRPOConfig, "mgrpo": MGRPOConfig,
                  "star": STaRConfig, "cory": CoryConfig}
        for other in blocks:
            if other != self.name and getattr(self, other) is not None:
                raise ValueError(f"{other} settings are given but name is {self.name!r}")
        if getattr(self, self.name) is None:
            setattr(self, self.name, blocks[self.name]())
        return self

    @property
    def config(self) -> ScoreConfig | GRPOConfig | MGRPOConfig | STaRConfig | CoryConfig:
        return getattr(self, self.name)

    def total_steps(self) -> int:
        cfg = self.config
        if isinstance(cfg, ScoreConfig):
            return cfg.stage1_steps + cfg.stage2_steps
        if isinstance(cfg, STaRConfig):
            return cfg.rounds * cfg.steps_per_round
        return cfg.steps


class OracleSpec(ApiModel):
    """The oracle's messages (``rollout.feedback: oracle``, the extrinsic positive control)."""

    correct: str = Field(ORACLE_RIGHT, min_length=1,
                         description="The whole message after a right answer.")
    incorrect: str = Field(ORACLE_WRONG, min_length=1,
                           description="The whole message after a wrong answer.")
    stop_when_correct: bool = Field(
        False,
        description=(
            "Do not ask again after a right answer: the answer stands for the later turns "
            "(nothing generated or trained there), so only wrong answers get a second attempt."
        ),
    )


class VLLMRolloutSpec(ApiModel):
    """The colocated vLLM engine of a run with rollout.engine vllm."""

    tensor_parallel_size: int = Field(
        1, ge=1, le=16,
        description=(
            "GPUs one vLLM engine shards the model over (vLLM's tensor_parallel_size), for a "
            "model that does not fit one GPU's share. Each group of this many consecutive "
            "ranks of a worker pod holds one engine and generates its ranks' prompts together; "
            "it must divide resources.gpusPerWorker, so that a group never spans pods."
        ),
    )


class ImportanceSamplingSpec(ApiModel):
    """Correction of the mismatch between the rollout engine's sampling distribution and the
    trainer's (truncated importance sampling, see scoreops.algorithms.importance)."""

    mode: Literal["auto", "truncated", "none"] = Field(
        "auto",
        description=(
            "truncated: each token's policy-gradient term is weighted by "
            "min(pi_trainer/pi_sampler, cap), from the engine's sampling log-probs (TRL's "
            "vllm_importance_sampling_correction); none: weight 1; auto: truncated with engine "
            "vllm, none with hf (which samples with the policy itself)."
        ),
    )
    cap: float = Field(2.0, ge=1.0, le=100.0, description="The truncation C of the weight.")


class RolloutSpec(ApiModel):
    """How episodes are sampled during training."""

    engine: Engine = Field("hf", description="hf (transformers) or vllm (GPU only).")
    turns: int = Field(2, ge=1, le=8, description="Attempts per episode.")
    samples_per_prompt: int = Field(
        4, ge=1, le=64, description="Episodes per prompt (the group for baselines)."
    )
    temperature: float = Field(1.0, gt=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(1024, ge=1, le=32768, description="Tokens generated per turn.")
    correction_instruction: str = Field(
        DEFAULT_CORRECTION_INSTRUCTION, min_length=1,
        description="Appended after the first attempt to ask for a revision.",
    )
    feedback: Literal["none", "oracle"] = Field(
        "none",
        description=(
            "oracle: the message before each later attempt is the verifier's verdict on the "
            "previous attempt (extrinsic feedback: a positive "
            "control that bounds what a second attempt can gain, not self-correction). The "
            "messages are rollout.oracle's; correctionInstruction is not used."
        ),
    )
    oracle: OracleSpec = Field(default_factory=OracleSpec,
                               description="The oracle's messages (feedback: oracle).")
    system_prompt: str | None = Field(None, description="Optional system message.")
    gpu_memory_utilization: float = Field(
        0.3, gt=0.0, le=0.95, description="Share of GPU memory for the vLLM engine (colocated)."
    )
    vllm: VLLMRolloutSpec = Field(default_factory=VLLMRolloutSpec,
                                  description="The vLLM engine (engine vllm).")
    importance_sampling: ImportanceSamplingSpec = Field(
        default_factory=ImportanceSamplingSpec,
        description="Trainer/sampler importance-sampling correction (on by default for vllm).",
    )

    @model_validator(mode="after")
    def _importance_needs_sampler_logprobs(self) -> RolloutSpec:
        if self.importance_sampling.mode == "truncated" and self.engine != "vllm":
            raise ValueError("rollout.importanceSampling.mode truncated needs rollout.engine "
                             "vllm: the hf engine samples with the policy itself and reports "
                             "no sampling log-probs")
        return self

    def importance_mode(self) -> Literal["truncated", "none"]:
        """``importanceSampling.mode`` with ``auto`` resolved by the engine."""
        mode = self.importance_sampling.mode
        if mode == "auto":
            return "truncated" if self.engine == "vllm" else "none"
        return mode


class OptimSpec(ApiModel):
    """Optimiser and schedule."""

    learning_rate: float = Field(5e-6, gt=0.0, le=1.0, description="Peak learning rate (AdamW).")
    batch_size: int = Field(64, ge=1, le=65536, description="Prompts per optimiser step.")
    micro_batch_size: int = Field(
        8, ge=1, le=4096, description="Sequences per forward/backward (gradient accumulation)."
    )
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Share of steps warming up.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR decay.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.")


class TrainResources(WorkerResources):
    """Compute of a training run."""

    deepspeed: Literal["none", "zero2", "zero3"] = Field(
        "none",
        description="DeepSpeed ZeRO stage (GPUs; on CPU only with precision fp32, for tests).",
    )
    precision: Precision = Field("bf16", description="Training precision (fp32 on CPU).")
    backoff_limit: int = Field(
        3, ge=0, le=100,
        description="Evictions or crashes the run survives (the PyTorchJob's limit is this x pods).",
    )
    termination_grace_period_seconds: int | None = Field(
        None, ge=10, le=86400,
        description=(
            "Seconds a trainer pod gets between SIGTERM (eviction, drain, deletion) and "
            "SIGKILL: long enough to finish the step in progress and write a checkpoint. "
            "torchrun gives its workers this long less a margin. Default: the platform's "
            "(chart value training.terminationGracePeriodSeconds, 600)."
        ),
    )


class CheckpointSpec(ApiModel):
    """Checkpointing: every N steps, keep the newest K complete ones."""

    every_steps: int = Field(50, ge=1, description="Steps between checkpoints.")
    keep: int = Field(3, ge=1, le=1000, description="Complete checkpoints kept.")


class EvaluationSpec(ApiModel):
    """Held-out evaluation at the end of the run (greedy, and optionally sampled)."""

    enabled: bool = Field(True, description="Evaluate base and trained model at the end.")
    every_steps: int | None = Field(
        None, ge=1, description="Also evaluate every N steps (Acc@t1/Acc@t2 over steps)."
    )
    max_new_tokens: int | None = Field(
        None, ge=1, le=32768, description="Tokens per turn; defaults to rollout.maxNewTokens."
    )
    compare_base: bool = Field(True, description="Evaluate the base model too.")
    samples: int = Field(
        0, ge=0, le=64,
        description=(
            "Also evaluate with this many sampled episodes per item (at temperature), next to "
            "the greedy evaluation; 0: greedy only. A sampled first attempt leaves the second "
            "more to fix than a greedy one."
        ),
    )
    temperature: float | None = Field(
        None, gt=0.0, le=2.0,
        description="Temperature of the sampled evaluation; defaults to rollout.temperature.",
    )


class ScoreRunSpec(ApiModel):
    """What to train, on what, how, where and with what compute."""

    model: ModelRef = Field(description="Base weights.")
    dataset: DatasetSpec = Field(description="Training and held-out prompts.")
    algorithm: AlgorithmSpec = Field(description="Training algorithm.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Episode sampling.")
    optim: OptimSpec = Field(default_factory=OptimSpec, description="Optimiser.")
    resources: TrainResources = Field(default_factory=TrainResources, description="Compute.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoints.")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="Final evaluation."
    )
    output: OutputSpec = Field(description="Where results go.")
    seed: int = Field(0, ge=0, description="Seed of sampling and initialisation.")
    stall_timeout: Duration = Field(
        "30m", description="Mark the run Failed (Stalled) if progress does not advance this long."
    )

    @model_validator(mode="after")
    def _coherent(self) -> ScoreRunSpec:
        res = self.resources
        if self.rollout.engine == "vllm" and res.gpus_per_worker == 0:
            raise ValueError("rollout.engine vllm needs resources.gpusPerWorker >= 1")
        if res.deepspeed != "none" and res.gpus_per_worker == 0 and res.precision != "fp32":
            # DeepSpeed's CPU accelerator (gloo, fp32) exists for tests, not for speed
            raise ValueError(f"resources.deepspeed {res.deepspeed} needs resources.gpusPerWorker "
                             ">= 1, or resources.precision fp32 to run on CPU")
        alg = algorithm_traits(self.algorithm.name)
        if self.rollout.engine == "vllm" and alg.generates_with_policy:
            raise ValueError(f"algorithm {alg.name} generates with hooks on the policy module "
                             "itself (its per-role adapters), which a vLLM engine cannot run: "
                             "set rollout.engine hf")
        tp = self.rollout.vllm.tensor_parallel_size
        if tp > 1 and self.rollout.engine != "vllm":
            raise ValueError("rollout.vllm.tensorParallelSize applies to rollout.engine vllm")
        if tp > 1 and res.gpus_per_worker % tp:
            raise ValueError(f"rollout.vllm.tensorParallelSize {tp} must divide "
                             f"resources.gpusPerWorker {res.gpus_per_worker}: an engine's GPUs "
                             "are those of one worker pod")
        if self.rollout.turns < alg.min_turns:
            raise ValueError(f"algorithm {alg.name} needs rollout.turns >= {alg.min_turns}")
        if self.optim.micro_batch_size > self.optim.batch_size * self.rollout.samples_per_prompt:
            raise ValueError("optim.microBatchSize exceeds batchSize * rollout.samplesPerPrompt")
        if self.rollout.samples_per_prompt < alg.min_samples_per_prompt:
            raise ValueError(f"algorithm {alg.name} needs rollout.samplesPerPrompt >= "
                             f"{alg.min_samples_per_prompt}")
        return self


class ScoreRunStatus(ApiModel):
    """Observed state, written by the operator or the local runner."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    phase: Phase = Field("Pending", description="Pending, Running, Succeeded or Failed.")
    conditions: list[Condition] = Field(default_factory=list, description="Detailed state.")
    observed_generation: int | None = Field(None, description="Generation last reconciled.")
    stage: str | None = Field(None, description="Current stage, e.g. stage1, stage2.")
    step: int | None = Field(None, description="Optimiser steps completed.")
    total_steps: int | None = Field(None, description="Steps in the whole run.")
    reward_t1: float | None = Field(None, description="Latest mean turn-1 reward.")
    reward_t2: float | None = Field(None, description="Latest mean turn-2 reward.")
    acc_t1: float | None = Field(None, description="Latest held-out Acc@t1.")
    acc_t2: float | None = Field(None, description="Latest held-out Acc@t2.")
    last_checkpoint: str | None = Field(None, description="URI of the newest complete checkpoint.")
    results_uri: str | None = Field(None, description="URI of the report and records.")
    job_name: str | None = Field(None, description="Name of the PyTorchJob.")
    start_time: str | None = Field(None, description="When the run started.")
    completion_time: str | None = Field(None, description="When the run ended.")
    last_progress_time: str | None = Field(None, description="When progress last advanced.")
    versions: dict[str, str] = Field(default_factory=dict, description="Library versions used.")


class ScoreRun(ApiModel):
    """A ScoreRun resource."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["scoreops.io/v1alpha1"] = Field(API_VERSION, description=f"{API_VERSION}.")
    kind: Literal["ScoreRun"] = Field("ScoreRun", description="ScoreRun.")
    metadata: ObjectMeta
    spec: ScoreRunSpec
    status: ScoreRunStatus | None = None
