"""A key/value cache that grows in place instead of re-concatenating every step.

transformers' ``DynamicLayer`` appends each decoding step with ``torch.cat``, which copies the
whole cache: per generated token, O(sequence length) bytes per layer, so a long generation
spends time quadratic in its length on copies (about 15% of a decoding step of
SmolLM2-135M at batch 8 and ~260 cached tokens on CPU, more for longer outputs).
:class:`ReservedLayer` keeps each layer's keys and values in a buffer with room reserved for
the tokens still to come and writes new states into it; ``keys``/``values`` are views of the
filled part, so everything that reads a ``DynamicLayer`` (attention, masks, the prefix cache)
reads it unchanged. Operations that rebuild the tensors (row selection, cropping, repeats)
drop the buffer; the next update reallocates it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["make_cache", "reserved_layer_class"]


@functools.cache
def reserved_layer_class() -> type:
    """The :class:`ReservedLayer` class (built on first use: transformers is imported lazily)."""
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):  # type: ignore[misc]
        """A ``DynamicLayer`` whose states live in a buffer with ``reserve`` free positions."""

        def __init__(self, reserve: int) -> None:
            super().__init__()
            self.reserve = max(1, int(reserve))
            self._key_buffer: torch.Tensor | None = None
            self._value_buffer: torch.Tensor | None = None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            filled = self.get_seq_length()
            total = filled + key_states.shape[-2]
            buffer = self._key_buffer
            if (buffer is None or total > buffer.shape[-2]
                    or buffer.shape[0] != key_states.shape[0]):
                self._allocate(key_states, value_states, filled, total + self.reserve)
            assert self._key_buffer is not None and self._value_buffer is not None
            self._key_buffer[:, :, filled:total] = key_states
            self._value_buffer[:, :, filled:total] = value_states
            self.keys = self._key_buffer[:, :, :total]
            self.values = self._value_buffer[:, :, :total]
            return self.keys, self.values

        def _allocate(self, key_states: torch.Tensor, value_states: torch.Tensor, filled: int,
                      capacity: int) -> None:
            self._key_buffer = _buffer(key_states, capacity, self.keys if filled else None)
            self._value_buffer = _buffer(value_states, capacity,
                                         self.values if filled else None)

        def _drop_buffer(self) -> None:
            self._key_buffer = self._value_buffer = None

        def reset(self) -> None:
            super().reset()
            self._drop_buffer()

        def crop(self, tokens_to_remove: int) -> None:
            super().crop(tokens_to_remove)
            self._drop_buffer()

        def batch_repeat_interleave(self, repeats: int) -> None:
            super().batch_repeat_interleave(repeats)
            self._drop_buffer()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            super().batch_select_indices(indices)
            self._drop_buffer()

    return ReservedLayer


def _buffer(states: torch.Tensor, capacity: int, filled: torch.Tensor | None) -> torch.Tensor:
    """An uninitialised ``[B, H, capacity, D]`` buffer like ``states``, starting with the
    ``filled`` states (the ones already cached) when given."""
    import torch

    b, h, _, d = states.shape
    buffer = torch.empty((b, h, capacity, d), dtype=states.dtype, device=states.device)
    if filled is not None:
        buffer[:, :, :filled.shape[-2]] = filled
    return buffer


def make_cache(
    config: Any, reserve: int,
    data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Any:
    """A ``DynamicCache`` for ``config`` whose full-attention layers reserve room for
    ``reserve`` more tokens (sliding-window and other layer kinds stay as transformers makes
    them), optionally filled with per-layer ``(keys, values)``."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    layer_class = reserved_layer_class()
    cache.layers = [layer_class(reserve) if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
    if data is not None:
        for layer, (keys, values) in zip(cache.layers, data, strict=True):
            layer.update(keys, values)
    return cache
