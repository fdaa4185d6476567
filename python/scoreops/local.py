"""The in-process runner behind ``scoreops run``: the job's code with a progress bar."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from scoreops.api.scorerun import ScoreRun
    from scoreops.training.loop import RunResult

__all__ = ["run_scorerun"]


def _progress(console: Console) -> Progress:
    """The training progress bar: stage, steps, turn-1/turn-2 rewards, speed and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.fields[stage]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("r1 {task.fields[r1]} r2 {task.fields[r2]} {task.fields[extra]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


class _Display:
    """The trainer's step and event callbacks, drawn on one progress bar."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress = progress
        self.task: TaskID = progress.add_task("train", total=total, stage="setup", r1="-",
                                              r2="-", extra="")

    def on_step(self, m: dict[str, Any]) -> None:
        extra = f"Acc@t2 {m['acc_t2']:.2f}" if m.get("acc_t2") is not None else \
            f"{m.get('tokens_per_second', 0):.0f} tok/s"
        self.progress.update(self.task, completed=m["step"], stage=m.get("stage", ""),
                             r1=_fmt(m.get("reward_t1")), r2=_fmt(m.get("reward_t2")),
                             extra=extra)

    def on_event(self, e: dict[str, Any]) -> None:
        progress, task = self.progress, self.task
        kind = e.get("event")
        if kind == "resumed":
            progress.update(task, completed=e["step"])
            progress.console.print(f"resumed from {e['checkpoint']} (step {e['step']})")
        elif kind == "checkpoint":
            progress.console.print(f"[dim]checkpoint step {e['step']}: {e['uri']}")
        elif kind == "evaluating":
            progress.update(task, stage=f"eval {e['what']}")
            progress.console.print(f"evaluating {e['what']} model on {e['n']} held-out items")
        elif kind == "evaluated":
            m = e["metrics"]
            progress.console.print(
                f"  {e['what']}: Acc@t1 {m['acc_t1']:.3f}  Acc@t2 {m['acc_t2']:.3f}  "
                f"Δ {m['delta']:+.3f}  Δi→c {m['delta_i2c']:.3f}  Δc→i {m['delta_c2i']:.3f}")
        elif kind == "loading":
            progress.update(task, stage=f"loading {e['what'][:40]}")


def _print_evals(run: ScoreRun, result: RunResult, console: Console) -> None:
    """The held-out before/after table and what it shows."""
    from rich.console import Console

    from scoreops.report import print_table
    from scoreops.training.report import before_after_rows, what_it_shows

    print_table(before_after_rows(result.evals, ci=False),
                title=f"{run.metadata.name}: held-out, greedy, before vs after",
                console=Console())
    for line in what_it_shows(result.evals):
        console.print(line, highlight=False)


def run_scorerun(run: ScoreRun, *, output: str | None = None, fresh: bool = False) -> int:
    """Train ``run`` here; print the before/after table. Returns the process exit code."""
    from rich.console import Console

    from scoreops.storage import StorageError
    from scoreops.training.loop import RunFailed, Trainer, install_signal_handlers

    console = Console(stderr=True)
    total = run.spec.algorithm.total_steps()
    progress = _progress(console)
    display = _Display(progress, total)
    trainer = Trainer(run, output=output, on_step=display.on_step, on_event=display.on_event,
                      fresh=fresh)
    install_signal_handlers(trainer)
    console.print(f"ScoreRun [bold]{run.metadata.name}[/]: {run.spec.algorithm.name}, "
                  f"{total} steps, model {run.spec.model.uri}, output {trainer.output}")
    try:
        with progress:
            result = trainer.run_training()
    except (RunFailed, StorageError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    if result.interrupted:
        console.print(f"stopped at step {result.step}; run the same command again to resume")
        return 130
    if result.evals:
        _print_evals(run, result, console)
    console.print(f"report: {trainer.output}/report.md   model: {result.final_model}")
    return 0
