"""One GRPO training step: scoreops vs TRL's ``GRPOTrainer``, same workload, in one run.

Single-turn GRPO is the closest thing TRL has to a scoreops training step, so both sides run
it with the same settings:

* the same model directory (SmolLM2-135M-Instruct by default; ``--tiny`` for a 0.8M-parameter
  random Llama with SmolLM2's tokenizer, for a quick check of the harness);
* the same prompts in the same order: P single-digit additions per step (the order the
  scoreops trainer draws them in is computed here and fed to TRL unshuffled), rendered with
  the model's chat template, G samples each at temperature 1.0 (no top-k / top-p), at most
  L new tokens, stopping at the end-of-turn token;
* the same reward: 1 if scoreops' math verifier accepts the completion, else 0;
* the same loss: clipped ratio (ε 0.2), group-normalised advantages, k3 KL to a reference
  model with the same ``beta`` (both load a frozen second copy), token-mean over the batch
  (TRL's ``dapo``), one update per batch;
* the same optimiser: ``torch.optim.AdamW`` (TRL ``optim="adamw_torch"``), constant learning
  rate, no warm-up, no weight decay, gradient clipping at 1.0; one forward/backward over all
  P·G sequences per step (scoreops ``microBatchSize = P·G``; TRL per-device batch P·G, no
  accumulation);
* fp32 on CPU, TRL's gradient checkpointing and bf16 defaults switched off (scoreops uses
  neither on CPU), ``--threads`` intra-op threads on both sides.

scoreops runs its real trainer (``scoreops.training.loop.Trainer`` on a ScoreRun with
``algorithm: grpo``) and the step time is the trainer's own per-step ``seconds`` (rollout,
rewards, reference and policy forward/backward, clipping, optimiser step). TRL is timed from
``on_step_begin`` to ``on_step_end`` of a ``TrainerCallback``, the same span. The first step of
each run is a warm-up and is dropped; the median of the rest is reported. Each side runs in its
own subprocess (scoreops first; ``--rounds R`` alternates them R times), so its peak RSS
(``ru_maxrss``: both models, gradients and optimiser state) is its own. Because a shared
machine's load shows up in wall time, each step's process CPU time is reported too.

    python bench/trl_compare.py [--steps 6] [--rounds 1] [--prompts 4] [--generations 4]
        [--max-new-tokens 24] [--threads 2] [--beta 0.04] [--lr 5e-6]
        [--model builtin://smollm2-135m-instruct | --tiny] [--json out.json]

Prints a table (median step wall and CPU seconds, generated tokens per second of generation
and per second of step, mean completion length, mean reward, setup seconds, peak RSS) and
``ratio = trl_step / scoreops_step`` (> 1: scoreops is faster). Needs ``pip install trl``
(with ``-c <(echo torch==2.13.0)`` so torch stays where it is).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # testkit: the test harnesses

SIDES = ("scoreops", "trl")
TASK = "single-digit-addition"
DEFAULT_MODEL = "builtin://smollm2-135m-instruct"


# --- the shared workload ----------------------------------------------------------------------


def build_run(args: argparse.Namespace, model_dir: str, output: str) -> Any:
    """The ScoreRun both sides' workload is defined by (scoreops trains it; TRL copies it)."""
    from scoreops.api import parse_resource

    p, g = args.prompts, args.generations
    spec = {
        "model": {"uri": model_dir},
        "dataset": {"train": {"generator": {"task": TASK, "size": max(64, p * args.steps),
                                            "seed": args.seed}},
                    "evalSize": 0, "seed": args.seed, "verifier": "math"},
        "algorithm": {"name": "grpo", "grpo": {"steps": args.steps, "beta": args.beta,
                                               "clipEpsilon": 0.2, "klEstimator": "k3",
                                               "scaleRewards": True}},
        "rollout": {"engine": "hf", "turns": 1, "samplesPerPrompt": g, "temperature": 1.0,
                    "topP": 1.0, "maxNewTokens": args.max_new_tokens},
        "optim": {"learningRate": args.lr, "batchSize": p, "microBatchSize": p * g,
                  "warmupRatio": 0.0, "schedule": "constant", "weightDecay": 0.0,
                  "maxGradNorm": 1.0},
        "resources": {"precision": "fp32"},
        "checkpoint": {"everySteps": 1_000_000, "keep": 1},
        "evaluation": {"enabled": False},
        "output": {"uri": output},
        "seed": args.seed,
    }
    return parse_resource({"apiVersion": "scoreops.io/v1alpha1", "kind": "ScoreRun",
                           "metadata": {"name": "trl-compare"}, "spec": spec})


