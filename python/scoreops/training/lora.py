"""A small built-in LoRA with two (or more) named adapters on one frozen base: CORY's agents.

Forward hooks add ``scale · x Aᵀ Bᵀ`` of the active adapter to each target projection, so
switching the active adapter is one attribute and the base model stays an ordinary
transformers model that the HF engine generates with. Imports torch: import it lazily.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["DEFAULT_TARGETS", "DualLoRA"]

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
"""The attention projections that get adapters."""


class DualLoRA(nn.Module):
    """LoRA adapters (one per name) on the ``targets`` linear layers of ``model``.

    ``A`` is initialised like a linear layer, ``B`` at zero, so every adapter starts as the
    identity change. Only the active adapter (:meth:`use`) contributes; ``None`` is the
    plain base model. Registered as a submodule of ``model``, the adapters travel in its
    ``state_dict`` (checkpoints) and its ``parameters()`` (the optimiser).
    """

    def __init__(self, model: nn.Module, names: Sequence[str], rank: int,
                 targets: Sequence[str] = DEFAULT_TARGETS, alpha_over_rank: float = 2.0,
                 seed: int = 0) -> None:
        super().__init__()
        self.names = tuple(names)
        self.active: str | None = None
        self.scale = alpha_over_rank
        self.layers: list[str] = []
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        self._handles: list[Any] = []
        gen = torch.Generator().manual_seed(seed)
        for path, mod in model.named_modules():
            if not isinstance(mod, nn.Linear) or path.rsplit(".", 1)[-1] not in targets:
                continue
            r = min(rank, mod.in_features, mod.out_features)
            key = path.replace(".", "__")
            for n in self.names:
                a = torch.empty(r, mod.in_features, dtype=mod.weight.dtype)
                bound = 1.0 / math.sqrt(mod.in_features)
                a.uniform_(-bound, bound, generator=gen)
                self.A[f"{key}__{n}"] = nn.Parameter(a.to(mod.weight.device))
                self.B[f"{key}__{n}"] = nn.Parameter(torch.zeros(
                    mod.out_features, r, dtype=mod.weight.dtype, device=mod.weight.device))
            self.layers.append(path)
            self._handles.append(mod.register_forward_hook(self._hook(key)))
        if not self.layers:
            raise ValueError(f"the model has no linear layers named {list(targets)} to adapt")

    def _hook(self, key: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> Any:
            if self.active is None:
                return output
            a, b = self.A[f"{key}__{self.active}"], self.B[f"{key}__{self.active}"]
            x = inputs[0].to(a.dtype)
            return output + (x @ a.t() @ b.t() * self.scale).to(output.dtype)

        return hook

    @contextlib.contextmanager
    def use(self, name: str | None) -> Iterator[None]:
        """Run with adapter ``name`` active (``None``: the base model)."""
        if name is not None and name not in self.names:
            raise KeyError(f"no adapter {name!r}; have {list(self.names)}")
        before, self.active = self.active, name
        try:
            yield
        finally:
            self.active = before

    @torch.no_grad()
    def merge_and_remove(self, model: nn.Module, name: str) -> None:
        """Add adapter ``name`` into the base weights; remove all adapters from ``model``."""
        for path in self.layers:
            mod = model.get_submodule(path)
            key = path.replace(".", "__")
            a, b = self.A[f"{key}__{name}"], self.B[f"{key}__{name}"]
            mod.weight.add_((b @ a * self.scale).to(mod.weight.dtype))
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.active = None
