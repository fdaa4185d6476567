"""DeepSpeed ZeRO-2/3 through the real training loop, on DeepSpeed's CPU accelerator (gloo, fp32).

A short GRPO run on the digit model (see :mod:`testkit.digits`) with two micro-batches
per step is run with the plain-torch backend and with each ZeRO stage; with the same seed the
rollouts are the same, so the trained weights must agree to float tolerance. Resuming is
checked by deleting the last checkpoint and the final model and running again: the run
continues from the previous checkpoint (DeepSpeed's own optimiser state) and must end where the
uninterrupted run ended. Two processes run under torchrun exactly as in a PyTorchJob pod,
where ranks other than 0 store their optimiser partitions inside the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("deepspeed")

from safetensors.torch import load_file  # noqa: E402

from scoreops import storage  # noqa: E402
from scoreops.api import parse_resource  # noqa: E402
from scoreops.training.loop import Trainer  # noqa: E402
from testkit.digits import build_digit_model, write_answer_items  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_algorithms_train import spec_doc  # noqa: E402

STEPS = 3


def run_doc(model: Path, data: Path, out: Path, deepspeed: str) -> dict[str, Any]:
    return spec_doc(model, data, out, {"name": "grpo", "grpo": {"steps": STEPS, "beta": 0.0}},
                    **{"rollout.turns": 1, "optim.microBatchSize": 4,
                       "checkpoint.everySteps": 2, "checkpoint.keep": 2,
                       "resources.deepspeed": deepspeed})


def final(out: Path) -> dict[str, torch.Tensor]:
    assert storage.is_complete(str(out / "final"))
    return load_file(str(out / "final" / "model.safetensors"))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert set(a) == set(b)
    for k in a:
        gap = (a[k] - b[k]).abs().max().item()
        assert gap <= atol, f"{k} differs by {gap}"


def assert_same_training(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                         base: dict[str, torch.Tensor]) -> None:
    """Two runs of the same update, summed in another order: AdamW's normalisation turns
    float-rounding differences of tiny gradients into weight differences of ~1e-4 after a few
    steps at lr 0.05, far below what training moved the weights (~0.1)."""
    assert_close(a, b, atol=2e-3)
    change = max((a[k] - base[k]).abs().max().item() for k in base)
    gap = max((a[k] - b[k]).abs().max().item() for k in a)
    assert change > 50 * gap, (change, gap)


def forget_last_checkpoint(out: Path) -> None:
    """What a crash after the step-2 checkpoint leaves: no step-3 checkpoint, no final model."""
    shutil.rmtree(out / "checkpoints" / f"step-{STEPS:08d}")
    shutil.rmtree(out / "final")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    tmp = tmp_path_factory.mktemp("ds")
    model = build_digit_model(tmp / "model")
    data = write_answer_items(tmp / "train.jsonl", 24)
    Trainer(parse_resource(run_doc(model, data, tmp / "plain", "none"))).run_training()
    return model, data, final(tmp / "plain")


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_one_process_matches_plain_torch_and_resumes(
        setup: tuple[Path, Path, dict[str, torch.Tensor]], tmp_path: Path, stage: str) -> None:
    model, data, plain = setup
    out = tmp_path / "out"
    doc = run_doc(model, data, out, stage)
    result = Trainer(parse_resource(doc)).run_training()
    assert [m["step"] for m in result.metrics] == [1, 2, 3]
    assert all(math.isfinite(m["loss"]) and m["grad_norm"] > 0 for m in result.metrics)
    trained = final(out)
    base = load_file(str(model / "model.safetensors"))
    assert any(not torch.equal(trained[k], base[k]) for k in base), "nothing trained"
    assert_same_training(trained, plain, base)  # same seed, same rollouts, same update

    ckpt = out / "checkpoints" / "step-00000002"
    assert json.loads((ckpt / "backend.json").read_text()) == {
        "kind": stage, "zero_stage": int(stage[-1]), "world_size": 1}
    assert list((ckpt / "deepspeed" / "zero").glob("*optim_states.pt"))
    # the checkpoint's weights are the full model, also where ZeRO-3 partitions them
    weights = load_file(str(ckpt / "model.safetensors"))
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in trained.items()}

    forget_last_checkpoint(out)
    events: list[dict[str, Any]] = []
    resumed = Trainer(parse_resource(doc), on_event=events.append).run_training()
    assert [e["step"] for e in events if e.get("event") == "resumed"] == [2]
    assert [m["step"] for m in resumed.metrics] == [1, 2, 3]
    assert_close(final(out), trained, atol=1e-6)


def torchrun(doc: dict[str, Any], tmp: Path, name: str) -> subprocess.CompletedProcess[str]:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(doc))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "scoreops.train", "--spec", str(path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_two_processes_zero3_match_plain_torch_and_resume(
        setup: tuple[Path, Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    model, data, _ = setup
    torchrun(run_doc(model, data, tmp_path / "plain", "none"), tmp_path, "plain")
    out = tmp_path / "zero3"
    doc = run_doc(model, data, out, "zero3")
    torchrun(doc, tmp_path, "zero3")
    trained = final(out)
    assert_same_training(trained, final(tmp_path / "plain"),
                         load_file(str(model / "model.safetensors")))
    ckpt = out / "checkpoints" / "step-00000002"
    assert json.loads((ckpt / "backend.json").read_text())["world_size"] == 2
    # rank 1's partition is a complete artifact inside the checkpoint
    assert storage.is_complete(str(ckpt / "rank-00001"))
    assert list((ckpt / "rank-00001" / "deepspeed" / "zero").glob("zero_pp_rank_1_*optim*"))

    forget_last_checkpoint(out)
    proc = torchrun(doc, tmp_path, "zero3-resume")
    resumed = [json.loads(x) for x in proc.stdout.splitlines()
               if x.startswith("{") and '"resumed"' in x]
    assert {e["rank"] for e in resumed} == {0, 1} and all(e["step"] == 2 for e in resumed)
    assert_close(final(out), trained, atol=1e-6)
