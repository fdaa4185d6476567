"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a directory artifact ``<output>/checkpoints/step-NNNNNNNN/`` holding the
full policy weights (``model.safetensors``, consolidated on rank 0 whatever the backend), the
RNG states, ``trainer_state.json`` (step, stage, spec digest), ``backend.json`` (which
optimiser backend wrote it) and the backend's resumable state
(:meth:`scoreops.training.backend.OptimizerBackend.save_state`): ``optimizer.pt`` and
``scheduler.pt`` for plain torch; DeepSpeed's own checkpoint under ``deepspeed/`` for ZeRO-2/3,
where each rank but 0 stores its partition as a nested artifact ``rank-NNNNN/``.

:func:`scoreops.storage.save_artifact` writes the checkpoint's ``MANIFEST.json`` last, after
every rank's partition is complete, so a checkpoint interrupted half-way is never listed and
never loaded: resume always starts from the newest *complete* one.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from scoreops.training.backend import OptimizerBackend

PREFIX = "checkpoints"
BACKEND_FILE = "backend.json"


def spec_digest(spec_wire: dict[str, Any]) -> str:
    """A digest of the parts of a spec that change what training computes.

    Output location, checkpoint cadence, evaluation and scheduling settings may change between
    restarts; everything else must match for a checkpoint to be resumed.
    """
    relevant = {k: v for k, v in spec_wire.items()
                if k not in ("output", "checkpoint", "evaluation", "resources", "stallTimeout")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def step_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass
class TrainerState:
    step: int
    stage: str
    digest: str
    metrics_lines: int

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def save_checkpoint(
    output: str,
    *,
    backend: OptimizerBackend,
    state: TrainerState,
    keep: int,
    rank: int = 0,
) -> str:
    """Write a checkpoint of ``state.step`` and prune all but the newest ``keep`` complete ones.

    Every rank calls it (the DeepSpeed backend gathers weights and writes partitions on all of
    them); rank 0 writes the checkpoint itself. Returns the checkpoint's URI on every rank.
    Raises :class:`scoreops.storage.StorageError` (or OSError) on every rank when some rank
    could not write its part; earlier checkpoints are untouched in that case.
    """
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from scoreops import storage

    uri = storage.join(output, PREFIX, step_name(state.step))
    with tempfile.TemporaryDirectory(prefix="scoreops-ckpt-") as tmp:
        d = Path(tmp)

        def write_parts() -> None:
            weights = backend.consolidated_state_dict()
            backend.save_state(d)
            if rank != 0:
                if any(d.iterdir()):  # this rank's partition, complete before the checkpoint
                    storage.save_artifact(d, storage.join(uri, rank_dir(rank)),
                                          metadata={"step": state.step, "rank": rank})
                return
            if weights is None:
                raise RuntimeError("the backend gave rank 0 no weights")
            flat = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
            save_file(_untie(flat), d / "model.safetensors")
            torch.save({"torch": torch.get_rng_state(), "python": random.getstate(),
                        "numpy": np.random.get_state()}, d / "rng.pt")
            (d / "trainer_state.json").write_text(state.to_json())
            (d / BACKEND_FILE).write_text(json.dumps(backend.describe(), indent=2))

        def write_manifest() -> None:
            if rank == 0:  # last: the checkpoint counts once every part is complete
                storage.save_artifact(d, uri, metadata={"step": state.step, "stage": state.stage})
                for old in list_checkpoints(output)[:-keep]:
                    storage.delete_prefix(old)

        _on_all_ranks(write_parts, rank)
        _on_all_ranks(write_manifest, rank)
    return uri


def _on_all_ranks(fn: Callable[[], None], rank: int) -> None:
    """Run ``fn``; when several ranks run, every rank raises if any rank's ``fn`` failed."""
    import torch.distributed as dist

    from scoreops import storage
    from scoreops.training.distributed import is_initialized

    if not is_initialized() or dist.get_world_size() == 1:
        fn()
        return

    error: Exception | None = None
    try:
        fn()
    except Exception as exc:
        error = exc
    errors: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, f"rank {rank}: {error}" if error else None)
    failed = [e for e in errors if e]
    if failed:
        raise storage.StorageError("; ".join(failed)) from error


def rank_dir(rank: int) -> str:
    """Name of a rank's nested artifact inside a checkpoint (ranks other than 0)."""
    return f"rank-{rank:05d}"


def _untie(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied embeddings): clone duplicates."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in weights.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.setdefault(ptr, k)
    return out


def list_checkpoints(output: str) -> list[str]:
    """URIs of the complete checkpoints, oldest first."""
    from scoreops import storage

    prefix = storage.join(output, PREFIX)
    return [u for u in storage.list_artifacts(prefix)
            if u.rstrip("/").rsplit("/", 1)[-1].startswith("step-")]


class CheckpointMismatch(RuntimeError):
    """The checkpoint was written by another optimiser backend than the one configured."""


def load_checkpoint(uri: str, *, backend: OptimizerBackend, rank: int = 0) -> TrainerState:
    """Restore weights, optimiser, scheduler and RNG from a complete checkpoint (every rank).

    Raises :class:`CheckpointMismatch` when ``backend.json`` names another backend than
    ``backend`` (e.g. written with ``resources.deepspeed: zero2``, resumed with ``none``).
    """
    import numpy as np
    import torch

    from scoreops import storage

    local = storage.cached_artifact(uri)
    written = {"kind": "torch"}
    if (local / BACKEND_FILE).is_file():
        written = json.loads((local / BACKEND_FILE).read_text())
    now = backend.describe()
    if written.get("kind") != now["kind"]:
        raise CheckpointMismatch(
            f"checkpoint {uri} holds optimiser state of backend {written.get('kind')!r} "
            f"(resources.deepspeed), this run uses {now['kind']!r}")
    if written.get("world_size", now.get("world_size")) != now.get("world_size"):
        raise CheckpointMismatch(
            f"checkpoint {uri} holds DeepSpeed state of {written['world_size']} ranks; this run "
            f"has {now['world_size']} (resources.workers × gpusPerWorker must match to resume)")
    dirs = [local]
    if rank != 0:
        shard = storage.join(uri, rank_dir(rank))
        if storage.is_complete(shard):
            dirs.append(storage.cached_artifact(shard))
    backend.load_state(dirs)
    rng = torch.load(local / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    data = json.loads((local / "trainer_state.json").read_text())
    return TrainerState(**data)
