"""Multi-turn episodes: attempt → correction instruction → attempt → …"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from scoreops.rollout.chat import continuation_ids, encode_conversation, follow_up
from scoreops.rollout.types import Conversation, Episode, RolloutEngine, SamplingParams, Turn

if TYPE_CHECKING:
    import torch

    from scoreops.rollout.batch import TrainingBatch

__all__ = ["run_episodes", "sampling_token_logprobs"]


def _turn_seed(seed: int | None, turn: int) -> int | None:
    # A distinct stream per turn: turn 2 must not replay turn 1's random draws.
    return None if seed is None else seed + 1_000_003 * turn


def run_episodes(
    engine: RolloutEngine,
    questions: Sequence[str],
    *,
    instruction: str,
    turns: int = 2,
    params: SamplingParams,
    system_prompt: str | None = None,
) -> list[Episode]:
    """Run ``turns``-attempt episodes, ``params.n`` per question.

    Turn 1 answers ``[system?] + user(question)``; turn t+1 answers turn t's conversation +
    ``assistant(turn t's text)`` + ``user(instruction)``. Each of the n samples of a question
    continues its own trajectory (n first attempts, each with its own correction). Turn t+1's
    prompt tokens are turn t's prompt + completion tokens + the template's tokens for the
    instruction (see :mod:`scoreops.rollout.chat`), passed to the engine as
    ``prompt_token_ids``.

    Returns:
        ``len(questions) * params.n`` episodes in group-contiguous order: question 0's samples
        0 … n−1, then question 1's, … (the order the SCoRe / GRPO baselines expect).
    """
    if turns < 1:
        raise ValueError(f"turns must be >= 1, got {turns}")
    episodes = _first_attempts(engine, questions, params, system_prompt)
    for t in range(1, turns):
        _next_attempt(engine, episodes, instruction,
                      dataclasses.replace(params, n=1, seed=_turn_seed(params.seed, t)))
    return episodes


def _first_attempts(engine: RolloutEngine, questions: Sequence[str], params: SamplingParams,
                    system_prompt: str | None) -> list[Episode]:
    """``params.n`` one-turn episodes per question, group-contiguous."""
    conversations: list[Conversation] = []
    for q in questions:
        conv: Conversation = []
        if system_prompt is not None:
            conv.append({"role": "system", "content": system_prompt})
        conv.append({"role": "user", "content": q})
        conversations.append(conv)
    prompt_ids = [encode_conversation(engine.tokenizer, c) for c in conversations]
    first_params = dataclasses.replace(params, seed=_turn_seed(params.seed, 0))
    grouped = engine.generate(conversations, first_params, prompt_token_ids=prompt_ids)
    episodes: list[Episode] = []
    for qi, (q, conv, ids, completions) in enumerate(
        zip(questions, conversations, prompt_ids, grouped, strict=True)
    ):
        if len(completions) != params.n:
            raise RuntimeError(f"engine returned {len(completions)} completions, expected {params.n}")
        for s, c in enumerate(completions):
            episodes.append(
                Episode(
                    question=q,
                    question_index=qi,
                    sample=s,
                    turns=[Turn(messages=list(conv), completion=c, prompt_token_ids=list(ids))],
                )
            )
    return episodes


def _next_attempt(engine: RolloutEngine, episodes: list[Episode], instruction: str,
                  params: SamplingParams) -> None:
    """Append one turn to every episode (in place): its answer to ``instruction`` after its
    last answer, one sample each with ``params``."""
    tokenizer = engine.tokenizer
    convs: list[Conversation] = []
    ids_list: list[list[int]] = []
    for ep in episodes:
        last = ep.turns[-1]
        if last.prompt_token_ids is None:  # only if a caller edited the episode
            last.prompt_token_ids = encode_conversation(tokenizer, last.messages)
        conv, new = follow_up(last.messages, last.completion.text, instruction)
        convs.append(conv)
        ids_list.append(
            continuation_ids(
                tokenizer, last.messages, last.prompt_token_ids, last.completion.token_ids, new
            )
        )
    outs = engine.generate(convs, params, prompt_token_ids=ids_list)
    for ep, conv, ids, out in zip(episodes, convs, ids_list, outs, strict=True):
        ep.turns.append(Turn(messages=conv, completion=out[0], prompt_token_ids=ids))


def sampling_token_logprobs(episodes: Sequence[Episode],
                            batch: TrainingBatch) -> torch.Tensor | None:
    """The engine's sampling log-probs (:attr:`Completion.sampling_logprobs`) at the token
    positions of ``batch`` (built from ``episodes`` by
    :func:`scoreops.rollout.build_training_batch`): ``[B, T]``, the log-prob of each generated
    token where ``batch.turn_mask`` marks it, 0 elsewhere; turns cut by the batch's
    ``max_len`` keep their first tokens. ``None`` when a turn with tokens has none (an engine
    that does not report them)."""
    import torch

    if len(episodes) != len(batch):
        raise ValueError(f"{len(episodes)} episodes for a batch of {len(batch)} rows")
    out = torch.zeros(batch.turn_mask.shape, dtype=torch.float32)
    for b, ep in enumerate(episodes):
        for t, turn in enumerate(ep.turns, 1):
            values = turn.completion.sampling_logprobs
            if not turn.completion.token_ids:
                continue
            if values is None or len(values) != len(turn.completion.token_ids):
                return None
            where = (batch.turn_mask[b] == t).nonzero().squeeze(-1)
            out[b, where] = torch.tensor(values[:len(where)], dtype=torch.float32)
    return out
