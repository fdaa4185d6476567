"""The Helm chart, rendered by the real helm (hack/tools.sh): lint, values schema, the objects.

No cluster here: tests/e2e/test_helm.py installs the chart into a real API server.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "scoreops"
RELEASE = "scoreops"
NAMESPACE = "scoreops-system"
CONTRACT_COMMAND_HEAD = ["kopf", "run", "--standalone", "--liveness=http://0.0.0.0:8080/healthz"]
OPERATOR_MAIN = "/opt/scoreops/operator/main.py"


# --- helm ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A function running the real helm binary with its state in a temporary directory."""
    proc = subprocess.run([str(ROOT / "hack" / "tools.sh")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, f"hack/tools.sh failed:\n{proc.stderr}"
    binary = Path(proc.stdout.strip().splitlines()[-1]) / "helm"
    home = tmp_path_factory.mktemp("helm")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home),
           "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data"), "KUBECONFIG": str(home / "no-kubeconfig")}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env,
                             check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{out.stderr}")
        return out

    yield run


def render(helm: Any, *flags: str) -> list[dict[str, Any]]:
    """The objects `helm template` renders with FLAGS (--set ..., --values ...)."""
    out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *flags).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def chart_meta() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


# --- RBAC evaluation (the API server's rule matching, for resource rules) -----------------------


def allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    for rule in rules:
        if (group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", [])) and \
           (resource in rule.get("resources", []) or "*" in rule.get("resources", [])) and \
           (verb in rule.get("verbs", []) or "*" in rule.get("verbs", [])):
            return True
    return False


# What the operator (kopf handlers + builders) does, per (group, resource).
OPERATOR_NEEDS: dict[tuple[str, str], tuple[str, ...]] = {
    **{("scoreops.io", r): ("get", "list", "watch", "patch")
       for r in ("scoreruns", "evalsuites", "correctorservices")},
    **{("scoreops.io", f"{r}/status"): ("get", "patch")
       for r in ("scoreruns", "evalsuites", "correctorservices")},
    **{("scoreops.io", f"{r}/finalizers"): ("update",)
       for r in ("scoreruns", "evalsuites", "correctorservices")},
    ("kubeflow.org", "pytorchjobs"): ("get", "list", "watch", "create", "patch"),
    ("serving.kserve.io", "inferenceservices"): ("get", "list", "watch", "create", "patch"),
    ("batch", "jobs"): ("get", "list", "watch", "create", "patch"),
    ("", "configmaps"): ("get", "list", "watch", "create", "patch"),
    ("", "serviceaccounts"): ("create", "patch"),
    ("", "events"): ("create",),
}


# --- lint and defaults --------------------------------------------------------------------------


def test_chart_metadata_matches_the_package() -> None:
    meta = chart_meta()
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = next(line.split('"')[1] for line in pyproject.splitlines()
                   if line.startswith("version = "))
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == version


def test_crds_install_on_the_oldest_supported_api_server() -> None:
    """kube-apiserver 1.20 (the chart's kubeVersion floor) refuses a CRD whose schema has an
    empty-string default ("default: Invalid value: \"null\""), and helm install fails."""
    assert chart_meta()["kubeVersion"] == ">=1.20.0-0"

    def empty_defaults(node: Any, path: str) -> list[str]:
        if isinstance(node, dict):
            found = [path] if node.get("default") == "" else []
            for key, value in node.items():
                found += empty_defaults(value, f"{path}.{key}")
            return found
        if isinstance(node, list):
            return [p for i, v in enumerate(node) for p in empty_defaults(v, f"{path}[{i}]")]
        return []

    for path in sorted((CHART / "crds").glob("*.yaml")):
        assert empty_defaults(yaml.safe_load(path.read_text()), path.name) == []


def test_crds_dir_is_exactly_the_generated_crds() -> None:
    from scoreops.api.crd import crd_files

    on_disk = {p.name: p.read_text() for p in (CHART / "crds").glob("*")}
    assert on_disk == crd_files()


def test_lint_strict_with_default_and_non_default_values(helm: Any, tmp_path: Path) -> None:
    helm("lint", "--strict", str(CHART))
    custom = tmp_path / "custom.yaml"
    custom.write_text(yaml.safe_dump({
        "images": {"registry": "registry.example.com/ml", "tag": "1.2.3",
                   "pullPolicy": "Always", "pullSecrets": ["regcred"]},
        "operator": {"watchNamespaces": ["team-a", "team-b"], "extraArgs": ["--verbose"]},
        "rbac": {"readSecrets": True},
        "s3": {"existingSecret": "s3-credentials", "endpoint": "http://minio.storage:9000"},
        "gpu": {"nodeSelector": {"cloud.example.com/gpu-pool": "h100"},
                "resourceName": "nvidia.com/gpu"},
        "servingRuntime": {"enabled": True, "gpus": 1, "namespaces": ["team-a"]},
    }))
    helm("lint", "--strict", str(CHART), "--values", str(custom))


def test_default_render_is_the_operator_and_its_rbac_only(helm: Any) -> None:
    objs = render(helm)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount"]
    for o in objs:
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if o["kind"] in ("Deployment", "ServiceAccount"):
            assert o["metadata"]["namespace"] == NAMESPACE


def test_include_crds_renders_the_three_kinds(helm: Any) -> None:
    out = helm("template", RELEASE, str(CHART), "--include-crds").stdout
    crds = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "CustomResourceDefinition"]
    assert sorted(c["spec"]["names"]["kind"] for c in crds) == [
        "CorrectorService", "EvalSuite", "ScoreRun"]


