"""Step critics of the ``guided`` strategy: each scores candidate next steps in [0, 1].

A critic is built by name from :data:`CRITICS` (as best-of-n's verifiers are chosen by
``StrategySpec.verifier``) and called with a batch of :class:`StepCandidate` s, all
conversations' candidates of one search step at once:

* ``self-eval``: the model's own probability that the step is correct. The model sees the
  conversation, its partial answer ending with the step and :data:`GUIDED_SELF_EVAL_PROMPT`,
  as exact token ids (the partial answer's tokens as sampled, never re-tokenized); one
  greedy token per candidate, all in one batched call. The score is read from the
  log-likelihood the engine reports for that token under the unmodified model distribution:
  ``p = exp(logprob)`` for "Yes", ``1 - p`` for "No", 0 for anything else (the model did not
  endorse the step), as best-of-n's self-eval verifier scores whole answers. Engines that
  report no log-probabilities get a clear error (nothing is sampled to estimate it).
* ``tool``: every ``a op b = c`` in the step is checked exactly with an arithmetic
  evaluator (:func:`check_equations`: Python's ``ast`` with a walker that allows numbers,
  ``+ - * / // % **`` and parentheses only, in exact rational arithmetic); a false one
  scores the step 0, otherwise 1 (a step with nothing to check passes).
* ``reward-model``: a process reward model given by URI, loaded with best-of-n's loader
  (:func:`scoreops.strategies.verifiers.load_reward_model`) and asked about the partial
  answer up to and including the step; its score goes through a logistic so it lies in
  [0, 1] like the others (the order of candidates is unchanged).

``StrategySpec.critic_weights`` combines several: the weighted mean of their scores.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from scoreops.strategies.base import checked_generate, with_params
from scoreops.strategies.prompts import GUIDED_SELF_EVAL_PROMPT
from scoreops.strategies.verifiers import parse_yes_no

if TYPE_CHECKING:
    from scoreops.rollout import RolloutEngine, SamplingParams
    from scoreops.strategies.base import Conversation
    from scoreops.strategies.verifiers import RewardFn

__all__ = [
    "CRITICS",
    "Critic",
    "CriticSetup",
    "Equation",
    "StepCandidate",
    "build_critic",
    "check_equations",
    "critic_names",
]


@dataclass
class StepCandidate:
    """One candidate next step of a partial answer.

    ``prompt_ids`` are the conversation's prompt tokens, ``prefix_ids`` / ``prefix_text`` the
    partial answer before the step, ``step_ids`` / ``step_text`` the step itself.
    """

    conversation: Conversation
    prompt_ids: list[int]
    prefix_ids: list[int]
    prefix_text: str
    step_ids: list[int]
    step_text: str


@dataclass
class CriticSetup:
    """What a critic may use: the engine (and a separate judge engine), the sampling
    settings of the run, the reward model's URI or a ready reward function."""

    engine: RolloutEngine
    params: SamplingParams
    judge_engine: RolloutEngine | None = None
    reward_model: str | None = None
    reward_fn: RewardFn | None = None


#: ``candidates -> one score in [0, 1] per candidate``
Critic = Callable[[Sequence[StepCandidate]], list[float]]


# -- tool -------------------------------------------------------------------------------------

_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


class _NotArithmetic(ValueError):
    """The text is not a plain arithmetic expression (nothing to check)."""


