"""DeepSpeed ZeRO-2 / ZeRO-3 for the policy (deepspeed imported lazily).

``spec.resources.deepspeed`` picks ``jobs/deepspeed/zero2.json`` or ``zero3.json`` (shipped in
the trainer image at ``$SCOREOPS_JOBS_DIR``); :func:`deepspeed_config` fills the values a
ScoreRun decides (precision, clipping, micro-batch, accumulation) and :func:`initialize` wraps
the policy, the client optimiser (torch AdamW) and the scheduler in a DeepSpeed engine.
:class:`DeepSpeedBackend` is the :class:`scoreops.training.backend.OptimizerBackend` around it.

Gradient accumulation: the number of micro-batches in a step is data-dependent (MGRPO's layer
2, STaR's kept solutions), so the configuration sets ``managed_gradient_accumulation: false``
with ``gradient_accumulation_steps: 1``: ``engine.backward(loss)`` only accumulates (each
micro-batch's loss already carries its share of the step, as with plain torch, and DeepSpeed
does not rescale it), and every ``engine.step()`` is the boundary that reduces, clips
(``gradient_clipping`` = ``optim.maxGradNorm``), steps the optimiser and the scheduler. ZeRO-2/3
reduce gradient partitions inside each backward, so all ranks run the same number of backward
passes per step (the backend sets ``aligned_micro_batches``; ranks with fewer rows pad with
zero-weight micro-batches).

ZeRO-3 partitions the parameters themselves: the rollout engine then holds its own full copy
(the loop loads one), refreshed by :meth:`DeepSpeedBackend.sync_rollout` one decoder layer at
a time under ``deepspeed.zero.GatheredParameters`` (:func:`sync_groups`: the groups come from
the model's structure, so that every member of a parameter the engine fuses arrives at once); checkpoints and the final model take the weights from
``engine._zero3_consolidated_16bit_state_dict()`` (gathered layer by layer on rank 0); the
log-probabilities go through the model's top-level forward (``fused_head=False``).

CPU: with no GPU the engine runs on DeepSpeed's ``cpu`` accelerator over gloo, fp32 only. That
is a test accelerator (the integration tests use it), not a way to train fast.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DeepSpeedBackend", "config_path", "deepspeed_config", "initialize", "jobs_dir",
           "sync_groups"]

TAG = "zero"
"""DeepSpeed checkpoint tag inside a scoreops checkpoint's ``deepspeed/`` folder."""


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
    with dynamic loss scaling, fp32 → neither). Accumulation is always caller-owned
    (``managed_gradient_accumulation: false``, ``gradient_accumulation_steps: 1``; see the
    module docstring): a file that says otherwise is overridden.
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
    cfg["gradient_accumulation_steps"] = 1
    cfg["managed_gradient_accumulation"] = False
    return cfg


def _disable_shm_comm() -> None:
    """Do not JIT-compile DeepSpeed's shared-memory all-reduce kernel on the CPU accelerator
    (it needs a C++ toolchain and ~45 s; gloo does the collectives)."""
    import deepspeed.ops

    with contextlib.suppress(Exception):
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def initialize(policy: Any, optimizer: Any, scheduler: Any, spec: Any,
               device: Any = None) -> Any:
    """``deepspeed.initialize`` on the policy with the spec's configuration; returns the
    engine (``engine.backward(loss)``, ``engine.step()`` replace backward / optimiser step).

    Needs an initialised process group (:mod:`scoreops.training.distributed`; one process
    makes a group of one). On a CPU ``device`` DeepSpeed's ``cpu`` accelerator is selected and
    the precision must be fp32.
    """
    import torch

    cfg = deepspeed_config(spec)
    if cfg is None:
        raise ValueError("resources.deepspeed is none")
    on_cpu = device is not None and torch.device(device).type == "cpu"
    if on_cpu:
        if spec.resources.precision != "fp32":
            raise ValueError(f"resources.deepspeed {spec.resources.deepspeed} on CPU needs "
                             f"resources.precision fp32, got {spec.resources.precision}")
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed picks its device
    elif not torch.cuda.is_available():
        raise RuntimeError("resources.deepspeed with resources.gpusPerWorker >= 1 needs CUDA")
    import deepspeed

    if on_cpu:
        _disable_shm_comm()
    engine, _, _, _ = deepspeed.initialize(model=policy, optimizer=optimizer,
                                           lr_scheduler=scheduler, config=cfg,
                                           dist_init_required=False)
    return engine