# --- the operator Deployment ---------------------------------------------------------------------


def test_deployment_is_hardened(helm: Any) -> None:
    dep = one(render(helm), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    # the only writable path is an emptyDir at /tmp, where HOME points
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts == {"/tmp": "tmp"}
    volume = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in volume
    assert env_of(c)["HOME"] == "/tmp"
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
    assert pod["serviceAccountName"] == one(render(helm), "ServiceAccount")["metadata"]["name"]


def test_command_probes_and_image_follow_the_contract(helm: Any) -> None:
    c = container(render(helm))
    assert c["command"] == [*CONTRACT_COMMAND_HEAD, "--all-namespaces", OPERATOR_MAIN]
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz"
        port = get["port"]
        assert port == 8080 or {p["name"]: p["containerPort"] for p in c["ports"]}[port] == 8080
    assert c["image"] == f"ghcr.io/scoreops/operator:{chart_meta()['appVersion']}"


def test_image_settings_reach_the_operator_and_its_children(helm: Any) -> None:
    from scoreops.k8s.config import OperatorConfig

    objs = render(helm, "--set", "images.registry=registry.example.com/ml",
                  "--set", "images.tag=1.2.3", "--set", "images.pullPolicy=Always",
                  "--set", "images.pullSecrets={regcred}")
    c = container(objs)
    assert c["image"] == "registry.example.com/ml/operator:1.2.3"
    assert c["imagePullPolicy"] == "Always"
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    # the operator's own settings parser, fed with the rendered environment
    config = OperatorConfig.from_env(env_of(c))
    assert config.image("trainer") == "registry.example.com/ml/trainer:1.2.3"
    assert json.loads(env_of(c)["SCOREOPS_IMAGE_PULL_SECRETS"]) == ["regcred"]
    # an explicit operator image overrides the registry default
    c2 = container(render(helm, "--set", "operator.image.repository=mirror.local/op",
                          "--set", "operator.image.tag=dev"))
    assert c2["image"] == "mirror.local/op:dev"


def test_gpu_pool_and_s3_reach_the_operator_as_its_settings(helm: Any) -> None:
    from scoreops.k8s.config import OperatorConfig

    selector = {"cloud.example.com/gpu-pool": "h100", "nvidia.com/gpu.product": "H100-SXM"}
    tolerations = [{"key": "gpu", "operator": "Equal", "value": "h100", "effect": "NoSchedule"}]
    objs = render(helm, "--set-json", f"gpu.nodeSelector={json.dumps(selector)}",
                  "--set-json", f"gpu.tolerations={json.dumps(tolerations)}",
                  "--set", "gpu.resourceName=amd.com/gpu",
                  "--set", "s3.existingSecret=s3-credentials",
                  "--set", "s3.endpoint=http://minio.storage:9000",
                  "--set", "s3.region=eu-west-1",
                  "--set", "training.terminationGracePeriodSeconds=1800",
                  "--set", "operator.syncIntervalSeconds=30")
    c = container(objs)
    env = env_of(c)
    assert env["SCOREOPS_GPU_RESOURCE_NAME"] == "amd.com/gpu"
    config = OperatorConfig.from_env(env)
    assert dict(config.gpu_node_selector) == selector
    assert [dict(t) for t in config.gpu_tolerations] == tolerations
    assert config.s3_secret == "s3-credentials"
    assert config.s3_endpoint == "http://minio.storage:9000"
    assert config.s3_region == "eu-west-1"
    assert config.train_grace_seconds == 1800
    assert config.sync_interval == 30
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
    # the keys themselves come from the Secret, by reference only
    assert c["envFrom"] == [{"secretRef": {"name": "s3-credentials", "optional": True}}]
    assert not any(k.startswith("AWS_ACCESS") or k.startswith("AWS_SECRET") for k in env)


def test_defaults_give_the_operator_a_valid_config(helm: Any) -> None:
    from scoreops.k8s.config import OperatorConfig

    c = container(render(helm))
    config = OperatorConfig.from_env(env_of(c))
    assert config.image("evaluator") == f"ghcr.io/scoreops/evaluator:{chart_meta()['appVersion']}"
    assert config.s3_secret is None and config.s3_endpoint is None
    assert config.train_grace_seconds == 600
    assert [dict(t) for t in config.gpu_tolerations] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "envFrom" not in c


def test_no_secret_values_anywhere(helm: Any) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["s3"]) == {"existingSecret", "endpoint", "region"}
    for flags in ([], ["--set", "s3.existingSecret=s3-credentials", "--set",
                       "servingRuntime.enabled=true", "--set", "rbac.readSecrets=true"]):
        assert all(o["kind"] != "Secret" for o in render(helm, *flags))
    bad = helm("template", RELEASE, str(CHART), "--set", "s3.secretAccessKey=abc", check=False)
    assert bad.returncode != 0
    assert "/s3" in bad.stderr and "secretAccessKey" in bad.stderr


