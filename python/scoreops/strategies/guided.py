"""Feedback-guided decoding: a step-level beam search steered by a critic (``guided``).

The answer is built step by step; a step ends at ``strategy.step_delimiter`` (a newline by
default). At the first step ``beam × expand`` candidate steps are sampled from the prompt;
at each later step ``expand`` from each of the ``beam`` partial answers kept, so every step
samples at most ``beam × expand`` candidates per conversation. A critic
(:mod:`scoreops.strategies.critics`) scores each candidate in [0, 1]; a partial answer's
value is the mean score of its steps, and the ``beam`` best partial answers (finished ones
compete with the extended ones) are kept, as in self-evaluation-guided decoding and GRACE.
The search ends when every kept answer is finished (end of sequence or the answer's token
limit), at ``strategy.max_steps`` (the last step is generated to the end, without the
delimiter) or when the item's ``strategy.token_budget`` is spent (every generated token
counts, the self-eval critic's one-token verdicts included; a step is only started if each
of its candidates can get a token); the answer is the best finished one (else the best
partial one). ``completion_tokens`` counts the candidates' tokens; the verdicts are
``search["critic_tokens"]``.

How it uses the engine: one batched ``generate`` call per step over every conversation's
partial answers (``n = expand``, ``beam × expand`` at the first step), as exact token ids
(the prompt's tokens + the partial answer's tokens as sampled: an engine with a prefix cache
computes only the new step's tokens), with a seed per step from which the engine derives one
stream per row; the ``self-eval`` critic adds one batched one-token call per step. Engines
without a chat tokenizer (the remote OpenAI engine) cannot continue a partial answer as
token ids: a clear error.

Each result carries ``search``, the compact search tree: every candidate step (depth, parent,
text, tokens, the generator's mean token log-probability, the critic's score, whether it was
kept) and the chosen path; ``overrides`` counts the chosen steps whose sibling the model
itself preferred (highest mean log-probability) the critic scored lower, i.e. steps the
critic rejected that the answer would otherwise have used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scoreops.strategies.base import (
    Attempt,
    StrategyResult,
    checked_generate,
    diverse,
    safe_extract,
    with_params,
)
from scoreops.strategies.critics import CriticSetup, StepCandidate, build_critic

if TYPE_CHECKING:
    from scoreops.strategies.core import StrategyRun

__all__ = ["run_guided", "search_steps"]

#: ``(conversation index, text)``: the text of steps every kept partial answer shares, sent
#: as those steps are fixed (each call adds to the previous ones).
StepSink = Callable[[int, str], None]


@dataclass
class _Node:
    parent: int  # index of the parent node, -1 for the root (the prompt)
    depth: int
    ids: list[int]
    text: str
    logprob: float | None
    done: bool
    score: float = 0.0
    kept: bool = False


@dataclass
class _Path:
    node: int  # the last step's node, -1 for the empty answer
    ids: list[int]
    text: str
    scores: list[float]
    done: bool

    @property
    def value(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else 0.0


@dataclass
class _Item:
    """One conversation's search."""

    conversation: list[dict[str, Any]]
    prompt_ids: list[int]
    beam: list[_Path]
    nodes: list[_Node] = field(default_factory=list)
    generated: int = 0
    prompt_tokens: int = 0
    steps: int = 0
    sent: str = ""  # text of the fixed steps already sent
    stopped: str | None = None  # why the search ended early (budget)
    critic_tokens: int = 0  # tokens the critic generated (self-eval's verdicts)

    def left(self, budget: int) -> int:
        """Tokens of ``budget`` not yet generated (candidates and critic verdicts)."""
        return budget - self.generated - self.critic_tokens

    def path_nodes(self, node: int) -> list[int]:
        out = []
        while node >= 0:
            out.append(node)
            node = self.nodes[node].parent
        return out[::-1]


