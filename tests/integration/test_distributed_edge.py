"""Edge cases of data-parallel training under torchrun (gloo, CPU, two processes).

* Ranks that keep different numbers of rows in a step (STaR keeps only verified answers, so
  one rank's prompts may yield more, fewer, or no rows): each micro-batch's loss is weighted
  by its share of the rows of **all** ranks, so the two-process update equals the
  single-process update of the same global batch.
* A stop request (SIGTERM) that reaches one rank only: every rank stops after the same step,
  the group writes one complete checkpoint of that step, and a rerun resumes from it.

The model is :func:`testkit.digits.build_digit_model` with "7" favoured: sampled at
temperature 0.01 it always answers "7", whatever the question and whatever the rank's random
stream, so rollouts — and which rows are kept — are the same in every process layout.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from scoreops import storage  # noqa: E402
from scoreops.api import parse_resource  # noqa: E402
from scoreops.training.checkpoint import list_checkpoints  # noqa: E402
from scoreops.training.context import DistEnv, StepContext  # noqa: E402
from scoreops.training.loop import load_split  # noqa: E402
from testkit.digits import build_digit_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_algorithms_train import spec_doc  # noqa: E402

_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def seven_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_digit_model(tmp_path_factory.mktemp("seven") / "model", favour={"7": 3.5})


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _command(spec: Path, nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "scoreops.train", "--spec", str(spec)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "scoreops.train", "--spec", str(spec)]


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]


def run_job(doc: dict[str, Any], path: Path, nproc: int) -> list[dict[str, Any]]:
    """Run the job entrypoint to completion; its JSON log lines."""
    path.write_text(json.dumps(doc))
    cmd = _command(path, nproc)
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return _events(proc.stdout)


def write_items(path: Path, answers: list[str]) -> Path:
    rows = []
    for i, ans in enumerate(answers):
        a = i % (int(ans) + 1)
        rows.append({"id": f"q{i}", "question": f"Question {i}: what is {a} + {int(ans) - a}?",
                     "answer": ans, "source": "test"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prompt_layout(doc: dict[str, Any], steps: int, world: int) -> list[list[list[int]]]:
    """``layout[step][rank]``: indices (in the data file) of the prompts each rank trains on,
    as the trainer assigns them (:meth:`StepContext.prompts_for_step`)."""
    run = parse_resource(doc)
    train, held = load_split(run)
    assert not held
    index = {item.id: i for i, item in enumerate(train)}
    out = []
    for step in range(steps):
        per_rank = []
        for rank in range(world):
            ctx = StepContext(spec=run.spec, policy=None, reference=None, tokenizer=None,  # type: ignore[arg-type]
                              engine=None, verifier=None, train_items=train,  # type: ignore[arg-type]
                              device=torch.device("cpu"), dist=DistEnv(rank, world))
            per_rank.append([index[p.id] for p in ctx.prompts_for_step(step)])
        out.append(per_rank)
    return out


def assert_same_training(base_dir: Path, got_dir: Path, want_dir: Path) -> None:
    """``got_dir``'s weights equal ``want_dir``'s, which moved away from ``base_dir``'s.

    Summation order differs between process layouts, and Adam turns a float-rounding
    difference in a near-zero gradient (the digit model's query/key projections) into an
    update difference of up to ~1e-5, hence ``atol=1e-4``: still ~100 times below what
    training moved the weights.
    """
    base = load_file(str(base_dir / "model.safetensors"))
    want = load_file(str(want_dir / "model.safetensors"))
    got = load_file(str(got_dir / "model.safetensors"))
    assert set(got) == set(want)
    moved = [k for k in want if not torch.equal(want[k], base[k])]
    assert moved, f"{want_dir} did not train"
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-4, rtol=1e-4, msg=k)
    change = max((want[k] - base[k]).abs().max().item() for k in moved)
    gap = max((got[k] - want[k]).abs().max().item() for k in want)
    assert change > 100 * gap + 1e-3, (change, gap)


# --- (a) ranks that keep different numbers of rows -----------------------------------------

# which of each rank's two prompts per step have the answer the model gives ("7"); the others
# ("3") are never verified, so STaR keeps 2 rows (attempt and revision) per right prompt:
# rank 0 / rank 1 keep 4 / 2 rows in step 1, 2 / 0 in step 2, 0 / 4 in step 3
RIGHT = [[[True, True], [True, False]],
         [[True, False], [False, False]],
         [[False, False], [True, True]]]


def test_unequal_kept_rows_per_rank_give_the_single_process_update(
    seven_model: Path, tmp_path: Path
) -> None:
    steps, world, per_step = len(RIGHT), 2, 4
    n = steps * per_step  # one epoch: every item is used once
    data = tmp_path / "train.jsonl"

    def doc_for(out: Path) -> dict[str, Any]:
        return spec_doc(
            seven_model, data, out,
            {"name": "star", "star": {"rounds": 1, "stepsPerRound": steps,
                                      "externalCorrection": True}},
            **{"rollout.temperature": 0.01, "rollout.samplesPerPrompt": 1,
               "optim.batchSize": per_step, "optim.microBatchSize": 2,
               "optim.learningRate": 0.01,
               # no clipping: a wrong per-rank weighting must not be normalised away
               "optim.maxGradNorm": 1.0e6,
               "checkpoint.everySteps": 100, "checkpoint.keep": 1})

    write_items(data, ["7"] * n)  # placeholder answers: the layout depends only on n and seed
    layout = prompt_layout(doc_for(tmp_path / "x"), steps, world)
    answers = ["?"] * n
    for step in range(steps):
        for rank in range(world):
            assert len(layout[step][rank]) == len(RIGHT[step][rank])
            for i, right in zip(layout[step][rank], RIGHT[step][rank], strict=True):
                answers[i] = "7" if right else "3"
    assert "?" not in answers
    write_items(data, answers)

    outs = {}
    for nproc in (1, 2):
        out = tmp_path / f"out-{nproc}"
        events = run_job(doc_for(out), tmp_path / f"run-{nproc}.json", nproc)
        outs[nproc] = out
        kept = {e["step"]: e["kept"] for e in events if "kept" in e}
        # kept rows of the global batch (summed over the ranks): the design above took effect
        assert kept == {1: 6.0, 2: 2.0, 3: 4.0}, events

    # weighting each rank by its own rows instead moves weights ~1e-2 away from this
    assert_same_training(seven_model, outs[2] / "final", outs[1] / "final")


# --- (b) SIGTERM to one rank -----------------------------------------------------------------


def _children_by_rank(parent: int) -> dict[int, int]:
    """``{RANK: pid}`` of the worker processes torchrun (``parent``) started."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for var in env:
            if var.startswith(b"RANK="):
                found[int(var[5:])] = int(entry.name)
    return found


class Launch:
    """A torchrun launch whose stdout is read by a thread, so waits can time out."""

    def __init__(self, cmd: list[str], stderr: Path, env: dict[str, str] | None = None) -> None:
        self.stderr_path = stderr
        self._err = stderr.open("w")
        self.proc = subprocess.Popen(cmd, env=env if env is not None else _env(),
                                     stdout=subprocess.PIPE, stderr=self._err, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.workers: dict[int, int] = {}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_event(self, want: Any, timeout_s: float) -> dict[str, Any] | None:
        """The first log event for which ``want`` is true (None: the output ended first, or
        ``timeout_s`` passed)."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            self.lines.append(line)
            if line.startswith("{") and want(json.loads(line)):
                return json.loads(line)
        return None

    def wait(self, timeout_s: float) -> int | None:
        """The launcher's exit code, once it and its output ended (None: still running)."""
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=timeout_s)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return code

    def kill(self) -> None:
        """SIGKILL the workers (torchrun starts each in its own session) and the launcher."""
        if self.proc.poll() is None:
            self.workers.update(_children_by_rank(self.proc.pid))
        for pid in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait()
        self._err.close()

    def events(self) -> list[dict[str, Any]]:
        """The JSON log events read so far."""
        return [json.loads(x) for x in self.lines if x.startswith("{")]

    def output(self) -> str:
        return "".join(self.lines)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_sigterm_to_one_rank_stops_the_group_at_one_checkpoint_and_resumes(
    seven_model: Path, tmp_path: Path
) -> None:
    total = 24  # steps of ~0.1 s: the signal lands long before the last one
    data = write_items(tmp_path / "train.jsonl", ["7"] * 8)
    out = tmp_path / "out"
    doc = spec_doc(seven_model, data, out,
                   {"name": "star", "star": {"rounds": 1, "stepsPerRound": total,
                                             "externalCorrection": False}},
                   **{"rollout.temperature": 0.01, "rollout.samplesPerPrompt": 1,
                      "optim.batchSize": 2, "optim.microBatchSize": 1,
                      "optim.learningRate": 0.01,
                      # no periodic checkpoint: the only one is the one the stop writes
                      "checkpoint.everySteps": 1000, "checkpoint.keep": 3})
    spec = tmp_path / "run.json"
    spec.write_text(json.dumps(doc))

    job = Launch(_command(spec, 2), tmp_path / "stderr.log")
    try:
        # the workers are up, their signal handlers installed, once they load the data
        loading = job.wait_event(lambda e: e.get("what") == "data" and e.get("rank") == 1, 180)
        assert loading is not None, job.output()[-4000:]
        job.workers = _children_by_rank(job.proc.pid)
        assert sorted(job.workers) == [0, 1], job.workers
        first = job.wait_event(lambda e: e.get("step") == 1 and e.get("rank") == 1
                               and "kept" in e, 180)
        assert first is not None, job.output()[-4000:]
        os.kill(job.workers[1], signal.SIGTERM)  # rank 1 only; rank 0 hears of it from rank 1
        code = job.wait(timeout_s=120)
        assert code is not None, (
            "the ranks did not all exit within 120 s of SIGTERM to rank 1 (one waiting in a "
            f"collective?):\n{job.output()[-4000:]}")
    finally:
        job.kill()
    stdout = job.output()
    stderr = (tmp_path / "stderr.log").read_text()
    # stopped, not finished: the ranks exit 75 (EX_TEMPFAIL) and torchrun reports a failure,
    # so a PyTorchJob pod whose ranks were stopped by another pod's eviction is not Succeeded
    assert code not in (None, 0), f"{stdout[-4000:]}\n{stderr[-4000:]}"
    assert "exitcode  : 75" in stderr, stderr[-4000:]
    events = _events(stdout)
    done = {e["rank"]: e for e in events if e.get("event") == "done"}
    assert sorted(done) == [0, 1], stdout[-4000:]
    assert all(d["interrupted"] for d in done.values()), done
    stopped = done[0]["step"]
    assert done[1]["step"] == stopped, done  # both ranks stopped after the same step
    assert 1 <= stopped < total, done
    for rank in (0, 1):
        logged = sorted(e["step"] for e in events if "kept" in e and e.get("rank") == rank)
        assert logged == list(range(1, stopped + 1)), (rank, logged)

    # one complete checkpoint, of that step, and nothing half-written beside it
    ckpts = list_checkpoints(str(out))
    assert [Path(u).name for u in ckpts] == [f"step-{stopped:08d}"], ckpts
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step-{stopped:08d}"]
    state = json.loads((out / "checkpoints" / f"step-{stopped:08d}" / "trainer_state.json")
                       .read_text())
    assert state["step"] == stopped and state["metrics_lines"] == stopped, state
    progress = json.loads((out / "progress.json").read_text())
    assert progress["step"] == stopped and "stopped on request" in progress["message"], progress
    assert not (out / "final").exists()

    # the rerun resumes there on both ranks and finishes
    events = run_job(doc, spec, 2)
    resumed = {e["rank"]: e["step"] for e in events if e.get("event") == "resumed"}
    assert resumed == {0: stopped, 1: stopped}, events
    logged = sorted({e["step"] for e in events if "kept" in e})
    assert logged == list(range(stopped + 1, total + 1)), logged
    done = {e["rank"]: e for e in events if e.get("event") == "done"}
    assert {r: (d["step"], d["interrupted"]) for r, d in done.items()} == {
        0: (total, False), 1: (total, False)}
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, total + 1))
    assert storage.is_complete(str(out / "final"))

    # and ends where an uninterrupted run ends (same global batch, one process)
    ref = tmp_path / "ref"
    run_job({**doc, "spec": {**doc["spec"], "output": {"uri": str(ref)}}},
            tmp_path / "ref.json", 1)
    assert_same_training(seven_model, out / "final", ref / "final")
