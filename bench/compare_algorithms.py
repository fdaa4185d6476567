"""SCoRe vs GRPO vs MGRPO vs naive two-turn REINFORCE, several training seeds, one command.

Every arm trains the same base model (SmolLM2-135M-Instruct by default) on the same training
items with the same optimiser steps, prompts per step and samples per prompt; the generated
tokens (which differ: a second turn, MGRPO's layer 2) are reported. Each trained model and the
base model are then evaluated greedily with two turns on the same held-out items.

Arms (``--arms``):

* ``base``: no training (evaluated with the correction instruction, with MGRPO's guide
  phrases, and with oracle feedback, so each arm's Δ has its base-model reference);
* ``grpo``: single-turn GRPO;
* ``naive``: two-turn REINFORCE (SCoRe's stage II with α = 0, no stage I, raw advantages);
* ``score``: SCoRe with stage I for ``--stage1-fraction`` of the steps, then stage II
  (α = 10, β1 = 0.01, β2 = 0.1, the unshaped turn-1 credit, per-turn advantage scale); with
  ``--grad-norms`` each turn's gradient norm is logged (one extra backward per step);
* ``mgrpo``: MGRPO with the paper's seven guide phrases appended in the same assistant turn;
  evaluated with a guide phrase as its second turn (its training distribution);
* ``oracle``: the ``score`` arm with oracle feedback before turn 2, in training and evaluation
  ("Your previous answer is incorrect/correct."): *extrinsic*, a positive control that bounds
  what a second attempt can gain here; not self-correction.

Statistics: per run, Wilson intervals of Acc@t1/Acc@t2 and Newcombe's paired interval of Δ;
across seeds, the mean and a t interval; for Acc@t2(score) − Acc@t2(grpo) (and the other
pre-registered contrasts), a bootstrap over items and seeds, paired (the same resampled items
for both arms, seeds paired by index).

    python bench/compare_algorithms.py --seeds 3 --threads 1 --out bench/results/compare-DATE

(the defaults are the sizes of the second pre-registered protocol in docs/results.md; two
processes with disjoint ``--arms`` and the same ``--out`` share the work across cores).

Results are written as they come: ``runs/<arm>-seed<k>.json`` after every run (per-item
correctness included), ``results.json``, ``results.md`` and ``results.png`` after every run.
``--report-only`` rebuilds the summary, table and plot from the run files.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

SUFFIX = " Reply with the result only, in the form 'Answer: N'."
INSTRUCTION = ("There might be an error in your answer. Check it and give the correct result, "
               "in the form 'Answer: N'.")
ORACLE_CORRECT = "Your answer is correct. Give it again, in the form 'Answer: N'."
ORACLE_INCORRECT = ("Your answer is incorrect. Try again: give a different answer, in the form "
                    "'Answer: N'.")
ARMS = ("base", "grpo", "naive", "score", "mgrpo", "oracle")
CHANGE_RATES = ("change_if_wrong", "change_if_right", "changes_fixing")
CONTRASTS = (("score", "grpo", "acc_t2"), ("score", "naive", "acc_t2"),
             ("score", "naive", "delta"), ("mgrpo", "grpo", "acc_t2"))


# --------------------------------------------------------------------------- data and specs


def write_data(args: argparse.Namespace, root: Path) -> tuple[str, str]:
    """Training and held-out items (disjoint questions), the task's prompt + ``--suffix``."""
    from scoreops.data import generate_items, normalize_question, save_items
    from scoreops.data.items import Item

    config = json.loads(args.task_config)
    pool = generate_items(args.task, (args.train_items + args.eval_items) * args.pool_factor,
                          seed=0,
                          config=config)
    seen: set[str] = set()
    unique = []
    for it in pool:
        key = normalize_question(it.question)
        if key not in seen:
            seen.add(key)
            # every item ends with the same answer-form instruction (the built-in addition
            # task's own "Answer with only the number." is replaced by it)
            question = it.question.removesuffix(" Answer with only the number.") + args.suffix
            unique.append(Item(id=it.id, question=question, answer=it.answer,
                               source=it.source, meta={}))
    random.Random(0).shuffle(unique)
    held = unique[: args.eval_items]
    train = unique[args.eval_items : args.eval_items + args.train_items]
    if len(held) < args.eval_items or len(train) < args.train_items:
        raise SystemExit(f"{args.task} {config} has only {len(unique)} distinct questions")
    root.mkdir(parents=True, exist_ok=True)
    save_items(train, str(root / "train.jsonl"))
    save_items(held, str(root / "eval.jsonl"))
    return str(root / "train.jsonl"), str(root / "eval.jsonl")


