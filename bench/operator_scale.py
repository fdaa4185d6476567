"""How the operator copes with many runs: 500 ScoreRuns applied at once to a real API server.

Measures, with the operator running as its own process (the command its image runs):

- live: 500 ScoreRuns applied while the operator runs; the time from the first ``create``
  until all 500 PyTorchJobs exist (watched, not polled), how far that trails the last
  ``create``, until every ScoreRun reports ``Created``, and the operator's peak resident
  memory (VmHWM) with the 500 runs held and syncing;
- backlog: 500 more applied while no operator runs; the time from starting a fresh operator
  until those PyTorchJobs exist too, and its peak memory with all 1000 runs held.

The apply rate of the API server itself (no operator) is reported too: on a loaded machine
it, not the operator, bounds the live figure.

Goal: <= 30 s and <= 150 MB. Start-up of the cluster and of the operator is not counted.

    python bench/operator_scale.py                 # own etcd + kube-apiserver (hack/cluster.sh)
    python bench/operator_scale.py --runs 100 --json out.json
    python bench/operator_scale.py --kubeconfig ~/.kube/config   # an existing cluster with the CRDs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from scoreops.api.base import GROUP, VERSION
from scoreops.k8s.process import OperatorProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # testkit: the test harnesses


def scorerun(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ScoreRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"uri": "s3://models/llama-8b"},
            "dataset": {"train": {"uri": "s3://data/math/train.jsonl"}},
            "algorithm": {"name": "score"},
            "rollout": {"engine": "vllm"},
            "resources": {"workers": 2, "gpusPerWorker": 4, "deepspeed": "zero3"},
            "output": {"uri": f"s3://runs/{namespace}/{name}", "credentialsSecret": "s3"},
        },
    }


class JobWatch:
    """Counts the PyTorchJobs of one namespace as they appear (a watch, not polling)."""

    def __init__(self, custom: Any, namespace: str, expected: int) -> None:
        self.seen: set[str] = set()
        self.done = threading.Event()
        self._stop = threading.Event()
        self._custom, self._ns, self._expected = custom, namespace, expected
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(0.5)  # established before anything is created

    def _run(self) -> None:
        from kubernetes import watch

        # A watch can end or break under load: start a new one (it replays what exists as
        # ADDED events, and ``seen`` is a set) until everything was seen.
        while not (self.done.is_set() or self._stop.is_set()):
            w = watch.Watch()
            try:
                for event in w.stream(self._custom.list_namespaced_custom_object,
                                      "kubeflow.org", "v1", self._ns, "pytorchjobs",
                                      timeout_seconds=60):
                    self.seen.add(event["object"]["metadata"]["name"])
                    if len(self.seen) >= self._expected:
                        self.done.set()
                    if self.done.is_set() or self._stop.is_set():
                        w.stop()
            except Exception:  # a dropped connection: watch again
                time.sleep(0.2)

    def wait(self, op: OperatorProcess, deadline: float) -> None:
        while not self.done.wait(0.5):
            op.sample_rss()
            if time.monotonic() > deadline:
                self._stop.set()
                return


def measure(kubeconfig: Path, runs: int, threads: int, log: Path) -> dict[str, Any]:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)

    def namespace() -> str:
        ns = f"bench-{uuid.uuid4().hex[:6]}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        return ns

    def apply_all(ns: str) -> float:
        def create(name: str) -> None:
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, "scoreruns",
                                                   scorerun(name, ns))

        start = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(create, [f"run-{i:04d}" for i in range(runs)]))
        return time.monotonic() - start

    def created_count(ns: str) -> int:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, "scoreruns")["items"]
        return sum(any(c.get("type") == "Created" and c.get("status") == "True"
                       for c in (i.get("status") or {}).get("conditions") or [])
                   for i in items)

    # 1. live: the operator runs; 500 runs are applied at once
    op = OperatorProcess(kubeconfig, log_path=log)
    op.start()
    op.wait_ready()
    idle_rss = op.sample_rss()
    live_ns = namespace()
    live = JobWatch(custom, live_ns, runs)
    t1 = time.monotonic()
    live_apply = apply_all(live_ns)
    live.wait(op, t1 + 600)
    live_seconds = time.monotonic() - t1
    while created_count(live_ns) < runs and time.monotonic() - t1 < 600:
        op.sample_rss()
        time.sleep(0.5)
    live_status = time.monotonic() - t1
    end = time.monotonic() + 12  # steady state: every run's sync timer ticks at least once
    while time.monotonic() < end:
        op.sample_rss()
        time.sleep(0.5)
    peak_live = op.sample_rss()
    op.stop()

    # 2. a backlog: 500 more applied while no operator runs; a fresh operator starts with
    #    1000 runs to resume (500 of them new)
    backlog_ns = namespace()
    apply_only = apply_all(backlog_ns)
    backlog = JobWatch(custom, backlog_ns, runs)
    op = OperatorProcess(kubeconfig, log_path=log)
    t0 = time.monotonic()
    op.start()
    op.wait_ready()
    ready = time.monotonic() - t0
    backlog.wait(op, t0 + 600)
    backlog_seconds = time.monotonic() - t0
    end = time.monotonic() + 12
    while time.monotonic() < end:
        op.sample_rss()
        time.sleep(0.5)
    peak_backlog = op.sample_rss()
    op.stop()
    api.close()
    return {
        "runs": runs,
        "live": {
            "apply_seconds": round(live_apply, 2),
            "all_pytorchjobs_seconds_from_first_apply": round(live_seconds, 2),
            "lag_after_last_apply_seconds": round(live_seconds - live_apply, 2),
            "all_status_created_seconds": round(live_status, 2),
            "pytorchjobs_seen": len(live.seen),
            "operator_idle_rss_mb": round(idle_rss / 1024, 1),
            "operator_peak_rss_mb": round(peak_live / 1024, 1),
        },
        "backlog": {
            "apply_without_operator_seconds": round(apply_only, 2),
            "operator_ready_seconds": round(ready, 2),
            "all_pytorchjobs_seconds_from_operator_start": round(backlog_seconds, 2),
            "pytorchjobs_seen": len(backlog.seen),
            "runs_held": 2 * runs,
            "operator_peak_rss_mb": round(peak_backlog / 1024, 1),
        },
        "goal": {"seconds": 30, "rss_mb": 150},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--threads", type=int, default=8, help="concurrent creates")
    parser.add_argument("--kubeconfig", type=Path, help="use this cluster instead of a local one")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="scoreops-bench-"))
    log = workdir / "operator.log"
    if args.kubeconfig:
        result = measure(args.kubeconfig, args.runs, args.threads, log)
    else:
        from testkit.cluster import LocalCluster, repo_root

        with LocalCluster(workdir / "cluster", keep=True) as cluster:
            cluster.apply(repo_root() / "manifests" / "third-party")
            cluster.apply(repo_root() / "manifests" / "crds")
            result = measure(cluster.kubeconfig, args.runs, args.threads, log)
    result["operator_log"] = str(log)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    complete = min(result["backlog"]["pytorchjobs_seen"], result["live"]["pytorchjobs_seen"])
    return 0 if complete >= args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