# --- RBAC ------------------------------------------------------------------------------------------

RBAC_VARIANTS = {
    "cluster-wide": [],
    "namespaced": ["--set", "operator.watchNamespaces={team-a,team-b}"],
    "read-secrets": ["--set", "rbac.readSecrets=true"],
    "namespaced-read-secrets": ["--set", "operator.watchNamespaces={team-a}",
                                "--set", "rbac.readSecrets=true"],
}


@pytest.mark.parametrize("variant", sorted(RBAC_VARIANTS))
def test_rbac_has_no_wildcards(helm: Any, variant: str) -> None:
    objs = render(helm, *RBAC_VARIANTS[variant])
    roles = [o for o in objs if o["kind"] in ("ClusterRole", "Role")]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
                assert all("*" not in item for item in rule.get(key, [])), rule
            assert "nonResourceURLs" not in rule
            # write verbs never on cluster-scoped resources
            if role["kind"] == "ClusterRole" and rule["resources"] in (
                    ["customresourcedefinitions"], ["namespaces"]):
                assert set(rule["verbs"]) <= {"get", "list", "watch"}


@pytest.mark.parametrize("variant", sorted(RBAC_VARIANTS))
def test_secrets_only_when_turned_on_and_then_only_get(helm: Any, variant: str) -> None:
    objs = render(helm, *RBAC_VARIANTS[variant])
    secret_rules = [r for o in objs if o["kind"] in ("ClusterRole", "Role")
                    for r in o["rules"] if "secrets" in r["resources"]]
    if "read-secrets" in variant:
        assert secret_rules and all(r["verbs"] == ["get"] for r in secret_rules)
        assert all(r["resources"] == ["secrets"] for r in secret_rules)
    else:
        assert secret_rules == []


