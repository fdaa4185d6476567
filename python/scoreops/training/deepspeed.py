"""DeepSpeed ZeRO-2 / ZeRO-3 for the policy (GPU only; deepspeed imported lazily).

``spec.resources.deepspeed`` picks ``jobs/deepspeed/zero2.json`` or ``zero3.json`` (shipped in
the trainer image at ``$SCOREOPS_JOBS_DIR``); :func:`deepspeed_config` fills the values a
ScoreRun decides (precision, clipping, micro-batch) and :func:`initialize` wraps the policy,
optimiser and scheduler in a DeepSpeed engine. The configuration logic is pure and tested on
CPU; :func:`initialize` needs CUDA and the ``deepspeed`` package.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["config_path", "deepspeed_config", "initialize", "jobs_dir"]


def jobs_dir() -> Path:
    """``$SCOREOPS_JOBS_DIR`` (the image), else the ``jobs/`` folder of a source checkout."""
    env = os.environ.get("SCOREOPS_JOBS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "jobs"


def config_path(stage: str) -> Path:
    """The JSON file of a ZeRO stage name (``zero2`` / ``zero3``)."""
    if stage not in ("zero2", "zero3"):
        raise ValueError(f"resources.deepspeed must be zero2 or zero3 here, got {stage!r}")
    path = jobs_dir() / "deepspeed" / f"{stage}.json"
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed config {path} not found (set SCOREOPS_JOBS_DIR)")
    return path


def deepspeed_config(spec: Any) -> dict[str, Any] | None:
    """The DeepSpeed configuration for a ScoreRunSpec, or ``None`` for ``deepspeed: none``.

    ``"auto"`` values of the file are resolved from the spec: ``gradient_clipping`` from
    ``optim.maxGradNorm``, ``train_micro_batch_size_per_gpu`` from ``optim.microBatchSize``;
    precision from ``resources.precision`` (bf16 → the ``bf16`` block, fp16 → an ``fp16`` block
    with dynamic loss scaling, fp32 → neither).
    """
    stage = spec.resources.deepspeed
    if stage == "none":
        return None
    cfg: dict[str, Any] = json.loads(config_path(stage).read_text())
    cfg = copy.deepcopy(cfg)
    if cfg.get("gradient_clipping") == "auto":
        cfg["gradient_clipping"] = spec.optim.max_grad_norm
    if cfg.get("train_micro_batch_size_per_gpu") == "auto":
        cfg["train_micro_batch_size_per_gpu"] = spec.optim.micro_batch_size
    precision = spec.resources.precision
    cfg["bf16"] = {"enabled": precision == "bf16"}
    if precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    else:
        cfg.pop("fp16", None)
    return cfg


def initialize(policy: Any, optimizer: Any, scheduler: Any, spec: Any) -> Any:
    """``deepspeed.initialize`` on the policy with the spec's configuration; returns the
    engine (``engine.backward(loss)``, ``engine.step()`` replace backward / optimiser step).
    Needs CUDA and an initialised process group (see :mod:`scoreops.training.distributed`)."""
    import deepspeed
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("resources.deepspeed needs CUDA GPUs")
    cfg = deepspeed_config(spec)
    if cfg is None:
        raise ValueError("resources.deepspeed is none")
    engine, _, _, _ = deepspeed.initialize(model=policy, optimizer=optimizer,
                                           lr_scheduler=scheduler, config=cfg)
    return engine
