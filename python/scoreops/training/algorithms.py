"""One optimiser step of each algorithm: rollouts → rewards → loss → backward.

Each algorithm is a class with ``stage(step)`` and ``backward(ctx, step, prompts)``; the loop
does everything else (zeroing, the optimiser backend's step, checkpoints). ``backward``
accumulates gradients over micro-batches with :func:`backward_micro_batches` (through
``ctx.backend``: plain torch or DeepSpeed, never ``loss.backward()`` directly) and returns
scalar statistics of the step (``reward_t1``, ``reward_t2``, ``loss``, ``kl_turn1``, ...).
New algorithms register with :func:`register`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from scoreops.data import Item
    from scoreops.rollout import Episode, TrainingBatch
    from scoreops.training.context import StepContext

MAX_SEQUENCE_TOKENS = 8192


class StepAlgorithm(Protocol):
    name: str

    def stage(self, step: int) -> str: ...

    def backward(self, ctx: StepContext, step: int, prompts: list[Item]) -> dict[str, float]: ...


_REGISTRY: dict[str, Callable[[Any], StepAlgorithm]] = {}


def register(name: str) -> Callable[[Callable[[Any], StepAlgorithm]], Callable[[Any], StepAlgorithm]]:
    def deco(factory: Callable[[Any], StepAlgorithm]) -> Callable[[Any], StepAlgorithm]:
        _REGISTRY[name] = factory
        return factory

    return deco


def make_algorithm(spec: Any) -> StepAlgorithm:
    """The step algorithm for ``spec.algorithm`` (a ScoreRunSpec)."""
    name = spec.algorithm.name
    if name not in _REGISTRY:
        import importlib

        try:  # algorithms beyond SCoRe/GRPO live in scoreops.training.<name> and register there
            importlib.import_module(f"scoreops.training.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"scoreops.training.{name}":
                raise
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise NotImplementedError(f"algorithm {name!r} has no trainer here; available: {known}")
    return _REGISTRY[name](spec)


# --- shared pieces ----------------------------------------------------------------------------


@dataclass
class Rollout:
    """Episodes of a step with their per-turn rewards (``rewards[i][t]``)."""

    episodes: list[Episode]
    items: list[Item]
    rewards: list[list[float]]
    generated_tokens: int
    seconds: float
    device: Any = None
    """Where :meth:`reward_tensor` puts the rewards: the policy's device (``ctx.device``), so
    that rewards, advantages and the losses built from them meet the log-probs there."""

    def reward_tensor(self, turn: int) -> torch.Tensor:
        import torch

        return torch.tensor([r[turn] for r in self.rewards], dtype=torch.float32,
                            device=self.device)


def sample_episodes(
    ctx: StepContext,
    questions: Sequence[str],
    items: Sequence[Item],
    *,
    turns: int,
    n: int,
    seed: int,
    instruction: str | None = None,
    temperature: float | None = None,
) -> Rollout:
    """``n`` ``turns``-turn episodes per question, each turn scored by the run's verifier.

    With ``rollout.feedback: oracle`` every later turn's message is
    :func:`oracle_message` of the previous turn's verdict (extrinsic feedback)."""
    from scoreops.rollout import SamplingParams, run_episodes

    ro = ctx.spec.rollout
    params = SamplingParams(
        max_new_tokens=ro.max_new_tokens,
        temperature=ro.temperature if temperature is None else temperature,
        top_p=ro.top_p,
        n=n,
        seed=seed,
    )
    start = time.perf_counter()
    oracle = ro.feedback == "oracle"
    episodes = run_episodes(
        ctx.engine,
        list(questions),
        instruction=instruction or ro.correction_instruction,
        turns=1 if oracle else turns,
        params=params,
        system_prompt=ro.system_prompt,
    )
    ep_items = [items[ep.question_index] for ep in episodes]
    if oracle:
        episodes = oracle_turns(ctx.engine, episodes, ep_items, ctx.verifier,
                                instruction or ro.correction_instruction, turns, params)
    seconds = time.perf_counter() - start
    rewards = [[ctx.verifier(t.text, item) for t in ep.turns] for ep, item in zip(episodes, ep_items, strict=True)]
    tokens = sum(len(t.completion.token_ids) for ep in episodes for t in ep.turns)
    return Rollout(list(episodes), ep_items, rewards, tokens, seconds, device=ctx.device)


ORACLE_WRONG = "Your previous answer is incorrect."
ORACLE_RIGHT = "Your previous answer is correct."


def oracle_message(correct: bool, instruction: str) -> str:
    """The message before a later attempt under oracle feedback: the verifier's verdict on
    the previous attempt, then the correction instruction."""
    return f"{ORACLE_RIGHT if correct else ORACLE_WRONG} {instruction}"


def oracle_turns(engine: Any, episodes: list[Episode], items: Sequence[Item], verifier: Any,
                 instruction: str, turns: int, params: Any) -> list[Episode]:
    """Continue one-turn ``episodes`` to ``turns`` turns, each later turn answering
    :func:`oracle_message` of the verifier's verdict on the turn before (one continuation
    per episode, order kept)."""
    import dataclasses

    from scoreops.training.mgrpo import extend_episodes

    for t in range(1, turns):
        verdicts = [verifier(ep.turns[-1].text, item) >= 0.5
                    for ep, item in zip(episodes, items, strict=True)]
        seed = None if params.seed is None else params.seed + 1_000_003 * t
        episodes = extend_episodes(engine, episodes,
                                   [oracle_message(v, instruction) for v in verdicts],
                                   dataclasses.replace(params, n=1, seed=seed))
    return episodes


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


