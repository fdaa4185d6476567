"""What a training step works with, built once per run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from scoreops.api.scorerun import ScoreRunSpec
    from scoreops.data import Item
    from scoreops.rewards import Verifier
    from scoreops.rollout import RolloutEngine
    from scoreops.training.backend import OptimizerBackend


@dataclass(frozen=True)
class DistEnv:
    """The process group as PyTorchJob / torchrun describe it (absent: one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environ(cls) -> DistEnv:
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass
class StepContext:
    """The live objects of a run. Algorithms read from it; the loop owns it."""

    spec: ScoreRunSpec
    policy: torch.nn.Module
    reference: torch.nn.Module | None
    tokenizer: Any
    engine: RolloutEngine
    verifier: Verifier
    train_items: list[Item]
    device: torch.device
    dist: DistEnv = field(default_factory=DistEnv)
    backend: OptimizerBackend | None = None  # set by the loop once the optimiser exists
    rollout_dtype: torch.dtype | None = None
    """The compute precision generation runs in (the policy's own dtype when ``None``)."""

    @property
    def trainable(self) -> torch.nn.Module:
        """The module to run training forward passes through (the DeepSpeed engine under
        DeepSpeed, else the policy)."""
        return self.backend.forward_module if self.backend is not None else self.policy

    @property
    def fused_head(self) -> bool | None:
        """``fused_head`` for :func:`scoreops.rollout.sequence_token_logprobs` on
        :attr:`trainable`."""
        return self.backend.fused_head if self.backend is not None else None

    def step_seed(self, step: int, salt: int = 0) -> int:
        """Sampling seed of a step: a pure function of (run seed, step, rank), so a resumed run
        draws exactly what the uninterrupted run drew."""
        return (self.spec.seed * 1_000_003 + step * 7919 + self.dist.rank * 104_729 + salt) % (
            2**62
        )

    def prompts_for_step(self, step: int) -> list[Item]:
        """This rank's prompts of a step: a seeded permutation per epoch, sliced by step.

        A pure function of the step, so resuming needs only the step number.
        """
        import random

        per_step = self.spec.optim.batch_size
        n = len(self.train_items)
        start = step * per_step
        out: list[Item] = []
        cache: dict[int, list[int]] = {}
        for pos in range(start, start + per_step):
            epoch, offset = divmod(pos, n)
            if epoch not in cache:
                order = list(range(n))
                random.Random(self.spec.dataset.seed * 9973 + epoch).shuffle(order)
                cache[epoch] = order
            out.append(self.train_items[cache[epoch][offset]])
        if self.dist.distributed:
            return out[self.dist.rank :: self.dist.world_size]
        return out
