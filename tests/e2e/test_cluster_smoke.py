"""The local cluster behaves like a real API server: CRDs, validation, subresources, tools."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from testkit.cluster import LocalCluster

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

pytestmark = pytest.mark.e2e

GROUP = "e2e.scoreops.io"


def _widget_crd(plural: str, kind: str) -> dict[str, Any]:
    """A strict test CRD shaped like ours: typed spec with bounds, enum, default, required."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(),
                      "listKind": f"{kind}List"},
            "versions": [{
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["model"],
                            "properties": {
                                "model": {"type": "string", "minLength": 1},
                                "turns": {"type": "integer", "minimum": 1, "maximum": 4,
                                          "default": 2},
                                "engine": {"type": "string", "enum": ["vllm", "hf"]},
                            },
                        },
                        "status": {"type": "object",
                                   "x-kubernetes-preserve-unknown-fields": True},
                    },
                }},
            }],
        },
    }


@pytest.fixture(scope="module")
def widgets(cluster: LocalCluster) -> tuple[str, str]:
    """A freshly applied strict test CRD; returns (plural, kind)."""
    suffix = uuid.uuid4().hex[:6]
    plural, kind = f"widgets{suffix}", f"Widget{suffix.capitalize()}"
    cluster.apply(_widget_crd(plural, kind))
    return plural, kind


def test_test_crd_is_established_and_served(
    kube_api: ApiClient, widgets: tuple[str, str]
) -> None:
    from kubernetes import client

    plural, kind = widgets
    crd = client.ApiextensionsV1Api(kube_api).read_custom_resource_definition(f"{plural}.{GROUP}")
    conditions = {c.type: c.status for c in crd.status.conditions}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    served = client.CustomObjectsApi(kube_api).get_api_resources(GROUP, "v1alpha1")
    by_name = {r.name: r for r in served.resources}
    assert by_name[plural].kind == kind
    assert f"{plural}/status" in by_name


def test_strict_schema_defaults_prunes_and_rejects_naming_the_field(
    kube_api: ApiClient, widgets: tuple[str, str], namespace: str
) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    plural, kind = widgets
    api = client.CustomObjectsApi(kube_api)
    good = {"apiVersion": f"{GROUP}/v1alpha1", "kind": kind, "metadata": {"name": "ok"},
            "spec": {"model": "s3://models/m", "engine": "hf", "notInSchema": 1}}
    created = api.create_namespaced_custom_object(GROUP, "v1alpha1", namespace, plural, good)
    assert created["spec"] == {"model": "s3://models/m", "engine": "hf", "turns": 2}

    bad = {"apiVersion": f"{GROUP}/v1alpha1", "kind": kind, "metadata": {"name": "bad"},
           "spec": {"model": "s3://models/m", "turns": 9, "engine": "tpu"}}
    with pytest.raises(ApiException) as info:
        api.create_namespaced_custom_object(GROUP, "v1alpha1", namespace, plural, bad)
    assert info.value.status == 422
    status = json.loads(info.value.body)
    assert status["reason"] == "Invalid"
    fields = {cause["field"] for cause in status["details"]["causes"]}
    assert fields == {"spec.turns", "spec.engine"}
    assert "spec.turns" in status["message"] and "vllm" in status["message"]

    missing = {"apiVersion": f"{GROUP}/v1alpha1", "kind": kind, "metadata": {"name": "bad2"},
               "spec": {"turns": 1}}
    with pytest.raises(ApiException) as info:
        api.create_namespaced_custom_object(GROUP, "v1alpha1", namespace, plural, missing)
    assert info.value.status == 422
    assert "spec.model" in json.loads(info.value.body)["message"]


def test_third_party_crds_are_established(kube_api: ApiClient) -> None:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(kube_api)
    expected = {
        "pytorchjobs.kubeflow.org": ("PyTorchJob", "v1"),
        "inferenceservices.serving.kserve.io": ("InferenceService", "v1beta1"),
        "servingruntimes.serving.kserve.io": ("ServingRuntime", "v1alpha1"),
    }
    for name, (kind, version) in expected.items():
        crd = ext.read_custom_resource_definition(name)
        established = [c.status for c in crd.status.conditions if c.type == "Established"]
        assert established == ["True"], name
        assert crd.spec.names.kind == kind
        assert [v.name for v in crd.spec.versions] == [version]


def test_pytorchjob_roundtrip_and_status_subresource(
    cluster: LocalCluster, kube_api: ApiClient, namespace: str
) -> None:
    from kubernetes import client

    api = client.CustomObjectsApi(kube_api)
    args = ("kubeflow.org", "v1", namespace, "pytorchjobs")
    spec = {
        "runPolicy": {"cleanPodPolicy": "None"},
        "pytorchReplicaSpecs": {
            "Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": {"spec": {
                "containers": [{"name": "pytorch", "image": "scoreops/trainer:dev",
                                "args": ["--spec", "/etc/scoreops/run.json"],
                                "resources": {"limits": {"nvidia.com/gpu": 4}}}]}}},
            "Worker": {"replicas": 1, "restartPolicy": "OnFailure"},
        },
    }
    job = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
           "metadata": {"name": "run-train", "labels": {"scoreops.io/run": "run"}},
           "spec": spec}
    api.create_namespaced_custom_object(*args, job)

    got = api.get_namespaced_custom_object(*args, "run-train")
    assert got["spec"] == spec
    assert got["metadata"]["labels"] == {"scoreops.io/run": "run"}
    assert "status" not in got

    # status goes through the status subresource only ...
    conditions = [{"type": "Created", "status": "True", "reason": "PyTorchJobCreated"},
                  {"type": "Running", "status": "True", "reason": "PyTorchJobRunning"}]
    patched = api.patch_namespaced_custom_object_status(
        *args, "run-train", {"status": {"conditions": conditions,
                                        "replicaStatuses": {"Master": {"active": 1}}}})
    assert patched["status"]["conditions"] == conditions
    assert patched["spec"] == spec
    assert int(patched["metadata"]["generation"]) == 1

    # ... and a write to the main resource leaves it alone while bumping the generation
    patched["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = 3
    patched["status"] = {"conditions": []}
    updated = api.replace_namespaced_custom_object(*args, "run-train", patched)
    assert updated["status"]["conditions"] == conditions
    assert updated["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    assert int(updated["metadata"]["generation"]) == 2

    # the printer column shows the last condition
    out = cluster.kubectl("get", "pytorchjobs", "-n", namespace, "--no-headers").stdout
    assert out.split()[:2] == ["run-train", "Running"]


def test_kubectl_and_helm_talk_to_the_cluster(cluster: LocalCluster, namespace: str) -> None:
    out = cluster.kubectl("get", "ns", "-o", "name").stdout.split()
    assert {"namespace/default", "namespace/kube-system", f"namespace/{namespace}"} <= set(out)

    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "corrector", "namespace": namespace},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "huggingface"},
                                             "storageUri": "s3://models/m"}}}}
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(isvc))
    got = json.loads(cluster.kubectl("get", "isvc", "corrector", "-n", namespace,
                                     "-o", "json", "--show-managed-fields").stdout)
    assert got["spec"] == isvc["spec"]
    managers = {m["manager"] for m in got["metadata"]["managedFields"]}
    assert "kubectl" in managers

    version = cluster.helm("version", "--short").stdout.strip()
    assert version.startswith("v")
    # `helm list` reads release secrets from the API server: fails if it cannot reach it
    releases = json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout)
    assert releases == []
