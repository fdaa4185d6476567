"""The resource API: good examples load, bad specs are rejected naming the field, CRDs are
structural and match what the models generate."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from scoreops.api import InvalidResource, load_resources, parse_resource
from scoreops.api.crd import CRD_KINDS, build_crd, crd_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))


def scorerun() -> dict[str, Any]:
    return {
        "apiVersion": "scoreops.io/v1alpha1",
        "kind": "ScoreRun",
        "metadata": {"name": "r"},
        "spec": {
            "model": {"uri": "s3://models/base"},
            "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
            "algorithm": {"name": "score"},
            "output": {"uri": "s3://runs/r"},
        },
    }


def evalsuite() -> dict[str, Any]:
    return {
        "apiVersion": "scoreops.io/v1alpha1",
        "kind": "EvalSuite",
        "metadata": {"name": "e"},
        "spec": {
            "models": [{"name": "base", "uri": "s3://models/base"}],
            "benchmarks": [{"name": "gsm8k"}],
            "output": {"uri": "s3://evals/e"},
        },
    }


def corrector() -> dict[str, Any]:
    return {
        "apiVersion": "scoreops.io/v1alpha1",
        "kind": "CorrectorService",
        "metadata": {"name": "c"},
        "spec": {"model": {"uri": "s3://models/base"}},
    }


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    keys = path.split(".")
    node = doc
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    if value is _DELETE:
        del node[keys[-1]]
    elif isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return doc


_DELETE = object()

# (base document, path to set, value, field expected in the message)
BAD_SPECS = [
    (scorerun, "spec.algorithm.score", {"alpha": -1.0}, "spec.algorithm.score.alpha"),
    (scorerun, "spec.algorithm.score", {"alpha": 1000}, "spec.algorithm.score.alpha"),
    (scorerun, "spec.algorithm.score", {"beta1": -0.1}, "spec.algorithm.score.beta1"),
    (scorerun, "spec.algorithm.score", {"beta2": "strong"}, "spec.algorithm.score.beta2"),
    (scorerun, "spec.algorithm.score", {"stage1Steps": 0, "stage2Steps": 0}, "spec.algorithm.score"),
    (scorerun, "spec.algorithm.score", {"klEstimator": "k9"}, "spec.algorithm.score.klEstimator"),
    (scorerun, "spec.algorithm.name", "ppo", "spec.algorithm.name"),
    (scorerun, "spec.algorithm.mgrpo", {"beta": 0.1}, "spec.algorithm"),
    (scorerun, "spec.algorithm", {"name": "mgrpo", "mgrpo": {"guidePhrases": []}},
     "spec.algorithm.mgrpo.guidePhrases"),
    (scorerun, "spec.algorithm", {"name": "grpo", "grpo": {"clipEpsilon": 1.5}},
     "spec.algorithm.grpo.clipEpsilon"),
    (scorerun, "spec.resources", {"gpusPerWorker": -1}, "spec.resources.gpusPerWorker"),
    (scorerun, "spec.resources", {"workers": 0}, "spec.resources.workers"),
    (scorerun, "spec.resources", {"deepspeed": "zero4", "gpusPerWorker": 1},
     "spec.resources.deepspeed"),
    (scorerun, "spec.resources", {"deepspeed": "zero3"}, "spec"),
    (scorerun, "spec.resources", {"tolerations": [{"operator": "Maybe"}]},
     "spec.resources.tolerations[0].operator"),
    (scorerun, "spec.output", _DELETE, "spec.output"),
    (scorerun, "spec.output.uri", "s3://", "spec.output.uri"),
    (scorerun, "spec.output.uri", "s3://Bad_Bucket/x", "spec.output.uri"),
    (scorerun, "spec.output.uri", "gs://bucket/x", "spec.output.uri"),
    (scorerun, "spec.output.uri", "s3://bucket", "spec.output.uri"),
    (scorerun, "spec.output.credentialsSecret", "Not_A_Name", "spec.output.credentialsSecret"),
    (scorerun, "spec.output.secretAccessKey", "inline-secret", "spec.output.secretAccessKey"),
    (scorerun, "spec.model.uri", "", "spec.model.uri"),
    (scorerun, "spec.model.uri", "builtin://", "spec.model.uri"),
    (scorerun, "spec.model", _DELETE, "spec.model"),
    (scorerun, "spec.dataset.train", {}, "spec.dataset.train"),
    (scorerun, "spec.dataset.train", {"generator": {"task": "chain_sum", "size": 0}},
     "spec.dataset.train.generator.size"),
    (scorerun, "spec.rollout", {"turns": 0}, "spec.rollout.turns"),
    (scorerun, "spec.rollout", {"turns": 1}, "spec"),
    (scorerun, "spec.rollout", {"temperature": 3.0}, "spec.rollout.temperature"),
    (scorerun, "spec.rollout", {"samplesPerPrompt": "four"}, "spec.rollout.samplesPerPrompt"),
    (scorerun, "spec.rollout", {"engine": "sglang"}, "spec.rollout.engine"),
    (scorerun, "spec.rollout", {"engine": "vllm"}, "spec"),
    (scorerun, "spec.rollout", {"maxNewTokens": 0}, "spec.rollout.maxNewTokens"),
    (scorerun, "spec.optim", {"learningRate": 0}, "spec.optim.learningRate"),
    (scorerun, "spec.optim", {"warmupRatio": 1.0}, "spec.optim.warmupRatio"),
    (scorerun, "spec.optim", {"schedule": "step"}, "spec.optim.schedule"),
    (scorerun, "spec.checkpoint", {"everySteps": 0}, "spec.checkpoint.everySteps"),
    (scorerun, "spec.checkpoint", {"keep": -2}, "spec.checkpoint.keep"),
    (scorerun, "spec.stallTimeout", "ten minutes", "spec.stallTimeout"),
    (scorerun, "spec.learningRate", 1e-5, "spec.learningRate"),
    (scorerun, "metadata.name", "Bad_Name", "metadata.name"),
    (evalsuite, "spec.benchmarks", [{"name": "gsm9k"}], "spec.benchmarks[0].name"),
    (evalsuite, "spec.benchmarks", [], "spec.benchmarks"),
    (evalsuite, "spec.benchmarks", [{"name": "gsm8k", "limit": 0}], "spec.benchmarks[0].limit"),
    (evalsuite, "spec.benchmarks", [{"name": "gsm8k", "mode": "loglikelihood"}], "spec"),
    (evalsuite, "spec.models", [{"name": "m"}], "spec.models[0]"),
    (evalsuite, "spec.models", [{"name": "m", "uri": "s3://ab1/b", "endpoint": "http://x"}],
     "spec.models[0]"),
    (evalsuite, "spec.models", [{"name": "m", "endpoint": "ftp://x"}],
     "spec.models[0].endpoint"),
    (evalsuite, "spec.strategy", {"name": "tree-of-thought"}, "spec.strategy.name"),
    (evalsuite, "spec.strategy", {"name": "self-correct", "turns": 9}, "spec.strategy.turns"),
    (evalsuite, "spec.strategy", {"name": "best-of-n", "verifier": "reward-model"},
     "spec.strategy"),
    (evalsuite, "spec.generation", {"topP": 0}, "spec.generation.topP"),
    (corrector, "spec.model", {}, "spec.model"),
    (corrector, "spec.limits", {"maxN": 0}, "spec.limits.maxN"),
    (corrector, "spec.resources", {"gpus": 0}, "spec"),
    (corrector, "spec.resources", {"minReplicas": 3, "maxReplicas": 2}, "spec.resources"),
    (corrector, "spec.runtime", {"engine": "tgi"}, "spec.runtime.engine"),
]


def test_enough_distinct_bad_specs() -> None:
    assert len({(f.__name__, p, repr(v)) for f, p, v, _ in BAD_SPECS}) >= 30


@pytest.mark.parametrize(
    ("base", "path", "value", "field"),
    BAD_SPECS,
    ids=[f"{b.__name__}:{p}={v!r}"[:80] for b, p, v, _ in BAD_SPECS],
)
def test_bad_spec_rejected_naming_field(base, path, value, field) -> None:
    good = base()
    parse_resource(good)  # the base itself is valid
    with pytest.raises(InvalidResource) as info:
        parse_resource(_set(good, path, value))
    fields = [e.field for e in info.value.errors]
    assert field in fields, f"expected an error at {field}, got {info.value}"
    assert field in str(info.value)


def test_wrong_kind_and_version_named() -> None:
    with pytest.raises(InvalidResource, match="kind"):
        parse_resource({**scorerun(), "kind": "Scorerun"})
    with pytest.raises(InvalidResource, match="apiVersion"):
        parse_resource({**scorerun(), "apiVersion": "scoreops.io/v1"})


def test_defaults_filled_in() -> None:
    run = parse_resource(scorerun())
    assert run.spec.algorithm.score is not None
    assert run.spec.algorithm.score.alpha == 10.0
    assert run.spec.algorithm.score.beta2 == 0.1
    assert run.spec.rollout.turns == 2
    assert run.spec.algorithm.total_steps() == 1000


def test_wire_round_trip() -> None:
    run = parse_resource(scorerun())
    wire = run.to_wire()
    assert wire["spec"]["algorithm"]["score"]["stage1Steps"] == 300
    assert parse_resource(wire) == run


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(path: Path) -> None:
    assert load_resources(path)


# --- CRDs -------------------------------------------------------------------------------------


def test_committed_crds_match_models() -> None:
    for directory in ("manifests/crds", "charts/scoreops/crds"):
        for name, text in crd_files().items():
            committed = ROOT / directory / name
            assert committed.exists(), f"{committed} missing: run `make crds`"
            assert committed.read_text() == text, f"{committed} is stale: run `make crds`"


def _walk(node: dict[str, Any], path: str, problems: list[str]) -> None:
    """Check the structural-schema rules the API server enforces."""
    for banned in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const",
                   "definitions"):
        if banned in node:
            problems.append(f"{path}: has {banned}")
    if "type" not in node:
        problems.append(f"{path}: no type")
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in node and not isinstance(node[bound], bool):
            problems.append(f"{path}: {bound} must be a boolean in OpenAPI v3")
    if "nullable" in node and node["nullable"] is not True:
        problems.append(f"{path}: nullable false is noise")
    if node.get("type") == "object" and node.get("additionalProperties") is not None \
            and node.get("properties"):
        problems.append(f"{path}: properties and additionalProperties together")
    for key, child in (node.get("properties") or {}).items():
        _walk(child, f"{path}.{key}", problems)
    if isinstance(node.get("items"), dict):
        _walk(node["items"], f"{path}[]", problems)
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{path}{{}}", problems)


@pytest.mark.parametrize("kind", list(CRD_KINDS))
def test_crd_is_structural(kind: str) -> None:
    crd = build_crd(kind)
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    problems: list[str] = []
    _walk(schema, kind, problems)
    assert not problems, "\n".join(problems)
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[0] == "Phase" and columns[-1] == "Age"
    # descriptions travel into kubectl explain
    assert schema["properties"]["spec"]["properties"]


def test_scorerun_printer_columns() -> None:
    cols = {c["name"]: c["jsonPath"] for c in
            build_crd("ScoreRun")["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert cols["Step"] == ".status.step"
    assert cols["Acc@t2"] == ".status.accT2"
    assert cols["Stage"] == ".status.stage"


def test_crd_schema_accepts_examples_and_rejects_bad_values() -> None:
    """The generated OpenAPI schema (as the API server would apply it) agrees with the models."""
    import jsonschema

    def to_jsonschema(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: to_jsonschema(v) for k, v in node.items()
                   if not k.startswith("x-kubernetes") and k != "nullable"}
            if node.get("nullable") and "type" in out:
                out["type"] = [out["type"], "null"]
            for bound, plain in (("exclusiveMinimum", "minimum"),
                                 ("exclusiveMaximum", "maximum")):
                if out.get(bound) is True:
                    out[bound] = out.pop(plain)
                elif out.get(bound) is False:
                    out.pop(bound)
            return out
        if isinstance(node, list):
            return [to_jsonschema(v) for v in node]
        return node

    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            crd = build_crd(doc["kind"])
            schema = to_jsonschema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
            jsonschema.validate(doc, schema)
    schema = to_jsonschema(build_crd("ScoreRun")["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    bad = _set(scorerun(), "spec.algorithm.score", {"alpha": -1})
    with pytest.raises(jsonschema.ValidationError, match="-1"):
        jsonschema.validate(bad, schema)
