"""A trainer pod's life as the cluster runs it: ``jobs/launch.sh`` -> torchrun -> the trainer.

The pod is the one the operator builds (:func:`scoreops.k8s.builders.build_pytorchjob`): its
command, its environment, its ``run.json`` (the ConfigMap's content) and its grace period,
plus the variables the training operator adds to a PyTorchJob pod (release-1.9,
``pkg/controller.v1/pytorch/envvar.go``: ``PET_NPROC_PER_NODE`` from ``spec.nprocPerNode``,
which its defaulting sets to ``auto`` when absent, ``PET_NNODES``, ``PET_NODE_RANK``,
``MASTER_ADDR``/``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``).

SIGTERM goes where the kubelet sends it on eviction or deletion: to the container's PID 1,
the launcher (which execs torchrun). The run must end with one complete checkpoint that the
next pod resumes from, with exactly ``nprocPerNode`` processes in the pod (one on CPU), and
the launcher must exit non-zero, so that the training operator does not count a stopped pod
as a finished job.

Real torchrun, gloo, CPU; the digit toy model (``testkit.digits``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from scoreops import storage  # noqa: E402
from scoreops.api import parse_resource  # noqa: E402
from scoreops.k8s.builders import build_pytorchjob, build_run_config_map  # noqa: E402
from scoreops.k8s.config import SPEC_DIR, OperatorConfig  # noqa: E402
from scoreops.training.checkpoint import list_checkpoints  # noqa: E402
from testkit.digits import build_digit_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_algorithms_train import spec_doc  # noqa: E402
from test_distributed_edge import Launch as EdgeLaunch  # noqa: E402
from test_distributed_edge import _children_by_rank, write_items  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
IMAGE_JOBS_DIR = "/opt/scoreops/jobs/"  # where the trainer image keeps jobs/
TOTAL = 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pod:
    """The Master pod of a built PyTorchJob, run here: command, env and spec file as built."""

    def __init__(self, job: dict[str, Any], run_json: str, workdir: Path) -> None:
        self.spec = job["spec"]
        template = self.spec["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        container = template["containers"][0]
        assert container["name"] == "pytorch"
        self.grace = int(template.get("terminationGracePeriodSeconds", 30))  # Kubernetes' default
        spec_dir = workdir / "etc-scoreops"
        spec_dir.mkdir(parents=True, exist_ok=True)
        (spec_dir / "run.json").write_text(run_json)
        self.command = [
            str(REPO / "jobs" / a[len(IMAGE_JOBS_DIR):]) if a.startswith(IMAGE_JOBS_DIR)
            else a.replace(SPEC_DIR, str(spec_dir)) for a in container["command"]
        ]
        self.container_env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        self.workdir = workdir

    def env(self) -> dict[str, str]:
        """What the container sees: the built env plus the training operator's variables."""
        base = {k: v for k, v in os.environ.items()
                if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
                and not k.startswith(("PET_", "TORCHELASTIC_", "AWS_"))}
        nproc = self.spec.get("nprocPerNode", "auto")  # the operator's default when absent
        replicas = sum(r["replicas"] for r in self.spec["pytorchReplicaSpecs"].values())
        per_pod = int(nproc) if nproc.isdigit() else 1
        return {
            **base, **self.container_env,
            "OMP_NUM_THREADS": "1",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
            "WORLD_SIZE": str(replicas * per_pod), "RANK": "0",
            "PET_NNODES": str(replicas), "PET_NODE_RANK": "0", "PET_NPROC_PER_NODE": nproc,
        }

    def start(self, name: str) -> Launch:
        return Launch(self.command, self.workdir / f"{name}.stderr", self.env())

    def run(self, name: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command, env=self.env(), capture_output=True, text=True,
                              timeout=timeout_s)


class Launch(EdgeLaunch):
    """A running launcher (see the distributed-edge tests' launcher), with its stderr tail."""

    def output(self) -> str:
        return "".join(self.lines)[-4000:] + "\n" + self.stderr_path.read_text()[-4000:]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_sigterm_to_the_pod_checkpoints_once_and_the_next_pod_resumes(tmp_path: Path) -> None:
    model = build_digit_model(tmp_path / "model", favour={"7": 3.5})
    data = write_items(tmp_path / "train.jsonl", ["7"] * 8)
    out = tmp_path / "out"
    doc = spec_doc(model, data, out,
                   {"name": "star", "star": {"rounds": 1, "stepsPerRound": TOTAL,
                                             "externalCorrection": False}},
                   **{"rollout.temperature": 0.01, "rollout.samplesPerPrompt": 1,
                      "optim.batchSize": 2, "optim.microBatchSize": 1,
                      "optim.learningRate": 0.01,
                      # no periodic checkpoint: the only one is the one SIGTERM makes
                      "checkpoint.everySteps": 1000, "checkpoint.keep": 3,
                      "resources.terminationGracePeriodSeconds": 120})
    run = parse_resource(doc)
    config = OperatorConfig(tag="test")
    job = build_pytorchjob(run, config)
    pod = Pod(job, build_run_config_map(run, config)["data"]["run.json"], tmp_path)
    assert pod.grace == 120

    launch = pod.start("first")
    try:
        first = launch.wait_event(lambda e: e.get("step") == 1 and "kept" in e, 300)
        assert first is not None, launch.output()
        launch.workers = _children_by_rank(launch.proc.pid)
        # a CPU pod runs one trainer, not one per CPU (torchrun's "auto")
        assert sorted(launch.workers) == [0], (
            f"torchrun started ranks {sorted(launch.workers)} in a CPU pod "
            f"(nprocPerNode {job['spec'].get('nprocPerNode', 'unset, so auto')})")
        os.kill(launch.proc.pid, signal.SIGTERM)  # the kubelet signals PID 1
        code = launch.wait(timeout_s=pod.grace)
        assert code is not None, "the pod outlived its grace period:\n" + launch.output()
    finally:
        launch.kill()
    assert code != 0, "a stopped pod must not exit 0 (the job would count as Succeeded)"
    done = [e for e in launch.events() if e.get("event") == "done"]
    assert len(done) == 1 and done[0]["interrupted"], launch.output()
    stopped = done[0]["step"]
    assert 1 <= stopped < TOTAL, done
    logged = [e["step"] for e in launch.events() if "kept" in e]
    assert logged == list(range(1, stopped + 1)), logged

    # one complete checkpoint, of the step it stopped after, nothing half-written beside it
    ckpts = list_checkpoints(str(out))
    assert [Path(u).name for u in ckpts] == [f"step-{stopped:08d}"], ckpts
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step-{stopped:08d}"]
    state = json.loads((out / "checkpoints" / f"step-{stopped:08d}" / "trainer_state.json")
                       .read_text())
    assert state["step"] == stopped and state["metrics_lines"] == stopped, state
    progress = json.loads((out / "progress.json").read_text())
    assert "stopped on request" in progress["message"], progress
    assert not (out / "final").exists()

    # the next pod, same command and spec, resumes there and finishes
    again = pod.run("second")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    events = [json.loads(x) for x in again.stdout.splitlines() if x.startswith("{")]
    assert [e["step"] for e in events if e.get("event") == "resumed"] == [stopped], events
    assert sorted({e["step"] for e in events if "kept" in e}) == list(range(stopped + 1,
                                                                            TOTAL + 1))
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, TOTAL + 1))
    assert storage.is_complete(str(out / "final"))
