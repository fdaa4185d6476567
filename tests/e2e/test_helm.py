"""The chart against a real API server: install, the objects it makes, RBAC as the API server
evaluates it, resources applied afterwards, server-side validation of every rendered object,
upgrade and uninstall — all with the real helm and kubectl (hack/tools.sh).

There is no kubelet and no controller-manager: no pod ever runs, the objects are what is
checked. The tests of this module run in order and share one release.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from testkit.cluster import ClusterError, LocalCluster, repo_root

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

pytestmark = pytest.mark.e2e

ROOT = repo_root()
CHART = ROOT / "charts" / "scoreops"
EXAMPLES = ROOT / "manifests" / "examples"
CLUSTER_EXAMPLES = [
    "scorerun-openo1-llama8b.yaml",
    "scorerun-qwen7b-mgrpo.yaml",
    "evalsuite-six-benchmarks.yaml",
    "correctorservice.yaml",
]
KINDS = {"ScoreRun": "scoreruns", "EvalSuite": "evalsuites",
         "CorrectorService": "correctorservices"}


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str      # where the operator runs
    team: str           # where users create resources
    fullname: str

    @property
    def service_account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _example(name: str) -> dict[str, Any]:
    (doc,) = _docs((EXAMPLES / name).read_text())
    return doc


def _exists(cluster: LocalCluster, kind: str, name: str, namespace: str | None) -> bool:
    args = ["get", kind, name, "-o", "name"]
    if namespace:
        args += ["-n", namespace]
    proc = cluster.kubectl(*args, check=False)
    if proc.returncode != 0 and "NotFound" not in proc.stderr:
        raise ClusterError(proc.stderr)
    return proc.returncode == 0


def _can(cluster: LocalCluster, release: Release, *args: str) -> bool:
    """`kubectl auth can-i ARGS` as the operator's ServiceAccount, answered by the API server."""
    proc = cluster.kubectl("auth", "can-i", *args, f"--as={release.service_account}", check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


def _contains(stored: Any, given: Any, path: str = "") -> list[str]:
    """Where ``stored`` lost or changed something of ``given`` (defaults may be added)."""
    if isinstance(given, dict):
        if not isinstance(stored, dict):
            return [path or "(root)"]
        out = []
        for key, value in given.items():
            if key not in stored:
                out.append(f"{path}.{key}" if path else key)
            else:
                out += _contains(stored[key], value, f"{path}.{key}" if path else key)
        return out
    if isinstance(given, list):
        if not isinstance(stored, list) or len(stored) != len(given):
            return [path]
        return [p for i, (s, g) in enumerate(zip(stored, given, strict=True))
                for p in _contains(s, g, f"{path}[{i}]")]
    return [] if stored == given else [path]


# --- the release ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release(cluster: LocalCluster) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:6]
    rel = Release(name=f"so-{suffix}", namespace=f"scoreops-{suffix}", team=f"team-{suffix}",
                  fullname=f"so-{suffix}-scoreops")
    for ns in (rel.namespace, rel.team):
        cluster.kubectl("create", "namespace", ns)
    # credentials exist only as a Secret the chart refers to
    cluster.kubectl("create", "secret", "generic", "s3-credentials", "-n", rel.namespace,
                    "--from-literal=AWS_ACCESS_KEY_ID=test", "--from-literal=AWS_SECRET_ACCESS_KEY=t")
    cluster.helm("install", rel.name, str(CHART), "--namespace", rel.namespace,
                 "--set", "s3.existingSecret=s3-credentials",
                 "--set", "s3.endpoint=http://minio.storage:9000",
                 "--set", "servingRuntime.enabled=true",
                 "--set", f"servingRuntime.namespaces={{{rel.team}}}",
                 "--set-json", 'gpu.nodeSelector={"cloud.example.com/gpu-pool":"h100"}')
    yield rel
    # best effort if a test failed before the uninstall test ran
    cluster.helm("uninstall", rel.name, "--namespace", rel.namespace, check=False)


def test_install_creates_the_crds_and_the_operator_objects(
    cluster: LocalCluster, kube_api: ApiClient, release: Release
) -> None:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(kube_api)
    for kind, plural in KINDS.items():
        crd = ext.read_custom_resource_definition(f"{plural}.scoreops.io")
        assert crd.spec.names.kind == kind
        conditions = {c.type: c.status for c in crd.status.conditions}
        assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"

    status = json.loads(cluster.helm("status", release.name, "-n", release.namespace,
                                     "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    # every object of the release's manifest exists on the server
    manifest = _docs(cluster.helm("get", "manifest", release.name, "-n",
                                  release.namespace).stdout)
    kinds = sorted(d["kind"] for d in manifest)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount",
                     "ServingRuntime"]
    for doc in manifest:
        assert _exists(cluster, doc["kind"], doc["metadata"]["name"],
                       doc["metadata"].get("namespace")), doc["kind"]

    dep = client.AppsV1Api(kube_api).read_namespaced_deployment(release.fullname,
                                                                 release.namespace)
    pod = dep.spec.template.spec
    assert pod.service_account_name == release.fullname
    assert pod.security_context.run_as_non_root is True
    (c,) = pod.containers
    assert c.security_context.read_only_root_filesystem is True
    assert c.liveness_probe.http_get.path == "/healthz"
    env = {e.name: e.value for e in c.env}
    assert env["SCOREOPS_S3_SECRET"] == "s3-credentials"
    assert json.loads(env["SCOREOPS_GPU_NODE_SELECTOR"]) == {"cloud.example.com/gpu-pool": "h100"}
    assert c.env_from[0].secret_ref.name == "s3-credentials"
    # no kubelet, no controller-manager: the Deployment is stored, nothing runs
    assert dep.status.ready_replicas is None
    assert _exists(cluster, "servingruntime", "scoreops-vllm", release.team)


def test_operator_rbac_is_least_privilege_as_the_api_server_sees_it(
    cluster: LocalCluster, release: Release
) -> None:
    team = ["-n", release.team]
    granted = [
        ["create", "pytorchjobs.kubeflow.org", *team],
        ["patch", "inferenceservices.serving.kserve.io", *team],
        ["create", "jobs.batch", *team],
        ["create", "configmaps", *team],
        ["watch", "scoreruns.scoreops.io", "--all-namespaces"],
        ["patch", "scoreruns.scoreops.io", "--subresource=status", *team],
        ["patch", "evalsuites.scoreops.io", "--subresource=status", *team],
        ["update", "correctorservices.scoreops.io", "--subresource=finalizers", *team],
        ["create", "events", *team],
        ["list", "customresourcedefinitions.apiextensions.k8s.io"],
        ["watch", "namespaces"],
    ]
    denied = [
        ["get", "secrets", *team],
        ["get", "secrets", "-n", release.namespace],
        ["list", "secrets", "--all-namespaces"],
        ["create", "pods", *team],
        ["create", "scoreruns.scoreops.io", *team],
        ["delete", "scoreruns.scoreops.io", *team],
        ["delete", "pytorchjobs.kubeflow.org", *team],
        ["update", "scoreruns.scoreops.io", *team],
        ["create", "customresourcedefinitions.apiextensions.k8s.io"],
        ["create", "namespaces"],
        ["get", "nodes"],
        ["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        ["create", "deployments.apps", *team],
    ]
    assert [a for a in granted if not _can(cluster, release, *a)] == []
    assert [a for a in denied if _can(cluster, release, *a)] == []


def test_examples_applied_afterwards_are_accepted_and_stored_whole(
    cluster: LocalCluster, release: Release
) -> None:
    for name in CLUSTER_EXAMPLES:
        given = _example(name)
        cluster.kubectl("apply", "--server-side", "-n", release.team, "-f", str(EXAMPLES / name))
        stored = json.loads(cluster.kubectl(
            "get", KINDS[given["kind"]], given["metadata"]["name"], "-n", release.team,
            "-o", "json").stdout)
        # nothing pruned or altered: every field of the example is known to the CRD schema
        assert _contains(stored["spec"], given["spec"]) == [], name
    table = cluster.kubectl("get", "scoreruns", "-n", release.team).stdout
    assert table.split("\n", 1)[0].split()[:5] == ["NAME", "PHASE", "ALGORITHM", "STAGE", "STEP"]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert rows["openo1-llama8b-score"][1] == "score"
    assert rows["qwen7b-mgrpo"][1] == "mgrpo"


def test_a_bad_scorerun_is_rejected_naming_the_fields(
    kube_api: ApiClient, release: Release
) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    bad = _example("scorerun-openo1-llama8b.yaml")
    bad["metadata"] = {"name": "bad-run"}
    bad["spec"]["rollout"]["temperature"] = 5.0
    bad["spec"]["algorithm"]["name"] = "ppo"
    del bad["spec"]["output"]
    with pytest.raises(ApiException) as info:
        client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
            "scoreops.io", "v1alpha1", release.team, "scoreruns", bad)
    assert info.value.status == 422
    body = json.loads(info.value.body)
    fields = {cause["field"] for cause in body["details"]["causes"]}
    assert fields == {"spec.rollout.temperature", "spec.algorithm.name", "spec.output"}
    assert "spec.rollout.temperature" in body["message"]


def test_the_operators_children_apply_with_the_operators_permissions(
    cluster: LocalCluster, kube_api: ApiClient, release: Release
) -> None:
    """What the builders make from each example, applied as the operator's ServiceAccount,
    with the settings the chart gave the operator: the API server validates the built-in
    kinds fully and the RBAC covers every child."""
    from kubernetes import client

    from scoreops.api import load_resource
    from scoreops.k8s.builders import build_children, referenced_runs
    from scoreops.k8s.config import FIELD_MANAGER, OperatorConfig

    dep = client.AppsV1Api(kube_api).read_namespaced_deployment(release.fullname,
                                                                 release.namespace)
    env = {e.name: e.value for e in dep.spec.template.spec.containers[0].env if e.value}
    config = OperatorConfig.from_env(env)
    applied: list[str] = []
    for name in CLUSTER_EXAMPLES:
        resource = load_resource(EXAMPLES / name)
        uris = {run: f"s3://runs/{run}/final" for run in referenced_runs(resource)}
        children = build_children(resource, config, release.team, uris)
        assert children, name
        stream = "\n---\n".join(json.dumps(c) for c in children)
        out = cluster.kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}",
                              f"--as={release.service_account}", "-f", "-", input=stream)
        applied += out.stdout.split()
    kinds = {line.split("/")[0].split(".")[0] for line in applied if "/" in line}
    assert {"configmap", "pytorchjob", "inferenceservice", "serviceaccount"} <= kinds

    # the run's PyTorchJob inherited the chart's GPU pool, and the training operator's schema
    # kept one process per GPU and the grace period (a pruned field would be gone)
    job = json.loads(cluster.kubectl("get", "pytorchjob", "openo1-llama8b-score-train", "-n",
                                     release.team, "-o", "json").stdout)
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert master["nodeSelector"] == {"cloud.example.com/gpu-pool": "h100"}
    assert job["spec"]["nprocPerNode"] == "4"
    assert master["terminationGracePeriodSeconds"] == 600
    # the predictor's storage account lists the chart's Secret (KServe reads the endpoint from
    # the Secret, not from a ServiceAccount without an IAM role: no annotations here)
    account = json.loads(cluster.kubectl("get", "serviceaccount", "llama8b-corrector-storage",
                                         "-n", release.team, "-o", "json").stdout)
    assert account["secrets"] == [{"name": "s3-credentials"}]
    assert "annotations" not in account["metadata"]

    # and the operator may write the status the API server keeps apart from the spec
    patch = json.dumps({"status": {"phase": "Running", "stage": "stage1", "step": 3}})
    cluster.kubectl("patch", "scorerun", "openo1-llama8b-score", "-n", release.team,
                    "--subresource=status", "--type=merge", "-p", patch,
                    f"--as={release.service_account}")
    row = cluster.kubectl("get", "scorerun", "openo1-llama8b-score", "-n", release.team,
                          "--no-headers").stdout.split()
    assert row[1:5] == ["Running", "score", "stage1", "3"]


