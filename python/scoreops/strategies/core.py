"""The inference-time strategies, batched over conversations.

What each strategy does, and which runner here runs it, is in
:mod:`scoreops.strategies.registry`. Every strategy issues one ``engine.generate`` call per turn (self-correct), per sampling
round (self-consistency, best-of-n plus one verifier call) or per layer and engine (moa),
over all conversations at once; the engine batches and pads internally.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from scoreops.strategies.guided import run_guided
from scoreops.strategies.prompts import DEFAULT_AGGREGATOR_PROMPT
from scoreops.strategies.registry import get_strategy
from scoreops.strategies.verifiers import RewardFn, self_eval_scores

if TYPE_CHECKING:
    from scoreops.api import StrategySpec
    from scoreops.rollout import Completion, RolloutEngine, SamplingParams

__all__ = [
    "DEFAULT_AGGREGATOR_PROMPT",
    "StrategyRun",
    "aggregator_conversation",
    "majority_vote",
    "run_strategy",
]


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



@dataclass
class StrategyRun:
    """One :func:`run_strategy` call, as its runner sees it (see its arguments)."""

    engine: RolloutEngine
    conversations: list[Conversation]
    strategy: StrategySpec
    params: SamplingParams
    extractors: list[Extractor]
    agent_engines: Sequence[RolloutEngine] | None = None
    verifier_engine: RolloutEngine | None = None
    reward_fn: RewardFn | None = None
    pad_turns: bool = False
    on_step: Callable[[int, str], None] | None = None


def run_single(run: StrategyRun) -> list[StrategyResult]:
    """One attempt per conversation."""
    engine, conversations = run.engine, run.conversations
    outs = checked_generate(engine, conversations, with_params(run.params, n=1))
    ptoks = prompt_tokens(engine, conversations, outs)
    results = []
    for conv, (c,), ex, pt in zip(conversations, outs, run.extractors, ptoks, strict=True):
        ans = safe_extract(ex, c.text)
        results.append(StrategyResult(
            final_text=c.text, final_answer=ans,
            attempts=[Attempt(text=c.text, answer=ans, turn=1, messages=list(conv))],
            turns_taken=1, completion_tokens=completion_tokens(c), prompt_tokens=pt,
        ))
    return results


class _Turns:
    """Self-correct's per-conversation state across turns: each conversation's history (and,
    with a chat tokenizer, its prompt token ids), attempts and token counts.

    With a chat tokenizer, turn k+1's prompt is turn k's prompt ids + its completion ids +
    the template's tail (scoreops.rollout.chat.continuation_ids), never re-tokenized text:
    the engine gets a token-exact extension of the previous turn, which an engine with
    prefix caching (vLLM) or a kept KV cache serves without recomputing the prefix.
    """

    def __init__(self, engine: RolloutEngine, conversations: list[Conversation]) -> None:
        n_items = len(conversations)
        self.histories: list[Conversation] = [list(c) for c in conversations]
        self.attempts: list[list[Attempt]] = [[] for _ in range(n_items)]
        self.ctoks = [0] * n_items
        self.ptoks = [0] * n_items
        self.tokenizer = getattr(engine, "tokenizer", None)
        self.token_level = (self.tokenizer is not None
                            and bool(getattr(self.tokenizer, "chat_template", None)))
        self.ids: list[list[int]] = []
        if self.token_level:
            from scoreops.rollout.chat import encode_conversation

            self.ids = [encode_conversation(self.tokenizer, c) for c in self.histories]

    def generate(self, engine: RolloutEngine, active: list[int],
                 params: SamplingParams) -> tuple[list[Conversation], list, list[int]]:
        """The active conversations' prompts, their completions and prompt token counts."""
        prompts = [list(self.histories[i]) for i in active]
        if self.token_level:
            outs = checked_generate(engine, prompts, params, [self.ids[i] for i in active])
            return prompts, outs, [len(self.ids[i]) for i in active]
        outs = checked_generate(engine, prompts, params)
        return prompts, outs, prompt_tokens(engine, prompts, outs)

    def follow_up(self, i: int, prompt: Conversation, completion: Completion,
                  instruction: str) -> None:
        """Extend conversation ``i`` with its answer and the correction instruction."""
        new = [{"role": "user", "content": instruction}]
        self.histories[i] = [*prompt, {"role": "assistant", "content": completion.text}, *new]
        if self.token_level:
            from scoreops.rollout.chat import continuation_ids

            self.ids[i] = continuation_ids(self.tokenizer, prompt, self.ids[i],
                                           completion.token_ids, new)

    def result(self, i: int, turns: int, pad_turns: bool) -> StrategyResult:
        """Conversation ``i``'s result (its skipped turns carried when ``pad_turns``)."""
        attempts = self.attempts[i]
        taken = len(attempts)
        if pad_turns:
            last = attempts[-1]
            for turn in range(taken + 1, turns + 1):
                attempts.append(Attempt(text=last.text, answer=last.answer, turn=turn,
                                        messages=last.messages, carried=True))
        final = attempts[-1]
        return StrategyResult(
            final_text=final.text, final_answer=final.answer, attempts=attempts,
            turns_taken=taken, completion_tokens=self.ctoks[i], prompt_tokens=self.ptoks[i],
        )


