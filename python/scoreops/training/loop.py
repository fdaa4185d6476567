"""A training run from start (or the newest complete checkpoint) to report.

Size: one class, the run's life cycle (setup, resume, steps, greedy and sampled evaluations,
final weights) in the order it happens; split, the resume contract would span modules.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scoreops.algorithms.registry import algorithm_traits
from scoreops.training.checkpoint import (
    CheckpointMismatch,
    TrainerState,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    spec_digest,
)
from scoreops.training.context import DistEnv, StepContext
from scoreops.training.outputs import RunOutputs
from scoreops.training.setup import (
    RunFailed,
    load_models,
    load_split,
    make_engine,
    pick_device,
    run_dtypes,
)

if TYPE_CHECKING:
    from scoreops.api.scorerun import ScoreRun
    from scoreops.training.backend import OptimizerBackend
    from scoreops.training.evaluation import EvalResult
    from scoreops.training.steps import TrainingStep

StepCallback = Callable[[dict[str, Any]], None]


@dataclass
class RunResult:
    output: str
    step: int
    interrupted: bool = False
    metrics: list[dict[str, Any]] = field(default_factory=list)
    evals: dict[str, EvalResult] = field(default_factory=dict)
    final_model: str | None = None


def lr_lambda(total: int, warmup_ratio: float, schedule: str) -> Callable[[int], float]:
    warmup = round(total * warmup_ratio)

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


class Trainer:
    """Runs one ScoreRun in this process (one rank of it when distributed)."""

    def __init__(self, run: ScoreRun, *, output: str | None = None,
                 on_step: StepCallback | None = None, on_event: StepCallback | None = None,
                 fresh: bool = False) -> None:
        self.run = run
        self.spec = run.spec
        self.output = output or run.spec.output.uri
        self.on_step = on_step or (lambda m: None)
        self.on_event = on_event or (lambda m: None)
        self.fresh = fresh
        self.dist = DistEnv.from_environ()
        self.digest = spec_digest(self.spec.to_wire())
        self.traits = algorithm_traits(self.spec.algorithm.name)
        self._stop = False
        self.metrics: list[dict[str, Any]] = []
        self.out = RunOutputs(run, self.output, self.dist)
        self._backend: OptimizerBackend | None = None

    # -- outputs ----------------------------------------------------------------------------

    # -- setup ------------------------------------------------------------------------------

    def _setup(self) -> StepContext:
        """The device, the models, the data, the verifier and the rollout engine of the run."""
        import torch
        from transformers.utils import logging as hf_logging

        from scoreops.rewards import auto_verifier_kind, make_verifier

        hf_logging.disable_progress_bar()
        torch.manual_seed(self.spec.seed)
        device = pick_device(self.spec, self.dist)
        dtype, master = run_dtypes(self.spec, device)
        self.on_event({"event": "loading", "what": f"model {self.spec.model.uri}"})
        policy, tokenizer, reference = load_models(self.spec, self.traits, device, dtype=dtype,
                                                   master=master)
        self.on_event({"event": "loading", "what": "data"})
        train, held = load_split(self.run)
        kind = self.spec.dataset.verifier
        verifier = make_verifier(auto_verifier_kind(train[0]) if kind == "auto" else kind)
        engine = make_engine(self.spec, self.traits, policy, tokenizer, device, dtype=dtype,
                             master=master, questions=[i.question for i in (*train, *held)])
        self.held_out = held
        return StepContext(spec=self.spec, policy=policy, reference=reference,
                           tokenizer=tokenizer, engine=engine, verifier=verifier,
                           train_items=train, device=device, dist=self.dist,
                           rollout_dtype=getattr(torch, dtype))

    def _make_backend(self, ctx: StepContext) -> OptimizerBackend:
        """AdamW and the learning-rate schedule behind the spec's optimiser backend (plain
        torch, or DeepSpeed ZeRO-2/3 with ``resources.deepspeed``)."""
        import torch

        from scoreops.training.backend import make_backend

        optim = self.spec.optim
        optimizer = torch.optim.AdamW(
            [p for p in ctx.policy.parameters() if p.requires_grad],
            lr=optim.learning_rate, weight_decay=optim.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(self.spec.algorithm.total_steps(), optim.warmup_ratio,
                                 optim.schedule))
        if self.spec.resources.deepspeed != "none":
            self.on_event({"event": "loading", "what": f"DeepSpeed {self.spec.resources.deepspeed}"})
        return make_backend(self.spec, ctx.policy, optimizer, scheduler, device=ctx.device,
                            rank=self.dist.rank, world_size=self.dist.world_size,
                            local_rank=self.dist.local_rank)

    def request_stop(self, *_: Any) -> None:
        """Finish the current step, checkpoint, and return (Ctrl-C / SIGTERM)."""
        self._stop = True

    # -- the run ----------------------------------------------------------------------------

    def run_training(self) -> RunResult:
        try:
            return self._run_training()
        finally:
            if self._backend is not None:
                self._backend.close()
                self._backend = None
            if self.dist.distributed:
                from scoreops.training.distributed import destroy_process_group

                destroy_process_group()

    def _stop_agreed(self) -> bool:
        """Whether any rank was asked to stop (every rank calls this once per step, so all of
        them stop after the same step and none is left waiting in a collective)."""
        if not self.dist.distributed:
            return self._stop
        from scoreops.training.distributed import any_rank

        # the agreed value, not self._stop: a request arriving while this rank waits in the
        # collective must neither be lost (overwritten with the agreed False) nor make this
        # rank alone stop now; it is kept for the next step's agreement
        agreed = any_rank(self._stop)
        if agreed:
            self._stop = True
        return agreed

    def _run_training(self) -> RunResult:
        from scoreops import storage
        from scoreops.training.steps import make_algorithm

        ctx = self._setup()
        algorithm = make_algorithm(self.spec)
        algorithm.prepare(ctx)  # e.g. cory attaches its adapters before the optimiser is built
        backend = self._backend = ctx.backend = self._make_backend(ctx)
        evals: dict[str, EvalResult] = {}
        if self.spec.evaluation.enabled and self.spec.evaluation.compare_base and self.held_out:
            # before any checkpoint is loaded: the policy is still the base model here
            evals["base"] = self._evaluate(ctx, "base", cache=not self.fresh)
            if self.spec.evaluation.samples:
                evals["base (sampled)"] = self._evaluate(ctx, "base", cache=not self.fresh,
                                                         sampled=True)
        step = self._resume(ctx, backend)
        if self.dist.is_main:
            storage.write_json(self.out.uri("spec.json"), self.run.to_wire())
        tb = self.out.tensorboard()
        self.out.write_progress("Running", step=step, stage=algorithm.stage(step))
        step, last, stopped = self._train(ctx, algorithm, step, tb)
        if stopped:
            self.out.write_progress("Running", step=step, stage=algorithm.stage(step - 1),
                                message="stopped on request; run again to resume", last=last)
            return RunResult(self.output, step, interrupted=True, metrics=self.metrics)
        return self._finish(ctx, algorithm, step, last, evals, tb)

    def _train(self, ctx: StepContext, algorithm: TrainingStep, step: int,
               tb: Any) -> tuple[int, dict[str, Any], bool]:
        """Steps from ``step`` to the last one, or until a stop request (then checkpointed).
        Returns the step reached, its metrics and whether the run stopped before the end."""
        total = self.spec.algorithm.total_steps()
        last: dict[str, Any] = self.metrics[-1] if self.metrics else {}
        last_saved = step
        stopping = False
        try:
            while step < total and not (stopping := self._stop_agreed()):
                last = self._step(ctx, algorithm, step)
                step += 1
                self.metrics.append(last)
                self.out.log_metrics(self.metrics, last, tb)
                self.on_step(last)
                ckpt = None
                if step % self.spec.checkpoint.every_steps == 0 or step == total:
                    ckpt = self._checkpoint(ctx, step, last["stage"])
                    last_saved = step
                self.out.write_progress("Running", step=step, stage=last["stage"], last=last,
                                    checkpoint=ckpt)
        except KeyboardInterrupt:
            stopping = self._stop = True
        stopped = stopping and step < total
        if stopped and last_saved != step:
            self._checkpoint(ctx, step, algorithm.stage(step - 1))
        return step, last, stopped

    def _step(self, ctx: StepContext, algorithm: TrainingStep, step: int) -> dict[str, Any]:
        """One optimiser step (and a mid-run evaluation when one is due); its metrics."""
        assert ctx.backend is not None
        backend = ctx.backend
        from scoreops.training.steps.rollouts import sleep_wake, step_seconds

        slept = sleep_wake(ctx.engine)
        t0 = time.perf_counter()
        ctx.policy.train()
        backend.zero_grad()
        prompts = ctx.prompts_for_step(step)
        stats = algorithm.backward(ctx, step, prompts)
        if ctx.dist.distributed:
            from scoreops.training.distributed import all_reduce_stats

            stats = all_reduce_stats(stats)
        grad_norm = backend.step()
        t_sync = time.perf_counter()
        backend.sync_rollout(ctx.engine)
        t_end = time.perf_counter()
        done = step + 1
        last = {"step": done, "stage": algorithm.stage(step), "lr": backend.lr,
                "grad_norm": grad_norm, "seconds": t_end - t0,
                **{k: float(v) for k, v in stats.items()}}
        # generate + sync + train + sleep/wake = seconds (before a mid-run evaluation)
        last.update(step_seconds(stats, t_sync - t0, t_end - t_sync, slept,
                                 sleep_wake(ctx.engine)))
        every = self.spec.evaluation.every_steps
        if every and done % every == 0 and done < self.spec.algorithm.total_steps() \
                and self.held_out:
            mid = self._evaluate(ctx, f"step-{done}")
            last["acc_t1"], last["acc_t2"] = mid.metrics.acc_t1, mid.metrics.acc_t2
        return last

    def _finish(self, ctx: StepContext, algorithm: TrainingStep, step: int,
                last: dict[str, Any], evals: dict[str, EvalResult], tb: Any) -> RunResult:
        """After the last step: the final model, its evaluation, the report and progress."""
        algorithm.finalize(ctx, step)  # e.g. cory merges its pioneer adapter into the weights
        final_uri = self._save_final(ctx)
        if self.spec.evaluation.enabled and self.held_out:
            evals["trained"] = self._evaluate(ctx, "trained")
            if self.spec.evaluation.samples:
                evals["trained (sampled)"] = self._evaluate(ctx, "trained", sampled=True)
        if self.dist.is_main:
            from scoreops.training.report import write_run_report

            write_run_report(self.output, self.run, self.metrics, evals)
        self.out.write_progress("Succeeded", step=step, stage=algorithm.stage(max(0, step - 1)),
                            last=last, evals=evals)
        if tb is not None:
            tb.close()
            self.out.upload_tensorboard()
        return RunResult(self.output, step, metrics=self.metrics, evals=evals,
                         final_model=final_uri)

    # -- pieces -----------------------------------------------------------------------------

    def _resume(self, ctx: StepContext, backend: OptimizerBackend) -> int:
        from scoreops import storage

        ckpts = [] if self.fresh else list_checkpoints(self.output)
        if self.fresh and self.dist.is_main:
            for u in list_checkpoints(self.output):
                storage.delete_prefix(u)
            if storage.exists(self.out.uri("metrics.jsonl")):
                storage.delete(self.out.uri("metrics.jsonl"))
        uri = ckpts[-1] if ckpts else None
        if self.dist.distributed:  # every rank resumes from the checkpoint rank 0 sees
            from scoreops.training.distributed import broadcast_object

            uri = broadcast_object(uri)
        if uri is None:
            return 0
        try:
            state = load_checkpoint(uri, backend=backend, rank=self.dist.rank)
        except CheckpointMismatch as exc:
            raise RunFailed(f"{exc}; use another spec.output.uri, or --fresh to discard "
                            "the checkpoints") from exc
        if state.digest != self.digest:
            raise RunFailed(
                f"{self.output} holds checkpoints of a different spec (digest {state.digest}, "
                f"this spec {self.digest}); use another spec.output.uri, or --fresh to discard them")
        backend.sync_rollout(ctx.engine)
        self.out.last_checkpoint = uri
        if storage.exists(self.out.uri("metrics.jsonl")):
            lines = storage.read_text(self.out.uri("metrics.jsonl")).splitlines()
            self.metrics = [json.loads(x) for x in lines[: state.metrics_lines] if x.strip()]
        self.on_event({"event": "resumed", "step": state.step, "checkpoint": uri})
        return state.step

    def _checkpoint(self, ctx: StepContext, step: int, stage: str) -> str | None:
        """Every rank calls this at the same step; rank 0 writes the checkpoint and returns its
        URI (the other ranks write their optimiser partitions under DeepSpeed, return None)."""
        assert ctx.backend is not None
        state = TrainerState(step=step, stage=stage, digest=self.digest,
                             metrics_lines=len(self.metrics))
        try:
            uri = save_checkpoint(self.output, backend=ctx.backend, state=state,
                                  keep=self.spec.checkpoint.keep, rank=self.dist.rank)
        except Exception as exc:
            msg = (f"could not write the checkpoint of step {step} to {self.output}: {exc}; "
                   f"the previous complete checkpoint ({self.out.last_checkpoint}) is intact")
            with contextlib.suppress(Exception):  # the storage may be what failed
                self.out.write_progress("Failed", step=step, stage=stage, message=msg)
            raise RunFailed(msg) from exc
        if not self.dist.is_main:
            return None
        self.out.last_checkpoint = uri
        self.on_event({"event": "checkpoint", "step": step, "uri": uri})
        return uri

    def _save_final(self, ctx: StepContext) -> str | None:
        """The trained weights as a loadable model directory at ``<output>/final`` (every rank
        calls it: ZeRO-3 gathers the weights; rank 0 writes)."""
        assert ctx.backend is not None
        weights = ctx.backend.consolidated_state_dict()
        if not self.dist.is_main:
            return None
        import tempfile

        from scoreops import storage

        uri = self.out.uri("final")
        with tempfile.TemporaryDirectory(prefix="scoreops-final-") as tmp:
            ctx.policy.save_pretrained(tmp, state_dict=weights)
            ctx.tokenizer.save_pretrained(tmp)
            storage.save_artifact(Path(tmp), uri, metadata={"from": self.spec.model.uri,
                                                            "run": self.run.metadata.name})
        return uri

    def _evaluate(self, ctx: StepContext, label: str, cache: bool = False,
                  sampled: bool = False) -> EvalResult:
        """Held-out evaluation: greedy, or with ``sampled`` ``evaluation.samples`` episodes
        per item at ``evaluation.temperature`` (default: the rollout's)."""
        from scoreops import storage
        from scoreops.metrics import correction_metrics
        from scoreops.training.evaluation import EvalResult, evaluate_items

        ev = self.spec.evaluation
        if sampled:
            label = f"{label}-sampled"
        records_uri = self.out.uri("eval", f"{label}.jsonl")
        if cache and storage.exists(records_uri):
            # the base model's evaluation does not change across restarts
            records = [json.loads(x) for x in storage.read_text(records_uri).splitlines() if x]
            return EvalResult(correction_metrics([r["correct"] for r in records]), records)
        self.on_event({"event": "evaluating", "what": label, "n": len(self.held_out)})
        ctx.policy.eval()
        # MGRPO's second turn: a guide phrase, its training distribution
        guides = self.spec.algorithm.config if self.traits.guided_second_turn else None
        res = evaluate_items(
            ctx.engine, self.held_out, ctx.verifier,
            instruction=self.spec.rollout.correction_instruction,
            turns=max(2, self.spec.rollout.turns),
            max_new_tokens=ev.max_new_tokens or self.spec.rollout.max_new_tokens,
            system_prompt=self.spec.rollout.system_prompt,
            guide_phrases=guides.guide_phrases if guides else None,
            guide_form=guides.guide_form if guides else "same-turn",
            feedback=self.spec.rollout.feedback,
            oracle=self.spec.rollout.oracle,
            samples=ev.samples if sampled else 1,
            temperature=(ev.temperature if ev.temperature is not None
                         else self.spec.rollout.temperature) if sampled else 0.0,
            seed=self.spec.seed,
        )
        if self.dist.is_main:
            storage.write_text(records_uri, "".join(json.dumps(r) + "\n" for r in res.records))
        self.on_event({"event": "evaluated", "what": label, "metrics": res.metrics.to_dict()})
        return res


def install_signal_handlers(trainer: Trainer) -> None:
    """SIGTERM (pod eviction) and SIGINT finish the step and checkpoint."""
    def handler(signum: int, frame: Any) -> None:
        if trainer._stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.request_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