def prompt_order(run: Any, steps: int) -> list[Any]:
    """The items the scoreops trainer draws for steps 0..steps-1, in its order."""
    from typing import cast

    from scoreops.training.context import StepContext
    from scoreops.training.loop import load_split

    train, _ = load_split(run)
    none = cast(Any, None)  # prompts_for_step reads only the spec and the items
    ctx = StepContext(spec=run.spec, policy=none, reference=None, tokenizer=none, engine=none,
                      verifier=none, train_items=train, device=none)
    return [item for s in range(steps) for item in ctx.prompts_for_step(s)]


# --- one side per process -------------------------------------------------------------------


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        with contextlib.suppress(PackageNotFoundError):
            out[n] = version(n)
    return out


def run_scoreops(args: argparse.Namespace, model_dir: str) -> dict[str, Any]:
    import torch

    from scoreops.training.loop import Trainer

    torch.set_num_threads(args.threads)
    threads: list[int] = []
    t_setup = time.perf_counter()
    first_start: list[float] = []
    cpu_marks: list[float] = []

    def on_step(m: dict[str, Any]) -> None:
        cpu_marks.append(time.process_time())
        threads.append(torch.get_num_threads())
        if not first_start:
            first_start.append(time.perf_counter() - float(m["seconds"]))

    with tempfile.TemporaryDirectory(prefix="trl-compare-scoreops-") as out:
        run = build_run(args, model_dir, out)
        result = Trainer(run, output=out, on_step=on_step, fresh=True).run_training()
    ms = result.metrics
    return {
        "step_seconds": [float(m["seconds"]) for m in ms],
        # CPU seconds of the process between consecutive step ends: step k plus the trainer's
        # bookkeeping after step k-1 (progress file, metrics line); unknown for the first step
        "step_cpu_seconds": [None] + [b - a for a, b in itertools.pairwise(cpu_marks)],
        "generated_tokens": [int(m["generated_tokens"]) for m in ms],
        "generation_seconds": [float(m["rollout_seconds"]) for m in ms],
        "reward": [float(m["reward_t1"]) for m in ms],
        "setup_s": first_start[0] - t_setup if first_start else None,
        "threads": sorted(set(threads)),
        "versions": _versions("scoreops", "torch", "transformers"),
    }