def spec_for(arm: str, seed: int, args: argparse.Namespace, data: tuple[str, str],
             output: str) -> dict[str, Any]:
    stage1 = round(args.steps * args.stage1_fraction)
    score = {"stage1Steps": stage1, "stage2Steps": args.steps - stage1, "alpha": args.alpha,
             "beta1": 0.01, "beta2": 0.1, "bonusOnTurn1": False,
             "termScale": args.term_scale}
    algorithm: dict[str, Any] = {
        "grpo": {"name": "grpo", "grpo": {"steps": args.steps, "beta": 0.001}},
        "naive": {"name": "score", "score": {"stage1Steps": 0, "stage2Steps": args.steps,
                                             "alpha": 0.0, "beta1": 0.01, "termScale": "none"}},
        "score": {"name": "score", "score": {**score, "termGradNorms": args.grad_norms}},
        "oracle": {"name": "score", "score": score},
        "mgrpo": {"name": "mgrpo", "mgrpo": {"steps": args.steps, "beta": 0.001,
                                             "variations": 2}},
    }[arm]
    return {
        "model": {"uri": args.model},
        "dataset": {"train": {"uri": data[0]}, "eval": {"uri": data[1]}, "seed": seed,
                    "verifier": args.verifier},
        "algorithm": algorithm,
        "rollout": {"engine": "hf", "turns": 2, "samplesPerPrompt": args.samples,
                    "temperature": args.temperature, "maxNewTokens": args.max_new_tokens,
                    "correctionInstruction": args.instruction,
                    "feedback": "oracle" if arm == "oracle" else "none",
                    "oracle": oracle_spec(args)},
        "optim": {"learningRate": args.lr, "batchSize": args.batch,
                  "microBatchSize": args.batch * args.samples, "warmupRatio": 0.0,
                  "schedule": "constant", "maxGradNorm": 1.0},
        "resources": {"precision": "fp32"},
        "checkpoint": {"everySteps": args.steps, "keep": 1},
        "evaluation": {"enabled": True, "compareBase": False,
                       "maxNewTokens": args.max_new_tokens, "samples": args.eval_samples},
        "output": {"uri": output},
        "seed": seed,
    }


def oracle_spec(args: argparse.Namespace) -> dict[str, Any]:
    return {"correct": args.oracle_correct, "incorrect": args.oracle_incorrect,
            "stopWhenCorrect": args.oracle_stop}


def scorerun(spec: dict[str, Any], name: str) -> Any:
    from scoreops.api import parse_resource

    return parse_resource({"apiVersion": "scoreops.io/v1alpha1", "kind": "ScoreRun",
                           "metadata": {"name": name}, "spec": spec})


# --------------------------------------------------------------------------- runs


def _eval_entry(res: Any, seconds: float) -> dict[str, Any]:
    """What a run file keeps of one evaluation: the metrics, the change rates, and per item
    each turn's verdict and extracted answer (the first 5 outputs too)."""
    from scoreops.metrics import change_rates

    correct = [r["correct"] for r in res.records]
    extracted = [r["extracted"] for r in res.records]
    return {"metrics": res.metrics.to_dict(), "changes": change_rates(extracted, correct),
            "correct": correct, "extracted": extracted,
            "outputs": [r["outputs"] for r in res.records[:5]],
            "eval_seconds": round(seconds, 1)}


