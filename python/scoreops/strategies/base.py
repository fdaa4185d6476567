"""Result types and small helpers shared by every strategy."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scoreops.rollout import Completion, RolloutEngine, SamplingParams

log = logging.getLogger("scoreops.strategies")

Message = dict[str, Any]
Conversation = list[Message]
Extractor = Callable[[str], "str | None"]

#: Temperature used when a strategy needs diverse samples but the caller asked for greedy
#: decoding (N greedy samples of one prompt would all be the same).
DIVERSE_TEMPERATURE = 0.7


@dataclass
class Attempt:
    """One generated answer inside a strategy.

    ``turn`` is the self-correction turn (1-based) for ``self-correct``, the layer for ``moa``
    agents (the final aggregator has ``turn = layers + 1``) and 1 for the independent samples
    of ``self-consistency`` and ``best-of-n``. ``messages`` is the exact conversation the
    attempt was generated from. ``carried`` marks an attempt that was not generated but
    repeats the previous turn's because the item stopped early (see ``pad_turns``).
    ``score`` is the verifier's score (best-of-n) and ``agent`` the agent index (moa).
    """

    text: str
    answer: str | None
    turn: int
    messages: Conversation
    carried: bool = False
    score: float | None = None
    agent: int | None = None


@dataclass
class StrategyResult:
    """The outcome of a strategy for one conversation."""

    final_text: str
    final_answer: str | None
    attempts: list[Attempt]
    turns_taken: int
    completion_tokens: int
    prompt_tokens: int
    notes: list[str] = field(default_factory=list)
    #: ``guided``: the compact search tree (see :mod:`scoreops.strategies.guided`)
    search: dict[str, Any] | None = None


def resolve_extractors(
    extract: Extractor | Sequence[Extractor] | None, count: int
) -> list[Extractor]:
    """One extractor per conversation: a single callable is shared; None means the generic
    :func:`scoreops.rewards.extract.extract_final_answer` (boxed, "the answer is", ``####``,
    last number)."""
    if extract is None:
        from scoreops.rewards.extract import extract_final_answer

        return [extract_final_answer] * count
    if callable(extract):
        return [extract] * count
    extractors = list(extract)
    if len(extractors) != count:
        raise ValueError(f"extract: got {len(extractors)} extractors for {count} conversations")
    return extractors


def safe_extract(fn: Extractor, text: str) -> str | None:
    """Apply an extractor; a crash on odd text counts as "no answer", never as an error."""
    try:
        answer = fn(text)
    except Exception as exc:  # extractors run on arbitrary model output
        log.debug("extractor failed on %r: %s", text[:80], exc)
        return None
    if answer is None:
        return None
    answer = str(answer).strip()
    return answer or None


def with_params(params: SamplingParams, **changes: Any) -> SamplingParams:
    """A copy of ``params`` with some fields changed (SamplingParams is a dataclass)."""
    return dataclasses.replace(params, **changes)


def diverse(params: SamplingParams, n: int, notes: list[str], what: str) -> SamplingParams:
    """Sampling parameters for ``n`` diverse samples: greedy becomes DIVERSE_TEMPERATURE."""
    if params.temperature <= 0.0:
        note = (f"{what}: temperature 0 gives identical samples; sampling at "
                f"temperature {DIVERSE_TEMPERATURE}")
        if note not in notes:
            notes.append(note)
            log.info(note)
        return with_params(params, n=n, temperature=DIVERSE_TEMPERATURE)
    return with_params(params, n=n)


def completion_tokens(c: Completion) -> int:
    """Generated tokens of a completion (remote engines report a count instead of ids)."""
    counted = getattr(c, "num_tokens", None)
    if counted is not None:
        return int(counted)
    return len(c.token_ids or [])


def prompt_tokens(
    engine: RolloutEngine, conversations: Sequence[Conversation], outputs: Sequence[Sequence[Any]]
) -> list[int]:
    """Prompt tokens per conversation: the engine's own count if its completions carry one
    (``prompt_tokens`` attribute, as remote engines report), else the chat template's length
    with the engine's tokenizer, else 0."""
    counts: list[int] = []
    tokenizer = getattr(engine, "tokenizer", None)
    for conv, outs in zip(conversations, outputs, strict=True):
        reported = getattr(outs[0], "prompt_tokens", None) if outs else None
        if reported is not None:
            counts.append(int(reported))
        elif tokenizer is not None and hasattr(tokenizer, "apply_chat_template"):
            try:
                ids = tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                counts.append(len(ids))
            except Exception:  # a template that rejects the conversation: count nothing
                counts.append(0)
        else:
            counts.append(0)
    return counts


def checked_generate(
    engine: RolloutEngine,
    conversations: list[Conversation],
    params: SamplingParams,
    prompt_token_ids: Sequence[Sequence[int]] | None = None,
) -> list[list[Completion]]:
    """``engine.generate`` with a check that it returned ``params.n`` completions per prompt."""
    if not conversations:
        return []
    if prompt_token_ids is not None:
        outputs = engine.generate(conversations, params, prompt_token_ids=prompt_token_ids)
    else:
        outputs = engine.generate(conversations, params)
    if len(outputs) != len(conversations):
        raise RuntimeError(
            f"engine returned {len(outputs)} results for {len(conversations)} conversations")
    for outs in outputs:
        if len(outs) != params.n:
            raise RuntimeError(f"engine returned {len(outs)} completions, expected n={params.n}")
    return outputs