def _rollout_stats(ro: Rollout, turns: int) -> dict[str, float]:
    out = {
        "generated_tokens": float(ro.generated_tokens),
        "rollout_seconds": ro.seconds,
        "tokens_per_second": ro.generated_tokens / max(ro.seconds, 1e-9),
    }
    for t in range(turns):
        vals = [r[t] for r in ro.rewards]
        out[f"reward_t{t + 1}"] = sum(vals) / max(1, len(vals))
    if turns >= 2:
        n = max(1, len(ro.rewards))
        out["i2c"] = sum(1 for r in ro.rewards if r[0] < 0.5 <= r[1]) / n
        out["c2i"] = sum(1 for r in ro.rewards if r[1] < 0.5 <= r[0]) / n
    return out


# --- SCoRe ------------------------------------------------------------------------------------


@register("score")
class ScoreAlgorithm:
    """SCoRe stage I for ``stage1Steps`` steps, then stage II (see scoreops.algorithms.score)."""

    name = "score"

    def __init__(self, spec: Any) -> None:
        self.cfg = spec.algorithm.score

    def stage(self, step: int) -> str:
        return "stage1" if step < self.cfg.stage1_steps else "stage2"

    def backward(self, ctx: StepContext, step: int, prompts: list[Item]) -> dict[str, float]:
        from scoreops.algorithms.score import stage1_loss, stage2_loss
        from scoreops.rollout import build_training_batch

        g = ctx.spec.rollout.samples_per_prompt
        turns = ctx.spec.rollout.turns
        ro = sample_episodes(ctx, [p.question for p in prompts], prompts,
                             turns=turns, n=g, seed=ctx.step_seed(step))
        batch = build_training_batch(ctx.tokenizer, ro.episodes, MAX_SEQUENCE_TOKENS)
        r1, r2 = ro.reward_tensor(0), ro.reward_tensor(turns - 1)
        cfg, stage = self.cfg, self.stage(step)

        def loss_fn(rows: slice, mb: TrainingBatch, logp: torch.Tensor, ref: torch.Tensor):
            m1, m2 = mb.mask(1), mb.mask(turns)
            parts: dict[str, torch.Tensor] = {}
            if stage == "stage1":
                loss, st = stage1_loss(
                    logp, ref, logp, ref, m1, m2, r2[rows],
                    beta1=cfg.beta1, beta2=cfg.beta2, baseline=cfg.baseline,
                    kl_estimator=cfg.kl_estimator, group_size=g, r1=r1[rows],
                    term_scale=cfg.term_scale, terms_out=parts,
                )
            else:
                loss, st = stage2_loss(
                    logp, ref, logp, ref, m1, m2, r1[rows], r2[rows],
                    alpha=cfg.alpha, beta1=cfg.beta1, baseline=cfg.baseline,
                    kl_estimator=cfg.kl_estimator, group_size=g,
                    bonus_on_turn1=cfg.bonus_on_turn1, term_scale=cfg.term_scale,
                    terms_out=parts,
                )
            return loss, st, parts

        # grad_norm_turn1 / grad_norm_turn2 (cfg.term_grad_norms): the norms of the gradients
        # of the turn-1 and turn-2 parts of this step's loss (policy gradient + KL of each
        # turn's tokens), before clipping; see backward_micro_batches
        stats = backward_micro_batches(
            ctx, [LossTerm(batch, micro_batch_rows(ctx, g), policy_loss(ctx, loss_fn))],
            part_grad_norms=cfg.term_grad_norms)
        return {**stats, **_rollout_stats(ro, turns)}


# --- GRPO -------------------------------------------------------------------------------------


@register("grpo")
class GRPOAlgorithm:
    """Single-turn GRPO: G samples per prompt, group-normalised advantages, clipped ratio."""

    name = "grpo"

    def __init__(self, spec: Any) -> None:
        self.cfg = spec.algorithm.grpo

    def stage(self, step: int) -> str:
        return "grpo"

    def backward(self, ctx: StepContext, step: int, prompts: list[Item]) -> dict[str, float]:
        from scoreops.algorithms.advantages import group_normalized
        from scoreops.algorithms.grpo import grpo_loss
        from scoreops.rollout import build_training_batch

        g = ctx.spec.rollout.samples_per_prompt
        ro = sample_episodes(ctx, [p.question for p in prompts], prompts,
                             turns=1, n=g, seed=ctx.step_seed(step))
        batch = build_training_batch(ctx.tokenizer, ro.episodes, MAX_SEQUENCE_TOKENS)
        adv = group_normalized(ro.reward_tensor(0).reshape(-1, g),
                               scale=self.cfg.scale_rewards).reshape(-1)
        cfg = self.cfg

        def loss_fn(rows: slice, mb: TrainingBatch, logp: torch.Tensor, ref: torch.Tensor):
            return grpo_loss(logp, None, ref, adv[rows], mb.mask(1), clip_eps=cfg.clip_epsilon,
                             beta=cfg.beta, kl_estimator=cfg.kl_estimator)

        stats = accumulate(ctx, batch, micro_batch_rows(ctx, g), loss_fn)
        return {**stats, **_rollout_stats(ro, 1)}
