"""Continuing episodes by one more turn: the follow-ups that training and evaluation share.

* :func:`extend_episodes` — a new user turn after each episode's last answer (CORY's observer
  prompt, MGRPO's user-turn guide phrase).
* :func:`guided_corrections` — MGRPO's guided corrections, in the same assistant turn or a new
  user turn.
* :func:`oracle_turns` — later attempts after the verifier's verdict on the previous one
  (``rollout.feedback: oracle``).

Every continuation's prompt tokens continue the episode's own tokens (no re-tokenisation of
an answer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from scoreops.rollout.chat import _encode, continuation_ids, encode_conversation, follow_up
from scoreops.rollout.types import Completion, Episode, RolloutEngine, SamplingParams, Turn

if TYPE_CHECKING:
    from scoreops.data import Item

__all__ = [
    "GUIDE_SEPARATOR",
    "extend_episodes",
    "guided_corrections",
    "oracle_message",
    "oracle_turns",
]

GUIDE_SEPARATOR = "\n\n"
"""Between the model's answer and the guide phrase in the same-turn form."""


def extend_episodes(
    engine: RolloutEngine,
    episodes: Sequence[Episode],
    messages: Sequence[str],
    params: SamplingParams,
) -> list[Episode]:
    """``params.n`` one-more-turn continuations of each episode.

    Continuation ``j`` of episode ``i`` answers episode i's last conversation +
    ``assistant(its last answer)`` + ``user(messages[i])``; its prompt tokens continue the
    episode's own tokens (no re-tokenisation of the answer). Returns ``len(episodes) · n``
    episodes, group-contiguous (episode 0's n continuations first), each a copy of its source
    episode with the new turn appended and ``sample`` = ``source.sample · n + j``.
    """
    if len(messages) != len(episodes):
        raise ValueError(f"{len(messages)} follow-up messages for {len(episodes)} episodes")
    if not episodes:
        return []
    tokenizer = engine.tokenizer
    convs, ids = [], []
    for ep, msg in zip(episodes, messages, strict=True):
        last = ep.turns[-1]
        prompt = last.prompt_token_ids
        if prompt is None:
            prompt = encode_conversation(tokenizer, last.messages)
        conv, new = follow_up(last.messages, last.completion.text, msg)
        convs.append(conv)
        ids.append(continuation_ids(tokenizer, last.messages, prompt,
                                    last.completion.token_ids, new))
    outs = engine.generate(convs, params, prompt_token_ids=ids)
    result: list[Episode] = []
    for ep, conv, prompt_ids, group in zip(episodes, convs, ids, outs, strict=True):
        if len(group) != params.n:
            raise RuntimeError(f"engine returned {len(group)} completions, expected {params.n}")
        for j, completion in enumerate(group):
            turns = [dataclasses.replace(t) for t in ep.turns]
            turns.append(Turn(messages=conv, completion=completion,
                              prompt_token_ids=list(prompt_ids)))
            result.append(dataclasses.replace(ep, sample=ep.sample * params.n + j, turns=turns))
    return result


