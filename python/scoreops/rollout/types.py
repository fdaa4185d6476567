"""The data of a rollout and the interface every generation engine implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, str]
"""One chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

Conversation = list[Message]

FinishReason = Literal["stop", "length"]

__all__ = [
    "Completion",
    "Conversation",
    "Episode",
    "FinishReason",
    "Message",
    "RolloutEngine",
    "SamplingParams",
    "Turn",
]


@dataclass(frozen=True)
class SamplingParams:
    """How completions are sampled (the subset of vLLM's ``SamplingParams`` scoreops uses).

    Attributes:
        max_new_tokens: most tokens generated per completion.
        temperature: 0 means greedy decoding; otherwise logits are divided by it.
        top_p: nucleus sampling mass (1.0 disables it).
        n: completions per conversation.
        seed: makes sampling reproducible; each (conversation index, sample index) of a call
            draws from its own random stream derived from it, so results do not depend on how
            the engine batches. ``None`` draws a seed from torch's global generator.
        stop: strings that end a completion (excluded from the text, as in vLLM).
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Completion:
    """One generated answer.

    Attributes:
        text: the decoded answer without special tokens (and without a matched stop string).
        token_ids: every generated token, including the end-of-sequence token or the tokens
            of the stop string when generation ended on one (what the model produced, which
            is what training scores).
        logprobs: log π(token | prefix) of each generated token under the *unmodified* model
            distribution (temperature 1, no top-p), or ``None`` if the engine does not report
            them.
        finish_reason: ``"stop"`` (end-of-sequence token or stop string) or ``"length"``.
        sampling_logprobs: log μ(token | prefix) of each generated token under the
            distribution the engine drew it from (after the temperature and top-p, as the
            engine computed it): the sampler's side of the trainer/sampler importance ratio
            (:mod:`scoreops.algorithms.importance`). ``None`` where the engine does not
            report them (the vLLM engine of a training run does).
    """

    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    finish_reason: FinishReason = "length"
    sampling_logprobs: list[float] | None = None


@dataclass
class Turn:
    """One attempt of an episode.

    Attributes:
        messages: the conversation the attempt answered (ends with a user message).
        completion: the answer.
        prompt_token_ids: the exact token ids the engine was given for ``messages`` (for turn
            t > 1: turn t−1's prompt + its completion tokens + the template's tokens between
            them and the new generation prompt). ``None`` when unknown.
    """

    messages: Conversation
    completion: Completion
    prompt_token_ids: list[int] | None = None

    @property
    def text(self) -> str:
        return self.completion.text


@dataclass
class Episode:
    """A multi-turn attempt at one question: attempt, correction instruction, attempt, …

    Attributes:
        question: the question as asked.
        question_index: position of the question in the list given to ``run_episodes``.
        sample: which of the n samples of that question this is (0 … n−1).
        turns: the attempts, in order.
    """

    question: str
    question_index: int
    sample: int
    turns: list[Turn] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        """The answer of each turn."""
        return [t.completion.text for t in self.turns]


@runtime_checkable
class RolloutEngine(Protocol):
    """Generates chat completions for batches of conversations.

    Implementations: :class:`scoreops.rollout.HFEngine` (transformers, CPU or GPU); a vLLM
    engine follows the same contract (``prompt_token_ids`` map onto vLLM's ``TokensPrompt``).
    """

    tokenizer: PreTrainedTokenizerBase

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        prompt_token_ids: Sequence[Sequence[int]] | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions for each conversation, in order.

        ``prompt_token_ids``, when given, are the exact prompt tokens of each conversation (the
        engine must use them instead of re-tokenizing: turn 2 continues turn 1's tokens).
        """
        ...

    def sync_weights(self, model: Any) -> None:
        """Make the engine generate with ``model``'s current weights."""
        ...

    def close(self) -> None:
        """Release the engine's resources."""
        ...
