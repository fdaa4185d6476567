"""Rollout throughput of the ``vllm`` engine vs the ``hf`` engine, and a short SCoRe run on vLLM.

Both engines implement :class:`scoreops.rollout.RolloutEngine`; here they generate the same
prompts (chat-formatted arithmetic questions, ``--prompts`` × ``--samples`` rows, temperature
1.0, ``--max-new-tokens``) from the same model directory, and the script prints generated
tokens per second side by side and their ratio (one warm-up call each first; the best of
``--rounds`` timed calls). ``--score-steps N`` then runs the demo ScoreRun
(``manifests/examples/scorerun-tiny.yaml``) for N steps with ``rollout.engine: vllm`` on
the GPU (bf16, weights pushed from the trainer after every step, sleep between phases) and
prints its step times and held-out accuracy.

    python bench/rollout_engines.py                        # vllm and hf on a GPU
    python bench/rollout_engines.py --engines hf --prompts 4 --max-new-tokens 16   # CPU check

vLLM needs a CUDA GPU and ``pip install vllm`` (the trainer image has both).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _prompts(n: int, seed: int) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    return [[{"role": "user", "content":
              f"What is {rng.randint(10, 999)} + {rng.randint(10, 999)}? Think step by step."}]
            for _ in range(n)]


def _engine(kind: str, model_dir: str, device: str, batch: int) -> Any:
    if kind == "vllm":
        from scoreops.rollout.vllm import VLLMEngine

        return VLLMEngine.from_path(model_dir, dtype="bfloat16", gpu_memory_utilization=0.5)
    from scoreops.models import load_model
    from scoreops.rollout import HFEngine

    dtype = "bfloat16" if device == "cuda" else "float32"
    model, tokenizer = load_model(model_dir, dtype=dtype, device=device)
    return HFEngine(model, tokenizer, max_batch_size=batch, prefix_cache=False)


def measure(kind: str, model_dir: str, device: str, args: argparse.Namespace) -> dict[str, Any]:
    from scoreops.rollout import SamplingParams

    engine = _engine(kind, model_dir, device, args.batch_size)
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


def score_on_vllm(steps: int, output: str) -> dict[str, Any]:
    """The demo ScoreRun for ``steps`` steps with vLLM rollouts on one GPU."""
    import yaml

    from scoreops.api import parse_resource
    from scoreops.training.loop import Trainer

    doc = yaml.safe_load((ROOT / "manifests/examples/scorerun-tiny.yaml").read_text())
    spec = doc["spec"]
    spec["algorithm"]["score"].update(stage1Steps=max(1, steps // 3),
                                      stage2Steps=steps - max(1, steps // 3))
    spec["rollout"]["engine"] = "vllm"
    spec["resources"] = {"gpusPerWorker": 1, "precision": "bf16"}
    spec["output"]["uri"] = output
    spec["checkpoint"] = {"everySteps": steps, "keep": 1}
    run = parse_resource(doc)
    seconds: list[float] = []
    trainer = Trainer(run, on_step=lambda m: seconds.append(float(m.get("seconds", 0.0))),
                      fresh=True)
    result = trainer.run_training()
    evals = {name: {"acc_t1": e.metrics.acc_t1, "acc_t2": e.metrics.acc_t2}
             for name, e in result.evals.items()}
    return {"steps": len(seconds), "step_seconds": seconds, "evals": evals}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin://smollm2-135m-instruct")
    parser.add_argument("--engines", default=None,
                        help="comma-separated, from vllm,hf (default: both on a GPU, hf on CPU)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64, help="hf engine rows per batch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--score-steps", type=int, default=0,
                        help="also run the demo ScoreRun this many steps on vLLM (GPU)")
    parser.add_argument("--output", default="store://runs/bench-vllm-score")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    import torch

    from scoreops.models import resolve_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    engines = (args.engines or ("vllm,hf" if device == "cuda" else "hf")).split(",")
    model_dir = str(resolve_model(args.model))
    figures: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device == "cuda"
                               else "cpu", "engines": {}}
    for kind in engines:
        figures["engines"][kind] = measure(kind.strip(), model_dir, device, args)
    print(f"\n{args.model} on {figures['device']}: {args.prompts} prompts x {args.samples} "
          f"samples, temperature 1.0, up to {args.max_new_tokens} new tokens\n")
    print(f"{'engine':<8}{'tokens':>10}{'seconds':>10}{'tokens/s':>12}")
    for kind, f in figures["engines"].items():
        print(f"{kind:<8}{f['tokens']:>10}{f['seconds']:>10.2f}{f['tokens_per_s']:>12.1f}")
    if {"vllm", "hf"} <= set(figures["engines"]):
        ratio = (figures["engines"]["vllm"]["tokens_per_s"]
                 / figures["engines"]["hf"]["tokens_per_s"])
        figures["vllm_over_hf"] = ratio
        print(f"vllm / hf tokens/s: {ratio:.2f}x")
    if args.score_steps:
        figures["score"] = score_on_vllm(args.score_steps, args.output)
        print(f"\nSCoRe on vLLM: {figures['score']['steps']} steps, step seconds "
              f"{[round(s, 2) for s in figures['score']['step_seconds']]}, "
              f"held-out {figures['score']['evals']}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