def _strip_end_of_turn(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """``ids`` without the special tokens (end of turn / sequence) that close them."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = list(ids)
    while out and out[-1] in special:
        out.pop()
    return out


def guided_corrections(
    engine: RolloutEngine,
    episodes: Sequence[Episode],
    phrases: Sequence[str],
    params: SamplingParams,
    *,
    form: str = "same-turn",
) -> tuple[list[Episode], list[str]]:
    """``params.n`` guided corrections of each one-turn episode, group-contiguous.

    Returns ``(episodes, answers)``: ``answers[k]`` is the text the verifier judges for
    correction ``k``: only what the model wrote after the guide phrase (its continuation),
    never the text before it, so a correction that writes no answer after the phrase has none
    and counts as no correction (in layer 2's reward and in evaluation alike). The
    correction's tokens are the last turn of ``episodes[k]`` (the tokens layer 2 trains;
    everything before is context).

    * ``"same-turn"`` (the MGRPO paper's ``q' = concat(q, o) + p_guide``): the model's answer
      ``o`` (its tokens as sampled, without the end-of-turn token) and then
      :data:`GUIDE_SEPARATOR` + the phrase are the start of the same assistant turn, which
      the model continues. The correction is a one-turn episode whose prompt ends inside the
      assistant turn; its answer is the continuation after the phrase (an extractor that
      fell back to the last number of the whole turn would judge ``o`` again whenever the
      model stops right after the phrase).
    * ``"user-turn"``: the phrase is a new user message after the answer
      (:func:`extend_episodes`); the answer is the new turn's text.
    """
    if len(phrases) != len(episodes):
        raise ValueError(f"{len(phrases)} guide phrases for {len(episodes)} episodes")
    if form == "user-turn":
        out = extend_episodes(engine, episodes, phrases, params)
        return out, [ep.turns[-1].text for ep in out]
    if form != "same-turn":
        raise ValueError(f"unknown guide form {form!r}; expected 'same-turn' or 'user-turn'")
    if not episodes:
        return [], []
    tokenizer = engine.tokenizer
    convs, ids = [], []
    for ep, phrase in zip(episodes, phrases, strict=True):
        last = ep.turns[-1]
        prompt = last.prompt_token_ids
        if prompt is None:
            prompt = encode_conversation(tokenizer, last.messages)
        answer_ids = _strip_end_of_turn(tokenizer, last.completion.token_ids)
        tail = GUIDE_SEPARATOR + phrase
        prefix = last.completion.text + tail
        convs.append([*last.messages, {"role": "assistant", "content": prefix}])
        ids.append([*prompt, *answer_ids, *_encode(tokenizer, tail)])
    outs = engine.generate(convs, params, prompt_token_ids=ids)
    result: list[Episode] = []
    answers: list[str] = []
    for ep, conv, prompt_ids, group in zip(episodes, convs, ids, outs, strict=True):
        if len(group) != params.n:
            raise RuntimeError(f"engine returned {len(group)} completions, expected {params.n}")
        for j, completion in enumerate(group):
            turn = Turn(messages=conv, completion=completion, prompt_token_ids=list(prompt_ids))
            result.append(dataclasses.replace(ep, sample=ep.sample * params.n + j, turns=[turn]))
            answers.append(completion.text)
    return result, answers


def oracle_message(correct: bool, right: str, wrong: str) -> str:
    """The message before a later attempt under oracle feedback: the verifier's verdict on
    the previous attempt, and nothing else. After a right answer it must not ask the model to
    doubt it (a correction instruction there would contradict the verdict, and a change made
    after it would count against the control)."""
    return right if correct else wrong


def _stopped_turn(tokenizer: Any, turn: Turn) -> Turn:
    """The attempt after ``turn`` when the episode stops on a right answer: the same answer
    stands, nothing is generated (no tokens to train; the verifier sees the same text)."""
    prompt = turn.prompt_token_ids
    if prompt is None:
        prompt = encode_conversation(tokenizer, turn.messages)
    conv = [*turn.messages, {"role": "assistant", "content": turn.completion.text}]
    return Turn(messages=conv,
                completion=Completion(text=turn.completion.text, token_ids=[], logprobs=[],
                                      finish_reason="stop"),
                prompt_token_ids=[*prompt, *turn.completion.token_ids])


def oracle_turns(engine: Any, episodes: list[Episode], items: Sequence[Item], verifier: Any,
                 turns: int, params: Any, *, right: str, wrong: str,
                 stop_when_correct: bool = False) -> list[Episode]:
    """Continue one-turn ``episodes`` to ``turns`` turns, each later turn answering
    :func:`oracle_message` of the verifier's verdict on the turn before (one continuation
    per episode, order kept). ``right``/``wrong``: the messages (``rollout.oracle``).

    With ``stop_when_correct`` an episode whose last answer is right is not asked again: its
    later turns repeat that answer without generating (zero tokens, so nothing is trained on
    them and nothing can break a right answer); only wrong answers get ``wrong``."""
    for t in range(1, turns):
        verdicts = [verifier(ep.turns[-1].text, item) >= 0.5
                    for ep, item in zip(episodes, items, strict=True)]
        seed = None if params.seed is None else params.seed + 1_000_003 * t
        asked = [i for i, v in enumerate(verdicts) if not (stop_when_correct and v)]
        extended = extend_episodes(engine, [episodes[i] for i in asked],
                                   [oracle_message(verdicts[i], right, wrong) for i in asked],
                                   dataclasses.replace(params, n=1, seed=seed))
        out = list(episodes)
        for i, ep in zip(asked, extended, strict=True):
            out[i] = dataclasses.replace(ep, sample=episodes[i].sample)
        for i in set(range(len(episodes))) - set(asked):
            ep = episodes[i]
            out[i] = dataclasses.replace(
                ep, turns=[*ep.turns, _stopped_turn(engine.tokenizer, ep.turns[-1])])
        episodes = out
    return episodes
