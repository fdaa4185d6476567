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


def what_it_shows(evals: dict[str, EvalResult]) -> list[str]:
    """Plain sentences on what the held-out numbers show, and what they do not.

    Separates the two things a ScoreRun can improve: the first attempt (Acc@t1, an accuracy
    gain) and what the second attempt adds over the first (Δ = Acc@t2 − Acc@t1, the
    correction gain, with Newcombe's paired 95% interval). A rise of both accuracies with Δ
    near 0 is an accuracy gain, not learned self-correction.
    """
    trained = evals.get("trained")
    if trained is None:
        return []
    m = trained.metrics
    lo, hi = m.ci["delta"]
    n = m.n
    out = []
    base = evals.get("base")
    if base is not None:
        b = base.metrics
        out.append(f"First attempt (Acc@t1): {b.acc_t1:.3f} before, {m.acc_t1:.3f} after "
                   f"training ({m.acc_t1 - b.acc_t1:+.3f}); second attempt (Acc@t2): "
                   f"{b.acc_t2:.3f} -> {m.acc_t2:.3f} ({m.acc_t2 - b.acc_t2:+.3f}); n = {n}.")
    fixes = f"{m.counts.i2c} of {n} items wrong -> right, {m.counts.c2i} right -> wrong"
    if lo > 0:
        out.append(f"Correction gain: the second attempt adds Δ = {m.delta:+.3f} "
                   f"[{lo:+.3f}, {hi:+.3f}] over the first ({fixes}).")
        if base is not None and m.acc_t1 < base.metrics.acc_t1 and \
                m.acc_t2 <= max(base.metrics.acc_t2, base.metrics.acc_t1):
            out.append("But the first attempt got worse than the base model's and the second "
                       "is no better than the base model's: the gain comes from a worse first "
                       "attempt, not from a better final answer.")
    elif hi < 0:
        out.append(f"The second attempt makes answers worse: Δ = {m.delta:+.3f} "
                   f"[{lo:+.3f}, {hi:+.3f}] ({fixes}).")
    else:
        out.append(f"No correction gain shown: Δ(t1,t2) = {m.delta:+.3f}, 95% interval "
                   f"[{lo:+.3f}, {hi:+.3f}] includes 0 ({fixes}).")
        if base is not None and m.acc_t1 > base.metrics.acc_t1:
            out.append("What improved is the first attempt: an accuracy gain, not "
                       "self-correction.")
    out.append(f"One run, one seed, {n} items: differences of a few items are noise "
               "(docs/results.md has the multi-seed comparison).")
    return out


def write_run_report(output: str, run: ScoreRun, metrics: list[dict[str, Any]],
                     evals: dict[str, EvalResult]) -> str:
    """Write ``report.md`` and its charts under ``output``; returns the report's URI."""
    from scoreops import storage

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
        lines += _evaluation_section(output, evals)
    if metrics:
        lines += _training_section(output, metrics)
    lines += ["Per-sample records: `eval/*.jsonl`; step metrics: `metrics.jsonl`; "
              "TensorBoard: `tensorboard/`.", ""]
    uri = storage.join(output, "report.md")
    storage.write_text(uri, "\n".join(lines))
    return uri


def _evaluation_section(output: str, evals: dict[str, EvalResult]) -> list[str]:
    """The held-out results table, the before/after chart (written) and what they show."""
    from scoreops import storage
    from scoreops.report import bar_chart, results_table

    n = next(iter(evals.values())).metrics.n
    lines = [f"## Held-out evaluation (greedy, {n} items, 95% intervals)", "",
             results_table(before_after_rows(evals)), ""]
    chart = {
        metric: {name: getattr(ev.metrics, key) for name, ev in evals.items()}
        for metric, key in (("Acc@t1", "acc_t1"), ("Acc@t2", "acc_t2"),
                            ("Δi→c", "delta_i2c"), ("Δc→i", "delta_c2i"))
    }
    storage.write_bytes(storage.join(output, "before_after.png"),
                        bar_chart(chart, title="Before / after training", ylabel="rate"))
    lines += ["![before/after](before_after.png)", ""]
    shows = what_it_shows(evals)
    if shows:
        lines += ["## What this run shows", "", *[f"- {x}" for x in shows], ""]
    return lines


def _training_section(output: str, metrics: list[dict[str, Any]]) -> list[str]:
    """The reward (and held-out accuracy) curves, written as charts, and a table of steps."""
    from scoreops import storage
    from scoreops.report import line_chart, results_table

    rewards = {
        f"reward turn {t}": [(m["step"], m[f"reward_t{t}"]) for m in metrics
                             if m.get(f"reward_t{t}") is not None]
        for t in (1, 2)
    }
    rewards = {k: v for k, v in rewards.items() if v}
    storage.write_bytes(storage.join(output, "reward.png"),
                        line_chart(rewards, title="Mean training reward per turn",
                                   xlabel="step", ylabel="reward"))
    lines = ["## Training", "", "![reward per turn](reward.png)", ""]
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
    return lines