def _evaluate(node: ast.AST) -> Fraction:
    """Exact value of an arithmetic expression tree (numbers, + - * / // % **, unary signs)."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(str(node.value))  # str: 0.1 is one tenth, not the nearest double
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > 64:
                raise _NotArithmetic("only small whole exponents are checked")
            return left ** int(right)
        if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
            raise ZeroDivisionError
        return Fraction(_OPS[type(node.op)](left, right))
    raise _NotArithmetic(type(node).__name__)


def evaluate_arithmetic(expression: str) -> Fraction:
    """The exact value of ``expression`` (``×``, ``÷``, ``x`` between numbers, ``^`` and
    thousands separators understood); :class:`ValueError` if it is not plain arithmetic."""
    text = _normalise(expression)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise _NotArithmetic(str(exc)) from None
    return _evaluate(tree)


def _normalise(text: str) -> str:
    text = text.replace("×", "*").replace("÷", "/").replace("−", "-").replace("^", "**")
    text = text.replace("$", "").replace("€", "").replace("£", "")
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)  # 1,250 -> 1250
    text = re.sub(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])", "*", text)  # 3 x 4 -> 3*4
    return text.strip()


# what may stand in an arithmetic expression before "=" (scanning left from it)
_EXPR_CHARS = set("0123456789.,$€£ ()+-*/×÷xX^−")
_RHS = re.compile(r"\s*[$€£]?\s*(-?\d[\d,]*(?:\.\d+)?)")
_OPERATOR = re.compile(r"\d\s*\)?\s*(\*\*|[-+*/×÷^]|[xX])\s*\(?\s*[$€£]?\s*-?\d")


@dataclass(frozen=True)
class Equation:
    """One ``lhs = rhs`` found in a step, and whether it holds."""

    lhs: str
    rhs: str
    holds: bool


def _lhs_before(text: str, end: int) -> str:
    start = end
    while start > 0 and text[start - 1] in _EXPR_CHARS:
        start -= 1
    lhs = text[start:end]
    # the expression starts at its first number, opening parenthesis or sign
    m = re.search(r"[-−(\d$€£]", lhs)
    lhs = lhs[m.start():] if m else ""
    # an unmatched closing parenthesis or a trailing comma/period belongs to the prose
    lhs = lhs.rstrip(" ,.")
    while lhs.count("(") < lhs.count(")") and ")" in lhs:
        lhs = lhs[lhs.index(")") + 1:].lstrip(" ,.")
    while lhs.count("(") > lhs.count(")"):
        lhs = lhs[lhs.index("(") + 1:]
    return lhs.strip()


def _rounded_equal(value: Fraction, rhs: str) -> bool:
    """``value`` written with as many decimals as ``rhs`` shows equals it exactly (3.33 for
    10/3 holds; 3.34 does not)."""
    decimals = len(rhs.split(".", 1)[1]) if "." in rhs else 0
    stated = Fraction(rhs)
    if value == stated:
        return True
    if decimals == 0:
        return False
    return abs(value - stated) <= Fraction(1, 2 * 10 ** decimals)


def check_equations(text: str) -> list[Equation]:
    """Every ``a op b = c`` in ``text`` (``a op b`` at least one operation on numbers, ``c``
    a number), each evaluated exactly.

    Chains (``2 + 3 = 5 + 1 = 6``) are checked link by link. The left side is the longest
    run of arithmetic characters before ``=`` (words end it), evaluated by
    :func:`evaluate_arithmetic`; a right side with decimals holds when the exact value
    rounds to it. Left sides that are not plain arithmetic (``x = 5``, ``20% of 50 = 10``)
    are not checked. A division by zero never holds.
    """
    found: list[Equation] = []
    for eq in re.finditer(r"(?<![<>!=])=(?!=)", text):
        rhs_match = _RHS.match(text, eq.end())
        if rhs_match is None:
            continue
        lhs = _lhs_before(text, eq.start())
        if not lhs or not _OPERATOR.search(lhs):
            continue
        rhs = rhs_match.group(1).replace(",", "")
        try:
            value = evaluate_arithmetic(lhs)
        except ZeroDivisionError:
            found.append(Equation(lhs, rhs, False))
            continue
        except (ValueError, OverflowError):
            continue
        found.append(Equation(lhs, rhs, _rounded_equal(value, rhs)))
    return found


def tool_critic(setup: CriticSetup) -> Critic:
    def score(candidates: Sequence[StepCandidate]) -> list[float]:
        return [0.0 if any(not e.holds for e in check_equations(c.step_text)) else 1.0
                for c in candidates]

    return score


# -- self-eval --------------------------------------------------------------------------------

def _judge_ids(tokenizer: Any, c: StepCandidate) -> list[int]:
    from scoreops.rollout.chat import continuation_ids

    return continuation_ids(tokenizer, c.conversation, c.prompt_ids,
                            [*c.prefix_ids, *c.step_ids],
                            [{"role": "user", "content": GUIDED_SELF_EVAL_PROMPT}])


def self_eval_critic(setup: CriticSetup) -> Critic:
    engine = setup.judge_engine or setup.engine
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"critic self-eval: the engine ({type(engine).__name__}) has no chat tokenizer, so "
            "the partial answer cannot be judged as exact token ids; use a local engine "
            "(hf, vllm) or the tool / reward-model critic")
    judge = with_params(setup.params, n=1, temperature=0.0, max_new_tokens=1, stop=(),
                        seed=None)

    def score(candidates: Sequence[StepCandidate]) -> list[float]:
        if not candidates:
            return []
        convs = [[*c.conversation,
                  {"role": "assistant", "content": c.prefix_text + c.step_text},
                  {"role": "user", "content": GUIDED_SELF_EVAL_PROMPT}] for c in candidates]
        ids = [_judge_ids(tokenizer, c) for c in candidates]
        outs = checked_generate(engine, convs, judge, ids)
        scores: list[float] = []
        for (c,) in outs:
            if not c.logprobs:
                raise ValueError(
                    f"critic self-eval needs the log-probability of the verdict token, and "
                    f"the engine ({type(engine).__name__}) reported none; use an engine that "
                    "returns log-probabilities (hf, vllm, a server with logprobs) or the tool "
                    "/ reward-model critic")
            p = math.exp(float(c.logprobs[0]))
            verdict = parse_yes_no(c.text)
            scores.append(p if verdict is True else (1.0 - p) if verdict is False else 0.0)
        return scores

    return score


# -- reward model -----------------------------------------------------------------------------

def reward_model_critic(setup: CriticSetup) -> Critic:
    reward_fn = setup.reward_fn
    if reward_fn is None:
        if not setup.reward_model:
            raise ValueError("strategy.rewardModel is required for critic reward-model")
        from scoreops.strategies.verifiers import load_reward_model

        reward_fn = load_reward_model(setup.reward_model)
    fn = reward_fn

    def score(candidates: Sequence[StepCandidate]) -> list[float]:
        if not candidates:
            return []
        raw = list(fn([c.conversation for c in candidates],
                      [c.prefix_text + c.step_text for c in candidates]))
        if len(raw) != len(candidates):
            raise RuntimeError(f"reward model returned {len(raw)} scores for {len(candidates)}")
        return [1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, float(r))))) for r in raw]

    return score


#: The critics by the name ``StrategySpec.critic`` (and ``criticWeights``) gives.
CRITICS: dict[str, Callable[[CriticSetup], Critic]] = {
    "self-eval": self_eval_critic,
    "tool": tool_critic,
    "reward-model": reward_model_critic,
}


def critic_names() -> tuple[str, ...]:
    return tuple(CRITICS)


def build_critic(weights: Sequence[tuple[str, float]], setup: CriticSetup) -> Critic:
    """One critic from ``(name, weight)`` pairs: a single critic as is, several as the
    weighted mean of their scores."""
    if not weights:
        raise ValueError("no critic given")
    parts: list[tuple[Critic, float]] = []
    for name, weight in weights:
        if name not in CRITICS:
            raise ValueError(f"unknown critic {name!r}; known: {', '.join(CRITICS)}")
        if weight <= 0:
            raise ValueError(f"critic {name}: weight must be > 0, got {weight}")
        parts.append((CRITICS[name](setup), float(weight)))
    if len(parts) == 1:
        return parts[0][0]
    total = sum(w for _, w in parts)

    def combined(candidates: Sequence[StepCandidate]) -> list[float]:
        out = [0.0] * len(candidates)
        for critic, w in parts:
            for i, s in enumerate(critic(candidates)):
                out[i] += w * s / total
        return out

    return combined
