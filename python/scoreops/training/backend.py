"""How gradients become a weight update: one interface, a plain-torch and a DeepSpeed backend.

Every algorithm and the loop talk to an :class:`OptimizerBackend` only:

* ``forward_module`` — what forward passes run through (the policy, or the DeepSpeed engine);
* ``backward(loss)`` — accumulate gradients of one micro-batch (the loss already weighted by
  the micro-batch's share of the step, see
  :func:`scoreops.training.steps.backward.backward_micro_batches`);
* ``step() -> grad norm`` — the boundary of a step: average gradients over ranks, clip to
  ``optim.maxGradNorm``, optimiser and scheduler step; returns the norm before clipping;
* ``autocast()`` — the context every forward pass of a step runs in (bf16/fp16 autocast over
  fp32 master weights on the plain-torch backend; nothing under DeepSpeed, whose engine holds
  the module in the compute precision and the fp32 master weights in its optimiser);
* ``zero_grad()``, ``lr``;
* weights: ``gathered_state_dict()`` (full weights on every rank, e.g. for a sampler snapshot),
  ``consolidated_state_dict()`` (full weights on rank 0, for checkpoints and the final model),
  ``sync_rollout(engine)`` (push the current weights into the rollout engine);
* resumable state: ``save_state(dir)`` / ``load_state(dirs)`` (every rank calls both).

:class:`TorchBackend` is plain PyTorch (gradients all-reduced once per step, in buckets, when
there are several ranks, ``clip_grad_norm_``, the optimiser and the scheduler). Its weights
are fp32 whatever ``resources.precision`` says: bf16 and fp16 are the precision of the
computation (``torch.autocast``), so that AdamW's small updates are not rounded away (a bf16
weight of 1.0 moves only by steps of 2⁻⁸..2⁻⁷; an update of 5e-6 leaves it unchanged); fp16
adds a dynamic loss scale (``torch.amp.GradScaler``). DeepSpeed ZeRO-2/3 is
:class:`scoreops.training.deepspeed.DeepSpeedBackend`; :func:`make_backend` picks by
``spec.resources.deepspeed``. Neither module imports torch or deepspeed at import time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from scoreops.api.common import TORCH_DTYPE

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

    def autocast(self) -> contextlib.AbstractContextManager[Any]: ...

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


PRECISIONS = tuple(TORCH_DTYPE)


def compute_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a ``resources.precision`` (``None`` for fp32: no autocast)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"resources.precision must be one of {', '.join(PRECISIONS)}, "
                         f"got {precision!r}")
    return None if precision == "fp32" else getattr(torch, TORCH_DTYPE[precision])


class TorchBackend:
    """Plain PyTorch: ``loss.backward()``, one bucketed gradient all-reduce per step across
    ranks, ``clip_grad_norm_``, ``optimizer.step()``, ``scheduler.step()``.

    ``precision`` (``resources.precision``) is the precision of the forward passes, which run
    under :meth:`autocast`; the parameters, their gradients and the optimiser state stay in
    the policy's own dtype (fp32: the trainer loads the policy in fp32 for this backend).
    fp16 scales the loss (``torch.amp.GradScaler``): gradients are unscaled before clipping,
    and a step whose gradients overflowed is skipped and the scale lowered.

    Checkpoint files (rank 0): ``optimizer.pt``, ``scheduler.pt`` (``scaler.pt`` with fp16);
    weights are loaded from the checkpoint's ``model.safetensors``. Every rank loads the
    optimiser state straight onto its own device.
    """

    kind = "torch"
    fused_head: bool | None = None
    aligned_micro_batches = False

    def __init__(self, policy: torch.nn.Module, optimizer: Any, scheduler: Any, *,
                 max_grad_norm: float, device: torch.device, rank: int = 0,
                 world_size: int = 1, precision: str = "fp32",
                 bucket_bytes: int | None = None) -> None:
        import torch

        self.module = policy
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.max_grad_norm = max_grad_norm
        self.device = torch.device(device)
        self.rank = rank
        self.world_size = world_size
        self.precision = precision
        self.dtype = compute_dtype(precision)
        self.bucket_bytes = bucket_bytes
        low = [n for n, p in policy.named_parameters()
               if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
        if self.dtype is not None and low:
            raise ValueError(
                f"resources.precision {precision} with the torch backend keeps fp32 master "
                f"weights, but {len(low)} trainable parameters are {policy.dtype} "
                f"(e.g. {low[0]}); load the policy in float32")
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        if world_size > 1:
            from scoreops.training.distributed import wrap_ddp

            wrap_ddp(policy, device)  # every rank starts from rank 0's weights

    @property
    def forward_module(self) -> torch.nn.Module:
        return self.module

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(self.device.type, dtype=self.dtype)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()

    def step(self) -> float:
        import warnings

        import torch

        if self.world_size > 1:
            from scoreops.training.distributed import DEFAULT_BUCKET_BYTES, all_reduce_gradients

            all_reduce_gradients(self.module, bucket_bytes=self.bucket_bytes or
                                 DEFAULT_BUCKET_BYTES)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when a gradient overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        with warnings.catch_warnings():
            # a step the loss scaler skipped is still a step of the schedule
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
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
        if self.scaler is not None:
            torch.save(self.scaler.state_dict(), directory / "scaler.pt")

    def load_state(self, directories: Sequence[Path]) -> None:
        import torch
        from safetensors.torch import load_file

        local = directories[0]
        weights = load_file(str(local / "model.safetensors"))
        missing, unexpected = self.module.load_state_dict(weights, strict=False)
        if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
            raise RuntimeError(f"checkpoint {local} does not fit the model: missing={missing} "
                               f"unexpected={unexpected}")
        # rank 0 wrote the state from its own device (cuda:0): every rank maps it to its own
        self.optimizer.load_state_dict(torch.load(local / "optimizer.pt", weights_only=False,
                                                  map_location=self.device))
        self.scheduler.load_state_dict(torch.load(local / "scheduler.pt", weights_only=False,
                                                  map_location="cpu"))
        if self.scaler is not None and (local / "scaler.pt").is_file():
            self.scaler.load_state_dict(torch.load(local / "scaler.pt", weights_only=False,
                                                   map_location="cpu"))

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
        import torch

        on_cpu = torch.device(device).type == "cpu"
        return TorchBackend(policy, optimizer, scheduler, max_grad_norm=spec.optim.max_grad_norm,
                            device=device, rank=rank, world_size=world_size,
                            precision="fp32" if on_cpu else spec.resources.precision)
    from scoreops.training.deepspeed import DeepSpeedBackend

    return DeepSpeedBackend(policy, optimizer, scheduler, spec, device=device, rank=rank,
                            world_size=world_size, local_rank=local_rank)