def evaluate_base(args: argparse.Namespace, data: tuple[str, str]) -> dict[str, Any]:
    """The base model, evaluated three ways (instruction, guide phrase, oracle feedback),
    greedily and, with ``--eval-samples``, sampled at the training temperature."""
    from types import SimpleNamespace

    from scoreops.api.scorerun import MGRPO_GUIDE_PHRASES
    from scoreops.data import load_items
    from scoreops.models import load_model
    from scoreops.rewards import make_verifier
    from scoreops.rollout import HFEngine
    from scoreops.training.evaluation import evaluate_items

    model, tok = load_model(args.model)
    engine = HFEngine(model, tok, max_batch_size=64)
    held = load_items(data[1])
    oracle = SimpleNamespace(correct=args.oracle_correct, incorrect=args.oracle_incorrect,
                             stop_when_correct=args.oracle_stop)
    modes = [("", {})]
    if args.eval_samples:
        modes.append((", sampled", {"samples": args.eval_samples,
                                     "temperature": args.temperature}))
    out: dict[str, Any] = {}
    for suffix, mode in modes:
        for label, kw in (("instruction", {}),
                          ("guide", {"guide_phrases": MGRPO_GUIDE_PHRASES}),
                          ("oracle", {"feedback": "oracle", "oracle": oracle})):
            t0 = time.perf_counter()
            res = evaluate_items(engine, held, make_verifier(args.verifier),
                                 instruction=args.instruction, turns=2,
                                 max_new_tokens=args.max_new_tokens, **kw, **mode)
            out[label + suffix] = _eval_entry(res, time.perf_counter() - t0)
            print(f"base/{label}{suffix}: "
                  f"{json.dumps(out[label + suffix]['metrics'])[:300]}", flush=True)
    return out


def train_arm(arm: str, seed: int, args: argparse.Namespace, data: tuple[str, str],
              work: Path) -> dict[str, Any]:
    from scoreops.training.loop import Trainer

    output = work / f"{arm}-seed{seed}"
    run = scorerun(spec_for(arm, seed, args, data, str(output)), f"compare-{arm}-{seed}")
    t0 = time.perf_counter()
    result = Trainer(run, fresh=True).run_training()
    seconds = time.perf_counter() - t0
    ev = result.evals["trained"]
    sampled = result.evals.get("trained (sampled)")
    keep = ("reward_t1", "reward_t2", "generated_tokens", "grad_norm", "grad_norm_turn1",
            "grad_norm_turn2", "layer2_groups", "i2c", "c2i", "kl_turn1", "kl_turn2",
            "layer1_kl", "kl", "seconds")
    shutil.rmtree(output, ignore_errors=True)
    return {
        "arm": arm, "seed": seed, "steps": result.step,
        "generated_tokens": int(sum(m.get("generated_tokens", 0) for m in result.metrics)),
        "seconds": round(seconds, 1),
        **_eval_entry(ev, 0.0),
        **({"sampled": _eval_entry(sampled, 0.0)} if sampled is not None else {}),
        "per_step": [{k: m[k] for k in keep if k in m} for m in result.metrics],
        "commit": args.commit,
        "versions": _versions(),
    }


# --------------------------------------------------------------------------- statistics