def _tokenizer_of(run: StrategyRun) -> Any:
    tok = getattr(run.engine, "tokenizer", None)
    if tok is None or not getattr(tok, "chat_template", None):
        raise ValueError(
            f"strategy guided continues partial answers as exact token ids and needs an "
            f"engine with a chat tokenizer; {type(run.engine).__name__} has none (a remote "
            "OpenAI-compatible engine cannot continue a partial assistant answer). Run it "
            "on a local engine (hf, vllm) or serve it with scoreops serve and ask that "
            "server for strategy guided")
    return tok


def _mean(xs: list[float] | None) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _step_seed(seed: int | None, depth: int) -> int | None:
    return None if seed is None else (seed * 1_000_003 + depth * 7919) % (1 << 62)


def _common_nodes(item: _Item) -> list[int]:
    """The steps every kept partial answer shares (fixed whatever the search keeps next)."""
    paths = [item.path_nodes(p.node) for p in item.beam]
    common: list[int] = []
    for column in zip(*paths, strict=False):
        if any(x != column[0] for x in column):
            break
        common.append(column[0])
    return common


def _emit_fixed(item: _Item, index: int, sink: StepSink | None) -> None:
    if sink is None:
        return
    text = "".join(item.nodes[n].text for n in _common_nodes(item))
    if len(text) > len(item.sent) and text.startswith(item.sent):
        sink(index, text[len(item.sent):])
        item.sent = text