# --- server-side validation of everything the chart renders ----------------------------------------

VARIANTS = {
    "defaults": [],
    "everything-on": ["--set", "s3.existingSecret=s3-credentials",
                      "--set", "s3.endpoint=https://s3.example.com",
                      "--set", "rbac.readSecrets=true",
                      "--set", "images.pullSecrets={regcred}",
                      "--set", "servingRuntime.enabled=true", "--set", "servingRuntime.gpus=2",
                      "--set-json", 'gpu.nodeSelector={"pool":"h100"}',
                      "--set", "operator.extraArgs={--verbose}",
                      "--set-json", 'operator.extraEnv=[{"name":"X","value":"1"}]',
                      "--set-json", 'operator.tolerations=[{"key":"infra","operator":"Exists"}]'],
    "namespaced": ["WATCH"],
    "private-registry-gpu": ["--set", "images.registry=registry.example.com/ml",
                             "--set", "images.pullPolicy=Always",
                             "--set", "images.pullSecrets={regcred,mirror-cred}",
                             "--set", "servingRuntime.enabled=true",
                             "--set", "servingRuntime.gpus=1",
                             "--set", "servingRuntime.image.repository="
                                      "registry.example.com/ml/huggingfaceserver",
                             "--set-json", 'gpu.nodeSelector={"pool":"h100"}',
                             "--set", "kserve.deploymentMode=Serverless",
                             "--set", "kserve.knativePodspecFlags=true"],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_passes_server_side_validation(
    cluster: LocalCluster, release: Release, variant: str
) -> None:
    name = f"dry-{variant[:10]}-{uuid.uuid4().hex[:4]}"
    flags = [f for f in VARIANTS[variant] if f != "WATCH"]
    if "WATCH" in VARIANTS[variant]:
        flags += ["--set", f"operator.watchNamespaces={{{release.team}}}"]
    rendered = cluster.helm("template", name, str(CHART), "--namespace", release.namespace,
                            "--include-crds", *flags).stdout
    docs = _docs(rendered)
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered).stdout
    assert out.count("(server dry run)") == len(docs), out
    # ServingRuntime is a custom resource: validate its pod parts as a real Pod
    sa = f"{name}-probe"
    for doc in docs:
        if doc["kind"] != "ServingRuntime":
            continue
        ns = doc["metadata"]["namespace"]
        cluster.kubectl("create", "serviceaccount", sa, "-n", ns)
        spec = doc["spec"]
        # no token controller here: the probe pod mounts no token
        pod_spec = {"serviceAccountName": sa, "automountServiceAccountToken": False,
                    "containers": copy.deepcopy(spec["containers"]),
                    **{k: spec[k] for k in ("volumes", "nodeSelector", "tolerations",
                                            "imagePullSecrets") if k in spec}}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{name}-runtime", "namespace": ns}, "spec": pod_spec}
        out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod))
        assert "(server dry run)" in out.stdout


