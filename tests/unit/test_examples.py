"""The example manifests: valid for the API models, for the generated CRD schemas (strictly: a
field the API server would silently prune counts as an error), and buildable by the operator.

tests/e2e/test_helm.py applies them to a real API server.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"
CRDS = ROOT / "manifests" / "crds"
CLUSTER_EXAMPLES = [
    "scorerun-openo1-llama8b.yaml",
    "scorerun-qwen7b-mgrpo.yaml",
    "evalsuite-six-benchmarks.yaml",
    "correctorservice.yaml",
]
ALL_EXAMPLES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


def load(name: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    return doc


# --- CRD schema -> strict JSON Schema ------------------------------------------------------------


def strict_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A CRD's structural OpenAPI v3 schema as a draft-4 JSON Schema that rejects unknown fields.

    ``nullable: true`` admits null (also in an ``enum``); ``x-kubernetes-*`` extensions are
    dropped; an object with ``properties`` and no ``x-kubernetes-preserve-unknown-fields``
    gets ``additionalProperties: false`` (the API server would prune such a field without a
    word, so a typo in an example would go unnoticed). The OpenAPI v3.0 boolean
    ``exclusiveMinimum``/``exclusiveMaximum`` mean what they mean in draft 4.
    """
    out: dict[str, Any] = {}
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default"):
            continue
        if key == "properties":
            out[key] = {k: strict_json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = strict_json_schema(value)
        else:
            out[key] = copy.deepcopy(value)
    if "properties" in out and not preserve and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def crd_validator(kind: str) -> Any:
    import jsonschema

    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = crd["spec"]["versions"]
            schema = strict_json_schema(version["schema"]["openAPIV3Schema"])
            jsonschema.Draft4Validator.check_schema(schema)
            return jsonschema.Draft4Validator(schema)
    raise AssertionError(f"no CRD for {kind} in {CRDS}")


def schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = crd_validator(doc["kind"])
    return sorted(
        ".".join(str(p) for p in err.absolute_path) + ": " + err.message
        for err in validator.iter_errors(doc)
    )


# --- every example ---------------------------------------------------------------------------------


def test_the_cluster_examples_exist() -> None:
    assert set(CLUSTER_EXAMPLES) <= set(ALL_EXAMPLES)


@pytest.mark.parametrize("name", ALL_EXAMPLES)
def test_example_is_valid_for_the_api_models(name: str) -> None:
    from scoreops.api import load_resources

    (resource,) = load_resources(EXAMPLES / name)
    assert resource.metadata.name == load(name)["metadata"]["name"]


@pytest.mark.parametrize("name", ALL_EXAMPLES)
def test_example_is_valid_for_the_generated_crd_schema(name: str) -> None:
    assert schema_errors(load(name)) == []


@pytest.mark.parametrize("name", CLUSTER_EXAMPLES)
def test_cluster_example_meets_the_cluster_rules(name: str) -> None:
    from scoreops.api import load_resource
    from scoreops.k8s.checks import cluster_errors

    assert cluster_errors(load_resource(EXAMPLES / name)) == []


def test_the_strict_schema_catches_what_the_server_would_prune_or_reject() -> None:
    doc = load("scorerun-openo1-llama8b.yaml")
    typo = copy.deepcopy(doc)
    typo["spec"]["rollout"]["temprature"] = 1.0
    assert schema_errors(typo) == [
        "spec.rollout: Additional properties are not allowed ('temprature' was unexpected)"]
    out_of_range = copy.deepcopy(doc)
    out_of_range["spec"]["rollout"]["temperature"] = 0.0  # exclusive minimum
    out_of_range["spec"]["algorithm"]["name"] = "ppo"
    errors = schema_errors(out_of_range)
    assert [e.split(":")[0] for e in errors] == ["spec.algorithm.name", "spec.rollout.temperature"]
    nullable = copy.deepcopy(doc)
    nullable["spec"]["evaluation"]["everySteps"] = None  # Optional in the model
    assert schema_errors(nullable) == []
    free_form = copy.deepcopy(doc)
    free_form["spec"]["resources"]["affinity"] = {"nodeAffinity": {"anything": [1, 2]}}
    assert schema_errors(free_form) == []


# --- what the cluster examples say ------------------------------------------------------------------


def test_llama8b_scorerun_is_the_score_seed_setting() -> None:
    spec = load("scorerun-openo1-llama8b.yaml")["spec"]
    assert spec["model"]["uri"].startswith("s3://")
    assert "openo1-llama-8b-v0.1" in spec["model"]["uri"].lower()
    score = spec["algorithm"]["score"]
    assert spec["algorithm"]["name"] == "score"
    assert score["stage1Steps"] > 0 and score["stage2Steps"] > 0
    assert (score["alpha"], score["beta1"], score["beta2"]) == (10.0, 0.01, 0.1)
    assert spec["optim"]["learningRate"] == 5e-6
    assert spec["rollout"]["temperature"] == 1.0
    assert spec["rollout"]["engine"] == "vllm" and spec["rollout"]["turns"] == 2
    res = spec["resources"]
    assert res["workers"] * res["gpusPerWorker"] == 8
    assert res["deepspeed"] == "zero3"
    assert spec["output"]["uri"].startswith("s3://")


def test_qwen7b_mgrpo_has_the_mgrpo_paper_settings() -> None:
    spec = load("scorerun-qwen7b-mgrpo.yaml")["spec"]
    assert spec["algorithm"]["name"] == "mgrpo"
    assert spec["algorithm"]["mgrpo"]["beta"] == 0.001
    assert spec["optim"]["learningRate"] == 5e-7
    assert spec["optim"]["schedule"] == "cosine"
    assert spec["optim"]["warmupRatio"] == 0.03
    assert spec["optim"]["batchSize"] == 32
    assert spec["rollout"]["samplesPerPrompt"] == 8
    assert spec["rollout"]["maxNewTokens"] == 8196


def test_evalsuite_compares_base_and_the_scorerun_on_six_benchmarks() -> None:
    from scoreops.api import load_resource

    suite = load_resource(EXAMPLES / "evalsuite-six-benchmarks.yaml")
    run = load("scorerun-openo1-llama8b.yaml")
    names = {b.name for b in suite.spec.benchmarks}
    assert len(names) == 6
    assert names - {"math", "math500"} == {"gsm8k", "mmlu", "arc_challenge", "hellaswag", "bbh"}
    models = {m.name: m for m in suite.spec.models}
    assert models["base"].uri == run["spec"]["model"]["uri"]
    assert models["score"].score_run == run["metadata"]["name"]
    assert suite.spec.strategy.name == "self-correct" and suite.spec.strategy.turns == 2
    assert suite.spec.generation.temperature == 0.0


def test_correctorservice_serves_the_trained_run_with_two_turns() -> None:
    from scoreops.api import load_resource

    svc = load_resource(EXAMPLES / "correctorservice.yaml")
    assert svc.spec.model.score_run == load("scorerun-openo1-llama8b.yaml")["metadata"]["name"]
    assert svc.spec.strategy.name == "self-correct" and svc.spec.strategy.turns == 2
    assert svc.spec.runtime.engine == "vllm" and svc.spec.resources.gpus >= 1


# --- built by the operator's builders ----------------------------------------------------------------


def _children(name: str, tag: str = "9.9.9") -> list[dict[str, Any]]:
    from scoreops.api import load_resource
    from scoreops.k8s.render import render_children

    text = render_children(load_resource(EXAMPLES / name), namespace="team-a", image_tag=tag)
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.mark.parametrize("name", CLUSTER_EXAMPLES)
def test_operator_builds_the_cluster_example(name: str) -> None:
    children = _children(name)
    assert children, "the operator would create nothing"
    owner = load(name)["metadata"]["name"]
    for child in children:
        assert child["metadata"]["namespace"] == "team-a"
        assert child["metadata"]["name"].startswith(owner)
        assert len(child["metadata"]["name"]) <= 63


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                found.extend(node["containers"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(obj)
    return found


def test_llama8b_becomes_a_pytorchjob_with_8_gpus_of_the_trainer_image() -> None:
    children = _children("scorerun-openo1-llama8b.yaml", tag="1.2.3")
    (job,) = [c for c in children if c["kind"] == "PyTorchJob"]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    gpus = 0
    for spec in replicas.values():
        (c,) = spec["template"]["spec"]["containers"]
        assert c["image"].endswith("/trainer:1.2.3")
        gpus += spec["replicas"] * int(c["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus == 8
    assert any(c["kind"] == "ConfigMap" for c in children)


def test_tiny_examples_are_local_only_and_the_operator_says_why() -> None:
    from scoreops.api import load_resource
    from scoreops.k8s.render import render_children

    for name in sorted(set(ALL_EXAMPLES) - set(CLUSTER_EXAMPLES)):
        text = render_children(load_resource(EXAMPLES / name), namespace="team-a")
        assert [d for d in yaml.safe_load_all(text) if d] == [], name
        assert "InvalidSpec" in text and ("s3://" in text), name


@pytest.mark.parametrize("name", CLUSTER_EXAMPLES)
def test_children_use_the_scoreops_images(name: str) -> None:
    images = {c["image"] for child in _children(name, tag="7.7.7") for c in _containers(child)}
    assert images
    assert all(i.startswith("ghcr.io/scoreops/") and i.endswith(":7.7.7") for i in images)