def run_self_correct(run: StrategyRun) -> list[StrategyResult]:
    """Up to ``strategy.turns`` turns, each after the correction instruction."""
    strategy = run.strategy
    state = _Turns(run.engine, run.conversations)
    active = list(range(len(run.conversations)))
    one = with_params(run.params, n=1)
    for turn in range(1, strategy.turns + 1):
        if not active:
            break
        prompts, outs, counts = state.generate(run.engine, active, one)
        still: list[int] = []
        for i, prompt, (c,), pt in zip(active, prompts, outs, counts, strict=True):
            ans = safe_extract(run.extractors[i], c.text)
            attempts = state.attempts[i]
            attempts.append(Attempt(text=c.text, answer=ans, turn=turn, messages=prompt))
            state.ctoks[i] += completion_tokens(c)
            state.ptoks[i] += pt
            repeated = (turn > 1 and ans is not None and ans == attempts[-2].answer)
            if (strategy.early_stop and repeated) or turn == strategy.turns:
                continue
            state.follow_up(i, prompt, c, strategy.instruction)
            still.append(i)
        active = still
    return [state.result(i, strategy.turns, run.pad_turns)
            for i in range(len(run.conversations))]


def _sample_n(run: StrategyRun,
              notes: list[str]) -> tuple[list[list[Attempt]], list[int], list[int]]:
    strategy, engine, conversations = run.strategy, run.engine, run.conversations
    sampling = diverse(run.params, strategy.samples, notes, strategy.name)
    outs = checked_generate(engine, conversations, sampling)
    ptoks = prompt_tokens(engine, conversations, outs)
    attempts = [
        [Attempt(text=c.text, answer=safe_extract(ex, c.text), turn=1, messages=list(conv))
         for c in cs]
        for conv, cs, ex in zip(conversations, outs, run.extractors, strict=True)
    ]
    ctoks = [sum(completion_tokens(c) for c in cs) for cs in outs]
    return attempts, ctoks, ptoks


def run_self_consistency(run: StrategyRun) -> list[StrategyResult]:
    """``strategy.samples`` samples and a majority vote over their answers."""
    notes: list[str] = []
    attempts, ctoks, ptoks = _sample_n(run, notes)
    results = []
    for atts, ct, pt in zip(attempts, ctoks, ptoks, strict=True):
        winner = majority_vote([a.answer for a in atts])
        chosen = atts[winner if winner is not None else 0]
        results.append(StrategyResult(
            final_text=chosen.text, final_answer=chosen.answer, attempts=atts, turns_taken=1,
            completion_tokens=ct, prompt_tokens=pt, notes=list(notes),
        ))
    return results


def _verifier_scores(run: StrategyRun, convs: list[Conversation],
                     texts: list[str]) -> list[float]:
    """One score per candidate, from the reward model or the engine's self-evaluation."""
    strategy = run.strategy
    if strategy.verifier == "reward-model":
        reward_fn = run.reward_fn
        if reward_fn is None:
            from scoreops.strategies.verifiers import load_reward_model

            if not strategy.reward_model:
                raise ValueError("strategy.rewardModel is required for verifier reward-model")
            reward_fn = load_reward_model(strategy.reward_model)
        scores = list(reward_fn(convs, texts))
    else:
        scores = self_eval_scores(run.verifier_engine or run.engine, convs, texts, run.params)
    if len(scores) != len(texts):
        raise RuntimeError(f"verifier returned {len(scores)} scores for {len(texts)}")
    return scores


def run_best_of_n(run: StrategyRun) -> list[StrategyResult]:
    """``strategy.samples`` samples; the verifier's best one is the answer."""
    notes: list[str] = []
    attempts, ctoks, ptoks = _sample_n(run, notes)
    scores = _verifier_scores(run, [a.messages for atts in attempts for a in atts],
                              [a.text for atts in attempts for a in atts])
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