def test_server_side_validation_would_catch_a_broken_object(
    cluster: LocalCluster, release: Release
) -> None:
    rendered = cluster.helm("template", "dry-broken", str(CHART), "--namespace",
                            release.namespace).stdout
    docs = _docs(rendered)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = 70000
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(dep),
                           check=False)
    assert proc.returncode != 0
    assert "livenessProbe.httpGet.port" in proc.stderr


# --- upgrade and uninstall ---------------------------------------------------------------------------


def test_upgrade_with_changed_values(cluster: LocalCluster, kube_api: ApiClient,
                                     release: Release) -> None:
    from kubernetes import client

    cluster.helm("upgrade", release.name, str(CHART), "--namespace", release.namespace,
                 "--reuse-values", "--set", "gpu.resourceName=amd.com/gpu",
                 "--set", f"operator.watchNamespaces={{{release.team}}}")
    history = json.loads(cluster.helm("history", release.name, "-n", release.namespace,
                                      "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2]
    assert history[-1]["status"] == "deployed"

    dep = client.AppsV1Api(kube_api).read_namespaced_deployment(release.fullname,
                                                                 release.namespace)
    c = dep.spec.template.spec.containers[0]
    env = {e.name: e.value for e in c.env}
    assert env["SCOREOPS_GPU_RESOURCE_NAME"] == "amd.com/gpu"
    assert env["SCOREOPS_S3_SECRET"] == "s3-credentials"  # reused
    assert f"--namespace={release.team}" in c.command and "--all-namespaces" not in c.command
    assert int(dep.metadata.generation) == 2

    # namespaced now: a Role in the team namespace, nothing elsewhere
    assert _exists(cluster, "role", release.fullname, release.team)
    assert _can(cluster, release, "create", "pytorchjobs.kubeflow.org", "-n", release.team)
    assert not _can(cluster, release, "create", "pytorchjobs.kubeflow.org", "-n", "default")
    assert not _can(cluster, release, "watch", "namespaces")
    assert _can(cluster, release, "list", "customresourcedefinitions.apiextensions.k8s.io")
    # resources created before the upgrade are untouched
    assert _exists(cluster, "scorerun", "openo1-llama8b-score", release.team)


def test_uninstall_removes_the_operator_and_keeps_crds_and_resources(
    cluster: LocalCluster, kube_api: ApiClient, release: Release
) -> None:
    from kubernetes import client

    manifest = _docs(cluster.helm("get", "manifest", release.name, "-n",
                                  release.namespace).stdout)
    cluster.helm("uninstall", release.name, "--namespace", release.namespace)
    for doc in manifest:
        assert not _exists(cluster, doc["kind"], doc["metadata"]["name"],
                           doc["metadata"].get("namespace")), doc["kind"]
    assert json.loads(cluster.helm("list", "-n", release.namespace, "-o", "json").stdout) == []
    ext = client.ApiextensionsV1Api(kube_api)
    for plural in KINDS.values():
        assert ext.read_custom_resource_definition(f"{plural}.scoreops.io").metadata.name
    assert _exists(cluster, "scorerun", "openo1-llama8b-score", release.team)
    assert _exists(cluster, "correctorservice", "llama8b-corrector", release.team)
    # the Secret was never the chart's: it stays
    assert _exists(cluster, "secret", "s3-credentials", release.namespace)