def _block_list(module: Any) -> list[tuple[str, Any]]:
    """The model's repeated blocks (a decoder's layers), found from its structure: the
    ``nn.ModuleList`` holding the most parameters among those whose entries are all of one
    class (``model.layers`` of a Llama, ``transformer.h`` of a GPT-2, whatever the names inside
    a block). ``[(full name, block)]``, empty when the model has no such list."""
    import torch

    best: list[tuple[str, Any]] = []
    best_size = 0
    for name, mod in module.named_modules():
        if not isinstance(mod, torch.nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(child) for child in mod}) != 1:
            continue
        # a ZeRO-3 parameter is empty outside a gather; ds_numel is its full size
        size = sum(getattr(p, "ds_numel", None) or p.numel() for p in mod.parameters())
        if size > best_size:
            prefix = f"{name}." if name else ""
            best, best_size = [(f"{prefix}{i}", child) for i, child in enumerate(mod)], size
    return best


def sync_groups(module: Any) -> list[list[tuple[str, Any]]]:
    """The parameters of ``module`` in the groups a rollout engine receives them in: one group
    per repeated block (see :func:`_block_list`), then one with everything outside the blocks
    (embeddings, final norm, head). ``[[(full name, parameter), ...], ...]``; a tied parameter
    appears under each of its names (``model.embed_tokens.weight`` and ``lm_head.weight``), all
    in the group of its first name.

    Why whole blocks: an inference engine fuses parameters of one block (vLLM's ``qkv_proj``
    takes ``q_proj``, ``k_proj`` and ``v_proj``; ``gate_up_proj`` takes ``gate_proj`` and
    ``up_proj``) and finishes loading a fused parameter with the members it was given: a group
    must carry every member. The boundary is the model's own structure, not a name pattern,
    so it holds for any names inside a block. Why every name of a tied parameter: each name
    is a layer of the engine that prepares its own copy of the weight (vLLM on CPU packs the
    head's weight for its matmul), and a layer not named in a load keeps its old copy. A
    model without a list of blocks is one group.
    """
    blocks = _block_list(module)
    prefixes = [f"{name}." for name, _ in blocks]
    groups: list[list[tuple[str, Any]]] = [[] for _ in range(len(blocks) + 1)]
    home: dict[int, int] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) not in home:
            home[id(p)] = next((i for i, pre in enumerate(prefixes) if name.startswith(pre)),
                               len(blocks))
        groups[home[id(p)]].append((name, p))
    return [g for g in groups if g]


class _PartialModule:
    """What ``engine.sync_weights`` needs of a model (``state_dict()``), for some tensors."""

    def __init__(self, named: list[tuple[str, Any]]) -> None:
        self._named = dict(named)

    def state_dict(self) -> dict[str, Any]:
        return dict(self._named)


