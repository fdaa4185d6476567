"""Rollout throughput of the ``vllm`` engine vs the ``hf`` engine, and SCoRe step times with each.

Both engines implement :class:`scoreops.rollout.RolloutEngine`; here they generate the same
prompts (chat-formatted arithmetic questions, ``--prompts`` × ``--samples`` rows, temperature
1.0, ``--max-new-tokens``) from the same model directory in one run, and the script prints
generated tokens per second side by side and their ratio (one warm-up call each first; the
best of ``--rounds`` timed calls). ``--score-steps N`` then runs the demo ScoreRun
(``manifests/examples/scorerun-tiny.yaml``, SmolLM2 on single-digit additions) for N steps
with ``rollout.engine: hf`` and with ``rollout.engine: vllm`` and prints the median step time
of each (the vLLM run generates with vLLM and pushes the trainer's weights into it after
every step).

Run it with the interpreter that has vLLM (``make install`` creates ``.venv-vllm``)::

    .venv-vllm/bin/python bench/rollout_engines.py --score-steps 4 --json out.json

On CPU the engines run in float32 and vLLM with ``enforce_eager`` (no graph compilation); on
a GPU in bfloat16, vLLM with CUDA graphs.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMPT_BUDGET = 64  # the chat-formatted questions are ~40 tokens


def _prompts(n: int, seed: int) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    return [[{"role": "user", "content":
              f"What is {rng.randint(10, 999)} + {rng.randint(10, 999)}? Think step by step."}]
            for _ in range(n)]


def _engine(kind: str, model_dir: str, device: str, args: argparse.Namespace) -> Any:
    dtype = "bfloat16" if device == "cuda" else "float32"
    if kind == "vllm":
        from scoreops.rollout.vllm import VLLMEngine

        return VLLMEngine.from_path(
            model_dir, dtype=dtype, gpu_memory_utilization=0.5,
            max_model_len=PROMPT_BUDGET + args.max_new_tokens,
            kv_sequences=args.prompts * args.samples,
            enforce_eager=None if args.enforce_eager is None else args.enforce_eager == "on")
    from scoreops.models import load_model
    from scoreops.rollout import HFEngine

    model, tokenizer = load_model(model_dir, dtype=dtype, device=device)
    return HFEngine(model, tokenizer, max_batch_size=args.batch_size, prefix_cache=False)


def measure(kind: str, model_dir: str, device: str, args: argparse.Namespace) -> dict[str, Any]:
    from scoreops.rollout import SamplingParams

    engine = _engine(kind, model_dir, device, args)
    prompts = _prompts(args.prompts, 0)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0,
                            n=args.samples, seed=0)
    engine.generate(prompts[: max(1, len(prompts) // 8)], params)  # warm-up
    best: dict[str, Any] | None = None
    for _ in range(args.rounds):
        start = time.perf_counter()
        out = engine.generate(prompts, params)
        seconds = time.perf_counter() - start
        tokens = sum(len(c.token_ids) for row in out for c in row)
        run = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}
        if best is None or run["tokens_per_s"] > best["tokens_per_s"]:
            best = run
    close = getattr(engine, "close", None)
    if callable(close):
        close()
    assert best is not None
    return best


def score_steps(engine: str, steps: int, output: str, device: str) -> dict[str, Any]:
    """The demo ScoreRun for ``steps`` steps with rollouts on ``engine``."""
    import statistics

    import yaml

    from scoreops.api import parse_resource
    from scoreops.training.loop import Trainer

    doc = yaml.safe_load((ROOT / "manifests/examples/scorerun-tiny.yaml").read_text())
    spec = doc["spec"]
    spec["algorithm"]["score"].update(stage1Steps=max(1, steps // 2),
                                      stage2Steps=steps - max(1, steps // 2))
    spec["rollout"]["engine"] = engine
    # the API asks a vllm run for a GPU; without one the trainer runs on CPU regardless
    spec["resources"] = {"gpusPerWorker": 1 if engine == "vllm" or device == "cuda" else 0,
                         "precision": "bf16" if device == "cuda" else "fp32"}
    spec["output"]["uri"] = f"{output}-{engine}"
    spec["checkpoint"] = {"everySteps": steps, "keep": 1}
    spec["evaluation"] = {"enabled": False}
    run = parse_resource(doc)
    seconds: list[float] = []
    start = time.perf_counter()
    trainer = Trainer(run, on_step=lambda m: seconds.append(float(m.get("seconds", 0.0))),
                      fresh=True)
    result = trainer.run_training()
    total = time.perf_counter() - start
    return {"steps": len(seconds), "step_seconds": seconds,
            "median_step_seconds": statistics.median(seconds), "run_seconds": total,
            "reward_t2": [m.get("reward_t2") for m in result.metrics]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin://smollm2-135m-instruct")
    parser.add_argument("--engines", default="vllm,hf", help="comma-separated, from vllm,hf")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="hf engine rows per batch")
    parser.add_argument("--enforce-eager", choices=["on", "off"], default=None,
                        help="vLLM without graph capture/compilation (default: on on CPU)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--score-steps", type=int, default=0,
                        help="also run the demo ScoreRun this many steps with each engine")
    parser.add_argument("--output", default="store://runs/bench-rollout-engines")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    import torch

    from scoreops.models import resolve_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    model_dir = str(resolve_model(args.model))
    eager = args.enforce_eager or ("on" if device == "cpu" else "off")
    settings = {"device": torch.cuda.get_device_name(0) if device == "cuda" else
                f"cpu ({torch.get_num_threads()} threads)",
                "dtype": "bfloat16" if device == "cuda" else "float32",
                "hf_batch": args.batch_size, "vllm_enforce_eager": eager,
                "prompts": args.prompts, "samples": args.samples,
                "max_new_tokens": args.max_new_tokens, "temperature": 1.0}
    figures: dict[str, Any] = {"settings": settings, "engines": {}}
    for kind in engines:
        figures["engines"][kind] = measure(kind, model_dir, device, args)
    print(f"\n{args.model}: {json.dumps(settings)}\n")
    print(f"{'engine':<8}{'tokens':>10}{'seconds':>10}{'tokens/s':>12}")
    for kind, f in figures["engines"].items():
        print(f"{kind:<8}{f['tokens']:>10}{f['seconds']:>10.2f}{f['tokens_per_s']:>12.1f}")
    if {"vllm", "hf"} <= set(figures["engines"]):
        ratio = (figures["engines"]["vllm"]["tokens_per_s"]
                 / figures["engines"]["hf"]["tokens_per_s"])
        figures["vllm_over_hf"] = ratio
        print(f"vllm / hf tokens/s: {ratio:.2f}x")
    if args.score_steps:
        figures["score"] = {}
        for kind in engines:
            figures["score"][kind] = score_steps(kind, args.score_steps, args.output, device)
        print(f"\nSCoRe ({args.score_steps} steps of the demo run):")
        for kind, f in figures["score"].items():
            print(f"{kind:<8} median step {f['median_step_seconds']:.1f} s, steps "
                  f"{[round(x, 1) for x in f['step_seconds']]}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
