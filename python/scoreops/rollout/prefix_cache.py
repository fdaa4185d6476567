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

__all__ = ["CachedRow", "PrefixCache", "model_fingerprint"]

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
