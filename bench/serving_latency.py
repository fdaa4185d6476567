"""Serving latency: single-turn vs self-correct on the same server, backend and prompts.

Starts the real KServe model server (``python -m scoreops.serving``) on loopback once, then for
each strategy (chosen per request with ``"scoreops": {"strategy": ...}``, so both run on the
very same engine) measures:

* sequential latency (one request at a time): p50 / p95;
* throughput with ``--concurrency`` clients: requests/s and generated tokens/s;
* mean generated tokens per request (from ``usage``), since latency scales with them.

and prints the self-correct / single ratios (goal: p50 latency ratio <= 2.1).

    python bench/serving_latency.py                                   # tiny random model
    python bench/serving_latency.py --model builtin://smollm2-135m-instruct --max-tokens 48
    python bench/serving_latency.py --output /tmp/serving_latency.json
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # testkit: the test harnesses

PROMPTS = [
    "What is 17 + 25?",
    "A shop sells pens at 3 dollars each. How much do 12 pens cost?",
    "What is 9 times 8?",
    "Tom has 45 apples and gives away 17. How many are left?",
    "What is 144 divided by 12?",
    "A train travels 60 km per hour for 3 hours. How far does it go?",
    "What is the square of 15?",
    "Sara reads 20 pages a day. How many pages does she read in a week?",
    "What is 1000 minus 387?",
    "If a rectangle is 7 cm by 9 cm, what is its area?",
    "What is 25 percent of 80?",
    "A box holds 6 eggs. How many boxes are needed for 50 eggs?",
    "What is 13 + 29 + 8?",
    "How many minutes are in 3.5 hours?",
    "What is 2 to the power of 10?",
    "A bike costs 240 dollars after a 20 percent discount. What was the price before?",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class ServerProcess:
    """A scoreops server started as a subprocess on a free loopback port; its output to a log.

    ``argv`` is the ``python -m ...`` part after the interpreter; ``port_args(port)`` gives the
    arguments that bind the port.
    """

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.log_path = log
        self.proc = subprocess.Popen([sys.executable, *self.command(argv)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def command(self, argv: list[str]) -> list[str]:
        return [*argv, "--http-port", str(self.port)]

    def wait(self, seconds: float = 900) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit("server not ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class _Server(ServerProcess):
    def __init__(self, model: str, max_tokens: int, log: Path, engine_batch: int,
                 torch_threads: int | None) -> None:
        super().__init__(
            ["-m", "scoreops.serving", "--model", model, "--model-name", "bench",
             "--backend", "hf", "--host", "127.0.0.1",
             "--max-tokens", str(max_tokens), "--max-concurrency", "64",
             "--engine-batch-size", str(engine_batch), "--request-timeout", "3600",
             *(["--torch-threads", str(torch_threads)] if torch_threads else [])], log)


def _ask(client: httpx.Client, url: str, prompt: str, strategy: str, max_tokens: int
         ) -> tuple[float, int, int]:
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0.0,
            "scoreops": {"strategy": strategy, "turns": 2}}
    if strategy != "self-correct":
        body["scoreops"].pop("turns")
    start = time.perf_counter()
    resp = client.post(f"{url}/openai/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - start
    resp.raise_for_status()
    usage = resp.json()["usage"]
    return elapsed, int(usage["completion_tokens"]), int(usage["prompt_tokens"])


def _measure(url: str, strategy: str, prompts: list[str], max_tokens: int, concurrency: int,
             rounds: int) -> dict[str, Any]:
    with httpx.Client(timeout=3600) as client:
        for p in prompts[:2]:  # warm-up
            _ask(client, url, p, strategy, max_tokens)
        sequential = [_ask(client, url, p, strategy, max_tokens) for p in prompts]
    lat = [s[0] for s in sequential]
    gen = [s[1] for s in sequential]
    local = threading.local()

    def one(prompt: str) -> tuple[float, int, int]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=3600)
        return _ask(local.client, url, prompt, strategy, max_tokens)

    load = prompts * rounds
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, load))
    wall = time.perf_counter() - start
    return {
        "strategy": strategy,
        "requests_sequential": len(prompts),
        "p50_s": statistics.median(lat),
        "p95_s": _percentile(lat, 0.95),
        "mean_generated_tokens": statistics.mean(gen),
        "seconds_per_generated_token": sum(lat) / max(1, sum(gen)),
        "concurrency": concurrency,
        "requests_concurrent": len(load),
        "throughput_rps": len(load) / wall,
        "throughput_generated_tps": sum(r[1] for r in results) / wall,
        "concurrent_p50_s": statistics.median(r[0] for r in results),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="model URI (default: the tiny random test model, built in a temp dir)")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens per turn")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="passes over the prompts under load")
    ap.add_argument("--engine-batch-size", type=int, default=16)
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch CPU threads of the server (1 on a busy shared machine)")
    ap.add_argument("--output", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="scoreops-bench-") as tmp:
        model = args.model
        if model is None:
            from testkit.tiny import build_tiny_model

            model = str(build_tiny_model(Path(tmp) / "tiny"))
        server = _Server(model, args.max_tokens, Path(tmp) / "server.log", args.engine_batch_size,
                         args.torch_threads)
        try:
            server.wait()
            prompts = PROMPTS[: args.prompts]
            rows = [_measure(server.url, s, prompts, args.max_tokens, args.concurrency,
                             args.rounds) for s in ("single", "self-correct")]
        finally:
            server.stop()

    single, sc = rows
    ratios = {
        "p50_latency": sc["p50_s"] / single["p50_s"],
        "p95_latency": sc["p95_s"] / single["p95_s"],
        "throughput": sc["throughput_rps"] / single["throughput_rps"],
        "generated_tokens": sc["mean_generated_tokens"] / single["mean_generated_tokens"],
        "seconds_per_generated_token": (sc["seconds_per_generated_token"]
                                        / single["seconds_per_generated_token"]),
    }
    report = {"model": args.model or "tiny (random, 0.8M parameters)",
              "backend": "hf (transformers, CPU)", "max_tokens_per_turn": args.max_tokens,
              "results": rows, "self_correct_over_single": ratios,
              "goal_p50_ratio_at_most": 2.1}
    print(f"{'strategy':14s} {'p50 s':>8s} {'p95 s':>8s} {'gen tok':>8s} {'req/s':>8s} "
          f"{'gen tok/s':>10s}")
    for r in rows:
        print(f"{r['strategy']:14s} {r['p50_s']:8.3f} {r['p95_s']:8.3f} "
              f"{r['mean_generated_tokens']:8.1f} {r['throughput_rps']:8.2f} "
              f"{r['throughput_generated_tps']:10.1f}")
    print("self-correct / single: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