class _Layers:
    """Moa's agents (round-robin over the agent engines) and its per-conversation attempts
    and token counts across layers."""

    def __init__(self, run: StrategyRun) -> None:
        n_items = len(run.conversations)
        pool = list(run.agent_engines) if run.agent_engines else [run.engine]
        self.n_agents = run.strategy.agents
        self.agents = [pool[a % len(pool)] for a in range(self.n_agents)]
        # agents sharing one engine are served by a single call with n = their count
        self.groups: dict[int, list[int]] = {}
        for a, eng in enumerate(self.agents):
            self.groups.setdefault(id(eng), []).append(a)
        self.attempts: list[list[Attempt]] = [[] for _ in range(n_items)]
        self.ctoks = [0] * n_items
        self.ptoks = [0] * n_items

    def layer(self, run: StrategyRun, layer: int, prompts: list[Conversation],
              notes: list[str]) -> list[list[str]]:
        """Every agent's answer to each prompt (per conversation, one text per agent)."""
        answers: list[list[str]] = [[""] * self.n_agents for _ in prompts]
        for members in self.groups.values():
            eng = self.agents[members[0]]
            sampling = (diverse(run.params, len(members), notes, "moa agents")
                        if len(members) > 1 else with_params(run.params, n=1))
            outs = checked_generate(eng, prompts, sampling)
            counts = prompt_tokens(eng, prompts, outs)
            for i, (cs, pt) in enumerate(zip(outs, counts, strict=True)):
                self.ptoks[i] += pt
                for a, c in zip(members, cs, strict=True):
                    answers[i][a] = c.text
                    self.ctoks[i] += completion_tokens(c)
                    self.attempts[i].append(Attempt(
                        text=c.text, answer=safe_extract(run.extractors[i], c.text),
                        turn=layer, messages=prompts[i], agent=a))
        for atts in self.attempts:
            atts.sort(key=lambda x: (x.turn, x.agent if x.agent is not None else -1))
        return answers


def run_moa(run: StrategyRun) -> list[StrategyResult]:
    """``strategy.layers`` layers of agents, then the engine aggregates the last layer."""
    strategy, engine, conversations = run.strategy, run.engine, run.conversations
    notes: list[str] = []
    state = _Layers(run)
    previous: list[list[str]] | None = None
    for layer in range(1, strategy.layers + 1):
        if previous is None:
            prompts = [list(c) for c in conversations]
        else:
            prompts = [aggregator_conversation(c, prev, strategy.aggregator_prompt)
                       for c, prev in zip(conversations, previous, strict=True)]
        previous = state.layer(run, layer, prompts, notes)
    assert previous is not None
    final_prompts = [aggregator_conversation(c, prev, strategy.aggregator_prompt)
                     for c, prev in zip(conversations, previous, strict=True)]
    outs = checked_generate(engine, final_prompts, with_params(run.params, n=1))
    counts = prompt_tokens(engine, final_prompts, outs)
    results = []
    for i, ((c,), pt) in enumerate(zip(outs, counts, strict=True)):
        ans = safe_extract(run.extractors[i], c.text)
        state.attempts[i].append(Attempt(text=c.text, answer=ans, turn=strategy.layers + 1,
                                         messages=final_prompts[i]))
        results.append(StrategyResult(
            final_text=c.text, final_answer=ans, attempts=state.attempts[i],
            turns_taken=strategy.layers + 1,
            completion_tokens=state.ctoks[i] + completion_tokens(c),
            prompt_tokens=state.ptoks[i] + pt, notes=list(notes),
        ))
    return results


#: The runners, by the name a :class:`~scoreops.strategies.registry.Strategy` gives as
#: ``runner``.
RUNNERS: dict[str, Callable[[StrategyRun], list[StrategyResult]]] = {
    f.__name__: f
    for f in (run_single, run_self_correct, run_self_consistency, run_best_of_n, run_moa,
              run_guided)
}


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
    on_step: Callable[[int, str], None] | None = None,
) -> list[StrategyResult]:
    """Run an inference-time strategy on a batch of conversations; one result per conversation.

    What each strategy does: :mod:`scoreops.strategies.registry`.

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
            one callable for all conversations, or a list with one per conversation.
            Default: :func:`scoreops.rewards.extract.extract_final_answer`. An extractor
            that raises or returns an empty string counts as "no answer".
        agent_engines: moa agents' engines, assigned round-robin to the ``strategy.agents``
            agents (default: ``engine`` for all). The final aggregator is ``engine``.
        verifier_engine: best-of-n with ``verifier: self-eval`` asks this engine (default:
            ``engine``) whether each candidate is correct.
        reward_fn: best-of-n with ``verifier: reward-model``: ``(conversations, responses)
            -> scores``; default: loaded from ``strategy.reward_model``.
        pad_turns: self-correct only. With ``strategy.early_stop`` an item stops once an
            attempt's extracted answer equals the previous attempt's. ``pad_turns=True``
            (what evaluation uses, so that Acc@tK counts every item) appends the last
            attempt again for each skipped turn, marked ``carried=True``. ``turns_taken``
            always counts generated turns only.
        on_step: guided: ``(conversation index, text)`` gets each step once it is fixed.
    """
    if not conversations:
        return []
    runner = RUNNERS[get_strategy(strategy.name).runner]
    return runner(StrategyRun(
        engine=engine, conversations=[list(c) for c in conversations], strategy=strategy,
        params=params, extractors=resolve_extractors(extract, len(conversations)),
        agent_engines=agent_engines, verifier_engine=verifier_engine, reward_fn=reward_fn,
        pad_turns=pad_turns, on_step=on_step))
