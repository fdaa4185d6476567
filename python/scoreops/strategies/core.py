"""The inference-time strategies, batched over conversations.

Every strategy issues one ``engine.generate`` call per turn (self-correct), per sampling
round (self-consistency, best-of-n plus one verifier call) or per layer and engine (moa),
over all conversations at once; the engine batches and pads internally.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from scoreops.strategies.base import (
    Attempt,
    Conversation,
    Extractor,
    StrategyResult,
    checked_generate,
    completion_tokens,
    diverse,
    prompt_tokens,
    resolve_extractors,
    safe_extract,
    with_params,
)
from scoreops.strategies.verifiers import RewardFn, self_eval_scores

if TYPE_CHECKING:
    from scoreops.api import StrategySpec
    from scoreops.rollout import RolloutEngine, SamplingParams

__all__ = [
    "DEFAULT_AGGREGATOR_PROMPT",
    "aggregator_conversation",
    "majority_vote",
    "run_strategy",
]

DEFAULT_AGGREGATOR_PROMPT = (
    "Several assistants have answered the user's latest question; their responses are listed "
    "below. Some of them may be wrong. Evaluate them critically and write one answer of your "
    "own that is correct, complete and well reasoned. Do not just copy a response, and do not "
    "mention that there were several responses."
)


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index of the first answer of the most frequent value, ignoring None.

    Ties go to the value that appeared earliest. None when no answer could be extracted.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    for i, a in enumerate(answers):
        if a is not None and counts[a] == best:
            return i
    return None  # unreachable


def aggregator_conversation(
    conversation: Conversation, responses: Sequence[str], prompt: str | None = None
) -> Conversation:
    """The conversation an aggregator answers: a system message with the aggregator prompt
    and the numbered responses (merged after any existing system message), then the
    original conversation."""
    listing = "\n\n".join(f"{i}. {r.strip()}" for i, r in enumerate(responses, 1))
    block = f"{prompt or DEFAULT_AGGREGATOR_PROMPT}\n\nResponses:\n\n{listing}"
    if conversation and conversation[0].get("role") == "system":
        system = {"role": "system", "content": f"{conversation[0]['content']}\n\n{block}"}
        return [system, *conversation[1:]]
    return [{"role": "system", "content": block}, *conversation]


def _single(
    engine: RolloutEngine,
    conversations: list[Conversation],
    params: SamplingParams,
    extractors: list[Extractor],
) -> list[StrategyResult]:
    outs = checked_generate(engine, conversations, with_params(params, n=1))
    ptoks = prompt_tokens(engine, conversations, outs)
    results = []
    for conv, (c,), ex, pt in zip(conversations, outs, extractors, ptoks, strict=True):
        ans = safe_extract(ex, c.text)
        results.append(StrategyResult(
            final_text=c.text, final_answer=ans,
            attempts=[Attempt(text=c.text, answer=ans, turn=1, messages=list(conv))],
            turns_taken=1, completion_tokens=completion_tokens(c), prompt_tokens=pt,
        ))
    return results


def _self_correct(
    engine: RolloutEngine,
    conversations: list[Conversation],
    strategy: StrategySpec,
    params: SamplingParams,
    extractors: list[Extractor],
    pad_turns: bool,
) -> list[StrategyResult]:
    n_items = len(conversations)
    histories: list[Conversation] = [list(c) for c in conversations]
    attempts: list[list[Attempt]] = [[] for _ in range(n_items)]
    ctoks = [0] * n_items
    ptoks = [0] * n_items
    active = list(range(n_items))
    one = with_params(params, n=1)
    # With a chat tokenizer, turn k+1's prompt is turn k's prompt ids + its completion ids +
    # the template's tail (scoreops.rollout.chat.continuation_ids), never re-tokenized text:
    # the engine gets a token-exact extension of the previous turn, which an engine with
    # prefix caching (vLLM) or a kept KV cache serves without recomputing the prefix.
    tokenizer = getattr(engine, "tokenizer", None)
    token_level = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    ids: list[list[int]] = []
    if token_level:
        from scoreops.rollout.chat import continuation_ids, encode_conversation

        ids = [encode_conversation(tokenizer, c) for c in histories]
    for turn in range(1, strategy.turns + 1):
        if not active:
            break
        prompts = [list(histories[i]) for i in active]
        if token_level:
            outs = checked_generate(engine, prompts, one, [ids[i] for i in active])
            counts = [len(ids[i]) for i in active]
        else:
            outs = checked_generate(engine, prompts, one)
            counts = prompt_tokens(engine, prompts, outs)
        still: list[int] = []
        for i, prompt, (c,), pt in zip(active, prompts, outs, counts, strict=True):
            ans = safe_extract(extractors[i], c.text)
            attempts[i].append(Attempt(text=c.text, answer=ans, turn=turn, messages=prompt))
            ctoks[i] += completion_tokens(c)
            ptoks[i] += pt
            repeated = (turn > 1 and ans is not None and ans == attempts[i][-2].answer)
            if (strategy.early_stop and repeated) or turn == strategy.turns:
                continue
            new = [{"role": "user", "content": strategy.instruction}]
            histories[i] = [*prompt, {"role": "assistant", "content": c.text}, *new]
            if token_level:
                ids[i] = continuation_ids(tokenizer, prompt, ids[i], c.token_ids, new)
            still.append(i)
        active = still
    results = []
    for i in range(n_items):
        taken = len(attempts[i])
        if pad_turns:
            last = attempts[i][-1]
            for turn in range(taken + 1, strategy.turns + 1):
                attempts[i].append(Attempt(text=last.text, answer=last.answer, turn=turn,
                                           messages=last.messages, carried=True))
        final = attempts[i][-1]
        results.append(StrategyResult(
            final_text=final.text, final_answer=final.answer, attempts=attempts[i],
            turns_taken=taken, completion_tokens=ctoks[i], prompt_tokens=ptoks[i],
        ))
    return results


def _sample_n(
    engine: RolloutEngine,
    conversations: list[Conversation],
    strategy: StrategySpec,
    params: SamplingParams,
    extractors: list[Extractor],
    notes: list[str],
) -> tuple[list[list[Attempt]], list[int], list[int]]:
    sampling = diverse(params, strategy.samples, notes, strategy.name)
    outs = checked_generate(engine, conversations, sampling)
    ptoks = prompt_tokens(engine, conversations, outs)
    attempts = [
        [Attempt(text=c.text, answer=safe_extract(ex, c.text), turn=1, messages=list(conv))
         for c in cs]
        for conv, cs, ex in zip(conversations, outs, extractors, strict=True)
    ]
    ctoks = [sum(completion_tokens(c) for c in cs) for cs in outs]
    return attempts, ctoks, ptoks


def _self_consistency(
    engine: RolloutEngine,
    conversations: list[Conversation],
    strategy: StrategySpec,
    params: SamplingParams,
    extractors: list[Extractor],
) -> list[StrategyResult]:
    notes: list[str] = []
    attempts, ctoks, ptoks = _sample_n(engine, conversations, strategy, params, extractors, notes)
    results = []
    for atts, ct, pt in zip(attempts, ctoks, ptoks, strict=True):
        winner = majority_vote([a.answer for a in atts])
        chosen = atts[winner if winner is not None else 0]
        results.append(StrategyResult(
            final_text=chosen.text, final_answer=chosen.answer, attempts=atts, turns_taken=1,
            completion_tokens=ct, prompt_tokens=pt, notes=list(notes),
        ))
    return results


def _best_of_n(
    engine: RolloutEngine,
    conversations: list[Conversation],
    strategy: StrategySpec,
    params: SamplingParams,
    extractors: list[Extractor],
    verifier_engine: RolloutEngine | None,
    reward_fn: RewardFn | None,
) -> list[StrategyResult]:
    notes: list[str] = []
    attempts, ctoks, ptoks = _sample_n(engine, conversations, strategy, params, extractors, notes)
    flat_convs = [a.messages for atts in attempts for a in atts]
    flat_texts = [a.text for atts in attempts for a in atts]
    if strategy.verifier == "reward-model":
        if reward_fn is None:
            from scoreops.strategies.verifiers import load_reward_model

            if not strategy.reward_model:
                raise ValueError("strategy.rewardModel is required for verifier reward-model")
            reward_fn = load_reward_model(strategy.reward_model)
        scores = list(reward_fn(flat_convs, flat_texts))
    else:
        scores = self_eval_scores(verifier_engine or engine, flat_convs, flat_texts, params)
    if len(scores) != len(flat_texts):
        raise RuntimeError(f"verifier returned {len(scores)} scores for {len(flat_texts)}")
    results = []
    k = 0
    for atts, ct, pt in zip(attempts, ctoks, ptoks, strict=True):
        for a in atts:
            a.score = float(scores[k])
            k += 1
        best = max(range(len(atts)), key=lambda j: (atts[j].score, -j))  # ties: earliest
        chosen = atts[best]
        results.append(StrategyResult(
            final_text=chosen.text, final_answer=chosen.answer, attempts=atts, turns_taken=1,
            completion_tokens=ct, prompt_tokens=pt, notes=list(notes),
        ))
    return results


def _moa(
    engine: RolloutEngine,
    conversations: list[Conversation],
    strategy: StrategySpec,
    params: SamplingParams,
    extractors: list[Extractor],
    agent_engines: Sequence[RolloutEngine] | None,
) -> list[StrategyResult]:
    notes: list[str] = []
    n_items = len(conversations)
    pool = list(agent_engines) if agent_engines else [engine]
    agents = [pool[a % len(pool)] for a in range(strategy.agents)]
    # agents sharing one engine are served by a single call with n = their count
    groups: dict[int, list[int]] = {}
    for a, eng in enumerate(agents):
        groups.setdefault(id(eng), []).append(a)
    attempts: list[list[Attempt]] = [[] for _ in range(n_items)]
    ctoks = [0] * n_items
    ptoks = [0] * n_items
    previous: list[list[str]] | None = None
    for layer in range(1, strategy.layers + 1):
        if previous is None:
            prompts = [list(c) for c in conversations]
        else:
            prompts = [aggregator_conversation(c, prev, strategy.aggregator_prompt)
                       for c, prev in zip(conversations, previous, strict=True)]
        answers: list[list[str]] = [[""] * strategy.agents for _ in range(n_items)]
        for members in groups.values():
            eng = agents[members[0]]
            sampling = (diverse(params, len(members), notes, "moa agents")
                        if len(members) > 1 else with_params(params, n=1))
            outs = checked_generate(eng, prompts, sampling)
            counts = prompt_tokens(eng, prompts, outs)
            for i, (cs, pt) in enumerate(zip(outs, counts, strict=True)):
                ptoks[i] += pt
                for a, c in zip(members, cs, strict=True):
                    answers[i][a] = c.text
                    ctoks[i] += completion_tokens(c)
                    attempts[i].append(Attempt(
                        text=c.text, answer=safe_extract(extractors[i], c.text), turn=layer,
                        messages=prompts[i], agent=a))
        for atts in attempts:
            atts.sort(key=lambda x: (x.turn, x.agent if x.agent is not None else -1))
        previous = answers
    assert previous is not None
    final_prompts = [aggregator_conversation(c, prev, strategy.aggregator_prompt)
                     for c, prev in zip(conversations, previous, strict=True)]
    outs = checked_generate(engine, final_prompts, with_params(params, n=1))
    counts = prompt_tokens(engine, final_prompts, outs)
    results = []
    for i, ((c,), pt) in enumerate(zip(outs, counts, strict=True)):
        ans = safe_extract(extractors[i], c.text)
        attempts[i].append(Attempt(text=c.text, answer=ans, turn=strategy.layers + 1,
                                   messages=final_prompts[i]))
        results.append(StrategyResult(
            final_text=c.text, final_answer=ans, attempts=attempts[i],
            turns_taken=strategy.layers + 1, completion_tokens=ctoks[i] + completion_tokens(c),
            prompt_tokens=ptoks[i] + pt, notes=list(notes),
        ))
    return results


def run_strategy(
    engine: RolloutEngine,
    conversations: list[Conversation],
    strategy: StrategySpec,
    params: SamplingParams,
    *,
    extract: Extractor | Sequence[Extractor] | None = None,
    agent_engines: list[RolloutEngine] | None = None,
    verifier_engine: RolloutEngine | None = None,
    reward_fn: RewardFn | None = None,
    pad_turns: bool = False,
) -> list[StrategyResult]:
    """Run an inference-time strategy on a batch of conversations; one result per conversation.

    Args:
        engine: the model under test (any :class:`scoreops.rollout.RolloutEngine`).
        conversations: chat conversations (lists of ``{"role", "content"}``), each ending with
            the user's question.
        strategy: which strategy and its settings (:class:`scoreops.api.StrategySpec`).
        params: sampling settings. ``n`` is ignored: strategies choose how many samples
            they draw. self-consistency, best-of-n and several moa agents on one engine need
            diverse samples: with ``temperature == 0`` they sample at 0.7 instead (recorded
            in ``StrategyResult.notes``).
        extract: turns a completion into its final answer, for early stopping and voting;
            one callable for all conversations, or a list with one per conversation (answers
            that depend on the item, e.g. multiple-choice options). Default:
            :func:`scoreops.rewards.extract.extract_final_answer`. An extractor that raises
            or returns an empty string counts as "no answer".
        agent_engines: moa agents' engines, assigned round-robin to the ``strategy.agents``
            agents (default: ``engine`` for all). The final aggregator is ``engine``.
        verifier_engine: best-of-n with ``verifier: self-eval`` asks this engine (default:
            ``engine``) whether each candidate is correct.
        reward_fn: best-of-n with ``verifier: reward-model``: ``(conversations, responses)
            -> scores``; default: loaded from ``strategy.reward_model`` with
            :func:`scoreops.strategies.verifiers.load_reward_model`.
        pad_turns: self-correct only. With ``strategy.early_stop`` an item stops once an
            attempt's extracted answer equals the previous attempt's; its later turns are
            not generated. ``pad_turns=True`` (what evaluation uses, so that Acc@tK counts
            every item) appends the last attempt again for each skipped turn, marked
            ``carried=True``, so every result has exactly ``strategy.turns`` attempts.
            ``turns_taken`` always counts generated turns only.

    Semantics:
        * ``single``: one greedy-or-sampled attempt.
        * ``self-correct``: turn k+1 sees the conversation, every earlier attempt as an
          assistant message and ``strategy.instruction`` as a user message after each.
        * ``self-consistency``: ``strategy.samples`` samples, majority vote over extracted
          answers (ties: the answer seen first; no answer at all: the first sample).
        * ``best-of-n``: ``strategy.samples`` samples ranked by the verifier (see
          :func:`scoreops.strategies.verifiers.self_eval_scores`); ties: earliest sample.
        * ``moa``: ``strategy.layers`` layers of ``strategy.agents`` agents. Layer 1 answers
          the conversation; each later layer sees the previous layer's answers in the
          aggregator prompt (a system message); then ``engine`` aggregates the last layer's
          answers into the final answer (attempt ``turn = layers + 1``).
    """
    if not conversations:
        return []
    extractors = resolve_extractors(extract, len(conversations))
    convs = [list(c) for c in conversations]
    name = strategy.name
    if name == "single":
        return _single(engine, convs, params, extractors)
    if name == "self-correct":
        return _self_correct(engine, convs, strategy, params, extractors, pad_turns)
    if name == "self-consistency":
        return _self_consistency(engine, convs, strategy, params, extractors)
    if name == "best-of-n":
        return _best_of_n(engine, convs, strategy, params, extractors, verifier_engine,
                          reward_fn)
    if name == "moa":
        return _moa(engine, convs, strategy, params, extractors, agent_engines)
    raise ValueError(f"unknown strategy {name!r}")

