"""The static key/value cache that :class:`~scoreops.rollout.static_decode.StaticDecoder`
decodes on: per layer a fixed ``[B, H, L, D]`` buffer written at a position held in a device
tensor, and the per-shape slot of every buffer one decoding batch uses (so a captured CUDA
graph can replay on the same memory), and which models can decode on it (:func:`supports`).
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["Slot", "cache_kwarg", "supports"]


def _full_attention_only(config: Any) -> bool:
    """Whether every layer of ``config`` is full attention (no sliding window)."""
    types = getattr(config, "layer_types", None)
    if types is not None and any(t != "full_attention" for t in types):
        return False
    return getattr(config, "sliding_window", None) is None or not getattr(
        config, "use_sliding_window", True)


def cache_kwarg(model: Any) -> str | None:
    """The name ``model.forward`` takes its cache under (``cache`` in newer transformers,
    ``past_key_values`` before)."""
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def supports(model: Any) -> str | None:
    """``None`` if :class:`~scoreops.rollout.static_decode.StaticDecoder` can run ``model``,
    else why not."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "not a decoder-only transformers model"
    if not _full_attention_only(config):
        return "has sliding-window or non-attention layers"
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager"):
        return f"attention implementation {impl!r} takes no 4-D mask"
    if cache_kwarg(model) is None:
        return "its forward takes no cache"
    for mod in model.modules():
        if mod._forward_hooks or mod._forward_pre_hooks:
            return "has forward hooks"
    return None


@functools.cache
def _layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class StaticLayer(DynamicLayer):  # type: ignore[misc]
        """Keys/values in a fixed ``[B, H, L, D]`` buffer; each update writes its ``q`` new
        states at columns ``pos .. pos+q-1`` (``pos``: a shared device tensor) and returns the
        whole buffer (columns not yet written are masked out by the caller's 4-D mask)."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor,
                     pos: torch.Tensor) -> None:
            super().__init__()
            self.keys, self.values, self.pos = keys, values, pos
            self.device, self.dtype = keys.device, keys.dtype
            self.is_initialized = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            import torch

            q = key_states.shape[-2]
            idx = self.pos + torch.arange(q, device=self.pos.device)
            self.keys.index_copy_(2, idx, key_states.to(self.keys.dtype))
            self.values.index_copy_(2, idx, value_states.to(self.values.dtype))
            return self.keys, self.values

        def get_seq_length(self, *args: Any, **kwargs: Any) -> int:
            return int(self.keys.shape[-2])

        def get_max_cache_shape(self, *args: Any, **kwargs: Any) -> int:
            return int(self.keys.shape[-2])

    return StaticLayer


class Slot:
    """Buffers (and, on CUDA, the captured step) of one (rows, cache length, sampling) shape
    of ``model``'s decoding, on ``dev`` with cached states in ``dtype``."""

    def __init__(self, model: Any, dev: torch.device, dtype: torch.dtype, rows: int,
                 length: int, max_new: int, sampling: tuple[bool, float, float]) -> None:
        import torch

        cfg = self.config = model.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.rows, self.length, self.max_new, self.sampling = rows, length, max_new, sampling
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.step = torch.zeros(1, dtype=torch.long, device=dev)
        self.kv = [(torch.zeros(rows, heads, length, head_dim, dtype=dtype, device=dev),
                    torch.zeros(rows, heads, length, head_dim, dtype=dtype, device=dev))
                   for _ in range(cfg.num_hidden_layers)]
        self.valid = torch.zeros(rows, length, dtype=torch.bool, device=dev)
        self.tok = torch.zeros(rows, dtype=torch.long, device=dev)
        self.pos_ids = torch.zeros(rows, 1, dtype=torch.long, device=dev)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.seed_lo = torch.zeros(rows, dtype=torch.long, device=dev)
        self.seed_hi = torch.zeros(rows, dtype=torch.long, device=dev)
        self.out_tokens = torch.zeros(rows, max_new, dtype=torch.long, device=dev)
        self.out_logp = torch.zeros(rows, max_new, dtype=torch.float32, device=dev)
        self.graph: Any = None

    def cache(self) -> Any:
        """A ``DynamicCache`` whose layers write into this slot's buffers."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.config)
        layer = _layer_class()
        cache.layers = [layer(k, v, self.pos) for k, v in self.kv]
        return cache
