"""Continuous batching for the ``hf`` backend: rows join and leave a running batch between
decoding steps.

:class:`DecodeLoop` owns the transformers model in one thread. Each *row* is one completion to
generate (a prompt's token ids, its sampling settings, an optional per-token callback and a
future for the :class:`~scoreops.rollout.Completion`). Rows of any request, any turn and any
sampling settings share the batch:

* between two decoding steps the loop drops the rows that finished or were cancelled, and
  admits waiting rows up to ``max_rows``, prefilled together (their prompts, or the tails an
  earlier turn's states do not cover) and merged into the batch's left-aligned cache, where
  positions come from each row's own count, so a row decodes as it would alone (see
  :mod:`scoreops.serving.batching`);
* one decoding step feeds every row its last sampled token; each row is sampled from its own
  ``torch.Generator`` (seeded per row, so a seeded request gets the same samples whatever
  shares its batch) or greedily;
* a finished row's states are kept in a :class:`~scoreops.rollout.prefix_cache.PrefixCache`, so
  the next turn of the same conversation (turn ``t``'s prompt + completion + the correction
  instruction) only runs the new tail through the model;
* a cancelled row (its client went away or its deadline passed) leaves the batch at the next
  step boundary: the work stops there, and its future raises :class:`Cancelled`.

One request's view of the loop (cancellation, engine, streamed text): :mod:`.requests`.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scoreops.rollout.types import Completion, SamplingParams

if TYPE_CHECKING:
    import torch

log = logging.getLogger("scoreops.serving")

__all__ = ["Cancelled", "DecodeLoop", "Row"]


def notify_token(row: Row) -> None:
    """Tell ``row``'s consumer (``on_token``) about its new tokens. A consumer that raises is
    logged and dropped: a broken consumer must not stop the decoder serving the others."""
    if row.on_token is None:
        return
    try:
        row.on_token(row)
    except Exception as exc:
        log.warning("token callback failed: %s", exc)
        row.on_token = None


class Cancelled(RuntimeError):
    """The request was cancelled (client gone or deadline passed); its rows stopped."""


@dataclass(eq=False)
class Row:
    """One completion to generate.

    ``on_token`` is called in the loop's thread after every sampled token with the row (read
    ``generated``); it must be quick and must not raise.
    """

    prompt: list[int]
    params: SamplingParams
    seed: int
    on_token: Callable[[Row], None] | None = None
    future: Future = field(default_factory=Future)
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # log p(token) at temperature 1
    # loop state
    fed: int = 0  # tokens whose states are in the cache
    generator: Any = None
    finish: str | None = None

    @property
    def streaming(self) -> bool:
        return self.on_token is not None


class DecodeLoop:
    """A thread decoding every admitted row of every request in one running batch.

    Args:
        model: a causal LM (transformers), on its device, in eval mode.
        tokenizer: its tokenizer (EOS ids, stop-string checks, decoding).
        max_rows: most rows decoded at once; more wait for a free place.
        prefix_cache_bytes: memory for finished rows' states (reused by their next turn).
        step_hook: called in the loop thread before each decoding step with the running rows
            (instrumentation and tests).
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_rows: int = 16,
                 prefix_cache_bytes: int = 256 << 20,
                 step_hook: Callable[[list[Row]], None] | None = None,
                 prefill_tokens: int = 2048,
                 name: str = "scoreops-decode") -> None:
        from scoreops.rollout.hf import _eos_ids
        from scoreops.rollout.prefix_cache import PrefixCache

        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.model = model
        self.tokenizer = tokenizer
        self.device = model.device
        self.max_rows = max_rows
        self.eos = _eos_ids(model, tokenizer)
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self.step_hook = step_hook
        #: most tokens (rows × the longest uncached tail) one joint prefill runs
        self.prefill_tokens = prefill_tokens
        # transformers 5.24 renamed forward's ``past_key_values`` to ``cache``
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        #: prompt tokens whose states came from an earlier turn instead of a prefill
        self.reused_tokens = 0
        #: rows whose prefill shared one forward with other joining rows
        self.joint_prefills = 0
        #: decoding steps run and rows finished (for metrics and tests)
        self.steps = 0
        self.finished_rows = 0
        self.cancelled_rows = 0
        self.generated_tokens = 0
        self._pending: deque[Row] = deque()
        self._rows: list[Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- client side ------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._pending)

    def submit(self, rows: Sequence[Row]) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the decode loop is closed")
            self._pending.extend(rows)
            self._cond.notify_all()

    def cancel(self, rows: Sequence[Row]) -> None:
        """Stop ``rows`` at the next step boundary (a no-op for finished rows)."""
        with self._cond:
            for row in rows:
                row.cancelled = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    # -- loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        while True:
            with self._cond:
                while not self._closed and not self._pending and not self._rows:
                    self._cond.wait()
                if self._closed:
                    break
                joining: list[Row] = []
                kept: deque[Row] = deque()
                room = self.max_rows - len(self._rows)
                while self._pending:
                    row = self._pending.popleft()
                    if row.cancelled:
                        self._fail(row, Cancelled("cancelled before it started"))
                    elif len(joining) < room:
                        joining.append(row)
                    else:
                        kept.append(row)
                self._pending = kept
            try:
                with torch.inference_mode():
                    self._admit(joining)
                    if self._rows:
                        if self.step_hook is not None:
                            self.step_hook(list(self._rows))
                        self._step()
            except Exception as exc:  # a failed step fails the rows it held, not the server
                log.exception("decoding step failed")
                for row in [*self._rows, *joining]:
                    self._fail(row, exc)
                self._rows, self._cache, self._mask = [], None, None
        for row in [*self._rows, *self._pending]:
            self._fail(row, RuntimeError("the server is shutting down"))
        self._rows, self._cache, self._mask = [], None, None

    def _fail(self, row: Row, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self.cancelled_rows += 1
        if not row.future.done():
            row.future.set_exception(exc)

    def _admit(self, joining: list[Row]) -> None:
        """Drop cancelled rows, prefill new ones and rebuild the batch cache if it changed."""
        keep = [i for i, r in enumerate(self._rows) if not r.cancelled]
        dropped = [r for r in self._rows if r.cancelled]
        states: list[tuple[Row, list[tuple[Any, Any]]]] = []
        from scoreops.serving.batching import plan_groups

        groups, empty = plan_groups(joining, self.prefix_cache, self.prefill_tokens)
        for row in empty:
            self._fail(row, ValueError("empty prompt"))
        for group in groups:
            try:
                prefilled = self._prefill_together(group)
            except Exception as exc:
                log.warning("prefill failed: %s", exc)
                for row, _ in group:
                    self._fail(row, exc)
                continue
            for row, layers in prefilled:
                if row.finish is not None:
                    self._complete(row, layers)
                else:
                    states.append((row, layers))
        if len(keep) != len(self._rows) or states:
            self._rebuild(keep, states)
        for r in dropped:  # once they left the batch
            self._fail(r, Cancelled("cancelled"))

    def _sample_one(self, row: Row, logits: torch.Tensor) -> int:
        import torch

        from scoreops.rollout.sampling import sample_token

        if row.params.greedy:
            return int(logits.argmax().item())
        if row.generator is None:
            row.generator = torch.Generator(device=logits.device)
            row.generator.manual_seed(row.seed)
        return sample_token(logits, row.params, row.generator)

    def _accept(self, row: Row, token: int, logprob: float) -> None:
        """Record a sampled token; decide whether the row is finished."""
        row.generated.append(token)
        row.logprobs.append(logprob)
        self.generated_tokens += 1
        if token in self.eos or (row.params.stop and self._hit_stop(row)):
            row.finish = "stop"
        elif len(row.generated) >= row.params.max_new_tokens:
            row.finish = "length"
        notify_token(row)

    def _hit_stop(self, row: Row) -> bool:
        window = 2 * max(len(s) for s in row.params.stop) + 4
        text = self.tokenizer.decode(row.generated[-window:], skip_special_tokens=False)
        return any(s in text for s in row.params.stop)

    def _prefill_together(self, group: list[tuple[Row, Any]]) -> list[tuple[Row, Any]]:
        """One forward for a group of joining rows, one or several (see
        :mod:`scoreops.serving.batching`); each samples its first token."""
        import torch

        from scoreops.serving.batching import joint_inputs

        pad = min(self.eos) if self.eos else 0  # masked out: any id will do
        inputs = joint_inputs(group, self.model.config, pad, self.device)
        out = self.model(input_ids=inputs.ids, attention_mask=inputs.mask,
                         position_ids=inputs.positions, use_cache=True, logits_to_keep=1,
                         **{self._cache_kw: inputs.cache})
        self.prefix_cache.discard([c for _, c in group if c is not None])
        logits = out.logits[:, -1]
        logprobs = torch.log_softmax(logits.float(), -1)
        if len(group) > 1:
            self.joint_prefills += len(group)
        done = []
        for i, ((row, _), kept) in enumerate(zip(group, inputs.keep, strict=True)):
            self.reused_tokens += kept
            row.fed = len(row.prompt)
            token = self._sample_one(row, logits[i])
            self._accept(row, token, float(logprobs[i, token]))
            done.append((row, [(layer.keys[i:i + 1], layer.values[i:i + 1])
                               for layer in inputs.cache.layers]))
        return done

    def _rebuild(self, keep: list[int], joins: list[tuple[Row, list[tuple[Any, Any]]]]) -> None:
        """The batch cache with rows ``keep`` of the current one followed by ``joins``."""
        from scoreops.rollout.kv_cache import make_cache
        from scoreops.serving.batching import batch_states, left_aligned_mask

        rows = [self._rows[i] for i in keep] + [r for r, _ in joins]
        if not rows:
            self._rows, self._cache, self._mask = [], None, None
            return
        old = self._cache.layers if (self._cache is not None and keep) else None
        data = batch_states(old, keep, joins, rows, self.device)
        reserve = max(r.params.max_new_tokens - len(r.generated) for r in rows) + 1
        self._cache = make_cache(self.model.config, reserve, data)
        self._mask = left_aligned_mask([r.fed for r in rows], self.device)
        self._rows = rows

    def _step(self) -> None:
        import torch

        rows = self._rows
        assert self._mask is not None and self._cache is not None
        ids = torch.tensor([[r.generated[-1]] for r in rows], dtype=torch.long,
                           device=self.device)
        positions = torch.tensor([[r.fed] for r in rows], dtype=torch.long, device=self.device)
        self._mask = torch.cat(
            [self._mask, torch.ones((len(rows), 1), dtype=torch.long, device=self.device)], 1)
        out = self.model(input_ids=ids, attention_mask=self._mask, position_ids=positions,
                         use_cache=True, **{self._cache_kw: self._cache})
        self.steps += 1
        logits = out.logits[:, -1]
        tokens = logits.argmax(dim=-1)
        for i, row in enumerate(rows):
            if not row.params.greedy and not row.cancelled:
                tokens[i] = self._sample_one(row, logits[i])
        logprobs = torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, None])[:, 0]
        chosen, chosen_lp = tokens.tolist(), logprobs.tolist()
        done: list[int] = []
        for i, row in enumerate(rows):
            row.fed += 1
            if row.cancelled:
                continue
            self._accept(row, chosen[i], chosen_lp[i])
            if row.finish is not None:
                done.append(i)
        if done:
            layers = self._cache.layers
            finished = [(rows[i], self._finish(rows[i], [(layer.keys[i:i + 1],
                                                          layer.values[i:i + 1])
                                                         for layer in layers]))
                        for i in done]
            gone = set(done)
            self._rebuild([i for i in range(len(rows)) if i not in gone], [])
            for row, completion in finished:  # once they left the batch
                if not row.future.done():
                    row.future.set_result(completion)

    def _complete(self, row: Row, layers: list[tuple[Any, Any]]) -> None:
        completion = self._finish(row, layers)
        if not row.future.done():
            row.future.set_result(completion)

    def _finish(self, row: Row, layers: list[tuple[Any, Any]]) -> Completion:
        """Store the row's states for its next turn; its completion."""
        from scoreops.rollout.prefix_cache import CachedRow

        tokens = tuple(row.prompt) + tuple(row.generated[: row.fed - len(row.prompt)])
        kept = [(k[0, :, k.shape[2] - row.fed:].clone(), v[0, :, v.shape[2] - row.fed:].clone())
                for k, v in layers]
        nbytes = sum(k.numel() * k.element_size() * 2 for k, _ in kept)
        self.prefix_cache.store(CachedRow(tokens=tokens, layers=kept, nbytes=nbytes))
        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        for s in row.params.stop:
            cut = text.find(s)
            if cut >= 0:
                text = text[:cut]
        self.finished_rows += 1
        return Completion(text=text, token_ids=list(row.generated),
                          logprobs=list(row.logprobs), finish_reason="stop" if row.finish == "stop" else "length")
