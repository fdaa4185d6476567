"""SCoRe vs GRPO vs MGRPO at equal compute on the CPU demo task, in one run.

Each algorithm trains the same base model (SmolLM2-135M-Instruct by default) on the same
single-digit additions with the same rollout and optimiser settings until it has *generated*
the same number of tokens (``--token-budget``; the step that crosses the budget is the last),
then the same held-out items are evaluated greedily with two turns (attempt, correction
instruction, attempt): Acc@t1, Acc@t2, Δ, Δi→c, Δc→i. Generated tokens are the compute that
differs between the algorithms (MGRPO's layer 2 and SCoRe's second turn generate more per
prompt than single-turn GRPO); the update cost follows the same sequences.

    python bench/compare_algorithms.py [--token-budget 3000] [--eval 60] [--out DIR]
        [--model builtin://smollm2-135m-instruct] [--algorithms score,grpo,mgrpo]

Writes ``results.json`` and ``results.md`` (the table) under ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

INSTRUCTION = ("There might be an error in your answer. Check it and give the correct answer. "
               "Answer with only the number.")
GUIDES = [f"{p} Answer with only the number." for p in (
    "Wait, let me recheck my solution.",
    "Hold on, I should double-check the calculation above.",
    "Let me verify each step of the solution again.",
    "Hmm, I might have made a mistake. Let me review the reasoning.",
    "Before finalizing, let me re-examine the steps for errors.",
    "Let me carefully go through the solution once more to make sure it is correct.",
    "Wait, is that right? Let me check again step by step.",
)]
MAX_STEPS = 10_000  # the token budget ends each run long before


def base_spec(args: argparse.Namespace, output: str) -> dict[str, Any]:
    return {
        "model": {"uri": args.model},
        "dataset": {"train": {"generator": {"task": "single-digit-addition", "size": 400,
                                            "seed": 0}},
                    "evalSize": args.eval, "seed": 0},
        "rollout": {"engine": "hf", "turns": 2, "samplesPerPrompt": args.samples,
                    "temperature": 1.0, "maxNewTokens": args.max_new_tokens,
                    "correctionInstruction": INSTRUCTION},
        "optim": {"learningRate": args.lr, "batchSize": args.batch, "microBatchSize": 16,
                  "warmupRatio": 0.0, "schedule": "constant"},
        "resources": {"precision": "fp32"},
        "checkpoint": {"everySteps": MAX_STEPS, "keep": 1},
        "evaluation": {"enabled": False},
        "output": {"uri": output},
        "seed": args.seed,
    }


def algorithm_block(name: str) -> dict[str, Any]:
    if name == "score":
        # stage I for the first fifth of the (unknown) number of steps is not expressible with
        # a token budget; SCoRe runs stage I for 2 steps, then stage II
        return {"name": "score", "score": {"stage1Steps": 2, "stage2Steps": MAX_STEPS,
                                           "alpha": 10.0, "beta1": 0.01, "beta2": 0.1}}
    if name == "grpo":
        return {"name": "grpo", "grpo": {"steps": MAX_STEPS, "beta": 0.001}}
    if name == "mgrpo":
        return {"name": "mgrpo", "mgrpo": {"steps": MAX_STEPS, "beta": 0.001, "variations": 2,
                                           "guidePhrases": GUIDES}}
    raise SystemExit(f"unknown algorithm {name!r}")


def evaluate(model_uri: str, weights: Path | None, run: Any) -> dict[str, Any]:
    """Greedy two-turn evaluation of the base model, or of it with ``weights`` loaded."""
    from safetensors.torch import load_file

    from scoreops.models import load_model
    from scoreops.rewards import make_verifier
    from scoreops.rollout import HFEngine
    from scoreops.training.evaluation import evaluate_items
    from scoreops.training.loop import load_split

    model, tok = load_model(model_uri)
    if weights is not None:
        model.load_state_dict(load_file(str(weights)), strict=False)
    _, held = load_split(run)
    res = evaluate_items(HFEngine(model, tok, max_batch_size=64), held, make_verifier("math"),
                         instruction=INSTRUCTION, turns=2,
                         max_new_tokens=run.spec.rollout.max_new_tokens)
    return res.metrics.to_dict()


def train_with_budget(run: Any, budget: int) -> dict[str, Any]:
    from scoreops.training.checkpoint import list_checkpoints
    from scoreops.training.loop import Trainer

    spent = {"tokens": 0, "steps": 0}
    trainer: Trainer

    def on_step(m: dict[str, Any]) -> None:
        spent["tokens"] += int(m.get("generated_tokens", 0))
        spent["steps"] = int(m["step"])
        if spent["tokens"] >= budget:
            trainer.request_stop()

    trainer = Trainer(run, on_step=on_step, fresh=True)
    t0 = time.perf_counter()
    result = trainer.run_training()
    seconds = time.perf_counter() - t0
    ckpt = list_checkpoints(result.output)[-1]
    from scoreops import storage

    weights = storage.cached_artifact(ckpt) / "model.safetensors"
    rewards = [m.get("reward_t1", 0.0) for m in result.metrics]
    return {"steps": spent["steps"], "generated_tokens": spent["tokens"],
            "train_seconds": round(seconds, 1), "weights": str(weights),
            "reward_t1_first": rewards[0] if rewards else None,
            "reward_t1_last": rewards[-1] if rewards else None,
            "layer2_groups": [m["layer2_groups"] for m in result.metrics
                              if "layer2_groups" in m]}


def table(rows: dict[str, dict[str, Any]]) -> str:
    head = ("| model | steps | generated tokens | Acc@t1 | Acc@t2 | Δ(t1,t2) | Δi→c | Δc→i |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- |\n")
    lines = []
    for name, r in rows.items():
        m = r["metrics"]
        lines.append(f"| {name} | {r.get('steps', 0)} | {r.get('generated_tokens', 0)} | "
                     f"{m['acc_t1']:.3f} | {m['acc_t2']:.3f} | {m['delta']:+.3f} | "
                     f"{m['delta_i2c']:.3f} | {m['delta_c2i']:.3f} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    from scoreops.api import parse_resource

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin://smollm2-135m-instruct")
    p.add_argument("--algorithms", default="score,grpo,mgrpo")
    p.add_argument("--token-budget", type=int, default=3000)
    p.add_argument("--eval", type=int, default=60, help="held-out items")
    p.add_argument("--batch", type=int, default=4, help="prompts per step")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (G)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="scoreops-compare-"))
    out.mkdir(parents=True, exist_ok=True)

    rows: dict[str, dict[str, Any]] = {}
    first = None
    for name in args.algorithms.split(","):
        spec = base_spec(args, str(out / name))
        spec["algorithm"] = algorithm_block(name)
        run = parse_resource({"apiVersion": "scoreops.io/v1alpha1", "kind": "ScoreRun",
                              "metadata": {"name": f"compare-{name}"}, "spec": spec})
        if first is None:
            first = run
            t0 = time.perf_counter()
            rows["base"] = {"metrics": evaluate(args.model, None, run)}
            print(f"base evaluated in {time.perf_counter() - t0:.0f}s: {rows['base']}",
                  flush=True)
        r = train_with_budget(run, args.token_budget)
        r["metrics"] = evaluate(args.model, Path(r["weights"]), run)
        rows[name] = r
        print(f"{name}: {json.dumps(r)}", flush=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    (out / "results.json").write_text(json.dumps({"settings": settings, "rows": rows},
                                                 indent=2))
    md = table(rows)
    (out / "results.md").write_text(md)
    print(md)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
