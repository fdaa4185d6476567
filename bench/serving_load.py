"""Serving under concurrent load: N clients with the official ``openai`` async client.

Starts the real server on loopback (``scoreops serve`` with its defaults, and/or the
CorrectorService example ``manifests/examples/correctorservice-tiny.yaml`` through
``scoreops run``) on the small model, then for each concurrency level N runs N clients at
once, each sending ``--rounds`` chat requests one after the other (more at small N, so
that every level holds at least ``--min-requests``), first with the served
strategy (self-correct, 2 turns) and then with a single-turn baseline on the same server and
backend (``"scoreops": {"strategy": "single"}``), and reports per level and strategy:

* throughput in generated tokens/s (``usage.completion_tokens`` summed over answered requests,
  over the wall time of the level) and requests/s;
* p50 / p95 latency of the answered requests;
* errors by HTTP status (429, 504, ...; ``conn`` for transport errors);
* time to first token (``--stream``, the default): from sending the request to the first
  piece of answer text in the stream (for self-correct, that is the final turn's first token:
  turn 1 runs before it), p50 / p95.

and the ratios that matter, all measured in the same run on the same server: throughput at N
over throughput at N = 1 (sequential service), p95 at N over the p50 of one request alone
(N = 1), and self-correct over single.

    python bench/serving_load.py                           # both profiles, N = 1, 8, 12, 20
    python bench/serving_load.py --profiles default --levels 1 8 20 --rounds 2
    PYTHONPATH=../main-checkout/python python bench/serving_load.py --output before.json
    python bench/serving_load.py --profiles default --backends hf vllm --levels 1 4 8 \
        --output bench/results/serving-load-DATE/hf-vs-vllm.json

``--backends hf vllm`` measures ``scoreops serve --backend hf`` and ``--backend vllm`` (vLLM's
async engine) one after the other in the same run (profile ``default`` only); the vllm server
runs in ``--vllm-python`` (default: this interpreter when it has vLLM, as the locked ``.venv``
does, else ``.venv-vllm/bin/python``).

The server runs from whatever ``scoreops`` the interpreter imports (``PYTHONPATH``), so the
same script measures two versions of the code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from serving_latency import (  # same prompts, helpers
    PROMPTS,
    ServerProcess,
    _free_port,
    _percentile,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "builtin://smollm2-135m-instruct"
EXAMPLE = ROOT / "manifests" / "examples" / "correctorservice-tiny.yaml"

class Server(ServerProcess):
    """``scoreops serve`` (profile ``default``) or ``scoreops run EXAMPLE`` (``example``)."""

    def __init__(self, profile: str, model: str, log: Path, torch_threads: int | None,
                 dtype: str | None = None, backend: str = "hf",
                 python: str | None = None) -> None:
        self.python = python or sys.executable
        if profile == "default":
            args = ["serve", "--model", model, "--backend", backend]
            if torch_threads:
                args += ["--torch-threads", str(torch_threads)]
            if dtype:
                args += ["--dtype", dtype]
            self.name = "corrector"
        else:
            args = ["run", str(EXAMPLE)]
            self.name = "tiny-corrector"
        env = dict(os.environ)
        if torch_threads:  # also for `scoreops run`, which has no such flag
            env["OMP_NUM_THREADS"] = str(torch_threads)
        if self.python == sys.executable:
            super().__init__(["-m", "scoreops", *args], log, env)
            return
        # ServerProcess starts sys.executable; the vllm server needs another interpreter
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.log_path = log
        self.proc = subprocess.Popen([self.python, *self.command(["-m", "scoreops", *args])],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def command(self, argv: list[str]) -> list[str]:
        return [*argv, "--port", str(self.port)]


async def _level(server: Server, strategy: str, clients: int, rounds: int, max_tokens: int,
                 timeout: float, stream: bool = False) -> dict[str, Any]:
    import openai

    lat: list[float] = []
    ttft: list[float] = []
    tokens = 0
    errors: dict[str, int] = {}

    async with openai.AsyncOpenAI(base_url=f"{server.url}/openai/v1", api_key="unused",
                                  max_retries=0, timeout=timeout) as client:

        async def one(prompt: str) -> None:
            nonlocal tokens
            start = time.perf_counter()
            try:
                kwargs: dict[str, Any] = {
                    "model": server.name, "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": max_tokens, "temperature": 0.0,
                    "extra_body": {"scoreops": {"strategy": strategy}}}
                if stream:
                    first, usage = None, None
                    chunks = await client.chat.completions.create(
                        **kwargs, stream=True, stream_options={"include_usage": True})
                    async for chunk in chunks:
                        if first is None and any(c.delta.content for c in chunk.choices):
                            first = time.perf_counter() - start
                        if chunk.usage is not None:
                            usage = chunk.usage
                    if first is not None:
                        ttft.append(first)
                    lat.append(time.perf_counter() - start)
                    tokens += usage.completion_tokens if usage else 0
                    return
                resp = await client.chat.completions.create(**kwargs)
            except openai.APIStatusError as exc:
                errors[str(exc.status_code)] = errors.get(str(exc.status_code), 0) + 1
                return
            except openai.APIError as exc:
                kind = type(exc).__name__
                errors[kind] = errors.get(kind, 0) + 1
                return
            lat.append(time.perf_counter() - start)
            tokens += resp.usage.completion_tokens if resp.usage else 0

        async def client_loop(c: int) -> None:
            for r in range(rounds):
                await one(PROMPTS[(c * rounds + r) % len(PROMPTS)])

        start = time.perf_counter()
        await asyncio.gather(*[client_loop(c) for c in range(clients)])
        wall = time.perf_counter() - start
    return {
        "strategy": strategy, "clients": clients, "requests": clients * rounds,
        "answered": len(lat), "errors": errors, "wall_s": wall,
        "tokens_per_s": tokens / wall, "requests_per_s": len(lat) / wall,
        "p50_s": statistics.median(lat) if lat else float("nan"),
        "p95_s": _percentile(lat, 0.95), "generated_tokens": tokens,
        **({"ttft_p50_s": statistics.median(ttft) if ttft else float("nan"),
            "ttft_p95_s": _percentile(ttft, 0.95)} if stream else {}),
    }


def run_profile(profile: str, args: argparse.Namespace, tmp: Path,
                backend: str = "hf") -> dict[str, Any]:
    python = args.vllm_python if backend == "vllm" else None
    server = Server(profile, args.model, tmp / f"server-{profile}-{backend}.log",
                    args.torch_threads, args.dtype, backend=backend, python=python)
    rows: list[dict[str, Any]] = []
    try:
        server.wait()
        strategies = ["self-correct", "single"]
        # warm-up: the first requests pay for lazy initialisation
        for s in strategies:
            asyncio.run(_level(server, s, 1, 1, args.max_tokens, args.client_timeout,
                               args.stream))
        for n in args.levels:
            rounds = max(args.rounds, -(-args.min_requests // n))
            for s in strategies:
                row = asyncio.run(_level(server, s, n, rounds, args.max_tokens,
                                         args.client_timeout, args.stream))
                row["profile"] = profile
                row["backend"] = backend
                rows.append(row)
                ttft = (f" ttft p50 {row['ttft_p50_s']:6.2f} s p95 {row['ttft_p95_s']:6.2f} s"
                        if "ttft_p50_s" in row else "")
                print(f"{profile:8s} {backend:5s} {s:13s} N={n:<3d} "
                      f"{row['tokens_per_s']:8.1f} tok/s p50 {row['p50_s']:7.2f} s "
                      f"p95 {row['p95_s']:7.2f} s{ttft} errors {row['errors'] or 0}",
                      flush=True)
    finally:
        server.stop()
    return {"profile": profile, "backend": backend, "rows": rows, "ratios": _ratios(rows)}


def _ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in ("self-correct", "single"):
        by_n = {r["clients"]: r for r in rows if r["strategy"] == s}
        base = by_n.get(1)
        if not base or not base["tokens_per_s"] or base["p50_s"] != base["p50_s"]:
            continue  # nothing answered alone: no ratio
        for n, r in sorted(by_n.items()):
            if n == 1:
                continue
            out[f"{s} N={n}"] = {
                "throughput_over_sequential": r["tokens_per_s"] / base["tokens_per_s"],
                "p95_over_single_request_p50": r["p95_s"] / base["p50_s"],
            }
    for r in rows:
        if r["strategy"] != "self-correct":
            continue
        single = next((x for x in rows if x["strategy"] == "single"
                       and x["clients"] == r["clients"]), None)
        if single and single["tokens_per_s"] and single["p50_s"] == single["p50_s"]:
            out.setdefault("self-correct over single", {})[f"N={r['clients']}"] = {
                "p50": r["p50_s"] / single["p50_s"],
                "throughput": r["tokens_per_s"] / single["tokens_per_s"]}
    return out


def _table(results: list[dict[str, Any]]) -> str:
    lines = ["| profile | backend | strategy | N | requests | tok/s | req/s | p50 s | p95 s | "
             "TTFT p50 s | TTFT p95 s | errors | tok/s vs N=1 | p95 / p50(N=1) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- "
             "| ---: | ---: |"]
    for res in results:
        for r in res["rows"]:
            base = next((x for x in res["rows"] if x["strategy"] == r["strategy"]
                         and x["clients"] == 1 and x["answered"]), None)
            speed = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}×" if base else "-"
            tail = f"{r['p95_s'] / base['p50_s']:.2f}×" if base else "-"
            errs = ", ".join(f"{v}×{k}" for k, v in sorted(r["errors"].items())) or "0"
            ttft = (f"{r['ttft_p50_s']:.2f} | {r['ttft_p95_s']:.2f}" if "ttft_p50_s" in r
                    else "- | -")
            lines.append(f"| {r['profile']} | {r.get('backend', 'hf')} | {r['strategy']} | "
                         f"{r['clients']} | {r['requests']} | {r['tokens_per_s']:.1f} | "
                         f"{r['requests_per_s']:.2f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | "
                         f"{ttft} | {errs} | {speed} | {tail} |")
    return "\n".join(lines)


def _vllm_python() -> str:
    """This interpreter if it has vLLM (one locked environment), else ``.venv-vllm``'s."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    return str(ROOT / ".venv-vllm" / "bin" / "python")