def run_trl(args: argparse.Namespace, model_dir: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from scoreops.rewards import make_verifier

    p, g = args.prompts, args.generations
    with tempfile.TemporaryDirectory(prefix="trl-compare-run-") as tmp:
        items = prompt_order(build_run(args, model_dir, tmp), args.steps)
    by_id = {it.id: it for it in items}
    rows = [{"prompt": [{"role": "user", "content": it.question}], "item_id": it.id}
            for it in items]
    verifier = make_verifier("math")
    rec: dict[str, list[Any]] = {"step_seconds": [], "step_cpu_seconds": [],
                                 "generated_tokens": [],
                                 "generation_seconds": [], "reward": [], "threads": [],
                                 "trl_logged_step_time": [], "prompt_order_mismatches": []}

    def correct(completions: list[Any], item_id: list[str], completion_ids: list[list[int]],
                **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
        r = [verifier(t, by_id[i]) for t, i in zip(texts, item_id, strict=True)]
        rec["generated_tokens"].append(sum(len(ids) for ids in completion_ids))
        rec["reward"].append(sum(r) / len(r))
        step = len(rec["reward"]) - 1  # one generation per step; scoreops' order, grouped
        expected = [it.id for it in items[step * p:(step + 1) * p] for _ in range(g)]
        rec["prompt_order_mismatches"].append(int(list(item_id) != expected))
        return r

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        start = 0.0
        cpu_start = 0.0
        first_start: float | None = None

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.start = time.perf_counter()
            self.cpu_start = time.process_time()
            if self.first_start is None:
                self.first_start = self.start

        def on_step_end(self, *a: Any, **k: Any) -> None:
            rec["step_seconds"].append(time.perf_counter() - self.start)
            rec["step_cpu_seconds"].append(time.process_time() - self.cpu_start)
            rec["threads"].append(torch.get_num_threads())

        def on_log(self, *a: Any, logs: dict[str, Any] | None = None, **k: Any) -> None:
            if logs and "step_time" in logs:  # TRL's own per-step timer, as a cross-check
                rec["trl_logged_step_time"].append(float(logs["step_time"]))

    timer = StepTimer()
    t_setup = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trl-compare-trl-") as out:
        config = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, fp16=False, activation_checkpointing=False,
            model_init_kwargs={"dtype": torch.float32},
            per_device_train_batch_size=p * g, gradient_accumulation_steps=1,
            num_generations=g, max_completion_length=args.max_new_tokens, max_steps=args.steps,
            temperature=1.0, top_p=1.0, top_k=0,
            beta=args.beta, epsilon=0.2, num_iterations=1, loss_type="dapo",
            scale_rewards="group", learning_rate=args.lr, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
            shuffle_dataset=False, seed=args.seed, report_to=[], save_strategy="no",
            logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
        )
        trainer = GRPOTrainer(model=model_dir, reward_funcs=correct, args=config,
                              train_dataset=Dataset.from_list(rows), callbacks=[timer])
        trainer.remove_callback(PrinterCallback)  # the per-step log dicts; figures come below
        generate = getattr(trainer, "_generate_single_turn", None)
        if generate is not None:  # observe the generation call; timing only, nothing changed
            def timed_generate(*a: Any, **k: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return generate(*a, **k)
                finally:
                    rec["generation_seconds"].append(time.perf_counter() - t0)

            trainer._generate_single_turn = timed_generate
        effective = {k: str(getattr(trainer.args, k, None)) for k in (
            "optim", "lr_scheduler_type", "bf16", "activation_checkpointing", "loss_type",
            "beta", "num_generations", "generation_batch_size", "steps_per_generation",
            "top_k", "top_p", "temperature")}
        effective["model_checkpointing"] = str(
            getattr(trainer.model, "is_activation_checkpointing", None))
        effective["model_dtype"] = str(trainer.model.dtype)
        effective["ref_model"] = str(getattr(trainer, "ref_model", None) is not None)
        trainer.train()
    return {
        "trl_config": effective,
        **{k: v for k, v in rec.items() if k != "threads"},
        "setup_s": (timer.first_start - t_setup) if timer.first_start is not None else None,
        "threads": sorted(set(rec["threads"])),
        "versions": _versions("trl", "torch", "transformers", "accelerate"),
    }


def run_side(args: argparse.Namespace) -> None:
    """Child process: run one side and write its raw figures as JSON to ``--result``."""
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    fn = run_scoreops if args.side == "scoreops" else run_trl
    res = fn(args, args.model_dir)
    res.update(side=args.side, wall_s=time.perf_counter() - t0, peak_rss_mb=_peak_rss_mb(),
               load_before=load_before, load_after=os.getloadavg()[0])
    Path(args.result).write_text(json.dumps(res, indent=2))


# --- summary ----------------------------------------------------------------------------------


def summarize(raws: list[dict[str, Any]], warmup: int, completions_per_step: int
              ) -> dict[str, Any]:
    """Figures of one side over its rounds; each round's first ``warmup`` steps are dropped."""

    def kept(key: str) -> list[Any]:
        return [v for raw in raws for v in raw.get(key, [])[warmup:] if v is not None]

    steps, cpu, tok = kept("step_seconds"), kept("step_cpu_seconds"), kept("generated_tokens")
    gen = kept("generation_seconds")
    rewards = [v for raw in raws for v in raw["reward"]]
    setups = [raw["setup_s"] for raw in raws if raw.get("setup_s") is not None]
    out: dict[str, Any] = {
        "rounds": len(raws),
        "steps_measured": len(steps),
        "median_step_s": statistics.median(steps) if steps else None,
        "mean_step_s": statistics.fmean(steps) if steps else None,
        "min_step_s": min(steps) if steps else None,
        "median_step_cpu_s": statistics.median(cpu) if cpu else None,
        "gen_tokens_per_s": sum(tok) / sum(gen) if gen and len(gen) == len(tok) else None,
        "tokens_per_step_s": sum(tok) / sum(steps) if steps else None,
        "mean_completion_tokens": sum(tok) / (len(tok) * completions_per_step) if tok else None,
        "mean_reward": statistics.fmean(rewards) if rewards else None,
        "setup_s": statistics.median(setups) if setups else None,
        "peak_rss_mb": max(raw["peak_rss_mb"] for raw in raws),
        "threads": sorted({t for raw in raws for t in raw["threads"]}),
        "versions": raws[0]["versions"],
    }
    if "trl_config" in raws[0]:
        out["trl_config"] = raws[0]["trl_config"]
    out["per_round"] = [{k: raw.get(k) for k in (
        "step_seconds", "step_cpu_seconds", "generated_tokens", "generation_seconds", "reward",
        "trl_logged_step_time", "prompt_order_mismatches", "setup_s", "wall_s", "peak_rss_mb",
        "load_before", "load_after") if k in raw} for raw in raws]
    return out


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: dict[str, dict[str, Any]]) -> str:
    cols = [("median step s", "median_step_s", ".2f"), ("mean step s", "mean_step_s", ".2f"),
            ("median step CPU s", "median_step_cpu_s", ".2f"),
            ("gen tok/s", "gen_tokens_per_s", ".1f"), ("tok/step-s", "tokens_per_step_s", ".1f"),
            ("completion tok", "mean_completion_tokens", ".1f"),
            ("reward", "mean_reward", ".2f"), ("setup s", "setup_s", ".1f"),
            ("peak RSS MB", "peak_rss_mb", ".0f")]
    head = "| side | " + " | ".join(c[0] for c in cols) + " |\n"
    head += "| --- |" + " ---: |" * len(cols) + "\n"
    body = "".join(f"| {side} | " + " | ".join(_fmt(r.get(k), f) for _, k, f in cols) + " |\n"
                   for side, r in rows.items())
    return head + body


# --- driver -----------------------------------------------------------------------------------


def _settings_argv(args: argparse.Namespace) -> list[str]:
    return ["--steps", str(args.steps), "--prompts", str(args.prompts),
            "--generations", str(args.generations), "--max-new-tokens", str(args.max_new_tokens),
            "--threads", str(args.threads), "--beta", repr(args.beta), "--lr", repr(args.lr),
            "--seed", str(args.seed)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="model URI or local directory (default: %(default)s)")
    p.add_argument("--tiny", action="store_true",
                   help="use a tiny random Llama instead (checks the harness in seconds)")
    p.add_argument("--steps", type=int, default=6, help="optimiser steps per side (first dropped)")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step (P)")
    p.add_argument("--generations", type=int, default=4, help="samples per prompt (G)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="max completion tokens (L)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads, both sides")
    p.add_argument("--beta", type=float, default=0.04, help="KL weight, both sides")
    p.add_argument("--lr", type=float, default=5e-6, help="learning rate, both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", default=",".join(SIDES), help="which sides to run, in order")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the sides this many times, alternating (steadier on a busy machine)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    # internal: one side in this process (what the driver runs in each subprocess)
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        run_side(args)
        return
    if args.steps < 2:
        p.error("--steps must be at least 2 (the first step is a warm-up)")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    sides = [s for s in args.sides.split(",") if s]
    unknown = set(sides) - set(SIDES)
    if unknown:
        p.error(f"unknown side(s) {sorted(unknown)}; known: {', '.join(SIDES)}")

    with tempfile.TemporaryDirectory(prefix="trl-compare-") as work:
        if args.tiny:
            from testkit.tiny import build_tiny_model

            model_dir = str(build_tiny_model(Path(work) / "tiny"))
            model_name = "tiny random Llama (testkit.tiny)"
        else:
            from scoreops.models import resolve_model

            model_dir = str(resolve_model(args.model))
            model_name = args.model
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
               "MKL_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
        raws: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for rnd in range(args.rounds):
            for side in sides:
                result = Path(work) / f"{side}-{rnd}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side,
                       "--model-dir", model_dir, "--result", str(result),
                       *_settings_argv(args)]
                print(f"== {side} (round {rnd + 1}/{args.rounds}): {args.steps} steps of "
                      f"{args.prompts}x{args.generations} completions, <= {args.max_new_tokens} "
                      f"tokens, {args.threads} threads", flush=True)
                proc = subprocess.run(cmd, env=env, check=False)
                if proc.returncode != 0:
                    raise SystemExit(f"{side} failed (exit {proc.returncode})")
                raw = json.loads(result.read_text())
                raws[side].append(raw)
                print(f"   {side}: steps {[round(s, 2) for s in raw['step_seconds']]} s, "
                      f"peak RSS {raw['peak_rss_mb']:.0f} MB", flush=True)
        rows = {side: summarize(r, 1, args.prompts * args.generations)
                for side, r in raws.items()}

    ratio = cpu_ratio = None
    if "scoreops" in rows and "trl" in rows:
        ratio = rows["trl"]["median_step_s"] / rows["scoreops"]["median_step_s"]
        if rows["trl"]["median_step_cpu_s"] and rows["scoreops"]["median_step_cpu_s"]:
            cpu_ratio = rows["trl"]["median_step_cpu_s"] / rows["scoreops"]["median_step_cpu_s"]
    settings = {k: v for k, v in vars(args).items()
                if k not in ("side", "model_dir", "result", "json")}
    settings["model"] = model_name
    print()
    print(table(rows))
    if ratio is not None:
        print(f"ratio = trl_step / scoreops_step = {ratio:.2f}  (> 1: scoreops is faster)")
    if cpu_ratio is not None:
        print(f"CPU-time ratio = {cpu_ratio:.2f}  (less sensitive to other load on the machine)")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"settings": settings, "ratio": ratio, "cpu_ratio": cpu_ratio,
             "load_average_end": os.getloadavg()[0], "cpus": os.cpu_count(), "sides": rows},
            indent=2))
        print(f"written to {args.json}")


if __name__ == "__main__":
    main()
