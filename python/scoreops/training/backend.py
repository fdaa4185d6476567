"""How gradients become a weight update: one interface, a plain-torch and a DeepSpeed backend.

Every algorithm and the loop talk to an :class:`OptimizerBackend` only:

* ``forward_module`` — what forward passes run through (the policy, or the DeepSpeed engine);
* ``backward(loss)`` — accumulate gradients of one micro-batch (the loss already weighted by
  the micro-batch's share of the step, see
  :func:`scoreops.training.algorithms.backward_micro_batches`);
* ``step() -> grad norm`` — the boundary of a step: average gradients over ranks, clip to
  ``optim.maxGradNorm``, optimiser and scheduler step; returns the norm before clipping;
* ``zero_grad()``, ``lr``;
* weights: ``gathered_state_dict()`` (full weights on every rank, e.g. for a sampler snapshot),
  ``consolidated_state_dict()`` (full weights on rank 0, for checkpoints and the final model),
  ``sync_rollout(engine)`` (push the current weights into the rollout engine);
* resumable state: ``save_state(dir)`` / ``load_state(dirs)`` (every rank calls both).

:class:`TorchBackend` is plain PyTorch (gradients all-reduced once per step when there are
several ranks, ``clip_grad_norm_``, the optimiser and the scheduler). DeepSpeed ZeRO-2/3 is
:class:`scoreops.training.deepspeed.DeepSpeedBackend`; :func:`make_backend` picks by
``spec.resources.deepspeed``. Neither module imports torch or deepspeed at import time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from scoreops.rollout import RolloutEngine

__all__ = ["OptimizerBackend", "TorchBackend", "make_backend"]


class OptimizerBackend(Protocol):
    kind: str
    """``torch``, ``zero2`` or ``zero3``; recorded in checkpoints (``backend.json``)."""
    module: torch.nn.Module
    """The policy itself (an unwrapped transformers model)."""
    fused_head: bool | None
    """``fused_head`` for :func:`scoreops.rollout.sequence_token_logprobs` (``False`` where
    parameters are only materialised inside their module's forward: ZeRO-3)."""
    aligned_micro_batches: bool
    """Whether every rank must run the same number of backward passes per step (gradients
    are reduced inside each backward: ZeRO-2/3)."""

    @property
    def forward_module(self) -> torch.nn.Module: ...

    @property
    def lr(self) -> float: ...

    def zero_grad(self) -> None: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> float: ...

    def gathered_state_dict(self) -> contextlib.AbstractContextManager[dict[str, torch.Tensor]]:
        ...

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None: ...

    def sync_rollout(self, engine: RolloutEngine) -> None: ...

    def save_state(self, directory: Path) -> None: ...

    def load_state(self, directories: Sequence[Path]) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class TorchBackend:
    """Plain PyTorch: ``loss.backward()``, one gradient all-reduce per step across ranks,
    ``clip_grad_norm_``, ``optimizer.step()``, ``scheduler.step()``.

    Checkpoint files (rank 0): ``optimizer.pt``, ``scheduler.pt``; weights are loaded from the
    checkpoint's ``model.safetensors``.
    """

    kind = "torch"
    fused_head: bool | None = None
    aligned_micro_batches = False

    def __init__(self, policy: torch.nn.Module, optimizer: Any, scheduler: Any, *,
                 max_grad_norm: float, device: torch.device, rank: int = 0,
                 world_size: int = 1) -> None:
        self.module = policy
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.max_grad_norm = max_grad_norm
        self.rank = rank
        self.world_size = world_size
        if world_size > 1:
            from scoreops.training.distributed import wrap_ddp

            wrap_ddp(policy, device)  # every rank starts from rank 0's weights

    @property
    def forward_module(self) -> torch.nn.Module:
        return self.module

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        import torch

        if self.world_size > 1:
            from scoreops.training.distributed import all_reduce_gradients

            all_reduce_gradients(self.module)
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return float(norm)

    @contextlib.contextmanager
    def gathered_state_dict(self) -> Iterator[dict[str, torch.Tensor]]:
        yield self.module.state_dict()

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        return self.module.state_dict() if self.rank == 0 else None

    def sync_rollout(self, engine: RolloutEngine) -> None:
        engine.sync_weights(self.module)

    def save_state(self, directory: Path) -> None:
        import torch

        if self.rank != 0:
            return
        torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")

    def load_state(self, directories: Sequence[Path]) -> None:
        import torch
        from safetensors.torch import load_file

        local = directories[0]
        weights = load_file(str(local / "model.safetensors"))
        missing, unexpected = self.module.load_state_dict(weights, strict=False)
        if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
            raise RuntimeError(f"checkpoint {local} does not fit the model: missing={missing} "
                               f"unexpected={unexpected}")
        self.optimizer.load_state_dict(torch.load(local / "optimizer.pt", weights_only=False))
        self.scheduler.load_state_dict(torch.load(local / "scheduler.pt", weights_only=False))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def close(self) -> None:
        return None


def make_backend(spec: Any, policy: torch.nn.Module, optimizer: Any, scheduler: Any, *,
                 device: torch.device, rank: int = 0, world_size: int = 1,
                 local_rank: int = 0) -> OptimizerBackend:
    """The backend ``spec.resources.deepspeed`` asks for (a ScoreRunSpec): plain torch for
    ``none``, else a DeepSpeed engine around ``policy``, ``optimizer`` and ``scheduler``
    (deepspeed is imported only then)."""
    if spec.resources.deepspeed == "none":
        return TorchBackend(policy, optimizer, scheduler, max_grad_norm=spec.optim.max_grad_norm,
                            device=device, rank=rank, world_size=world_size)
    from scoreops.training.deepspeed import DeepSpeedBackend

    return DeepSpeedBackend(policy, optimizer, scheduler, spec, device=device, rank=rank,
                            world_size=world_size, local_rank=local_rank)
