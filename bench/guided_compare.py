"""Feedback-guided decoding vs best-of-N at matched generated-token budgets, on GSM8K.

One model (SmolLM2-135M-Instruct by default), the first ``--items`` GSM8K test items
(scoreops' offline copy: ``scoreops data import gsm8k``), the transformers engine on this
machine, and these strategies, each through :func:`scoreops.strategies.run_strategy` (what an
EvalSuite and ``scoreops serve`` run):

* ``single``: one greedy answer;
* ``best-of-K (self-eval)``: K samples at ``--temperature`` ranked by the model's own
  verdict; ``self-consistency@K``: a majority vote over the same K samples (one sampling
  run serves both, so they see identical samples; the vote's wall time is that run's);
* ``guided`` with each critic that can run offline (``self-eval``, ``tool``, and their
  equal-weight mix): beam × expand candidates per step, the per-item generated-token
  budget set to best-of-K's measured mean tokens per item (the matched budget).

The ``reward-model`` critic needs a process reward model; none is available offline here,
so it is run only when ``--reward-model URI`` is given.

For each: accuracy with a 95% Wilson interval, generated tokens per item (candidates; the
self-eval verdicts are counted apart), wall time. Raw JSON (the figures and every item's
record, guided search trees included) goes to ``--out`` (default
``bench/results/guided-<date>/``)::

    python bench/guided_compare.py --items 40 --max-new-tokens 96 --samples 4
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import time
from pathlib import Path
from typing import Any


def _wilson(k: int, n: int) -> tuple[float, float]:
    from scoreops.metrics import wilson_interval

    lo, hi = wilson_interval(k, n)
    return float(lo), float(hi)


def arm_file(out: Path, name: str, partial: bool = False) -> Path:
    stem = name.replace(" ", "_").replace("/", "-")
    return out / f"{stem}{'.partial' if partial else ''}.json"


def run_arm(name: str, engine: Any, items: list[dict[str, Any]], spec: dict[str, Any],
            params: Any, batch: int, out: Path | None = None) -> dict[str, Any]:
    """One arm over ``items``; with ``out``, the items done so far are saved after each
    batch (``<arm>.partial.json``) so that a run cut short still has its figures."""
    from scoreops.api import StrategySpec
    from scoreops.benchmarks import get_benchmark
    from scoreops.evaluate.generation import answer_extractor, passed
    from scoreops.strategies import run_strategy

    bench = get_benchmark("gsm8k")
    strategy = StrategySpec.model_validate(spec)
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    for at in range(0, len(items), batch):
        part = items[at:at + batch]
        results = run_strategy(engine, [bench.format_prompt(it, 0) for it in part], strategy,
                               params, extract=[answer_extractor(bench, it) for it in part])
        for it, res in zip(part, results, strict=True):
            score = bench.score(res.final_text, it)
            rec = {"id": it.get("id"), "gold": it["answer"], "output": res.final_text,
                   "extracted": res.final_answer, "correct": passed(score.get("correct")),
                   "completion_tokens": res.completion_tokens,
                   "prompt_tokens": res.prompt_tokens}
            if res.search is not None:
                rec["search"] = res.search
            elif len(res.attempts) > 1:
                rec["attempts"] = [{"output": a.text, "extracted": a.answer, "score": a.score,
                                    "correct": passed(bench.score(a.text, it).get("correct"))}
                                   for a in res.attempts]
            records.append(rec)
        if out is not None and len(records) < len(items):
            partial = summarise(name, spec, records, time.perf_counter() - start)
            partial["partial"] = f"{len(records)} of {len(items)} items"
            arm_file(out, name, partial=True).write_text(json.dumps(partial, indent=1))
    seconds = time.perf_counter() - start
    return summarise(name, spec, records, seconds)


def summarise(name: str, spec: dict[str, Any], records: list[dict[str, Any]],
              seconds: float) -> dict[str, Any]:
    n = len(records)
    k = sum(r["correct"] for r in records)
    out: dict[str, Any] = {
        "arm": name, "strategy": spec, "n": n, "correct": k, "accuracy": k / n if n else 0.0,
        "ci95": _wilson(k, n),
        "tokens_per_item": sum(r["completion_tokens"] for r in records) / max(1, n),
        "seconds": seconds, "records": records,
    }
    searches = [r["search"] for r in records if "search" in r]
    if searches:
        out["mean_steps"] = sum(s["steps"] for s in searches) / len(searches)
        out["critic_tokens_per_item"] = sum(s.get("critic_tokens", 0)
                                            for s in searches) / len(searches)
        chosen = sum(s["steps"] for s in searches)
        out["critic_overrides"] = sum(s["overrides"] for s in searches)
        out["override_rate"] = out["critic_overrides"] / max(1, chosen)
        out["budget_stops"] = sum(1 for s in searches if s.get("stopped"))
    logging.getLogger("guided_compare").warning(
        "%-28s acc %.3f [%.2f, %.2f]  tokens/item %.0f  %.0f s", name, out["accuracy"],
        *out["ci95"], out["tokens_per_item"], seconds)
    return out


def vote_over(bon: dict[str, Any], name: str, k: int) -> dict[str, Any]:
    """Self-consistency@K over best-of-K's own K samples (the same samples, a majority
    vote instead of the verifier); its wall time is the sampling run's."""
    from scoreops.strategies import majority_vote

    records = []
    for rec in bon["records"]:
        atts = rec["attempts"]
        win = majority_vote([a["extracted"] for a in atts])
        chosen = atts[win if win is not None else 0]
        records.append({**{key: v for key, v in rec.items() if key != "attempts"},
                        "output": chosen["output"], "extracted": chosen["extracted"],
                        "correct": chosen["correct"]})
    arm = summarise(name, {"name": "self-consistency", "samples": k}, records, bon["seconds"])
    arm["note"] = f"majority vote over the {k} samples of the best-of-{k} run"
    return arm


