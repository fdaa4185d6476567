"""A rollout engine backed by an OpenAI-compatible chat endpoint (vLLM, KServe, scoreops serve).

Evaluating a served model (an EvalSuite model with ``endpoint``) and the serving layer's
remote predictor both go through :class:`OpenAIEngine`, so strategies run unchanged on a
model behind HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scoreops.rollout.types import Completion

if TYPE_CHECKING:
    import httpx

    from scoreops.rollout import SamplingParams
    from scoreops.strategies.base import Conversation

__all__ = ["OpenAIEngine", "RemoteCompletion", "RemoteEngineError"]


class RemoteEngineError(RuntimeError):
    """The endpoint failed or answered something that is not a chat completion."""


@dataclass
class RemoteCompletion(Completion):
    """A completion from an endpoint: no token ids, but the server's token counts."""

    num_tokens: int | None = None
    prompt_tokens: int | None = None


def _chat_base(url: str) -> str:
    return url.rstrip("/")


class OpenAIEngine:
    """``RolloutEngine`` over ``POST {base_url}/chat/completions``.

    Args:
        base_url: the API root that holds ``/chat/completions`` and ``/models``, e.g.
            ``http://host:8000/v1`` (vLLM) or ``http://host/openai/v1`` (KServe). A URL
            without such a suffix is probed: ``{url}/openai/v1`` then ``{url}/v1``.
        model: the model name to request; default: the first one ``/models`` lists.
        api_key: sent as ``Authorization: Bearer``.
        timeout: seconds per request; retries: attempts on connection errors and 5xx.
        max_concurrency: requests in flight at once (one request per conversation; ``n``
            samples are asked for in that request).

    ``tokenizer`` is None (the server tokenizes); completions carry the server's token
    counts (``num_tokens``, ``prompt_tokens``) and per-token log-probabilities when the
    server returns them. ``sync_weights`` is not supported.
    """

    tokenizer: Any = None

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        max_concurrency: int = 16,
        client: httpx.Client | None = None,
    ) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.Client(timeout=timeout, headers=headers)
        self._retries = max(1, retries)
        self._pool = ThreadPoolExecutor(max_workers=max(1, max_concurrency))
        self.base_url = self._resolve_base(_chat_base(base_url))
        self.model = model or self._first_model()

    # -- discovery -------------------------------------------------------------------------

    def _resolve_base(self, url: str) -> str:
        if url.endswith("/v1"):
            return url
        for candidate in (f"{url}/openai/v1", f"{url}/v1"):
            try:
                if self._client.get(f"{candidate}/models").status_code == 200:
                    return candidate
            except Exception:  # connection errors: try the next candidate
                continue
        raise RemoteEngineError(
            f"{url}: no OpenAI-compatible API found at {url}/openai/v1 or {url}/v1 "
            "(give the URL that ends in /v1)")

    def _first_model(self) -> str:
        body = self._request("GET", f"{self.base_url}/models")
        data = body.get("data") or []
        if not data or "id" not in data[0]:
            raise RemoteEngineError(f"{self.base_url}/models lists no model; pass model=")
        return str(data[0]["id"])

    # -- requests --------------------------------------------------------------------------

    def _request(self, method: str, url: str, payload: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
        import httpx

        last: Exception | None = None
        for attempt in range(self._retries):
            try:
                resp = self._client.request(method, url, json=payload)
            except httpx.TransportError as exc:
                last = exc
            else:
                if resp.status_code < 500:
                    if resp.status_code >= 400:
                        raise RemoteEngineError(
                            f"{method} {url}: HTTP {resp.status_code}: {resp.text[:500]}")
                    try:
                        return dict(resp.json())
                    except ValueError as exc:
                        raise RemoteEngineError(f"{method} {url}: not JSON: {exc}") from exc
                last = RemoteEngineError(f"{method} {url}: HTTP {resp.status_code}: "
                                         f"{resp.text[:500]}")
            time.sleep(min(2.0, 0.2 * 2**attempt))
        raise RemoteEngineError(f"{method} {url} failed after {self._retries} attempts: {last}")

    def _one(self, conversation: Conversation, params: SamplingParams) -> list[Completion]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": conversation,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": params.n,
            "logprobs": True,
        }
        if params.seed is not None:
            payload["seed"] = params.seed
        if params.stop:
            payload["stop"] = list(params.stop)
        body = self._request("POST", f"{self.base_url}/chat/completions", payload)
        choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != params.n:
            raise RemoteEngineError(
                f"{self.base_url}: asked for n={params.n}, got {len(choices)} choices")
        usage = body.get("usage") or {}
        total = usage.get("completion_tokens")
        out: list[Completion] = []
        for ch in choices:
            message = ch.get("message") or {}
            text = message.get("content")
            if not isinstance(text, str):
                raise RemoteEngineError(f"{self.base_url}: a choice without message.content")
            content = (ch.get("logprobs") or {}).get("content") or None
            logprobs = [float(t["logprob"]) for t in content] if content else None
            if logprobs is not None:
                count: int | None = len(logprobs)
            elif isinstance(total, int):
                count = total // params.n
            else:
                count = None
            reason = "length" if ch.get("finish_reason") == "length" else "stop"
            out.append(RemoteCompletion(
                text=text, token_ids=[], logprobs=logprobs, finish_reason=reason,
                num_tokens=count, prompt_tokens=usage.get("prompt_tokens")))
        return out

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        *,
        prompt_token_ids: Sequence[Sequence[int]] | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions per conversation, requests sent concurrently.

        ``prompt_token_ids`` is ignored: the server tokenizes the messages itself.
        """
        futures = [self._pool.submit(self._one, list(c), params) for c in conversations]
        return [f.result() for f in futures]

    def sync_weights(self, model: Any) -> None:
        raise NotImplementedError("a remote endpoint's weights cannot be synced from here")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