def _cut_stops(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def search_steps(run: StrategyRun, sink: StepSink | None = None) -> list[StrategyResult]:
    """The guided search over every conversation of ``run`` (see the module doc)."""
    spec, params = run.strategy, run.params
    tok = _tokenizer_of(run)
    from scoreops.rollout.chat import encode_conversation

    notes: list[str] = []
    sampling = diverse(params, 1, notes, "guided")
    weights = ([(w.name, w.weight) for w in spec.critic_weights] if spec.critic_weights
               else [(spec.critic, 1.0)])
    setup = CriticSetup(engine=run.engine, params=params, judge_engine=run.verifier_engine,
                        reward_model=spec.reward_model, reward_fn=run.reward_fn)
    critic = build_critic(weights, setup)
    judged = any(name == "self-eval" for name, _ in weights)
    delimiter = spec.step_delimiter
    user_stops = tuple(params.stop)
    items = [_Item(conversation=list(c), prompt_ids=encode_conversation(tok, c),
                   beam=[_Path(-1, [], "", [], False)]) for c in run.conversations]
    budget = spec.token_budget
    for depth in range(1, spec.max_steps + 1):
        last = depth == spec.max_steps
        n = spec.beam * spec.expand if depth == 1 else spec.expand
        live: list[tuple[int, _Path]] = []
        for i, item in enumerate(items):
            paths = [p for p in item.beam if not p.done]
            if budget is not None and paths:
                rows = len(paths) * n
                room = (item.left(budget) - (rows if judged else 0)) // rows
                if room < 1:
                    item.stopped = "token budget"
                    continue
            live.extend((i, p) for p in paths)
        if not live:
            break
        remaining = min(params.max_new_tokens - len(p.ids) for _, p in live)
        if budget is not None:
            per_item: dict[int, int] = {}
            for i, _ in live:
                per_item[i] = per_item.get(i, 0) + n
            remaining = min(remaining, *((items[i].left(budget) - (rows if judged else 0))
                                         // rows for i, rows in per_item.items()))
        step_params = with_params(
            sampling, n=n, max_new_tokens=max(1, remaining), seed=_step_seed(params.seed, depth),
            stop=user_stops if last else (delimiter, *user_stops))
        convs = [items[i].conversation for i, _ in live]
        outs = checked_generate(run.engine, convs, step_params,
                                [items[i].prompt_ids + p.ids for i, p in live])
        candidates: list[tuple[int, _Path, int]] = []
        for (i, path), comps in zip(live, outs, strict=True):
            item = items[i]
            item.prompt_tokens += len(item.prompt_ids) + len(path.ids)
            for c in comps:
                ids = list(c.token_ids or [])
                item.generated += len(ids)
                text = tok.decode(ids, skip_special_tokens=True)
                text, user_stop = _cut_stops(text, user_stops)
                at_eos = delimiter not in text and c.finish_reason == "stop"
                done = (last or user_stop or at_eos
                        or len(path.ids) + len(ids) >= params.max_new_tokens)
                item.nodes.append(_Node(parent=path.node, depth=depth, ids=ids, text=text,
                                        logprob=_mean(c.logprobs), done=done))
                candidates.append((i, path, len(item.nodes) - 1))
        if judged:
            for i, _, _ in candidates:
                items[i].critic_tokens += 1
        scores = critic([
            StepCandidate(conversation=items[i].conversation, prompt_ids=items[i].prompt_ids,
                          prefix_ids=path.ids, prefix_text=path.text,
                          step_ids=items[i].nodes[n].ids, step_text=items[i].nodes[n].text)
            for i, path, n in candidates]) if candidates else []
        if len(scores) != len(candidates):
            raise RuntimeError(f"critic returned {len(scores)} scores for {len(candidates)}")
        fresh: dict[int, list[_Path]] = {}
        for (i, path, n), s in zip(candidates, scores, strict=True):
            node = items[i].nodes[n]
            node.score = float(s)
            fresh.setdefault(i, []).append(_Path(
                n, [*path.ids, *node.ids], path.text + node.text, [*path.scores, node.score],
                node.done))
        for i, new in fresh.items():
            item = items[i]
            item.steps = depth
            pool = [p for p in item.beam if p.done] + new
            order = sorted(range(len(pool)), key=lambda j: (-pool[j].value, j))
            item.beam = [pool[j] for j in order[:spec.beam]]
            for p in item.beam:
                if p.node >= 0:
                    item.nodes[p.node].kept = True
            _emit_fixed(item, i, sink)
    return [_result(run, i, item, notes) for i, item in enumerate(items)]


def _overrides(item: _Item, chosen: list[int]) -> int:
    """Chosen steps whose sibling the model preferred (highest mean log-probability) the
    critic scored lower: steps the answer would otherwise have used."""
    count = 0
    for n in chosen:
        node = item.nodes[n]
        siblings = [j for j, x in enumerate(item.nodes)
                    if x.parent == node.parent and x.depth == node.depth]
        if any(item.nodes[j].logprob is None for j in siblings):
            continue
        preferred = max(siblings, key=lambda j: (item.nodes[j].logprob, -j))
        if preferred != n and item.nodes[preferred].score < node.score:
            count += 1
    return count


def _result(run: StrategyRun, index: int, item: _Item, notes: list[str]) -> StrategyResult:
    ranked = sorted(item.beam, key=lambda p: (not p.done, -p.value))
    best = ranked[0]
    chosen = item.path_nodes(best.node)
    extract = run.extractors[index]
    attempts = [Attempt(text=p.text, answer=safe_extract(extract, p.text), turn=1,
                        messages=list(item.conversation), score=p.value) for p in ranked]
    search = {
        "beam": run.strategy.beam, "expand": run.strategy.expand,
        "critic": ([[w.name, w.weight] for w in run.strategy.critic_weights]
                   if run.strategy.critic_weights else run.strategy.critic),
        "steps": len(chosen), "depth": item.steps,
        "nodes": [{"d": x.depth, "parent": x.parent, "text": x.text, "tokens": len(x.ids),
                   "logprob": None if x.logprob is None else round(x.logprob, 4),
                   "score": round(x.score, 4), "kept": x.kept,
                   **({"done": True} if x.done else {})} for x in item.nodes],
        "chosen": chosen,
        "pruned": sum(1 for x in item.nodes if not x.kept),
        "overrides": _overrides(item, chosen),
        "generated_tokens": item.generated,
        **({"stopped": item.stopped} if item.stopped else {}),
    }
    if item.critic_tokens:
        search["critic_tokens"] = item.critic_tokens
    return StrategyResult(
        final_text=best.text, final_answer=attempts[0].answer, attempts=attempts,
        turns_taken=1, completion_tokens=item.generated, prompt_tokens=item.prompt_tokens,
        notes=list(notes), search=search)


def run_guided(run: StrategyRun) -> list[StrategyResult]:
    """Step-level beam search steered by ``strategy.critic`` (see the module doc)."""
    return search_steps(run, run.on_step)
