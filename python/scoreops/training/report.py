"""The run's report: report.md with the before/after table and PNG training curves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scoreops.api.scorerun import ScoreRun
    from scoreops.training.evaluation import EvalResult


def before_after_rows(evals: dict[str, EvalResult], ci: bool = True) -> list[dict[str, Any]]:
    from scoreops.report import correction_rows

    return correction_rows({k: v.metrics.to_dict() for k, v in evals.items()}, label="Model",
                           ci=ci)


def write_run_report(output: str, run: ScoreRun, metrics: list[dict[str, Any]],
                     evals: dict[str, EvalResult]) -> str:
    """Write ``report.md`` and its charts under ``output``; returns the report's URI."""
    from scoreops import storage
    from scoreops.report import bar_chart, line_chart, results_table

    spec = run.spec
    lines = [
        f"# ScoreRun `{run.metadata.name}`",
        "",
        f"- model: `{spec.model.uri}`",
        f"- algorithm: `{spec.algorithm.name}` {spec.algorithm.config.to_wire()}",
        f"- rollout: {spec.rollout.samples_per_prompt} samples x {spec.rollout.turns} turns, "
        f"temperature {spec.rollout.temperature}, max {spec.rollout.max_new_tokens} tokens",
        f"- steps: {len(metrics)} logged, batch {spec.optim.batch_size} prompts, "
        f"lr {spec.optim.learning_rate}",
        "",
    ]
    if evals:
        n = next(iter(evals.values())).metrics.n
        lines += [f"## Held-out evaluation (greedy, {n} items, 95% intervals)", "",
                  results_table(before_after_rows(evals)), ""]
        chart = {
            metric: {name: getattr(ev.metrics, key) for name, ev in evals.items()}
            for metric, key in (("Acc@t1", "acc_t1"), ("Acc@t2", "acc_t2"),
                                ("Δi→c", "delta_i2c"), ("Δc→i", "delta_c2i"))
        }
        storage.write_bytes(storage.join(output, "before_after.png"),
                            bar_chart(chart, title="Before / after training", ylabel="rate"))
        lines += ["![before/after](before_after.png)", ""]
    if metrics:
        rewards = {
            f"reward turn {t}": [(m["step"], m[f"reward_t{t}"]) for m in metrics
                                 if m.get(f"reward_t{t}") is not None]
            for t in (1, 2)
        }
        rewards = {k: v for k, v in rewards.items() if v}
        storage.write_bytes(storage.join(output, "reward.png"),
                            line_chart(rewards, title="Mean training reward per turn",
                                       xlabel="step", ylabel="reward"))
        lines += ["## Training", "", "![reward per turn](reward.png)", ""]
        accs = {
            name: [(m["step"], m[key]) for m in metrics if m.get(key) is not None]
            for name, key in (("Acc@t1", "acc_t1"), ("Acc@t2", "acc_t2"))
        }
        if any(accs.values()):
            storage.write_bytes(storage.join(output, "accuracy.png"),
                                line_chart(accs, title="Held-out accuracy", xlabel="step",
                                           ylabel="accuracy"))
            lines += ["![accuracy](accuracy.png)", ""]
        cols = ["step", "stage", "loss", "reward_t1", "reward_t2", "kl_turn1", "kl_turn2",
                "tokens_per_second"]
        shown = metrics if len(metrics) <= 40 else metrics[:: max(1, len(metrics) // 40)]
        lines += [results_table([{c: m.get(c) for c in cols} for m in shown], cols), ""]
    lines += ["Per-sample records: `eval/*.jsonl`; step metrics: `metrics.jsonl`; "
              "TensorBoard: `tensorboard/`.", ""]
    uri = storage.join(output, "report.md")
    storage.write_text(uri, "\n".join(lines))
    return uri
