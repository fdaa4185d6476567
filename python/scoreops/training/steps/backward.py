"""The backward half of a training step: loss terms over micro-batches, through the backend.

Every step calls :func:`backward_micro_batches` (through ``ctx.backend``: plain torch or
DeepSpeed, never ``loss.backward()`` directly) with its :class:`LossTerm` s; the gradients
equal those of the sum of the terms' global-batch means, in one process or many.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from scoreops.algorithms.importance import TruncatedImportance
    from scoreops.rollout import Episode, TrainingBatch
    from scoreops.training.context import StepContext

__all__ = ["LossFn", "LossTerm", "MicroLoss", "accumulate", "backward_micro_batches",
           "importance_correction", "micro_batch_rows", "policy_loss"]


def micro_batch_rows(ctx: StepContext, group_size: int) -> int:
    """Rows per forward/backward: ``optim.microBatchSize`` rounded to whole groups, because
    the baselines are computed inside a group of samples of one prompt."""
    size = ctx.spec.optim.micro_batch_size
    return max(group_size, (size // group_size) * group_size)


LossFn = Callable[["slice", "TrainingBatch", "torch.Tensor", "torch.Tensor"],
                  tuple["torch.Tensor", dict[str, float]]]
"""``loss_fn(rows, micro_batch, logp, ref_logp)`` → the micro-batch's mean loss, statistics.
It may return a third element, ``{name: tensor}``: the loss split into parts that sum to it
(e.g. by turn), whose gradient norms :func:`backward_micro_batches` can log."""
MicroLoss = Callable[["slice", "TrainingBatch"], tuple["torch.Tensor", dict[str, float]]]
"""``loss(rows, micro_batch)`` → the micro-batch's mean loss and statistics (does its own
forward passes through ``ctx.trainable``)."""


@dataclass
class LossTerm:
    """One term of a step's loss, the mean over the rows of ``batch`` (over all ranks).

    ``batch`` is ``None`` when this rank has no rows of the term this step (e.g. no MGRPO
    layer-2 group survived here); the term must still be passed, so that every rank agrees on
    the terms of the step.
    """

    batch: TrainingBatch | None
    rows_per_micro: int
    loss: MicroLoss

    @property
    def rows(self) -> int:
        return 0 if self.batch is None else len(self.batch)

    @property
    def micro_batches(self) -> int:
        return -(-self.rows // max(1, self.rows_per_micro))


def policy_loss(ctx: StepContext, loss_fn: LossFn, *,
                temperature: float | None = None) -> MicroLoss:
    """A :data:`MicroLoss` from a loss on the policy's and the reference's token log-probs
    (the policy's own, detached, when the run has no reference model).

    Both are computed at ``temperature``, by default the rollout's sampling temperature (as
    TRL does): the logits are divided by it, so ``log π`` is the log-probability under the
    distribution the tokens were sampled from, and the policy gradient and the KL to the
    reference both refer to that distribution. Supervised losses (STaR) pass 1.0."""
    import torch

    from scoreops.rollout import sequence_token_logprobs

    temp = ctx.spec.rollout.temperature if temperature is None else temperature

    def compute(rows: slice, mb: TrainingBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logp = sequence_token_logprobs(ctx.trainable, mb, fused_head=ctx.fused_head,
                                       temperature=temp)
        if ctx.reference is not None:
            with torch.no_grad():
                ref = sequence_token_logprobs(ctx.reference, mb, temperature=temp)
        else:
            ref = logp.detach()
        return loss_fn(rows, mb, logp, ref)

    return compute


def importance_correction(ctx: StepContext, episodes: Sequence[Episode],
                          batch: TrainingBatch) -> TruncatedImportance | None:
    """The trainer/sampler importance correction of a step's ``batch`` (built from
    ``episodes``), or ``None`` when ``rollout.importanceSampling`` resolves to ``none`` (its
    ``auto`` is truncated for ``engine: vllm``). A step's loss multiplies its policy-gradient
    terms by ``weights(rows, logp, mask)`` of each micro-batch and logs ``stats.as_dict()``
    (see :mod:`scoreops.algorithms.importance`)."""
    ro = ctx.spec.rollout
    if ro.importance_mode() == "none":
        return None
    from scoreops.algorithms.importance import TruncatedImportance
    from scoreops.rollout.episodes import sampling_token_logprobs

    sampler = sampling_token_logprobs(episodes, batch)
    if sampler is None:
        raise RuntimeError("rollout.importanceSampling.mode is truncated, but the rollout engine "
                           "reported no sampling log-probs (the vllm engine does; set the mode "
                           "to none for another engine)")
    return TruncatedImportance(sampler.to(ctx.device), ro.importance_sampling.cap)


def backward_micro_batches(ctx: StepContext, terms: Sequence[LossTerm], *,
                           part_grad_norms: bool = False) -> dict[str, float]:
    """Backward every term over micro-batches; gradients and statistics equal those of the sum
    of the terms' global-batch means.

    A micro-batch's loss is weighted by ``rows · W / R``, with ``R`` the term's rows summed
    over the ``W`` ranks: the backend averages gradients over ranks, so a rank's weight is its
    share of the global rows (the single-process gradient of the same global batch), also when
    ranks keep different numbers of rows (MGRPO layer 2, STaR). Where the backend reduces
    inside every backward (DeepSpeed ZeRO-2/3) ranks with fewer micro-batches run zero-weight
    ones until all ran the same number (at least one).

    With ``part_grad_norms`` (one process, plain torch backend), a loss that returns its
    parts (see :data:`LossFn`) gets ``grad_norm_<part>`` logged: the L2 norm over all
    trainable parameters of that part's gradient summed over the step's micro-batches, with
    the same weights as the update, before clipping (the parts' gradients sum to the
    gradient the optimiser receives). Every part but the last costs one extra backward per
    micro-batch (``torch.autograd.grad``); the last is the accumulated gradient minus them.
    """
    from scoreops.rollout.vllm import release_generation_memory
    from scoreops.training.distributed import all_reduce_ints

    backend = ctx.backend
    if backend is None:
        raise RuntimeError("the step context has no optimiser backend")
    release_generation_memory(ctx.engine)  # a colocated vLLM engine frees its KV cache
    world = ctx.dist.world_size if ctx.dist.distributed else 1
    totals = all_reduce_ints([t.rows for t in terms])  # the values themselves in one process
    stats: dict[str, float] = {}
    done = 0
    probe = _PartGradients(ctx) if part_grad_norms and _part_norms_supported(ctx) else None
    for term, total in zip(terms, totals, strict=True):
        if term.batch is None or total == 0:
            continue
        for start in range(0, term.rows, term.rows_per_micro):
            rows = slice(start, min(term.rows, start + term.rows_per_micro))
            # once per micro-batch: the batch is built on the host, the policy may be on a GPU
            mb = term.batch.select(rows).to(ctx.device)
            with backend.autocast():
                loss, st, *rest = term.loss(rows, mb)
            share = len(mb) * world / total
            if probe is not None and rest:
                probe.add(rest[0], share)
            backend.backward(loss * share)
            done += 1
            for k, v in st.items():
                stats[k] = stats.get(k, 0.0) + v * share
    if backend.aligned_micro_batches:
        target = max(1, all_reduce_ints([done], op="max")[0])
        for _ in range(target - done):
            _idle_backward(ctx)
    if probe is not None:
        stats.update(probe.norms())
    return stats


def _part_norms_supported(ctx: StepContext) -> bool:
    from scoreops.training.backend import TorchBackend

    return isinstance(ctx.backend, TorchBackend) and not ctx.dist.distributed


class _PartGradients:
    """Per-part gradients of a step's loss (see ``part_grad_norms`` of
    :func:`backward_micro_batches`)."""

    def __init__(self, ctx: StepContext) -> None:
        self.params = [p for p in ctx.policy.parameters() if p.requires_grad]
        self.sums: dict[str, list[torch.Tensor | None]] = {}
        self.last: str | None = None

    def add(self, parts: dict[str, torch.Tensor], share: float) -> None:
        import torch

        names = list(parts)
        self.last = names[-1]
        for name in names[:-1]:
            grads = torch.autograd.grad(parts[name] * share, self.params, retain_graph=True,
                                        allow_unused=True)
            acc = self.sums.setdefault(name, [None] * len(self.params))
            for i, g in enumerate(grads):
                if g is not None:
                    acc[i] = g.detach().clone() if acc[i] is None else acc[i] + g

    def norms(self) -> dict[str, float]:
        if self.last is None:
            return {}
        out: dict[str, float] = {}
        sq_last = 0.0
        sq = dict.fromkeys(self.sums, 0.0)
        for i, p in enumerate(self.params):
            rest = p.grad.detach().clone() if p.grad is not None else None
            for name, acc in self.sums.items():
                g = acc[i]
                if g is None:
                    continue
                sq[name] += float(g.double().pow(2).sum())
                rest = -g if rest is None else rest - g
            if rest is not None:
                sq_last += float(rest.double().pow(2).sum())
        for name, v in sq.items():
            out[f"grad_norm_{name}"] = v ** 0.5
        out[f"grad_norm_{self.last}"] = sq_last ** 0.5
        return out


def _idle_backward(ctx: StepContext) -> None:
    """A zero-weight forward/backward through the whole policy: its collectives match a real
    micro-batch's on the other ranks, its gradient is zero."""
    import torch

    tok = ctx.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ids = torch.full((1, 2), int(pad), dtype=torch.long, device=ctx.device)
    assert ctx.backend is not None
    with ctx.backend.autocast():
        out = ctx.trainable(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        loss = out.logits.float().sum() * 0.0
    ctx.backend.backward(loss)


def accumulate(ctx: StepContext, batch: TrainingBatch, rows_per_micro: int,
               loss_fn: LossFn) -> dict[str, float]:
    """Backward one loss term ``loss_fn`` (see :data:`LossFn`) over micro-batches of
    ``batch``: :func:`backward_micro_batches` with :func:`policy_loss`."""
    return backward_micro_batches(ctx, [LossTerm(batch, rows_per_micro, policy_loss(ctx, loss_fn))])
