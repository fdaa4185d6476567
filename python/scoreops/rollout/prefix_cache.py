"""Reuse of attention key/value states across ``HFEngine.generate`` calls (prefix reuse).

A multi-turn episode calls the engine once per turn, and turn t+1's prompt is turn t's prompt +
turn t's completion + a few template tokens. :class:`PrefixCache` keeps, per generated row, the
key/value states of that row's tokens (prompt + completion, less the final sampled token, which
was never fed back) and lets the next call find, for each new prompt, the longest stored row
whose tokens are a strict prefix of it. The engine then feeds only the uncached tail through the
model.

Semantics:

* entries are keyed by their exact token ids; a lookup verifies the full token sequence, so a
  hash collision can never return another row's states;
* the cache is tied to the model's weights through a fingerprint (each parameter's storage
  address and in-place version counter): an optimizer step, ``load_state_dict`` or any in-place
  write to a parameter changes it and empties the cache on the next lookup;
* memory is bounded by ``max_bytes``; the least recently stored or used entries go first. An
  entry that served as the prefix of a new row is dropped once that row's (longer) states are
  stored, so a chain of turns keeps one entry per trajectory.

The states live on the model's device, in its dtype.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["CachedRow", "PrefixCache", "model_fingerprint", "prefilled_cache"]

_MOD = (1 << 61) - 1
_BASE = 1_000_003


def _prefix_hashes(tokens: Sequence[int]) -> list[int]:
    """``h[j]`` is a polynomial hash of ``tokens[:j]`` (``h[0] == 0``)."""
    out = [0] * (len(tokens) + 1)
    h = 0
    for j, t in enumerate(tokens):
        h = (h * _BASE + t + 1) % _MOD
        out[j + 1] = h
    return out


def model_fingerprint(model: Any) -> tuple[int, ...]:
    """Changes whenever a parameter is replaced or written in place (its ``_version`` moves)."""
    fp: list[int] = [id(model)]
    for p in model.parameters():
        fp.append(p.data_ptr())
        fp.append(p._version)
    return tuple(fp)


@dataclass
class CachedRow:
    """Key/value states of one row: per layer ``(keys, values)``, each ``[heads, tokens, dim]``."""

    tokens: tuple[int, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    nbytes: int


class PrefixCache:
    """A byte-bounded LRU of per-row key/value states, keyed by token ids.

    Args:
        max_bytes: most bytes of key/value tensors held; a row larger than that is not stored.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        #: rows whose prompt was found (in part) in the cache / not found, since creation.
        self.hits = 0
        self.misses = 0
        #: prompt tokens whose states were taken from the cache instead of being recomputed.
        self.reused_tokens = 0
        self._entries: OrderedDict[tuple[int, ...], CachedRow] = OrderedDict()
        self._index: dict[tuple[int, int], list[tuple[int, ...]]] = {}
        self._lengths: dict[int, int] = {}
        self._fingerprint: tuple[int, ...] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def check_weights(self, fingerprint: tuple[int, ...]) -> None:
        """Empty the cache if the model's weights changed since the entries were stored."""
        with self._lock:
            if fingerprint != self._fingerprint:
                self._clear()
                self._fingerprint = fingerprint

    def lookup(self, prompt: Sequence[int]) -> CachedRow | None:
        """The stored row with the longest token sequence that is a STRICT prefix of ``prompt``."""
        with self._lock:
            if not self._entries:
                return None
            hashes = _prefix_hashes(prompt)
            for length in range(len(prompt) - 1, 0, -1):
                if length not in self._lengths:
                    continue
                for key in self._index.get((length, hashes[length]), ()):
                    if key == tuple(prompt[:length]):
                        self._entries.move_to_end(key)
                        return self._entries[key]
            return None

    def discard(self, rows: Iterable[CachedRow]) -> None:
        """Drop ``rows`` if still held (e.g. entries superseded by rows that extend them)."""
        with self._lock:
            for row in rows:
                if self._entries.get(row.tokens) is row:
                    self._remove(row.tokens)

    def store(self, row: CachedRow) -> None:
        """Add ``row`` as the most recent entry, evicting the oldest ones to stay in budget."""
        with self._lock:
            if row.nbytes > self.max_bytes or len(row.tokens) < 1:
                return
            if row.tokens in self._entries:
                self._remove(row.tokens)
            while self._entries and self.nbytes + row.nbytes > self.max_bytes:
                self._remove(next(iter(self._entries)))
            self._entries[row.tokens] = row
            key = (len(row.tokens), _prefix_hashes(row.tokens)[-1])
            self._index.setdefault(key, []).append(row.tokens)
            self._lengths[len(row.tokens)] = self._lengths.get(len(row.tokens), 0) + 1
            self.nbytes += row.nbytes

    # -- internals -----------------------------------------------------------------------

    def plan(self, prompts: list[list[int]],
             width: int) -> tuple[int, list[CachedRow | None], list[int]]:
        """``(span, stored rows, tokens used of each)`` for a micro-batch of ``prompts``
        left-padded to ``width``: the cached columns ``[0, span)`` that leave every row's
        uncached tail inside ``[span, width)`` (``used`` all 0 when reusing saves nothing);
        counts hits and misses."""
        nothing: tuple[int, list[CachedRow | None], list[int]] = (
            0, [None] * len(prompts), [0] * len(prompts))
        sources = [self.lookup(p) for p in prompts]
        if all(s is None for s in sources):
            self.misses += len(prompts)
            return nothing
        cached = [0 if s is None else len(s.tokens) for s in sources]
        span = width - max(len(p) - c for p, c in zip(prompts, cached, strict=True))
        used = [max(0, span - (width - len(p))) for p in prompts]
        if span < 1 or not any(used):
            self.misses += len(prompts)
            return nothing
        hits = sum(1 for u in used if u)
        self.hits += hits
        self.misses += len(prompts) - hits
        self.reused_tokens += sum(used)
        return span, sources, used

    def store_rows(self, layers: list[tuple[torch.Tensor, torch.Tensor]],
                   prompts: list[list[int]], completions: list[list[int]], width: int,
                   fed: int) -> None:
        """Store row i's states from per-layer ``(keys, values)`` ``[B, H, ≥width+fed, D]``
        (prompt left-padded to ``width``; ``fed``: generated tokens whose states are there)."""
        for i, (prompt, gen) in enumerate(zip(prompts, completions, strict=True)):
            start = width - len(prompt)
            n_gen = min(len(gen), fed)  # the last sampled token was never fed
            stop = width + n_gen
            row_layers = [(k[i, :, start:stop].clone(), v[i, :, start:stop].clone())
                          for k, v in layers]
            nbytes = sum(k.numel() * k.element_size() * 2 for k, _ in row_layers)
            tokens = tuple(prompt) + tuple(gen[:n_gen])
            self.store(CachedRow(tokens=tokens, layers=row_layers, nbytes=nbytes))

    def _clear(self) -> None:
        self._entries.clear()
        self._index.clear()
        self._lengths.clear()
        self.nbytes = 0

    def _remove(self, tokens: tuple[int, ...]) -> None:
        row = self._entries.pop(tokens)
        self.nbytes -= row.nbytes
        key = (len(tokens), _prefix_hashes(tokens)[-1])
        bucket = self._index[key]
        bucket.remove(tokens)
        if not bucket:
            del self._index[key]
        n = self._lengths[len(tokens)] - 1
        if n:
            self._lengths[len(tokens)] = n
        else:
            del self._lengths[len(tokens)]


