"""Job entrypoint of a training worker: ``python -m scoreops.train --spec run.json``.

This is what each PyTorchJob replica runs (and what ``scoreops run`` calls in-process). With
``torchrun`` / PyTorchJob, RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT come from the
environment; absent, it is one process. Exit codes: 0 done, 1 failed, 2 invalid spec,
75 (EX_TEMPFAIL) stopped on request (SIGTERM: eviction, drain, deletion) after writing a
checkpoint: not finished, so a PyTorchJob never counts a stopped pod as Succeeded (with ranks
in several pods, those that were not signalled stop at the same step as the one that was);
the pod that runs next resumes from the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scoreops.api.scorerun import ScoreRun


def load_run(path: str) -> ScoreRun:
    """A ScoreRun from a JSON (the operator's ConfigMap) or YAML file."""
    import yaml

    from scoreops.api import parse_resource
    from scoreops.api.scorerun import ScoreRun

    text = Path(path).read_text()
    doc = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    res = parse_resource(doc)
    if not isinstance(res, ScoreRun):
        raise SystemExit(f"{path} holds a {res.kind}, not a ScoreRun")
    from scoreops.vllm_env import vllm_refusal

    refusal = vllm_refusal(res)
    if refusal:  # before any model is loaded
        raise SystemExit(f"{path}: {refusal}")
    return res


EXIT_STOPPED = 75


class StopWindow:
    """Warns once when a step outlasts the time the pod has to stop after SIGTERM.

    That time is ``SCOREOPS_SHUTDOWN_TIMEOUT`` (torchrun's shutdown window, which the operator
    derives from the pod's grace period). A stop request arriving during such a step cannot be
    honoured before SIGKILL: the run then resumes from its last periodic checkpoint.
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.warned = False

    @classmethod
    def from_env(cls) -> StopWindow:
        text = os.environ.get("SCOREOPS_SHUTDOWN_TIMEOUT", "").strip()
        return cls(float(text) if text.replace(".", "", 1).isdigit() else None)

    def check(self, step: dict) -> dict | None:
        """A warning event for the first step (metrics line) longer than the window."""
        took = step.get("seconds")
        if self.seconds is None or self.warned or not isinstance(took, (int, float)) \
                or took <= self.seconds:
            return None
        self.warned = True
        return {"event": "warning", "step": step.get("step"),
                "message": (f"step {step.get('step')} took {took:.0f} s, longer than the "
                            f"{self.seconds:.0f} s this pod has to stop after SIGTERM "
                            "(eviction, drain): a stop during such a step falls back to the last "
                            "periodic checkpoint; raise "
                            "spec.resources.terminationGracePeriodSeconds")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scoreops.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, help="ScoreRun as JSON or YAML")
    parser.add_argument("--output", help="override spec.output.uri")
    parser.add_argument("--fresh", action="store_true", help="discard existing checkpoints")
    args = parser.parse_args(argv)

    from scoreops.api import InvalidResource

    try:
        run = load_run(args.spec)
    except InvalidResource as exc:
        print(exc, file=sys.stderr)
        return 2
    from scoreops.training.loop import RunFailed, Trainer, install_signal_handlers

    rank = os.environ.get("RANK")

    def log(event: dict) -> None:
        if rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            event = {**event, "rank": int(rank)}
        # one write per line: lines of several ranks sharing a pipe never interleave
        sys.stdout.write(json.dumps(event, default=str) + "\n")
        sys.stdout.flush()

    window = StopWindow.from_env()

    def on_step(metrics: dict) -> None:
        log(metrics)
        if rank in (None, "0") and (warning := window.check(metrics)) is not None:
            log(warning)

    trainer = Trainer(run, output=args.output, on_step=on_step, on_event=log, fresh=args.fresh)
    install_signal_handlers(trainer)
    try:
        result = trainer.run_training()
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log({"event": "done", "step": result.step, "interrupted": result.interrupted,
         "output": result.output})
    return EXIT_STOPPED if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