def _t95(k: int) -> float:
    """Two-sided 95% Student t quantile for k degrees of freedom (k ≤ 10 tabulated)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
             9: 2.262, 10: 2.228}
    return table.get(k, 1.96)


def across_seeds(values: list[float]) -> dict[str, Any]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "n": n, "ci": None, "values": values}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t95(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "ci": [mean - half, mean + half], "values": values}


def _stat(correct: list[list[bool]], metric: str, idx: list[int]) -> float:
    if metric == "acc_t2":
        return sum(correct[i][1] for i in idx) / len(idx)
    if metric == "acc_t1":
        return sum(correct[i][0] for i in idx) / len(idx)
    return sum(int(correct[i][1]) - int(correct[i][0]) for i in idx) / len(idx)  # delta


def paired_bootstrap(a: list[list[list[bool]]], b: list[list[list[bool]]], metric: str,
                     reps: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """metric(arm a) − metric(arm b): resample seed indices (paired by index) and items (the
    same items for both arms) with replacement; mean over the resampled seeds."""
    k = min(len(a), len(b))
    n = len(a[0])
    rng = random.Random(seed)
    point = sum(_stat(a[s], metric, list(range(n))) - _stat(b[s], metric, list(range(n)))
                for s in range(k)) / k
    draws = []
    for _ in range(reps):
        seeds = [rng.randrange(k) for _ in range(k)]
        items = [rng.randrange(n) for _ in range(n)]
        draws.append(sum(_stat(a[s], metric, items) - _stat(b[s], metric, items)
                         for s in seeds) / k)
    draws.sort()
    return {"estimate": point, "ci": [draws[int(0.025 * reps)], draws[int(0.975 * reps) - 1]],
            "p_le_0": sum(d <= 0 for d in draws) / reps, "seeds": k, "items": n}


def summarise(base: dict[str, Any] | None, runs: list[dict[str, Any]]) -> dict[str, Any]:
    arms: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        arms.setdefault(r["arm"], []).append(r)
    summary: dict[str, Any] = {"arms": {}, "contrasts": []}
    for arm, rs in arms.items():
        rs.sort(key=lambda r: r["seed"])
        summary["arms"][arm] = {
            m: across_seeds([r["metrics"][m] for r in rs])
            for m in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i")}
        if all("changes" in r for r in rs):
            summary["arms"][arm].update({
                m: across_seeds([r["changes"][m] for r in rs]) for m in CHANGE_RATES})
        if all("sampled" in r for r in rs):
            summary["arms"][arm]["sampled"] = {
                m: across_seeds([r["sampled"]["metrics"][m] for r in rs])
                for m in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i")} | {
                m: across_seeds([r["sampled"]["changes"][m] for r in rs])
                for m in CHANGE_RATES}
        summary["arms"][arm]["generated_tokens"] = across_seeds(
            [float(r["generated_tokens"]) for r in rs])
        summary["arms"][arm]["seeds"] = [r["seed"] for r in rs]
    for a, b, metric in CONTRASTS:
        if a in arms and b in arms:
            res = paired_bootstrap([r["correct"] for r in arms[a]],
                                   [r["correct"] for r in arms[b]], metric)
            summary["contrasts"].append({"a": a, "b": b, "metric": metric, **res})
            if all("sampled" in r for r in arms[a] + arms[b]):
                res = paired_bootstrap([r["sampled"]["correct"] for r in arms[a]],
                                       [r["sampled"]["correct"] for r in arms[b]], metric)
                summary["contrasts"].append({"a": a, "b": b, "metric": metric,
                                             "mode": "sampled", **res})
    if base is not None:
        summary["base"] = {k: v["metrics"] for k, v in base.items()}
    return summary


# --------------------------------------------------------------------------- report


def _fmt_ci(s: dict[str, Any]) -> str:
    if s.get("ci") is None:
        return f"{s['mean']:.3f}"
    return f"{s['mean']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"


def table(base: dict[str, Any] | None, runs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = ["Per run (Wilson 95% for the accuracies, Newcombe paired 95% for Δ; 'signal': "
             "steps with a non-zero gradient; while the policy is still at the reference, a "
             "zero gradient means every group's rewards were equal):", "",
             "| arm | seed | steps (signal) | gen. tokens | Acc@t1 | Acc@t2 | Δ(t1,t2) | Δi→c | "
             "Δc→i |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def row(name: str, seed: str, steps: Any, tokens: Any, m: dict[str, Any]) -> str:
        ci = m["ci"]
        return (f"| {name} | {seed} | {steps} | {tokens} | {m['acc_t1']:.3f} "
                f"[{ci['acc_t1'][0]:.2f}, {ci['acc_t1'][1]:.2f}] | {m['acc_t2']:.3f} "
                f"[{ci['acc_t2'][0]:.2f}, {ci['acc_t2'][1]:.2f}] | {m['delta']:+.3f} "
                f"[{ci['delta'][0]:+.2f}, {ci['delta'][1]:+.2f}] | {m['delta_i2c']:.3f} | "
                f"{m['delta_c2i']:.3f} |")

    if base is not None:
        for label, v in base.items():
            lines.append(row(f"base ({label})", "-", 0, 0, v["metrics"]))
    for r in sorted(runs, key=lambda r: (ARMS.index(r["arm"]), r["seed"])):
        signal = sum(1 for m in r["per_step"] if m.get("grad_norm", 0.0) > 0)
        lines.append(row(r["arm"] + (" (extrinsic)" if r["arm"] == "oracle" else ""),
                         str(r["seed"]), f"{r['steps']} ({signal})", r["generated_tokens"],
                         r["metrics"]))
        if "sampled" in r:
            lines.append(row(r["arm"] + " (sampled)", str(r["seed"]), "", "",
                             r["sampled"]["metrics"]))
    lines += ["", "Change rates: how often the second attempt changed the first answer "
              "(given turn 1 wrong / right) and the share of changes that fixed it (Wilson "
              "95%):", "",
              "| evaluation | seed | P(change \\| t1 wrong) | P(change \\| t1 right) | "
              "changes fixing | changes |",
              "| --- | --- | --- | --- | --- | --- |"]

    def change_row(name: str, seed: str, c: dict[str, Any]) -> str:
        def cell(k: str) -> str:
            lo, hi = c["ci"][k]
            return f"{c[k]:.2f} [{lo:.2f}, {hi:.2f}]"
        return (f"| {name} | {seed} | {cell('change_if_wrong')} | {cell('change_if_right')} | "
                f"{cell('changes_fixing')} | {c['changed']} |")

    if base is not None:
        for label, v in base.items():
            if "changes" in v:
                lines.append(change_row(f"base ({label})", "-", v["changes"]))
    for r in sorted(runs, key=lambda r: (ARMS.index(r["arm"]), r["seed"])):
        if "changes" in r:
            lines.append(change_row(r["arm"], str(r["seed"]), r["changes"]))
        if "sampled" in r:
            lines.append(change_row(r["arm"] + " (sampled)", str(r["seed"]),
                                    r["sampled"]["changes"]))
    lines += ["", "Across seeds (mean [95% t interval over seeds]):", "",
              "| arm | seeds | gen. tokens | Acc@t1 | Acc@t2 | Δ(t1,t2) | Δi→c | Δc→i |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for arm in ARMS:
        s = summary["arms"].get(arm)
        if s is None:
            continue
        name = arm + (" (extrinsic)" if arm == "oracle" else "")
        lines.append(f"| {name} | {len(s['seeds'])} | {s['generated_tokens']['mean']:.0f} | "
                     f"{_fmt_ci(s['acc_t1'])} | {_fmt_ci(s['acc_t2'])} | {_fmt_ci(s['delta'])} | "
                     f"{_fmt_ci(s['delta_i2c'])} | {_fmt_ci(s['delta_c2i'])} |")
        if "sampled" in s:
            ss = s["sampled"]
            lines.append(f"| {name} (sampled) | {len(s['seeds'])} | | {_fmt_ci(ss['acc_t1'])} | "
                         f"{_fmt_ci(ss['acc_t2'])} | {_fmt_ci(ss['delta'])} | "
                         f"{_fmt_ci(ss['delta_i2c'])} | {_fmt_ci(ss['delta_c2i'])} |")
    norms = [(r["seed"], m["grad_norm_turn1"], m["grad_norm_turn2"]) for r in runs
             if r["arm"] == "score" for m in r["per_step"] if "grad_norm_turn1" in m]
    if norms:
        lines += ["", "score: gradient norm of each turn's part of the loss per step, before "
                  "clipping (seed: turn 1 / turn 2):", "",
                  "; ".join(f"s{s}: {a:.1f} / {b:.1f}" for s, a, b in norms)]
    if summary["contrasts"]:
        lines += ["", "Paired bootstrap over items and seeds (10,000 draws):", "",
                  "| contrast | estimate | 95% interval | P(≤ 0) | seeds | items |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for c in summary["contrasts"]:
            mode = " (sampled)" if c.get("mode") == "sampled" else ""
            lines.append(f"| {c['metric']}({c['a']}) − {c['metric']}({c['b']}){mode} | "
                         f"{c['estimate']:+.3f} | [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] | "
                         f"{c['p_le_0']:.3f} | {c['seeds']} | {c['items']} |")
    return "\n".join(lines) + "\n"


def criteria(summary: dict[str, Any]) -> str:
    """Experiment 3's pre-registered criteria (docs/results.md), each met / not met with its
    numbers; every criterion is judged on the greedy evaluation, and the same numbers of the
    sampled evaluation (``--eval-samples``) are given beside it."""
    arms = summary["arms"]
    contrast = {(c["a"], c["b"], c["metric"], c.get("mode", "greedy")): c
                for c in summary["contrasts"]}

    def seeds(arm: str) -> int:
        return len(arms.get(arm, {}).get("seeds", []))

    def interval(s: dict[str, Any]) -> str:
        return "no interval (1 seed)" if s.get("ci") is None else \
            f"[{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}]"

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    def boot(c: dict[str, Any] | None) -> str:
        if c is None:
            return "n/a"
        return (f"{c['estimate']:+.3f}, bootstrap 95% [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] "
                f"({c['seeds']} seeds)")

    lines = []
    if "oracle" in arms:
        d = arms["oracle"]["delta"]
        ok = d["mean"] >= 0.10 and d.get("ci") is not None and d["ci"][0] > 0
        extra = ""
        if "sampled" in arms["oracle"]:
            ds = arms["oracle"]["sampled"]["delta"]
            extra = f"; sampled: {ds['mean']:+.3f} {interval(ds)}"
        lines.append(f"- C1 (positive control) Δ(oracle) = {d['mean']:+.3f}, t 95% {interval(d)} "
                     f"({seeds('oracle')} seeds), needs ≥ +0.10 with the interval above 0"
                     f"{extra}: {verdict(ok)}.")
    c = contrast.get(("score", "naive", "delta", "greedy"))
    if c:
        cs = contrast.get(("score", "naive", "delta", "sampled"))
        lines.append(f"- P1 Δ(score) − Δ(naive) = {boot(c)}; sampled: {boot(cs)}: "
                     f"{verdict(c['ci'][0] > 0)}.")
    c = contrast.get(("score", "grpo", "acc_t2", "greedy"))
    if c:
        cs = contrast.get(("score", "grpo", "acc_t2", "sampled"))
        ok = c["estimate"] >= 0 and c["ci"][0] > -0.05
        lines.append(f"- P2 Acc@t2(score) − Acc@t2(grpo) = {boot(c)} (met when ≥ 0 with the "
                     f"interval's lower end above −0.05); sampled: {boot(cs)}: {verdict(ok)}.")
    if "score" in arms:
        i2c, c2i = arms["score"]["delta_i2c"]["mean"], arms["score"]["delta_c2i"]["mean"]
        extra = ""
        if "sampled" in arms["score"]:
            ss = arms["score"]["sampled"]
            extra = (f"; sampled: Δc→i {ss['delta_c2i']['mean']:.3f} vs Δi→c "
                     f"{ss['delta_i2c']['mean']:.3f}")
        lines.append(f"- P3 Δc→i(score) = {c2i:.3f} ≤ ¼ · Δi→c(score) = {i2c / 4:.3f}"
                     f"{extra}: {verdict(i2c > 0 and c2i <= i2c / 4)}.")
    c = contrast.get(("mgrpo", "grpo", "acc_t2", "greedy"))
    if c and "mgrpo" in arms:
        lines.append(f"- S1 Acc@t2(mgrpo) − Acc@t2(grpo) = {boot(c)}; Δ(mgrpo) = "
                     f"{arms['mgrpo']['delta']['mean']:+.3f} (reported, no criterion).")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in ARMS if a in summary["arms"]]
    base = summary.get("base", {}).get("instruction")
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.38
    for k, metric in enumerate(("acc_t1", "acc_t2")):
        means, lo, hi = [], [], []
        for a in arms:
            s = summary["arms"][a][metric]
            means.append(s["mean"])
            ci = s["ci"] or [s["mean"], s["mean"]]
            lo.append(s["mean"] - ci[0])
            hi.append(ci[1] - s["mean"])
        xs = [i + (k - 0.5) * width for i in range(len(arms))]
        ax.bar(xs, means, width, yerr=[lo, hi], capsize=3,
               label="Acc@t1" if metric == "acc_t1" else "Acc@t2")
        for i, a in enumerate(arms):
            vals = summary["arms"][a][metric]["values"]
            ax.scatter([xs[i]] * len(vals), vals, color="black", s=8, zorder=3)
    if base is not None:
        ax.axhline(base["acc_t1"], color="grey", linestyle="--", linewidth=1,
                   label="base Acc@t1")
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels([a + ("\n(extrinsic)" if a == "oracle" else "") for a in arms])
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_title("mean over seeds, 95% t interval; dots: seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, settings: dict[str, Any]) -> None:
    base_file = out / "runs" / "base.json"
    base = json.loads(base_file.read_text()) if base_file.exists() else None
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*-seed*.json"))]
    if not runs and base is None:
        return
    summary = summarise(base, runs) if runs else {"arms": {}, "contrasts": []}
    (out / "results.json").write_text(json.dumps(
        {"settings": settings, "summary": summary,
         "runs": [{k: v for k, v in r.items() if k != "correct"} for r in runs]}, indent=1))
    md = table(base, runs, summary)
    if runs:
        md += "\nPre-registered criteria (docs/results.md):\n\n" + criteria(summary)
    (out / "results.md").write_text(md)
    if runs:
        plot(summary, out / "results.png")
    print(md, flush=True)


def _versions() -> dict[str, str]:
    """The versions of the packages a run's numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "scoreops"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def _commit() -> str:
    """The commit of the code this process runs, with ``+dirty`` when the tree has changes
    (each run file records it: a run must say which code it imported)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "python", "bench"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin://smollm2-135m-instruct")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seeds", type=int, default=3, help="training seeds per arm")
    p.add_argument("--steps", type=int, default=8, help="optimiser steps of every arm")
    p.add_argument("--batch", type=int, default=4, help="prompts per step")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (G)")
    p.add_argument("--task", default="single-digit-addition",
                   help="a built-in or reasoning-gym task (see `scoreops data --help`)")
    p.add_argument("--task-config", default='{"low": 0, "high": 49}',
                   help="the task's config as JSON (default: operands 0..49, 2,500 questions)")
    p.add_argument("--train-items", type=int, default=2000)
    p.add_argument("--pool-factor", type=int, default=10,
                   help="generate this many times the items needed, then keep distinct "
                        "questions (1 for a task whose generator returns distinct ones)")
    p.add_argument("--eval-items", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--stage1-fraction", type=float, default=0.25)
    p.add_argument("--grad-norms", action="store_true",
                   help="log each turn's gradient norm in the score arm (one more backward "
                        "per step)")
    p.add_argument("--suffix", default=SUFFIX,
                   help="appended to every question (the answer form)")
    p.add_argument("--instruction", default=INSTRUCTION,
                   help="the correction instruction before the second attempt")
    p.add_argument("--oracle-correct", default=ORACLE_CORRECT,
                   help="the oracle's whole message after a right answer")
    p.add_argument("--oracle-incorrect", default=ORACLE_INCORRECT,
                   help="the oracle's whole message after a wrong answer")
    p.add_argument("--oracle-stop", action="store_true",
                   help="the oracle stops after a right answer (it stands for turn 2)")
    p.add_argument("--verifier", default="math",
                   help="how answers are checked (math, exact, choice, ...)")
    p.add_argument("--alpha", type=float, default=10.0, help="SCoRe's shaping weight")
    p.add_argument("--term-scale", default="shared", choices=("shared", "std", "none"),
                   help="SCoRe's advantage scale (see scoreops.algorithms.score)")
    p.add_argument("--eval-samples", type=int, default=0,
                   help="also evaluate with this many samples per item at --temperature")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    p.add_argument("--out", default=None)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="scoreops-compare-"))
    (out / "runs").mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items()
                if k not in ("out", "report_only", "arms")}  # arms: may be split over processes
    args.commit = _commit()
    settings["commit"] = args.commit
    settings["versions"] = _versions()
    if args.report_only:
        write_report(out, settings)
        return
    import torch

    from scoreops import storage

    if args.threads:
        torch.set_num_threads(args.threads)
    (out / "settings.json").write_text(json.dumps(settings, indent=1))
    work = Path(tempfile.mkdtemp(prefix="scoreops-compare-work-"))
    data = write_data(args, work / "data")
    arms = args.arms.split(",")
    for a in arms:
        if a not in ARMS:
            raise SystemExit(f"unknown arm {a!r}; known: {', '.join(ARMS)}")
    if "base" in arms and not (out / "runs" / "base.json").exists():
        # storage writes a local file atomically: a resumed job never takes a half-written one
        storage.write_text(out / "runs" / "base.json", json.dumps(evaluate_base(args, data)))
        write_report(out, settings)
    for seed in range(args.seeds):  # seed-major: every arm of a seed before the next seed
        for arm in arms:
            if arm == "base":
                continue
            path = out / "runs" / f"{arm}-seed{seed}.json"
            if path.exists():  # resumable: a finished run is not repeated
                continue
            t0 = time.perf_counter()
            r = train_arm(arm, seed, args, data, work)
            storage.write_text(path, json.dumps(r))
            print(f"{arm} seed {seed}: {time.perf_counter() - t0:.0f}s "
                  f"{json.dumps(r['metrics'])[:200]}", flush=True)
            write_report(out, settings)
    shutil.rmtree(work, ignore_errors=True)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