def prefilled_cache(config: Any, sources: Sequence[CachedRow | None], used: Sequence[int],
                    span: int, reserve: int) -> Any:
    """A cache (:func:`~scoreops.rollout.kv_cache.make_cache`, room for ``reserve`` more
    tokens) holding columns ``[0, span)`` of a left-padded micro-batch: row ``i``'s first
    ``used[i]`` stored states of ``sources[i]`` end at column ``span``. Columns of a row before
    its first token (or all of ``[0, span)`` for a row with no stored prefix reaching that
    far) hold zeros and are masked out by the attention mask."""
    import torch

    from scoreops.rollout.kv_cache import make_cache

    first = next(s for s in sources if s is not None)
    data = []
    with torch.inference_mode():
        for layer, (k0, v0) in enumerate(first.layers):
            keys = k0.new_zeros((len(sources), k0.shape[0], span, k0.shape[2]))
            values = v0.new_zeros((len(sources), v0.shape[0], span, v0.shape[2]))
            for i, (src, u) in enumerate(zip(sources, used, strict=True)):
                if src is None or u == 0:
                    continue
                k, v = src.layers[layer]
                keys[i, :, span - u :] = k[:, :u]
                values[i, :, span - u :] = v[:, :u]
            data.append((keys, values))
        return make_cache(config, reserve, data)