def _table(arms: list[dict[str, Any]]) -> str:
    lines = ["| strategy | accuracy [95% CI] | generated tokens / item | critic tokens / item "
             "| mean steps | critic overrides | wall time |",
             "|---|---|---|---|---|---|---|"]
    for a in arms:
        lo, hi = a["ci95"]
        steps = f"{a['mean_steps']:.1f}" if "mean_steps" in a else "–"
        crit = f"{a['critic_tokens_per_item']:.0f}" if "critic_tokens_per_item" in a else "–"
        over = (f"{a['override_rate']:.0%} of steps" if "override_rate" in a else "–")
        lines.append(f"| {a['arm']} | {a['accuracy']:.3f} [{lo:.2f}, {hi:.2f}] | "
                     f"{a['tokens_per_item']:.0f} | {crit} | {steps} | {over} | "
                     f"{a['seconds']:.0f} s |")
    return "\n".join(lines)


ORDER = ("single", "self-consistency", "best-of", "guided")


def merge(out: Path) -> int:
    """summary.json and table.md from every arm's JSON in ``out``."""
    arms = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))
            if p.name != "summary.json" and not p.name.endswith(".partial.json")]
    done = {a["arm"] for a in arms}
    for p in sorted(out.glob("*.partial.json")):  # arms cut short: the items they finished
        arm = json.loads(p.read_text())
        if arm["arm"] not in done:
            arm["arm"] += f" [partial: {arm['partial']}]"
            arms.append(arm)
    arms.sort(key=lambda a: (next(i for i, o in enumerate(ORDER) if a["arm"].startswith(o)),
                             a["arm"]))
    settings: dict[str, Any] = {}
    if (out / "summary.json").exists():  # one process's settings (the same in every one)
        settings = json.loads((out / "summary.json").read_text())
        settings.pop("arms", None)
    settings["arms"] = [{k: v for k, v in a.items() if k != "records"} for a in arms]
    (out / "summary.json").write_text(json.dumps(settings, indent=1))
    table = _table(arms)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin://smollm2-135m-instruct")
    parser.add_argument("--items", type=int, default=40, help="first N GSM8K test items")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="per answer")
    parser.add_argument("--samples", type=int, default=4, help="K of self-consistency "
                        "and best-of-K")
    parser.add_argument("--beam", type=int, default=2)
    parser.add_argument("--expand", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--batch", type=int, default=16, help="items per run_strategy call")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 on a shared CPU: more spin-wait)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--critics", default="self-eval,tool",
                        help="guided arms: self-eval, tool, mix (both, equal weights), "
                        "reward-model (needs --reward-model)")
    parser.add_argument("--reward-model", default=None, help="process reward model URI")
    parser.add_argument("--arms", default="single,sampled,guided",
                        help="which arms this process runs (single, sampled: best-of-K and "
                        "the vote over its samples, guided); several processes may share "
                        "--out, each arm writes its own JSON")
    parser.add_argument("--token-budget", type=int, default=None,
                        help="guided's per-item budget (default: best-of-K's measured mean "
                        "tokens per item, or K x --max-new-tokens without the sampled arms)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--merge", action="store_true",
                        help="only rebuild summary.json and table.md from the arms' JSON in "
                        "--out (after several processes shared it)")
    args = parser.parse_args()
    if args.merge:
        return merge(Path(args.out))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from scoreops.benchmarks import benchmark_uri, import_benchmark, load_benchmark_items
    from scoreops.models import load_model
    from scoreops.rollout import HFEngine, SamplingParams
    from scoreops.storage import exists

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if not exists(benchmark_uri("gsm8k", None, "test.jsonl")):
        import_benchmark("gsm8k")
    items = load_benchmark_items("gsm8k", limit=args.items)
    model, tokenizer = load_model(args.model)
    engine = HFEngine(model, tokenizer, max_batch_size=32)
    out = Path(args.out or f"bench/results/guided-{datetime.date.today().isoformat()}")
    out.mkdir(parents=True, exist_ok=True)

    greedy = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0,
                            seed=args.seed, stop=())
    sampled = SamplingParams(max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, seed=args.seed, stop=())
    arms: list[dict[str, Any]] = []

    def record(arm: dict[str, Any]) -> dict[str, Any]:
        arms.append(arm)
        arm_file(out, arm["arm"]).write_text(json.dumps(arm, indent=1))
        arm_file(out, arm["arm"], partial=True).unlink(missing_ok=True)
        return arm

    wanted = {a.strip() for a in args.arms.split(",")}
    if "single" in wanted:
        record(run_arm("single (greedy)", engine, items, {"name": "single"}, greedy,
                       args.batch))
    k = args.samples
    budget = args.token_budget or k * args.max_new_tokens
    if "sampled" in wanted:
        bon = run_arm(f"best-of-{k} (self-eval)", engine, items,
                      {"name": "best-of-n", "samples": k, "verifier": "self-eval"}, sampled,
                      args.batch)
        record(vote_over(bon, f"self-consistency@{k}", k))
        record(bon)
        budget = args.token_budget or max(1, round(bon["tokens_per_item"]))
    guided = {"name": "guided", "beam": args.beam, "expand": args.expand,
              "maxSteps": args.max_steps, "tokenBudget": budget}
    critics = [c.strip() for c in args.critics.split(",") if c.strip()]
    for critic in critics if "guided" in wanted else []:
        if critic == "mix":
            spec = guided | {"criticWeights": [{"name": "self-eval", "weight": 1.0},
                                               {"name": "tool", "weight": 1.0}]}
        elif critic == "reward-model":
            if not args.reward_model:
                logging.getLogger("guided_compare").warning(
                    "guided (reward-model): skipped, no --reward-model given")
                continue
            spec = guided | {"critic": "reward-model", "rewardModel": args.reward_model}
        else:
            spec = guided | {"critic": critic}
        name = f"guided {args.beam}x{args.expand} ({critic})"
        record(run_arm(name, engine, items, spec, sampled, args.batch, out))

    summary = {
        "model": args.model, "items": len(items), "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "samples": k, "beam": args.beam,
        "expand": args.expand, "max_steps": args.max_steps, "token_budget": budget,
        "threads": args.threads, "torch": torch.__version__,
        "arms": [{key: v for key, v in a.items() if key != "records"} for a in arms],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    table = _table(arms)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
