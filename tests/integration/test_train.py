"""The training job end to end on a tiny model: learning, exact resume, faults, metrics."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

torch = pytest.importorskip("torch")

from scoreops import storage  # noqa: E402
from scoreops.api import parse_resource  # noqa: E402
from scoreops.training.checkpoint import list_checkpoints  # noqa: E402
from scoreops.training.loop import RunFailed, Trainer  # noqa: E402
from testkit.digits import (  # noqa: E402
    build_digit_model,
    scorerun_doc,
    write_answer_items,
)


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model that answers any question with a random digit (right 1 time in 10)."""
    return build_digit_model(tmp_path_factory.mktemp("digit") / "model")


write_items = write_answer_items


def spec_doc(model: Path, data: Path, output: str, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": str(model)},
        "dataset": {"train": {"uri": str(data)}, "evalSize": 4, "seed": 0},
        "algorithm": {"name": "score", "score": {"stage1Steps": 2, "stage2Steps": 2}},
        "rollout": {"turns": 2, "samplesPerPrompt": 4, "maxNewTokens": 1, "temperature": 1.0},
        "optim": {"learningRate": 0.02, "batchSize": 4, "microBatchSize": 8,
                  "warmupRatio": 0.0, "schedule": "constant"},
        "resources": {"precision": "fp32"},
        "checkpoint": {"everySteps": 1, "keep": 2},
        "evaluation": {"enabled": True},
        "output": {"uri": output},
        "seed": 0,
    }
    return scorerun_doc(spec, **over)


def test_turn2_reward_rises_on_learnable_task(digit_model: Path, tmp_path: Path) -> None:
    data = write_items(tmp_path / "train.jsonl", 40)
    doc = spec_doc(digit_model, data, str(tmp_path / "out"),
                   **{"algorithm.score": {"stage1Steps": 4, "stage2Steps": 10},
                      "rollout.samplesPerPrompt": 8, "checkpoint.everySteps": 50,
                      "evaluation.enabled": False})
    result = Trainer(parse_resource(doc)).run_training()
    r2 = [m["reward_t2"] for m in result.metrics]
    assert len(r2) == 14
    first, last = sum(r2[:4]) / 4, sum(r2[-4:]) / 4
    assert last > first + 0.25, f"turn-2 reward did not rise: {r2}"
    assert all(m["stage"] == "stage1" for m in result.metrics[:4])
    assert all(m["stage"] == "stage2" for m in result.metrics[4:])
    # the trained model is a loadable artifact and the report exists
    assert storage.is_complete(str(tmp_path / "out" / "final"))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "reward turn" in report or "reward.png" in report
    assert (tmp_path / "out" / "reward.png").stat().st_size > 1000
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["phase"] == "Succeeded" and progress["step"] == 14


def test_metrics_identity_on_records(digit_model: Path, tmp_path: Path) -> None:
    data = write_items(tmp_path / "train.jsonl", 30)
    doc = spec_doc(digit_model, data, str(tmp_path / "out"), **{"dataset.evalSize": 12})
    result = Trainer(parse_resource(doc)).run_training()
    for label, ev in result.evals.items():
        lines = (tmp_path / "out" / "eval" / f"{label}.jsonl").read_text().splitlines()
        records = [json.loads(x) for x in lines]
        assert len(records) == 12
        n = len(records)
        i2c = sum(1 for r in records if not r["correct"][0] and r["correct"][1]) / n
        c2i = sum(1 for r in records if r["correct"][0] and not r["correct"][1]) / n
        acc1 = sum(r["correct"][0] for r in records) / n
        acc2 = sum(r["correct"][1] for r in records) / n
        m = ev.metrics
        assert (m.acc_t1, m.acc_t2, m.delta_i2c, m.delta_c2i) == (acc1, acc2, i2c, c2i)
        assert m.delta == pytest.approx(acc2 - acc1, abs=1e-12)
        assert m.delta == m.delta_i2c - m.delta_c2i


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "model.safetensors"))


