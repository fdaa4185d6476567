"""Data-parallel training across processes, from the environment torchrun / PyTorchJob set.

``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK`` (and ``LOCAL_RANK`` under torchrun)
describe the process group; :func:`init_process_group` joins it with **gloo** on CPU and
**NCCL** on GPU. Every rank holds the whole policy and takes ``batchSize / WORLD_SIZE`` of
each step's prompts (:meth:`StepContext.prompts_for_step`).

With the plain-torch optimiser backend (:class:`scoreops.training.backend.TorchBackend`)
synchronisation is explicit rather than through ``DistributedDataParallel``: the weights are
broadcast from rank 0 once (:func:`wrap_ddp`), and after each step's backward the gradients
are averaged over ranks in flattened buckets of about 50 MB (:func:`all_reduce_gradients`). DDP
reduces inside every ``backward()``, which requires every rank to run the same number of
backward passes; here the number of micro-batches can differ between ranks (MGRPO's layer 2
keeps a data-dependent number of groups, STaR a data-dependent number of solutions), so one
reduction per step after all of them is what is correct. (DeepSpeed ZeRO-2/3 does reduce in
every backward; there the ranks pad to the same number of micro-batches, see
:func:`scoreops.training.steps.backward.backward_micro_batches`.)

Averaged per-rank gradients equal the single-process gradient of the global batch because each
micro-batch's loss is weighted by its rows' share of the **global** rows of its loss term
(:func:`all_reduce_ints` sums the per-rank row counts), times the world size that the average
divides by again: a rank that kept more MGRPO layer-2 groups or STaR solutions weighs more.

A stop request (SIGTERM, Ctrl-C) seen by any rank stops all of them at the same step
(:func:`any_rank`), so no rank is left waiting in a collective.

Only rank 0 writes checkpoints, metrics and progress (:class:`scoreops.training.loop.Trainer`);
all ranks load the same checkpoint, the one rank 0 chose (:func:`broadcast_object`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_BUCKET_BYTES",
    "SUMMED_STATS",
    "all_reduce_gradients",
    "all_reduce_ints",
    "all_reduce_stats",
    "any_rank",
    "backend_for",
    "barrier",
    "broadcast_object",
    "destroy_process_group",
    "init_process_group",
    "is_initialized",
    "wrap_ddp",
]

T = TypeVar("T")

SUMMED_STATS = frozenset({"generated_tokens", "tokens", "kept", "layer2_groups",
                          "tokens_per_second"})
"""Statistics that are totals over the ranks (the rest are averaged)."""

DEFAULT_BUCKET_BYTES = 50 * 1024 * 1024
"""Gradient bytes per all-reduce (a bucket's flat copy is the only extra memory)."""


def backend_for(device: torch.device | str) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    kind = device if isinstance(device, str) else device.type
    return "nccl" if str(kind).startswith("cuda") else "gloo"


def is_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init_process_group(device: torch.device, *, timeout_s: float = 1800.0) -> None:
    """Join the process group described by the environment (idempotent).

    Raises ``ValueError`` naming the missing variable when WORLD_SIZE > 1 but the rendezvous
    address is not set.
    """
    import datetime

    import torch
    import torch.distributed as dist

    if is_initialized():
        return
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
        if not os.environ.get(name):
            raise ValueError(f"distributed training needs the environment variable {name} "
                             "(set by torchrun and by the PyTorchJob operator)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend_for(device),
        init_method="env://",
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=datetime.timedelta(seconds=timeout_s),
        **({"device_id": device} if device.type == "cuda" else {}),
    )


def destroy_process_group() -> None:
    import torch.distributed as dist

    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if is_initialized():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` as rank ``src`` has it, on every rank (picklable objects)."""
    import torch.distributed as dist

    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Prepare ``module`` for data-parallel training: join the process group if needed and
    make every rank start from rank 0's parameters and buffers. Returns ``module`` itself
    (gradients are synchronised by :func:`all_reduce_gradients`, see the module docstring)."""
    import torch
    import torch.distributed as dist

    init_process_group(device)
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)
    return module


def gradient_buckets(params: list[torch.nn.Parameter],
                     bucket_bytes: int) -> list[list[torch.nn.Parameter]]:
    """``params`` in order, cut into runs of one dtype and device whose gradients hold at most
    ``bucket_bytes`` (a larger gradient is a bucket of its own)."""
    buckets: list[list[torch.nn.Parameter]] = []
    size = 0
    for p in params:
        g = p.grad
        assert g is not None
        nbytes = g.numel() * g.element_size()
        last = buckets[-1][-1].grad if buckets else None
        if (not buckets or size + nbytes > bucket_bytes or last is None
                or last.dtype != g.dtype or last.device != g.device):
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += nbytes
    return buckets


def all_reduce_gradients(module: torch.nn.Module, *,
                         bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
    """Average the gradients of ``module``'s trainable parameters over all ranks.

    A parameter without a gradient on a rank (nothing was kept there this step) counts as a
    zero gradient, so every rank issues the same collectives. Gradients are reduced in buckets
    of at most ``bucket_bytes`` (:func:`gradient_buckets`): one flat buffer per bucket, so the
    extra memory is one bucket, not a copy of every gradient.
    """
    import torch
    import torch.distributed as dist

    if not is_initialized():
        return
    world = dist.get_world_size()
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in gradient_buckets(params, bucket_bytes):
        if len(bucket) == 1:
            grad = bucket[0].grad
            assert grad is not None
            flat = grad if grad.is_contiguous() else grad.contiguous()
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(world)
            if flat is not grad:
                grad.copy_(flat)
            continue
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])  # type: ignore[union-attr]
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        offset = 0
        for p in bucket:
            g = p.grad
            assert g is not None
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n


def all_reduce_stats(stats: Mapping[str, float]) -> dict[str, float]:
    """Step statistics over all ranks: totals for :data:`SUMMED_STATS`, means otherwise.

    A key only some ranks report (MGRPO's layer-2 statistics when no group survived on a
    rank) counts as 0 on the others.
    """
    import torch
    import torch.distributed as dist

    if not is_initialized():
        return dict(stats)
    keys = sorted(stats)
    gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, keys)
    if any(k != keys for k in gathered):
        union = sorted(set().union(*map(set, gathered)))
        # a rank without a statistic (e.g. no layer-2 group survived there) contributes 0
        keys = union
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    values = torch.tensor([float(stats.get(k, 0.0)) for k in keys], dtype=torch.float64,
                          device=device)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    world = dist.get_world_size()
    return {k: float(v) if k in SUMMED_STATS else float(v) / world
            for k, v in zip(keys, values.tolist(), strict=True)}


def all_reduce_ints(values: list[int], op: str = "sum") -> list[int]:
    """``values`` reduced element-wise over all ranks (``op``: ``sum`` or ``max``); the values
    themselves in one process."""
    import torch
    import torch.distributed as dist

    if not is_initialized() or not values:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return [int(v) for v in t.tolist()]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (a collective: all ranks call
    it at the same point)."""
    return bool(all_reduce_ints([int(flag)], op="max")[0])
