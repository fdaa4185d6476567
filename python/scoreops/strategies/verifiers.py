"""Verifiers that rank best-of-n candidates: the model's self-evaluation or a reward model."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from scoreops.strategies.base import Conversation, checked_generate, with_params
from scoreops.strategies.prompts import SELF_EVAL_PROMPT

if TYPE_CHECKING:
    from scoreops.rollout import RolloutEngine, SamplingParams

__all__ = ["SELF_EVAL_PROMPT", "RewardFn", "load_reward_model", "parse_yes_no",
           "self_eval_scores"]

#: ``(conversations, responses) -> one score per response``; higher is better.
RewardFn = Callable[[Sequence[Conversation], Sequence[str]], Sequence[float]]

_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def parse_yes_no(text: str) -> bool | None:
    """True for a reply that starts with "Yes", False for "No", None otherwise."""
    m = _YES_NO.match(text)
    if not m:
        return None
    return m.group(1).lower() == "yes"


def _first_token_prob(logprobs: Any) -> float | None:
    if not logprobs:
        return None
    first = logprobs[0]
    if isinstance(first, int | float):
        return math.exp(float(first))
    return None


def self_eval_scores(
    engine: RolloutEngine,
    conversations: Sequence[Conversation],
    responses: Sequence[str],
    params: SamplingParams,
    prompt: str = SELF_EVAL_PROMPT,
) -> list[float]:
    """Score each response by the engine's own judgement, an estimate of P(Yes).

    The engine sees the conversation, the response as its own assistant turn and ``prompt``,
    and answers greedily in at most 3 tokens, all candidates in one batched call. A reply
    starting with "Yes" scores p, one starting with "No" scores 1 - p, where p is the
    probability of the reply's first token when the engine reports log-probabilities (so
    the score estimates P(Yes) when the mass sits on Yes/No) and 1 when it does not (a
    plain yes/no parse). A reply that is neither scores 0: the verifier did not endorse it.
    """
    convs = [[*conv, {"role": "assistant", "content": resp}, {"role": "user", "content": prompt}]
             for conv, resp in zip(conversations, responses, strict=True)]
    judge = with_params(params, n=1, temperature=0.0, max_new_tokens=3, stop=())
    outs = checked_generate(engine, convs, judge)
    scores = []
    for (c,) in outs:
        verdict = parse_yes_no(c.text)
        p = _first_token_prob(c.logprobs)
        p = 1.0 if p is None else p
        if verdict is True:
            scores.append(p)
        elif verdict is False:
            scores.append(1.0 - p)
        else:
            scores.append(0.0)
    return scores


def load_reward_model(
    uri: str, *, device: str | None = None, batch_size: int = 8
) -> RewardFn:
    """A reward-model verifier from weights at ``uri`` (any location the platform reads).

    The weights are a transformers sequence-classification model (``num_labels`` 1: the
    logit is the reward; 2 or more: the log-probability of the last label). Each response
    is scored as the assistant turn of its conversation, rendered with the reward model's
    chat template.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from scoreops.models import resolve_model

    path = resolve_model(uri)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path).to(dev).eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    def score(conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        texts = [
            tokenizer.apply_chat_template(
                [*conv, {"role": "assistant", "content": resp}], tokenize=False)
            for conv, resp in zip(conversations, responses, strict=True)
        ]
        out: list[float] = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt",
                              padding=True, truncation=True).to(dev)
            with torch.no_grad():
                logits = model(**batch).logits.float()
            if logits.shape[-1] == 1:
                out.extend(logits[:, 0].tolist())
            else:
                out.extend(torch.log_softmax(logits, dim=-1)[:, -1].tolist())
        return out

    return score
