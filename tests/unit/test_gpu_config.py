"""The GPU path's pure pieces: DeepSpeed configuration selection, vLLM request parameters.

Neither test imports deepspeed or vllm; the engines themselves need a GPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scoreops.api import parse_resource
from scoreops.rollout.types import SamplingParams
from scoreops.rollout.vllm import vllm_sampling_kwargs
from scoreops.training.deepspeed import config_path, deepspeed_config

ROOT = Path(__file__).resolve().parents[2]


def spec(**resources: Any) -> Any:
    doc = {
        "apiVersion": "scoreops.io/v1alpha1", "kind": "ScoreRun", "metadata": {"name": "x"},
        "spec": {
            "model": {"uri": "s3://models/base"},
            "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
            "algorithm": {"name": "grpo"},
            "optim": {"microBatchSize": 4, "maxGradNorm": 0.5},
            "resources": {"gpusPerWorker": 8, **resources},
            "output": {"uri": "s3://runs/x"},
        },
    }
    return parse_resource(doc).spec


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_stage_selects_its_file_and_resolves_auto(stage: str) -> None:
    cfg = deepspeed_config(spec(deepspeed=stage))
    assert cfg is not None
    assert cfg["zero_optimization"]["stage"] == int(stage[-1])
    assert cfg["bf16"] == {"enabled": True} and "fp16" not in cfg
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["train_micro_batch_size_per_gpu"] == 4
    assert "auto" not in repr(cfg)
    # micro-batch counts vary per step: the caller owns the accumulation boundary
    assert cfg["managed_gradient_accumulation"] is False
    assert cfg["gradient_accumulation_steps"] == 1
    assert config_path(stage) == ROOT / "jobs" / "deepspeed" / f"{stage}.json"


def test_deepspeed_none_and_precisions() -> None:
    assert deepspeed_config(spec()) is None
    fp16 = deepspeed_config(spec(deepspeed="zero2", precision="fp16"))
    assert fp16 is not None and fp16["fp16"]["enabled"] and not fp16["bf16"]["enabled"]
    with pytest.raises(ValueError, match="zero2 or zero3"):
        config_path("zero1")


def test_deepspeed_config_honours_the_jobs_dir(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("SCOREOPS_JOBS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="SCOREOPS_JOBS_DIR"):
        deepspeed_config(spec(deepspeed="zero3"))


def test_deepspeed_on_cpu_needs_fp32() -> None:
    from scoreops.api import InvalidResource

    assert spec(deepspeed="zero2", gpusPerWorker=0, precision="fp32").resources.deepspeed == "zero2"
    with pytest.raises(InvalidResource, match="precision fp32"):
        spec(deepspeed="zero3", gpusPerWorker=0)


def test_vllm_request_parameters() -> None:
    kw = vllm_sampling_kwargs(SamplingParams(max_new_tokens=12, temperature=0.7, top_p=0.9,
                                             n=4, stop=("\n\n",)), seed=123)
    assert kw == {"n": 1, "max_tokens": 12, "temperature": 0.7, "top_p": 0.9, "logprobs": 0,
                  "detokenize": True, "skip_special_tokens": True, "stop": ["\n\n"],
                  "include_stop_str_in_output": False, "seed": 123}
    greedy = vllm_sampling_kwargs(SamplingParams(temperature=0.0), seed=5)
    assert greedy["temperature"] == 0.0 and "seed" not in greedy


def test_importing_the_gpu_modules_imports_neither_vllm_nor_deepspeed() -> None:
    code = (
        "import sys\n"
        "import scoreops.rollout.vllm, scoreops.training.deepspeed, scoreops.training.backend\n"
        "import scoreops.training.loop\n"
        "print(sorted(m for m in ('vllm', 'deepspeed') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"