class DeepSpeedBackend:
    """:class:`scoreops.training.backend.OptimizerBackend` on a DeepSpeed ZeRO-2/3 engine.

    Checkpoint files: every rank's ``engine.save_checkpoint`` output under ``deepspeed/`` (tag
    ``zero``): the partitioned fp32 weights and optimiser state, the scheduler and DeepSpeed's
    ``zero_to_fp32.py``; :func:`scoreops.training.checkpoint.save_checkpoint` stores rank 0's
    with the checkpoint and each other rank's as a ``rank-NNNNN`` artifact inside it. Resuming
    needs the same number of ranks (DeepSpeed cannot re-partition the optimiser state).
    """

    aligned_micro_batches = True

    def __init__(self, policy: Any, optimizer: Any, scheduler: Any, spec: Any, *,
                 device: Any, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        import torch.distributed as dist

        self.kind = spec.resources.deepspeed
        self.stage = int(self.kind[-1])
        self.module = policy
        self.scheduler = scheduler
        self.rank = rank
        self.world_size = world_size
        self.fused_head: bool | None = False if self.stage == 3 else None
        # DeepSpeed reads LOCAL_RANK, which torchrun sets but a one-process run or a PyTorchJob
        # pod with one process per pod does not
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
        if not dist.is_initialized():
            # one process: a process group of one, in memory. It stays for the life of the
            # process: DeepSpeed caches its groups module-wide, so a later engine in the same
            # process (a resumed run in a test) must find the same group
            from scoreops.training.distributed import backend_for

            dist.init_process_group(backend_for(device), store=dist.HashStore(), rank=0,
                                    world_size=1)
        self.engine = initialize(policy, optimizer, scheduler, spec, device)

    @property
    def forward_module(self) -> Any:
        return self.engine

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Nothing: the engine holds the module in the compute precision (bf16/fp16) and the
        fp32 master weights in its optimiser."""
        return contextlib.nullcontext()

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    def backward(self, loss: Any) -> None:
        self.engine.backward(loss)

    def step(self) -> float:
        self.engine.step()  # the accumulation boundary: reduce, clip, optimiser, scheduler
        norm = self.engine.get_global_grad_norm()
        return float("nan") if norm is None else float(norm)

    @contextlib.contextmanager
    def gathered_state_dict(self) -> Iterator[dict[str, Any]]:
        if self.stage < 3:
            yield self.module.state_dict()
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.module.parameters()),
                                               modifier_rank=None):
            yield self.module.state_dict()

    def consolidated_state_dict(self) -> dict[str, Any] | None:
        if self.stage == 3:  # a collective: every rank calls it, rank 0 gets the weights
            return self.engine._zero3_consolidated_16bit_state_dict()
        return self.module.state_dict() if self.rank == 0 else None

    def sync_rollout(self, engine: Any) -> None:
        """Push the weights into the rollout engine. Under ZeRO-3 one group of
        :func:`sync_groups` is gathered at a time (a decoder layer, then the embeddings, final
        norm and head: never a second whole copy of the model on a GPU) and handed to the
        engine in one call (its ``load_weights``, else ``sync_weights`` of that group), so a
        fused parameter of the engine receives all its members together."""
        if self.stage < 3:
            engine.sync_weights(self.module)
            return
        import deepspeed

        load = getattr(engine, "load_weights", None)
        for named in sync_groups(self.module):
            unique = list({id(p): p for _, p in named}.values())
            with deepspeed.zero.GatheredParameters(unique, modifier_rank=None):
                tensors = [(n, p.data) for n, p in named]
                if load is not None:
                    load(tensors)
                else:  # an engine that only takes a model
                    engine.sync_weights(_PartialModule(tensors))

    def save_state(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag=TAG, save_latest=False)

    def load_state(self, directories: Sequence[Path]) -> None:
        """Load from the union of ``directories``' ``deepspeed/`` folders (rank 0's files in the
        checkpoint, this rank's in its ``rank-NNNNN`` artifact)."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="scoreops-ds-") as tmp:
            root = Path(tmp)
            for d in directories:
                src = d / "deepspeed"
                for f in src.rglob("*"):
                    if f.is_file():
                        dst = root / f.relative_to(src)
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        if not dst.exists():
                            dst.symlink_to(f.resolve())
            try:
                path, _ = self.engine.load_checkpoint(
                    str(root), tag=TAG, load_optimizer_states=True,
                    load_lr_scheduler_states=True)
            except Exception as exc:  # e.g. written by a different number of ranks
                raise RuntimeError(f"DeepSpeed could not load its state: {exc}") from exc
        if path is None:
            raise RuntimeError("the checkpoint holds no DeepSpeed state for this engine")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "zero_stage": self.stage, "world_size": self.world_size}

    def close(self) -> None:
        """Release the engine's hooks and buffers (the process group stays, see above)."""
        self.engine.destroy()
