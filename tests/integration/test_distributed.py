"""Two training processes under torchrun (gloo, CPU) against one process, same global batch.

The job entrypoint runs exactly as in a PyTorchJob pod: ``python -m torch.distributed.run
--nproc_per_node 2 -m scoreops.train --spec run.json``. Each rank takes half of every step's
prompts; gradients are averaged over the ranks; only rank 0 writes. With the same global
batch the final weights must equal the single-process run's.

Each rank draws its samples from its own random stream, so the comparison needs rollouts
that do not depend on the stream: the model here answers "7" (the right answer) whatever the
question, and sampling at temperature 0.01 always picks it, while the training loss (STaR's
cross-entropy at temperature 1, where p("7") ≈ 0.45) still has a large gradient.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from scoreops import storage  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_algorithms_train import make_digit_model, spec_doc, write_items  # noqa: E402


def run_job(spec: dict, tmp: Path, nproc: int) -> subprocess.CompletedProcess[str]:
    path = tmp / f"run-{nproc}.json"
    path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    if nproc == 1:
        cmd = [sys.executable, "-m", "scoreops.train", "--spec", str(path)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "scoreops.train", "--spec", str(path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path: Path) -> None:
    model = make_digit_model(tmp_path / "model", favour={"7": 3.5})
    data = write_items(tmp_path / "train.jsonl", 24)
    outs = {}
    for nproc in (1, 2):
        out = tmp_path / f"out-{nproc}"
        doc = spec_doc(model, data, out,
                       {"name": "star", "star": {"rounds": 1, "stepsPerRound": 3,
                                                 "externalCorrection": True}},
                       **{"rollout.temperature": 0.01, "rollout.samplesPerPrompt": 2,
                          "optim.batchSize": 4, "optim.microBatchSize": 4,
                          "optim.learningRate": 0.01, "checkpoint.everySteps": 2,
                          "checkpoint.keep": 2})
        proc = run_job(doc, tmp_path, nproc)
        outs[nproc] = out
        events = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        steps = [e for e in events if "step" in e and "kept" in e]
        # one line per step: rank 0 logs the all-reduced statistics, rank 1 as well
        assert {e["step"] for e in steps} == {1, 2, 3}
        for e in steps:
            assert e["kept"] == 16.0, e  # 4 prompts × 2 samples × 2 correct turns, all ranks
            assert e["reward_t1"] == 1.0
    # rank 0 alone wrote: one set of checkpoints, one final model, one metrics file
    assert [Path(u).name for u in storage.list_artifacts(str(outs[2] / "checkpoints"))] == [
        "step-00000002", "step-00000003"]
    assert len((outs[2] / "metrics.jsonl").read_text().splitlines()) == 3

    base = load_file(str(model / "model.safetensors"))
    one = load_file(str(outs[1] / "final" / "model.safetensors"))
    two = load_file(str(outs[2] / "final" / "model.safetensors"))
    assert set(one) == set(two)
    moved = [k for k in one if not torch.equal(one[k], base[k])]
    assert moved, "the single-process run did not train"
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=2e-5, rtol=1e-4, msg=k)
    # and the difference between the runs is far below what training changed
    change = max((one[k] - base[k]).abs().max().item() for k in moved)
    gap = max((two[k] - one[k]).abs().max().item() for k in one)
    assert change > 100 * gap + 1e-3, (change, gap)
