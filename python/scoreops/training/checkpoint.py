"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a directory artifact ``<output>/checkpoints/step-NNNNNNNN/`` holding the
policy weights (safetensors), the optimiser and scheduler states, the RNG states and
``trainer_state.json`` (step, stage, spec digest). :func:`scoreops.storage.save_artifact`
writes its ``MANIFEST.json`` last, so a checkpoint interrupted half-way is never listed and
never loaded: resume always starts from the newest *complete* one.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PREFIX = "checkpoints"


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
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    keep: int,
) -> str:
    """Write a checkpoint of ``state.step`` and prune all but the newest ``keep`` complete ones.

    Returns the checkpoint's URI. Raises :class:`scoreops.storage.StorageError` (or OSError)
    when it cannot be written; earlier checkpoints are untouched in that case.
    """
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from scoreops import storage

    uri = storage.join(output, PREFIX, step_name(state.step))
    with tempfile.TemporaryDirectory(prefix="scoreops-ckpt-") as tmp:
        d = Path(tmp)
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(_untie(weights), d / "model.safetensors")
        torch.save(optimizer.state_dict(), d / "optimizer.pt")
        torch.save(scheduler.state_dict(), d / "scheduler.pt")
        torch.save(
            {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()},
            d / "rng.pt",
        )
        (d / "trainer_state.json").write_text(state.to_json())
        storage.save_artifact(d, uri, metadata={"step": state.step, "stage": state.stage})
    for old in list_checkpoints(output)[:-keep]:
        storage.delete_prefix(old)
    return uri


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


def load_checkpoint(
    uri: str,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> TrainerState:
    """Restore weights, optimiser, scheduler and RNG from a complete checkpoint."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from scoreops import storage

    local = storage.cached_artifact(uri)
    weights = load_file(str(local / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
        raise RuntimeError(f"checkpoint {uri} does not fit the model: missing={missing} "
                           f"unexpected={unexpected}")
    optimizer.load_state_dict(torch.load(local / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(local / "scheduler.pt", weights_only=False))
    rng = torch.load(local / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    data = json.loads((local / "trainer_state.json").read_text())
    return TrainerState(**data)