def _run_job(spec_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "scoreops.train", "--spec", str(spec_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(digit_model: Path, tmp_path: Path) -> None:
    data = write_items(tmp_path / "train.jsonl", 40)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONHASHSEED": "0"}
    total = 6
    overrides = {"algorithm.score": {"stage1Steps": 3, "stage2Steps": 3},
                 "evaluation.enabled": False}

    ref_out = tmp_path / "reference"
    ref_spec = tmp_path / "ref.yaml"
    ref_spec.write_text(yaml.safe_dump(spec_doc(digit_model, data, str(ref_out), **overrides)))
    assert _run_job(ref_spec, env).wait(timeout=300) == 0

    out = tmp_path / "killed"
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(spec_doc(digit_model, data, str(out), **overrides)))
    # a random kill point, reproducible: SCOREOPS_KILL_SEED=<the seed in a failure message>
    seed = int(os.environ.get("SCOREOPS_KILL_SEED") or time.time_ns() % 2**32)
    kill_after = random.Random(seed).randint(1, total - 1)
    print(f"\nkill point: after step {kill_after} (SCOREOPS_KILL_SEED={seed})")
    proc = _run_job(spec, env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list_checkpoints(str(out))) and \
                int(list_checkpoints(str(out))[-1].rsplit("-", 1)[-1]) >= kill_after:
            break
        time.sleep(0.05)
    where = f"(killed after step {kill_after}; rerun with SCOREOPS_KILL_SEED={seed})"
    assert proc.poll() is None, f"the run ended before it could be killed {where}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = int(list_checkpoints(str(out))[-1].rsplit("-", 1)[-1])
    assert done < total, where

    resumed = _run_job(spec, env)
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, f"{where}\n{log}"
    assert f'"event": "resumed", "step": {done}' in log, where
    a, b = _final_weights(ref_out), _final_weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume from step {done} {where}"
    # the metrics file has each step exactly once
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, total + 1)), where


def test_checkpoint_write_failure_fails_run_and_keeps_previous(
        digit_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_items(tmp_path / "train.jsonl", 20)
    out = tmp_path / "out"
    doc = spec_doc(digit_model, data, str(out), **{"evaluation.enabled": False})
    real_save = storage.save_artifact
    calls = {"n": 0}

    def flaky(local_dir: Any, uri: str, metadata: Any = None) -> str:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_save(local_dir, uri, metadata=metadata)

    monkeypatch.setattr(storage, "save_artifact", flaky)
    with pytest.raises(RunFailed, match="No space left on device") as info:
        Trainer(parse_resource(doc)).run_training()
    assert "step-00000001" in str(info.value)  # names the intact checkpoint
    ckpts = list_checkpoints(str(out))
    assert [c.rsplit("/", 1)[-1] for c in ckpts] == ["step-00000001"]
    progress = json.loads((out / "progress.json").read_text())
    assert progress["phase"] == "Failed" and "No space left" in progress["message"]
    # the previous checkpoint is whole and resumable
    monkeypatch.setattr(storage, "save_artifact", real_save)
    result = Trainer(parse_resource(doc)).run_training()
    assert result.step == 4


def test_invalid_spec_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    doc = spec_doc(Path("/nonexistent"), Path("/nonexistent.jsonl"), str(tmp_path / "out"),
                   **{"algorithm.score": {"alpha": -1}})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = subprocess.run([sys.executable, "-m", "scoreops.train", "--spec", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "spec.algorithm.score.alpha" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_model_names_where_it_looked(tmp_path: Path) -> None:
    data = write_items(tmp_path / "train.jsonl", 10)
    doc = spec_doc(tmp_path / "no-model", data, str(tmp_path / "out"))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = subprocess.run([sys.executable, "-m", "scoreops.cli", "run", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert str(tmp_path / "no-model") in proc.stderr + proc.stdout


def test_missing_dataset_says_how_to_import(digit_model: Path, tmp_path: Path) -> None:
    doc = spec_doc(digit_model, tmp_path / "absent.jsonl", str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match=r"absent\.jsonl"):
        Trainer(parse_resource(doc)).run_training()
