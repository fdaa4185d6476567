"""The kind registry and the reconciler, against an in-memory API server (no kopf, no cluster)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from scoreops.api import API_VERSION, parse_resource
from scoreops.api import KINDS as API_KINDS
from scoreops.api.crd import CRD_KINDS
from scoreops.k8s.builders import build_children, eval_uses_batch_job
from scoreops.k8s.config import OperatorConfig
from scoreops.k8s.kinds import CORRECTORSERVICE, EVALSUITE, KINDS, SCORERUN, kind_spec
from scoreops.k8s.reconcile import Reconciler, child_key

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
CONFIG = OperatorConfig(tag="1.2.3")


class FakeClient:
    """Objects by (kind, namespace, name); records the applied objects and status patches."""

    def __init__(self, *objects: Mapping[str, Any]) -> None:
        self.objects = {self._key(o["kind"], o["metadata"].get("namespace"),
                                  o["metadata"]["name"]): copy.deepcopy(dict(o))
                        for o in objects}
        self.applied: list[dict[str, Any]] = []
        self.patches: list[dict[str, Any]] = []

    @staticmethod
    def _key(kind: str, ns: str | None, name: str) -> tuple[str, str, str]:
        return kind, ns or "", name

    async def get(self, api_version: str, kind: str, ns: str | None,
                  name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get(self._key(kind, ns, name)))

    async def apply(self, obj: Mapping[str, Any], **_: Any) -> dict[str, Any]:
        self.applied.append(copy.deepcopy(dict(obj)))
        self.objects[self._key(obj["kind"], obj["metadata"].get("namespace"),
                               obj["metadata"]["name"])] = copy.deepcopy(dict(obj))
        return dict(obj)

    async def merge_patch(self, api_version: str, kind: str, ns: str | None, name: str,
                          patch: Mapping[str, Any], **_: Any) -> dict[str, Any]:
        self.patches.append(copy.deepcopy(dict(patch)))
        obj = self.objects.setdefault(self._key(kind, ns, name), {})
        status = dict(obj.get("status") or {})
        for key, value in (patch.get("status") or {}).items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        obj["status"] = status
        return obj


def body(kind: str, name: str, spec: dict[str, Any], status: dict[str, Any] | None = None,
         generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind,
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                         "generation": generation, "resourceVersion": "1"},
            "spec": spec, "status": status or {}}


RUN_SPEC = {
    "model": {"uri": "s3://models/base"},
    "dataset": {"train": {"generator": {"task": "single-digit-addition", "size": 64}}},
    "algorithm": {"name": "score", "score": {"stage1Steps": 2, "stage2Steps": 3}},
    "output": {"uri": "s3://runs/r"},
}
SUITE_MODELS = {
    "endpoints": [{"name": "a", "endpoint": "http://a.example.com/v1"}],
    "mixed": [{"name": "a", "endpoint": "http://a.example.com/v1"},
              {"name": "b", "uri": "s3://models/b"}],
}


def suite_spec(models: list[dict[str, Any]]) -> dict[str, Any]:
    return {"models": models, "benchmarks": [{"name": "gsm8k", "limit": 4}],
            "resources": {"gpusPerWorker": 0}, "output": {"uri": "s3://evals/e"}}


def reconciler(client: FakeClient) -> Reconciler:
    return Reconciler(client, CONFIG, clock=lambda: T0)  # type: ignore[arg-type]


# --- the registry ----------------------------------------------------------------------------


def test_every_api_kind_has_one_spec_with_its_crd_facts() -> None:
    assert set(KINDS) == set(API_KINDS) == set(CRD_KINDS)
    for name, spec in KINDS.items():
        assert spec.name == name and spec.resource_type is API_KINDS[name]
        assert spec.plural == CRD_KINDS[name]["plural"]
        assert spec.status_type is CRD_KINDS[name]["status"]
        assert spec.labels("x")[spec.owner_label] == "x"
    assert [s.job_backed for s in (SCORERUN, EVALSUITE, CORRECTORSERVICE)] == [True, True, False]
    assert [s.has_output for s in (SCORERUN, EVALSUITE, CORRECTORSERVICE)] == [True, True, False]
    with pytest.raises(ValueError, match="not a scoreops kind"):
        kind_spec("Pod")


@pytest.mark.parametrize("models", sorted(SUITE_MODELS))
def test_the_child_key_and_the_builder_agree_on_the_evalsuite_job(models: str) -> None:
    raw = body("EvalSuite", "e", suite_spec(SUITE_MODELS[models]))
    suite = parse_resource({k: raw[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    job = build_children(suite, CONFIG)[-1]
    assert child_key(raw) == (job["kind"], "ns", job["metadata"]["name"])
    assert eval_uses_batch_job(suite) == (models == "endpoints") == suite.endpoints_only


def test_children_are_of_the_kinds_a_spec_declares() -> None:
    run = parse_resource({k: v for k, v in body("ScoreRun", "r", RUN_SPEC).items()
                          if k != "status"})
    assert tuple(c["kind"] for c in build_children(run, CONFIG)) == SCORERUN.children
    raw = body("EvalSuite", "e", suite_spec(SUITE_MODELS["mixed"]))
    suite = parse_resource({k: v for k, v in raw.items() if k != "status"})
    assert {c["kind"] for c in build_children(suite, CONFIG)} <= set(EVALSUITE.children)


# --- the reconciler --------------------------------------------------------------------------


def test_a_new_scorerun_gets_its_children_and_the_created_status() -> None:
    client = FakeClient()
    raw = body("ScoreRun", "r", RUN_SPEC)
    outcome = asyncio.run(reconciler(client).reconcile(raw))
    assert outcome.action == "applied"
    assert [(o["kind"], o["metadata"]["name"]) for o in client.applied] == [
        ("ConfigMap", "r-spec"), ("PyTorchJob", "r-train")]
    since = "2026-01-01T12:00:00Z"
    assert client.patches == [{"status": {
        "phase": "Pending",
        "conditions": [
            {"type": "Valid", "status": "True", "reason": "SpecValid",
             "lastTransitionTime": since, "observedGeneration": 1},
            {"type": "Created", "status": "True", "reason": "ChildrenApplied",
             "message": "applied ConfigMap r-spec, PyTorchJob r-train",
             "lastTransitionTime": since, "observedGeneration": 1},
            {"type": "SpecApplied", "status": "True", "reason": "Applied",
             "message": "the children run the spec of generation 1",
             "lastTransitionTime": since, "observedGeneration": 1},
        ],
        "observedGeneration": 1,
        "totalSteps": 5,
        "jobName": "r-train",
    }}]
    # reconciling again observes nothing new and writes no status
    stored = client.objects[("ScoreRun", "ns", "r")]["status"]
    again = asyncio.run(reconciler(client).reconcile({**raw, "status": stored}))
    assert again.action == "applied" and len(client.patches) == 1


def test_a_spec_change_is_refused_for_a_job_and_rolled_out_for_a_service() -> None:
    client = FakeClient()
    run = body("ScoreRun", "r", RUN_SPEC)
    asyncio.run(reconciler(client).reconcile(run))
    changed = copy.deepcopy(run)
    changed["spec"]["output"]["uri"] = "s3://runs/other"
    changed["metadata"]["generation"] = 2
    changed["status"] = client.objects[("ScoreRun", "ns", "r")]["status"]
    outcome = asyncio.run(reconciler(client).spec_changed(changed))
    assert outcome.action == "refused" and "generation 2" in outcome.message

    service = body("CorrectorService", "c", {"model": {"uri": "s3://models/m"}})
    asyncio.run(reconciler(client).reconcile(service))
    service["spec"]["strategy"] = {"name": "self-correct", "turns": 3}
    service["metadata"]["generation"] = 2
    service["status"] = client.objects[("CorrectorService", "ns", "c")]["status"]
    assert asyncio.run(reconciler(client).spec_changed(service)).action == "applied"
    assert client.objects[("CorrectorService", "ns", "c")]["status"]["inferenceService"] == "c"


def test_a_service_waits_for_its_scorerun_then_follows_kserve() -> None:
    client = FakeClient()
    service = body("CorrectorService", "c", {"model": {"scoreRun": "r"}})
    outcome = asyncio.run(reconciler(client).reconcile(service))
    assert outcome.action == "waiting" and "ScoreRun r does not exist" in outcome.message
    client.objects[("ScoreRun", "ns", "r")] = {**body("ScoreRun", "r", RUN_SPEC),
                                               "status": {"phase": "Succeeded"}}
    assert asyncio.run(reconciler(client).reconcile(service)).action == "applied"
    isvc = client.applied[-1]
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://runs/r/final"
    service["status"] = client.objects[("CorrectorService", "ns", "c")]["status"]
    assert Reconciler.needs_sync(service)
    synced = asyncio.run(reconciler(client).sync(service, {
        "url": "http://c.example.com", "conditions": [{"type": "Ready", "status": "True"}]}))
    assert synced.action == "synced"
    stored = client.objects[("CorrectorService", "ns", "c")]["status"]
    assert (stored["phase"], stored["url"]) == ("Running", "http://c.example.com")