def _commit() -> str:
    """The checkout's commit (``+dirty`` when it has uncommitted changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=MODEL, help="model URI for the default profile")
    ap.add_argument("--profiles", nargs="+", default=["default", "example"],
                    choices=["default", "example"])
    ap.add_argument("--levels", nargs="+", type=int, default=[1, 8, 12, 20],
                    help="concurrent clients")
    ap.add_argument("--rounds", type=int, default=1, help="requests per client per level")
    ap.add_argument("--min-requests", type=int, default=3,
                    help="clients send more rounds until a level holds this many requests")
    ap.add_argument("--max-tokens", type=int, default=16, help="max_tokens per request")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch CPU threads of the servers (--torch-threads for scoreops serve, "
                         "OMP_NUM_THREADS for both); 1 on a busy shared machine")
    ap.add_argument("--dtype", default=None,
                    help="--dtype of scoreops serve (profile default); unset: its default")
    ap.add_argument("--backends", nargs="+", default=["hf"], choices=["hf", "vllm"],
                    help="serving backends of profile default, measured one after the other")
    ap.add_argument("--vllm-python", default=_vllm_python(),
                    help="interpreter with vLLM for --backends vllm")
    ap.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                    help="stream the answers and report the time to first token")
    ap.add_argument("--client-timeout", type=float, default=900.0,
                    help="client-side timeout (s); the server's own limits answer first")
    ap.add_argument("--output", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()

    results: list[dict[str, Any]] = []
    report = {"model": args.model, "max_tokens": args.max_tokens, "rounds": args.rounds,
              "levels": args.levels, "pythonpath": os.environ.get("PYTHONPATH", ""),
              "backends": args.backends, "dtype": args.dtype, "stream": args.stream,
              "commit": _commit(),
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "results": results}
    with tempfile.TemporaryDirectory(prefix="scoreops-load-") as tmp:
        runs = [(p, b) for p in args.profiles for b in (args.backends if p == "default"
                                                          else ["hf"])]
        for profile, backend in runs:
            results.append(run_profile(profile, args, Path(tmp), backend))
            if args.output:  # after each run: nothing is lost if a later one fails
                args.output.write_text(json.dumps(report, indent=2))
    print(_table(results))
    for res in results:
        for k, v in res["ratios"].items():
            print(f"{res['profile']} {res.get('backend', 'hf')} {k}: {json.dumps(v)}")
    report["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