def test_cluster_wide_rbac_grants_what_the_operator_does(helm: Any) -> None:
    objs = render(helm)
    role = one(objs, "ClusterRole")
    rules = role["rules"]
    for (group, resource), verbs in OPERATOR_NEEDS.items():
        for verb in verbs:
            assert allows(rules, group, resource, verb), (group, resource, verb)
    # kopf: CRD discovery and namespace watching
    for verb in ("list", "watch"):
        assert allows(rules, "apiextensions.k8s.io", "customresourcedefinitions", verb)
        assert allows(rules, "", "namespaces", verb)
    # and nothing beyond
    for group, resource, verb in [("", "secrets", "get"), ("", "pods", "create"),
                                  ("", "namespaces", "create"), ("", "nodes", "get"),
                                  ("apiextensions.k8s.io", "customresourcedefinitions", "create"),
                                  ("rbac.authorization.k8s.io", "clusterroles", "create"),
                                  ("scoreops.io", "scoreruns", "create"),
                                  ("scoreops.io", "scoreruns", "delete"),
                                  ("kubeflow.org", "pytorchjobs", "delete"),
                                  ("", "configmaps", "delete"),
                                  ("", "serviceaccounts", "delete"),
                                  ("", "serviceaccounts/token", "create"),
                                  ("rbac.authorization.k8s.io", "rolebindings", "create"),
                                  ("", "events", "delete")]:
        assert not allows(rules, group, resource, verb), (group, resource, verb)
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": role["metadata"]["name"]}
    sa = one(objs, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": NAMESPACE}]


def test_namespaced_mode_uses_roles_in_the_watched_namespaces(helm: Any) -> None:
    objs = render(helm, "--set", "operator.watchNamespaces={team-a,team-b}")
    c = container(objs)
    assert c["command"] == [*CONTRACT_COMMAND_HEAD, "--namespace=team-a", "--namespace=team-b",
                            OPERATOR_MAIN]
    roles = {o["metadata"]["namespace"]: o for o in objs if o["kind"] == "Role"}
    bindings = {o["metadata"]["namespace"]: o for o in objs if o["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    sa = one(objs, "ServiceAccount")["metadata"]["name"]
    for ns, role in roles.items():
        for (group, resource), verbs in OPERATOR_NEEDS.items():
            for verb in verbs:
                assert allows(role["rules"], group, resource, verb), (ns, resource, verb)
        assert bindings[ns]["roleRef"]["name"] == role["metadata"]["name"]
        assert bindings[ns]["subjects"] == [
            {"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    # cluster scope keeps only CRD reads: no namespaces, none of the namespaced resources
    cluster_rules = one(objs, "ClusterRole")["rules"]
    assert cluster_rules == [{"apiGroups": ["apiextensions.k8s.io"],
                              "resources": ["customresourcedefinitions"],
                              "verbs": ["get", "list", "watch"]}]


def test_rbac_and_service_account_can_be_left_to_the_platform(helm: Any) -> None:
    objs = render(helm, "--set", "rbac.create=false", "--set", "serviceAccount.create=false",
                  "--set", "serviceAccount.name=platform-operator")
    assert sorted(o["kind"] for o in objs) == ["Deployment"]
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == \
        "platform-operator"
    bad = helm("template", RELEASE, str(CHART), "--set", "serviceAccount.create=false",
               check=False)
    assert bad.returncode != 0 and "serviceAccount.name" in bad.stderr


# --- the ServingRuntime ------------------------------------------------------------------------


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "images" / "versions.env").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            pins[key] = value
    return pins


def test_serving_runtime_is_off_by_default_and_pinned_when_on(helm: Any) -> None:
    assert all(o["kind"] != "ServingRuntime" for o in render(helm))
    objs = render(helm, "--set", "servingRuntime.enabled=true")
    rt = one(objs, "ServingRuntime")
    assert rt["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert rt["metadata"]["namespace"] == NAMESPACE
    formats = rt["spec"]["supportedModelFormats"]
    assert formats == [{"name": "huggingface", "version": "1", "autoSelect": True, "priority": 2}]
    (c,) = rt["spec"]["containers"]
    assert c["name"] == "kserve-container"
    assert c["image"] == f"kserve/huggingfaceserver:v{_pins()['KSERVE_VERSION']}"
    # KServe's own template placeholder survives helm's templating
    assert c["args"][0] == "--model_name={{.Name}}"
    assert c["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp", "/dev/shm"}
    # no default GPU: the InferenceService asks for its own
    assert not any("gpu" in k for k in c["resources"]["limits"])
    assert "nodeSelector" not in rt["spec"]
    # the operator learns the runtime's name
    assert env_of(container(objs))["SCOREOPS_SERVING_RUNTIME"] == "scoreops-vllm"


def test_serving_runtime_with_gpus_lands_on_the_gpu_pool(helm: Any) -> None:
    objs = render(helm, "--set", "servingRuntime.enabled=true", "--set", "servingRuntime.gpus=2",
                  "--set", "servingRuntime.namespaces={team-a,team-b}",
                  "--set", "gpu.resourceName=amd.com/gpu",
                  "--set-json", 'gpu.nodeSelector={"pool":"mi300"}')
    runtimes = [o for o in objs if o["kind"] == "ServingRuntime"]
    assert sorted(r["metadata"]["namespace"] for r in runtimes) == ["team-a", "team-b"]
    for rt in runtimes:
        c = rt["spec"]["containers"][0]
        assert c["resources"]["limits"]["amd.com/gpu"] == "2"
        assert c["resources"]["requests"]["amd.com/gpu"] == "2"
        assert rt["spec"]["nodeSelector"] == {"pool": "mi300"}
        assert rt["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


PRIVATE_GPU = {
    "images": {"registry": "registry.example.com/ml", "tag": "1.2.3", "pullPolicy": "Always",
               "pullSecrets": ["regcred", "mirror-cred"]},
    "s3": {"existingSecret": "s3-credentials", "endpoint": "https://minio.storage:9000",
           "region": "eu-west-1"},
    "gpu": {"nodeSelector": {"cloud.example.com/gpu-pool": "h100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                             "effect": "NoSchedule"}]},
    "servingRuntime": {"enabled": True, "gpus": 1, "namespaces": ["team"],
                       "image": {"repository": "registry.example.com/ml/huggingfaceserver",
                                 "tag": "v0.21.0"}},
}


def test_private_registry_and_gpu_values_reach_every_pod(helm: Any, tmp_path: Path) -> None:
    """The chart with a private registry and a GPU pool lints, renders the pull Secrets into
    the operator's pod, the ServingRuntime and the operator's settings, and the operator then
    gives them to every child pod of every example."""
    from scoreops.api import load_resource
    from scoreops.k8s.builders import build_children, referenced_runs
    from scoreops.k8s.config import OperatorConfig

    values = tmp_path / "private-gpu.yaml"
    values.write_text(yaml.safe_dump(PRIVATE_GPU))
    helm("lint", "--strict", str(CHART), "--values", str(values))
    objs = render(helm, "--values", str(values))
    want = [{"name": "regcred"}, {"name": "mirror-cred"}]
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["imagePullSecrets"] == want
    rt = one(objs, "ServingRuntime")
    assert rt["spec"]["imagePullSecrets"] == want
    assert rt["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    assert rt["metadata"]["annotations"]["serving.kserve.io/server-type"] == "huggingfaceserver"
    config = OperatorConfig.from_env(env_of(container(objs)))
    assert config.pull_secrets == ("regcred", "mirror-cred") and config.pull_policy == "Always"
    pods = 0
    for path in sorted((ROOT / "manifests" / "examples").glob("*.yaml")):
        resource = load_resource(path)
        uris = {r: f"s3://runs/{r}/final" for r in referenced_runs(resource)}
        for child in build_children(resource, config, "team", uris):
            spec = child.get("spec", {})
            if child["kind"] == "PyTorchJob":
                templates = [r["template"]["spec"] for r in spec["pytorchReplicaSpecs"].values()]
            elif child["kind"] == "Job":
                templates = [spec["template"]["spec"]]
            elif child["kind"] == "InferenceService":
                templates = [spec["predictor"], spec["transformer"]]
            else:
                continue
            for pod in templates:
                pods += 1
                assert pod["imagePullSecrets"] == want, (path.name, child["kind"])
                for c in pod.get("containers", []):
                    assert c["imagePullPolicy"] == "Always"
                    assert c["image"].startswith("registry.example.com/ml/")
    assert pods >= 8


def test_serverless_renders_only_with_the_knative_flags(helm: Any) -> None:
    from scoreops.k8s.config import OperatorConfig

    out = helm("template", RELEASE, str(CHART), "--set", "kserve.deploymentMode=Serverless",
               check=False)
    assert out.returncode != 0
    for flag in ("kubernetes.podspec-tolerations", "kubernetes.podspec-nodeselector",
                 "kubernetes.podspec-affinity", "kserve.knativePodspecFlags=true"):
        assert flag in out.stderr, flag
    objs = render(helm, "--set", "kserve.deploymentMode=Serverless",
                  "--set", "kserve.knativePodspecFlags=true")
    config = OperatorConfig.from_env(env_of(container(objs)))
    assert config.kserve_deployment_mode == "Serverless" and config.knative_podspec_flags
    default = OperatorConfig.from_env(env_of(container(render(helm))))
    assert default.kserve_deployment_mode == "RawDeployment"


# --- values: schema and documentation -------------------------------------------------------------

BAD_VALUES = [
    (["--set", "images.pullPolicy=Sometimes"], "/images/pullPolicy"),
    (["--set", "operator.replicas=2"], "/operator/replicas"),
    (["--set", "operator.replica=1"], "replica"),
    (["--set", "operator.watchNamespaces={Team_A}"], "/operator/watchNamespaces/0"),
    (["--set", "operator.securityContext.runAsNonRoot=false"],
     "/operator/securityContext/runAsNonRoot"),
    (["--set", "operator.resources.limits.cpu=lots"], "/operator/resources/limits/cpu"),
    (["--set", "gpu.resourceName=nvidia gpu"], "/gpu/resourceName"),
    (["--set-json", 'gpu.tolerations=[{"key":"g","operator":"Sometimes"}]'],
     "/gpu/tolerations/0/operator"),
    (["--set", "s3.endpoint=minio:9000"], "/s3/endpoint"),
    (["--set", "s3.existingSecret=AKIAEXAMPLE/KEY"], "/s3/existingSecret"),
    (["--set", "images.tag=latest tag"], "/images/tag"),
    (["--set", "servingRuntime.gpus=-1"], "/servingRuntime/gpus"),
    (["--set", "rbac.readSecrets=maybe"], "/rbac/readSecrets"),
    (["--set", "training.terminationGracePeriodSeconds=5"],
     "/training/terminationGracePeriodSeconds"),
    (["--set", "s3.region=EU West"], "/s3/region"),
    (["--set", "kserve.deploymentMode=Standby"], "/kserve/deploymentMode"),
    (["--set", "kserve.knativePodspecFlags=yes"], "/kserve/knativePodspecFlags"),
]


@pytest.mark.parametrize(("flags", "field"), BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_wrong_value_fails_naming_the_field(helm: Any, flags: list[str], field: str) -> None:
    out = helm("template", RELEASE, str(CHART), *flags, check=False)
    assert out.returncode != 0
    assert "schema" in out.stderr
    assert field in out.stderr, out.stderr


def test_default_values_satisfy_the_schema_and_every_key_is_typed() -> None:
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(values)

    def walk(node: dict[str, Any], sch: dict[str, Any], path: str) -> None:
        if "$ref" in sch:
            sch = schema["definitions"][sch["$ref"].rsplit("/", 1)[-1]]
        props = sch.get("properties", {})
        for key, value in node.items():
            assert key in props, f"{path}{key} is not in values.schema.json"
            if isinstance(value, dict) and props[key].get("additionalProperties") is False:
                walk(value, props[key], f"{path}{key}.")
            elif "$ref" in props[key] and isinstance(value, dict):
                target = schema["definitions"][props[key]["$ref"].rsplit("/", 1)[-1]]
                if target.get("additionalProperties") is False:
                    walk(value, target, f"{path}{key}.")

    walk(values, schema, "")


def _undocumented(lines: list[str]) -> list[str]:
    """Keys of values.yaml without a `# --` comment whose nested keys are not all documented."""
    entries: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "- ")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        j, documented = i - 1, False
        while j >= 0 and lines[j].strip().startswith("#"):
            documented |= lines[j].startswith(" " * indent + "# --")
            j -= 1
        entries.append((indent, stripped.split(":", 1)[0], documented))

    def check(start: int, end: int, prefix: str) -> list[str]:
        bad, i = [], start
        while i < end:
            indent, key, documented = entries[i]
            j = i + 1
            while j < end and entries[j][0] > indent:
                j += 1
            if not documented:
                bad += check(i + 1, j, f"{prefix}{key}.") if j > i + 1 else [prefix + key]
            i = j
        return bad

    return check(0, len(entries), "")


def test_every_value_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    assert _undocumented(lines) == []
    # the check itself notices a missing comment
    assert _undocumented(["a:", "  # -- fine", "  b: 1", "  c: 2"]) == ["a.c"]
    assert _undocumented(["# -- documented map", "m:", "  x: 1"]) == []


def test_notes_tell_the_next_step(helm: Any) -> None:
    out = helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client").stdout
    notes = out.split("NOTES:", 1)[1]
    assert f"rollout status deployment/{RELEASE}" in notes
    assert "kubectl apply -f manifests/examples/scorerun-openo1-llama8b.yaml" in notes
    assert "kubectl get scoreruns -w" in notes
    assert "s3.existingSecret is empty" in notes
    out = helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
               "--set", "s3.existingSecret=s3-credentials",
               "--set", "operator.watchNamespaces={team-a}").stdout
    notes = out.split("NOTES:", 1)[1]
    assert 'Secret "s3-credentials"' in notes
    assert "watches the namespaces: team-a" in notes


def test_every_value_the_guide_sets_is_accepted(helm: Any) -> None:
    guide = (ROOT / "docs" / "cluster.md").read_text().replace("\\\n", " ")
    seen = 0
    for line in guide.splitlines():  # the flags of one command line go together
        flags = re.findall(r"(--set(?:-json)?)[ =]('[^']*'|[^\s`]+)", line)
        seen += len(flags)
        if flags:
            args = [part for flag, value in flags for part in (flag, value.strip("'"))]
            assert one(render(helm, *args), "Deployment")
    assert seen >= 5
    for name in re.findall(r"manifests/examples/([\w.-]+\.yaml)", guide):
        assert (ROOT / "manifests" / "examples" / name).is_file(), name
