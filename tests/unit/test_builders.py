"""Builders: each resource's children equal their golden YAML, and the rules behind them hold.

Regenerate the golden files after an intended change with
``UPDATE_GOLDEN=1 pytest tests/unit/test_builders.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from scoreops.api import CorrectorService, EvalSuite, ScoreRun, load_resource, parse_resource
from scoreops.k8s.builders import (
    UnresolvedModel,
    build_children,
    build_eval_job,
    build_inference_service,
    build_pytorchjob,
    build_run_config_map,
    spec_hash,
)
from scoreops.k8s.checks import cluster_errors
from scoreops.k8s.config import ConfigError, OperatorConfig
from scoreops.k8s.render import render_children, to_yaml

GOLDEN = Path(__file__).parent / "golden"
INPUTS = GOLDEN / "inputs"
UPDATE = os.environ.get("UPDATE_GOLDEN", "") not in ("", "0")

PLATFORM = OperatorConfig(
    registry="registry.example.com/scoreops",
    tag="1.2.3",
    gpu_node_selector={"pool.example.com/gpu": "a100"},
    gpu_tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
    s3_secret="platform-s3",
    s3_endpoint="https://s3.internal.example.com",
)
PLAIN = OperatorConfig(tag="1.2.3")

# case -> (operator settings, resolved ScoreRun weights)
CASES: dict[str, tuple[OperatorConfig, dict[str, str]]] = {
    "scorerun-gpu": (PLAIN, {}),
    "scorerun-pool-defaults": (PLATFORM, {}),
    "scorerun-cpu": (PLAIN, {}),
    "evalsuite-vllm": (PLAIN, {"llama8b-score": "s3://runs/llama8b-score/checkpoints/step-001000"}),
    "evalsuite-endpoint": (PLATFORM, {}),
    "correctorservice-vllm": (PLATFORM, {}),
    "correctorservice-hf": (PLATFORM, {"tiny-score": "s3://runs/tiny-score/checkpoints/step-18"}),
}


def _load(case: str) -> Any:
    return load_resource(INPUTS / f"{case}.yaml")


def _doc(case: str) -> dict[str, Any]:
    return yaml.safe_load((INPUTS / f"{case}.yaml").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_children_match_golden(case: str) -> None:
    config, uris = CASES[case]
    text = to_yaml(build_children(_load(case), config, "default", uris))
    golden = GOLDEN / f"{case}.yaml"
    if UPDATE:
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}; run with UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"{case}: children differ from {golden.name}"


def test_every_input_has_a_case_and_a_golden() -> None:
    inputs = {p.stem for p in INPUTS.glob("*.yaml")}
    goldens = {p.stem for p in GOLDEN.glob("*.yaml")}
    assert inputs == set(CASES)
    assert goldens == set(CASES)


# --- ScoreRun ----------------------------------------------------------------------------------


def test_pytorchjob_replicas_follow_workers() -> None:
    doc = _doc("scorerun-gpu")
    for workers, worker_replicas in ((1, None), (2, 1), (5, 4)):
        doc["spec"]["resources"]["workers"] = workers
        job = build_pytorchjob(parse_resource(doc), PLAIN)
        specs = job["spec"]["pytorchReplicaSpecs"]
        assert job["spec"]["nprocPerNode"] == "4"  # one torchrun process per GPU
        assert specs["Master"]["replicas"] == 1
        assert specs.get("Worker", {}).get("replicas") == worker_replicas
        for spec in specs.values():
            assert spec["restartPolicy"] == "OnFailure"
            container = spec["template"]["spec"]["containers"][0]
            assert container["name"] == "pytorch"  # the training operator wires this one
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_credentials_are_referenced_never_copied() -> None:
    job = build_pytorchjob(_load("scorerun-gpu"), PLAIN)
    env = {e["name"]: e for e in job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
           ["spec"]["containers"][0]["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[key]
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "s3-credentials", "key": key}
    assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_platform_endpoint_and_secret_apply_when_the_run_names_none() -> None:
    run = _load("scorerun-pool-defaults")
    pod = build_pytorchjob(run, PLATFORM)["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "platform-s3"
    assert env["AWS_ENDPOINT_URL"] == {"name": "AWS_ENDPOINT_URL",
                                       "value": "https://s3.internal.example.com"}
    assert pod["spec"]["nodeSelector"] == {"pool.example.com/gpu": "a100"}
    assert pod["spec"]["tolerations"] == [dict(PLATFORM.gpu_tolerations[0])]
    # with no Secret anywhere, no credential variables at all
    bare = build_pytorchjob(run, PLAIN)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    names = {e["name"] for e in bare["spec"]["containers"][0]["env"]}
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}


def test_own_placement_wins_over_the_gpu_pool_and_cpu_pods_ignore_it() -> None:
    gpu = build_pytorchjob(_load("scorerun-gpu"), PLATFORM)
    pod = gpu["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.example.com/gpu-pool": "h100"}
    cpu = build_pytorchjob(_load("scorerun-cpu"), PLATFORM)
    pod = cpu["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]


def test_images_follow_settings_and_overrides() -> None:
    run = _load("scorerun-gpu")
    image = build_pytorchjob(run, PLATFORM)["spec"]["pytorchReplicaSpecs"]["Master"]["template"][
        "spec"]["containers"][0]["image"]
    assert image == "registry.example.com/scoreops/trainer:1.2.3"
    overridden = _load("scorerun-pool-defaults")
    image = build_pytorchjob(overridden, PLATFORM)["spec"]["pytorchReplicaSpecs"]["Master"][
        "template"]["spec"]["containers"][0]["image"]
    assert image == "registry.internal/trainer-patched:7"


def test_config_map_holds_the_full_spec_the_trainer_parses_back() -> None:
    run = _load("scorerun-gpu")
    cm = build_run_config_map(run, PLAIN)
    doc = json.loads(cm["data"]["run.json"])
    back = parse_resource(doc)
    assert isinstance(back, ScoreRun)
    assert back.spec == run.spec
    assert doc["spec"]["optim"]["maxGradNorm"] == 1.0  # defaults written out explicitly
    assert doc["metadata"] == {"name": "llama8b-score", "namespace": "research"}


def test_owner_reference_needs_a_uid() -> None:
    run = _load("scorerun-gpu")
    ref = build_pytorchjob(run, PLAIN)["metadata"]["ownerReferences"][0]
    assert ref == {"apiVersion": "scoreops.io/v1alpha1", "kind": "ScoreRun",
                   "name": "llama8b-score", "uid": run.metadata.uid, "controller": True,
                   "blockOwnerDeletion": True}
    assert "ownerReferences" not in build_pytorchjob(_load("scorerun-cpu"), PLAIN)["metadata"]


def test_spec_hash_changes_with_the_spec_only() -> None:
    doc = _doc("scorerun-gpu")
    a = spec_hash(parse_resource(doc))
    doc["metadata"]["labels"] = {"team": "x"}
    assert spec_hash(parse_resource(doc)) == a
    doc["spec"]["seed"] = 7
    assert spec_hash(parse_resource(doc)) != a


def test_builders_are_pure() -> None:
    run = _load("scorerun-gpu")
    before = run.model_dump()
    assert build_children(run, PLATFORM) == build_children(run, PLATFORM)
    assert run.model_dump() == before


# --- EvalSuite and CorrectorService ------------------------------------------------------------


def test_evalsuite_job_kind_depends_on_the_models() -> None:
    assert build_eval_job(_load("evalsuite-endpoint"), PLAIN)["kind"] == "Job"
    suite = _load("evalsuite-vllm")
    with pytest.raises(UnresolvedModel, match="llama8b-score"):
        build_children(suite, PLAIN)
    cm, job = build_children(suite, PLAIN, model_uris={"llama8b-score": "s3://weights/final"})
    assert job["kind"] == "PyTorchJob"
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    models = json.loads(cm["data"]["suite.json"])["spec"]["models"]
    assert models[1] == {"name": "trained", "uri": "s3://weights/final"}
    resolved = parse_resource(json.loads(cm["data"]["suite.json"]))
    assert isinstance(resolved, EvalSuite)
    # the digest is the suite as written, so a spec change can be compared with it
    assert job["metadata"]["annotations"]["scoreops.io/spec-hash"] == spec_hash(suite)


def test_inference_service_splits_predictor_and_transformer() -> None:
    svc = _load("correctorservice-vllm")
    isvc = build_inference_service(svc, PLATFORM)
    predictor, transformer = isvc["spec"]["predictor"], isvc["spec"]["transformer"]
    assert predictor["model"]["modelFormat"] == {"name": "huggingface"}
    assert predictor["model"]["storageUri"] == "s3://runs/llama8b-score/final"
    assert "--backend=vllm" in predictor["model"]["args"]
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert predictor["serviceAccountName"] == "s3-reader"
    # own tolerations win; the pool's node selector still applies to the GPU predictor
    assert predictor["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                         "effect": "NoSchedule"}]
    assert predictor["nodeSelector"] == {"pool.example.com/gpu": "a100"}
    args = transformer["containers"][0]["args"]
    # KServe appends its own --model_name unless an argument starts with it
    assert args[0] == "--model_name=llama8b-score"
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--predictor-url"] == "http://llama8b-corrector-predictor.serving"
    assert flags["--backend"] == "openai"
    assert (flags["--strategy"], flags["--turns"]) == ("self-correct", "3")
    env = {e["name"]: e.get("value") for e in transformer["containers"][0]["env"]}
    assert json.loads(env["SCOREOPS_STRATEGY_JSON"])["turns"] == 3
    assert "nvidia.com/gpu" not in json.dumps(transformer)


def test_corrector_service_from_a_scorerun_needs_its_weights() -> None:
    svc = _load("correctorservice-hf")
    assert isinstance(svc, CorrectorService)
    with pytest.raises(UnresolvedModel):
        build_inference_service(svc, PLATFORM)
    isvc = build_inference_service(svc, PLATFORM, model_uri="s3://x/step-18")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://x/step-18"
    assert "--backend=huggingface" in isvc["spec"]["predictor"]["model"]["args"]
    assert "nodeSelector" not in isvc["spec"]["predictor"]  # no GPU: no GPU pool


def test_children_are_valid_kubernetes_objects() -> None:
    """Round-trip the pod templates and Job through the Kubernetes models: a misspelt field
    would be dropped and the round trip would differ."""
    from kubernetes.client import ApiClient

    api = ApiClient()

    def roundtrip(data: dict[str, Any], klass: str) -> Any:
        obj = api._ApiClient__deserialize(data, klass)  # type: ignore[attr-defined]
        return api.sanitize_for_serialization(obj)

    for case in CASES:
        config, uris = CASES[case]
        for child in build_children(_load(case), config, "default", uris):
            if child["kind"] == "ConfigMap":
                assert roundtrip(child, "V1ConfigMap") == child
            elif child["kind"] == "Job":
                assert roundtrip(child, "V1Job") == child
            elif child["kind"] == "ServiceAccount":
                assert roundtrip(child, "V1ServiceAccount") == child
            elif child["kind"] == "PyTorchJob":
                for spec in child["spec"]["pytorchReplicaSpecs"].values():
                    assert roundtrip(spec["template"], "V1PodTemplateSpec") == spec["template"]
            else:
                for container in child["spec"]["transformer"]["containers"]:
                    assert roundtrip(container, "V1Container") == container
                meta = child["metadata"]
                assert roundtrip(meta, "V1ObjectMeta") == meta


def _unknown_kserve_fields(data: Any, klass_name: str, path: str) -> list[str]:
    """Keys of ``data`` that KServe's generated model ``klass_name`` does not declare.

    Kubernetes core types (V1Container, V1Toleration, ...) are not KServe's: the round trip
    through the Kubernetes models above covers them.
    """
    import kserve.models

    klass = getattr(kserve.models, klass_name, None)
    if klass is None or not isinstance(data, dict):
        return []
    by_wire = {wire: attr for attr, wire in klass.attribute_map.items()}
    unknown = []
    for key, value in data.items():
        if key not in by_wire:
            unknown.append(f"{path}.{key}")
            continue
        kind = klass.openapi_types[by_wire[key]]
        if kind.startswith("list[") and isinstance(value, list):
            for i, item in enumerate(value):
                unknown += _unknown_kserve_fields(item, kind[5:-1], f"{path}.{key}[{i}]")
        else:
            unknown += _unknown_kserve_fields(value, kind, f"{path}.{key}")
    return unknown


@pytest.mark.parametrize("case", ["correctorservice-vllm", "correctorservice-hf"])
def test_inference_service_fields_are_kserve_fields(case: str) -> None:
    config, uris = CASES[case]
    isvc = build_children(_load(case), config, "default", uris)[-1]
    assert isvc["kind"] == "InferenceService"
    assert _unknown_kserve_fields(isvc["spec"], "V1beta1InferenceServiceSpec", "spec") == []
    # and the walk does catch a misspelt field
    isvc["spec"]["predictor"]["model"]["storageURI"] = "s3://x/y"
    assert _unknown_kserve_fields(isvc["spec"], "V1beta1InferenceServiceSpec", "spec") == [
        "spec.predictor.model.storageURI"]


# --- cluster-only rules and render -------------------------------------------------------------


def test_cluster_rules_name_the_field() -> None:
    doc = _doc("scorerun-cpu")
    doc["spec"]["output"]["uri"] = "store://runs/tiny"
    doc["spec"]["dataset"]["train"] = {"uri": "store://data/train.jsonl"}
    fields = {e.field for e in cluster_errors(parse_resource(doc))}
    assert fields == {"spec.output.uri", "spec.dataset.train.uri"}

    doc = _doc("scorerun-gpu")
    doc["metadata"]["name"] = "n" * 49  # + "-train-worker-0" > 63 characters
    assert [e.field for e in cluster_errors(parse_resource(doc))] == ["metadata.name"]
    doc["metadata"]["name"] = "n" * 48
    assert cluster_errors(parse_resource(doc)) == []

    suite = _doc("evalsuite-endpoint")
    suite["spec"]["resources"]["workers"] = 2
    assert [e.field for e in cluster_errors(parse_resource(suite))] == ["spec.resources.workers"]

    svc = _doc("correctorservice-vllm")
    svc["spec"]["model"]["uri"] = "builtin://smollm2-135m-instruct"
    assert [e.field for e in cluster_errors(parse_resource(svc))] == ["spec.model.uri"]


def test_render_equals_what_the_builders_make(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREOPS_IMAGE_REGISTRY", PLATFORM.registry)
    monkeypatch.setenv("SCOREOPS_GPU_NODE_SELECTOR", json.dumps(dict(PLATFORM.gpu_node_selector)))
    monkeypatch.setenv("SCOREOPS_GPU_TOLERATIONS", json.dumps(list(PLATFORM.gpu_tolerations)))
    monkeypatch.setenv("SCOREOPS_S3_SECRET", "platform-s3")
    monkeypatch.setenv("SCOREOPS_S3_ENDPOINT", PLATFORM.s3_endpoint or "")
    monkeypatch.delenv("SCOREOPS_IMAGE_TAG", raising=False)
    text = render_children(_load("scorerun-pool-defaults"), namespace="ignored", image_tag="1.2.3")
    body = "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))
    assert body == (GOLDEN / "scorerun-pool-defaults.yaml").read_text()
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["ConfigMap", "PyTorchJob"]
    assert {d["metadata"]["namespace"] for d in docs} == {"team-a"}  # its own namespace wins


def test_render_marks_unresolved_weights_and_refusals() -> None:
    text = render_children(_load("correctorservice-hf"), image_tag="1.2.3")
    isvc = yaml.safe_load(text)
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == \
        "<spec.output.uri of ScoreRun tiny-score>/final"
    assert "ScoreRun tiny-score are filled in once the run has succeeded" in text

    doc = _doc("scorerun-cpu")
    doc["spec"]["output"]["uri"] = "store://runs/tiny"
    text = render_children(parse_resource(doc))
    assert "apiVersion" not in text
    assert "InvalidSpec" in text and "spec.output.uri" in text


def test_operator_settings_from_env_name_the_bad_variable() -> None:
    cfg = OperatorConfig.from_env({"SCOREOPS_IMAGE_TAG": "9.9", "SCOREOPS_SYNC_INTERVAL": "2.5",
                                   "SCOREOPS_GPU_NODE_SELECTOR": '{"pool": "gpu"}'})
    assert cfg.image("evaluator") == "ghcr.io/scoreops/evaluator:9.9"
    assert cfg.sync_interval == 2.5 and cfg.gpu_node_selector == {"pool": "gpu"}
    for env, name in (({"SCOREOPS_GPU_NODE_SELECTOR": "{nope"}, "SCOREOPS_GPU_NODE_SELECTOR"),
                      ({"SCOREOPS_GPU_TOLERATIONS": '{"a": 1}'}, "SCOREOPS_GPU_TOLERATIONS"),
                      ({"SCOREOPS_SYNC_INTERVAL": "soon"}, "SCOREOPS_SYNC_INTERVAL")):
        with pytest.raises(ConfigError, match=name):
            OperatorConfig.from_env(env)
