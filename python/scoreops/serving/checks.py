"""Request checks: a request against the server's limits and the model's context.

:class:`RequestChecks` turns a request into a :class:`PreparedRequest` (its strategy, its
sampling settings and its token budget) or raises
:class:`~scoreops.serving.protocol.ServingError` (HTTP 400) naming the offending field. The
context check asks the strategy's registry entry
(:meth:`scoreops.strategies.registry.Strategy.budget`) how many generations and how many
tokens of fixed instructions its longest prompt holds.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from scoreops.api.common import StrategySpec
from scoreops.serving.backends import LoadedBackend
from scoreops.serving.config import ServingConfig
from scoreops.serving.protocol import ScoreopsOptions, bad_request
from scoreops.strategies.registry import get_strategy

__all__ = ["PreparedRequest", "RequestChecks"]

Conversation = list[dict[str, str]]


@dataclass
class PreparedRequest:
    """A checked request, ready to run."""

    conversations: list[Conversation]
    n: int
    strategy: StrategySpec
    params: Any  # scoreops.rollout.SamplingParams
    timeout: float
    arrival: float
    return_attempts: bool
    prompt_tokens: list[int | None] = field(default_factory=list)
    queue_wait: float | None = None
    logprobs: bool = False
    #: tokens the request may generate in all (None: no budget beyond max_tokens per call)
    token_budget: int | None = None

    @property
    def choices(self) -> int:
        return len(self.conversations) * self.n

    @property
    def stream_call(self) -> int | None:
        """Which engine call of the strategy generates the final answer (streamable)."""
        return get_strategy(self.strategy.name).stream_call(self.strategy)


class RequestChecks:
    """The checks one served model applies to every request (on the event loop)."""

    def __init__(self, config: ServingConfig, backend: LoadedBackend) -> None:
        self.config = config
        self.backend = backend
        self._overheads: dict[str, int] = {}
        # Request checks run on the event loop while worker threads generate; a fast
        # tokenizer must not be used from two threads at once, so the checks get their own.
        self.tokenizer = (copy.deepcopy(backend.tokenizer)
                          if backend.tokenizer is not None else None)

    def _strategy(self, options: ScoreopsOptions) -> StrategySpec:
        base = self.config.strategy
        if options.strategy is None and options.turns is None and options.critic is None:
            return base
        data = base.model_dump()
        if options.strategy is not None:
            data["name"] = options.strategy
        if options.turns is not None:
            data["turns"] = options.turns
        if options.critic is not None:
            data["critic"] = options.critic
            data["critic_weights"] = []
        try:
            return StrategySpec.model_validate(data)
        except ValidationError as exc:
            param = ("scoreops.turns" if options.turns is not None else "scoreops.critic"
                     if options.critic is not None else "scoreops.strategy")
            msg = exc.errors(include_url=False)[0].get("msg", str(exc))
            raise bad_request(param, str(msg).removeprefix("Value error, ")) from None

    def overhead(self, text: str) -> int:
        """Tokens a follow-up user message with ``text`` adds to a conversation."""
        if text not in self._overheads:
            from scoreops.rollout.chat import encode_conversation

            tok = self.tokenizer
            q = [{"role": "user", "content": "q"}]
            longer = [*q, {"role": "assistant", "content": "a"}, {"role": "user", "content": text}]
            self._overheads[text] = (len(encode_conversation(tok, longer))
                                     - len(encode_conversation(tok, q)))
        return self._overheads[text]

    def budget(self, strategy: StrategySpec) -> tuple[int, int]:
        """(generations a final prompt holds, fixed extra tokens) for the context check."""
        return get_strategy(strategy.name).budget(strategy, self.overhead)

    def _count(self, conversations: list[Conversation]) -> list[int | None]:
        tok = self.tokenizer
        if tok is None:
            return [None] * len(conversations)
        from scoreops.rollout.chat import encode_conversation

        counts: list[int | None] = []
        for conv in conversations:
            try:
                counts.append(len(encode_conversation(tok, conv)))
            except Exception as exc:  # the chat template rejects the conversation
                raise bad_request("messages", f"the model's chat template rejects the "
                                  f"conversation: {exc}") from None
        return counts

    def prepare(
        self,
        conversations: list[Conversation],
        *,
        prompt_param: str = "messages",
        n: int = 1,
        max_tokens: int | None = None,
        max_tokens_param: str = "max_tokens",
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
        options: ScoreopsOptions | None = None,
        arrival: float | None = None,
        logprobs: bool = False,
    ) -> PreparedRequest:
        """Check a request against the limits and the context; raise ServingError (400).

        ``prompt_param`` and ``max_tokens_param`` name the request's fields in the errors
        (they differ between the protocols).
        """
        from scoreops.rollout import SamplingParams

        arrival = time.monotonic() if arrival is None else arrival
        options = options or ScoreopsOptions()
        self._check_limits(n, max_tokens, max_tokens_param, logprobs)
        strategy = self._strategy(options)
        if get_strategy(strategy.name).uses_critic and self.tokenizer is None:
            raise bad_request(
                "scoreops.strategy" if options.strategy else "strategy",
                f"{strategy.name} continues partial answers as exact token ids, which the "
                f"{self.config.backend} backend (a remote OpenAI-compatible predictor) cannot "
                "do; serve the model in-process (--backend hf or vllm)")
        counts = self._count(conversations)
        ceiling = min(self.config.limits.max_tokens, self.config.default_max_tokens)
        room = self._room(strategy, counts, max_tokens, prompt_param, max_tokens_param)
        if room is not None:
            ceiling = min(ceiling, room)
        timeout, budget = self._request_budgets(options)
        params = SamplingParams(
            max_new_tokens=max_tokens if max_tokens is not None else ceiling,
            temperature=temperature, top_p=top_p, n=1, seed=seed, stop=tuple(stop))
        if budget is not None and get_strategy(strategy.name).uses_critic:
            # the search spends the request's budget evenly over its answers
            share = max(1, budget // max(1, len(conversations) * n))
            if strategy.token_budget is None or strategy.token_budget > share:
                strategy = strategy.model_copy(update={"token_budget": share})
        return PreparedRequest(
            conversations=conversations, n=n, strategy=strategy, params=params,
            timeout=timeout, arrival=arrival, return_attempts=options.return_attempts,
            prompt_tokens=counts, queue_wait=self.config.queue_wait, logprobs=logprobs,
            token_budget=budget)

    def _request_budgets(self, options: ScoreopsOptions) -> tuple[float, int | None]:
        """(wall-time limit in seconds, generated-token budget) of a request: what it asks
        for, or the server's limit; asking for more than the limit is a 400 naming the
        field."""
        lim = self.config.limits
        timeout = lim.request_timeout_seconds
        if options.timeout_seconds is not None:
            if options.timeout_seconds > timeout:
                raise bad_request("scoreops.timeout_seconds",
                                  f"{options.timeout_seconds:g} s is above this server's "
                                  f"limit of {timeout:g} s per request")
            timeout = options.timeout_seconds
        budget = lim.max_total_tokens
        if options.max_total_tokens is not None:
            if budget is not None and options.max_total_tokens > budget:
                raise bad_request("scoreops.max_total_tokens",
                                  f"{options.max_total_tokens} is above this server's limit "
                                  f"of {budget} generated tokens per request")
            budget = options.max_total_tokens
        return timeout, budget

    def _check_limits(self, n: int, max_tokens: int | None, max_tokens_param: str,
                      logprobs: bool) -> None:
        """The server's limits on ``n`` and ``max_tokens``, and whether it has logprobs."""
        lim = self.config.limits
        if n > lim.max_n:
            raise bad_request("n", f"{n} is above this server's limit of {lim.max_n}")
        if logprobs and self.backend.decoder is None and not self.backend.returns_logprobs:
            raise bad_request("logprobs", f"not supported with the {self.config.backend} "
                              "backend (the hf and vllm backends return them)")
        if max_tokens is not None and max_tokens > lim.max_tokens:
            raise bad_request(max_tokens_param,
                              f"{max_tokens} is above this server's ceiling of {lim.max_tokens}")

    def _room(self, strategy: StrategySpec, counts: list[int | None], max_tokens: int | None,
              prompt_param: str, max_tokens_param: str) -> int | None:
        """Tokens per generation the model's context leaves for the strategy's longest prompt
        (None when the context or the prompt lengths are unknown)."""
        context = self.backend.context_length
        known = [c for c in counts if c is not None]
        if context is None or not known:
            return None
        longest = max(known)
        if longest >= context:
            raise bad_request(prompt_param, f"the prompt has {longest} tokens; the model's "
                              f"context is {context} tokens")
        gens, extra = self.budget(strategy)
        room = (context - longest - extra) // gens
        if room < 1:
            raise bad_request(prompt_param, f"the prompt has {longest} tokens, which leaves "
                              f"no room for the {strategy.name} strategy's {gens} "
                              f"generations in the model's context of {context} tokens")
        if max_tokens is not None and max_tokens > room:
            raise bad_request(
                max_tokens_param,
                f"{max_tokens} tokens per generation do not fit: the prompt has {longest} "
                f"tokens and the {strategy.name} strategy's final prompt holds {gens} "
                f"generation(s) plus {extra} tokens of instructions, in the model's context "
                f"of {context} tokens (at most {room})")
        return room
