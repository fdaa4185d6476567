"""Each built child against the contract of the controller that runs it, beyond its schema.

A child can validate against the upstream CRD and still break on a real cluster. These tests
hold the children to what the controllers do with them (sources read at the versions the
platform supports; docs/cluster.md cites them):

* Kubeflow training operator, release-1.9: every container gets the rendezvous variables,
  and the exit code and port are read from the one named ``pytorch``
  (``PyTorchJobDefaultContainerName``); ``spec.nprocPerNode`` is a
  string, defaulted to ``"auto"`` (``pytorch_defaults.go``) and exported to every pod as
  ``PET_NPROC_PER_NODE``, and ``WORLD_SIZE`` is replicas x nprocPerNode when it is a number
  (``controller.v1/pytorch/envvar.go``). ``jobs/launch.sh`` turns that into torchrun's
  arguments, parsed here by torch's own parser.
* KServe: a custom transformer gets ``--model_name <isvc>``, ``--predictor_host`` and
  ``--http_port`` appended unless an argument already starts with them
  (``apis/serving/v1beta1/transformer_custom.go``, ``utils.IncludesArg``); the storage
  initializer takes S3 credentials from the Secrets its predictor's ServiceAccount lists
  (``credentials/service_account_credentials.go``) and the endpoint, scheme and region from
  the ``serving.kserve.io/s3-*`` annotations (``credentials/s3/s3_secret.go``).
* The server image's default ``CMD`` passes the server's own argument validation.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from scoreops.api import CorrectorService, ScoreRun, load_resource, parse_resource
from scoreops.k8s.builders import build_children, referenced_runs, torchrun_shutdown_seconds
from scoreops.k8s.config import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_INPUTS = ROOT / "tests" / "unit" / "golden" / "inputs"
EXAMPLES = ROOT / "manifests" / "examples"

PLATFORM = OperatorConfig(tag="1.2.3", s3_secret="platform-s3",
                          s3_endpoint="http://minio.storage.svc:9000", s3_region="eu-west-1",
                          train_grace_seconds=900)
BARE = OperatorConfig(tag="1.2.3")

JOB_INPUTS = sorted([*GOLDEN_INPUTS.glob("scorerun-*.yaml"), *GOLDEN_INPUTS.glob("evalsuite-*"),
                     *EXAMPLES.glob("scorerun-*.yaml"), *EXAMPLES.glob("evalsuite-*.yaml")])


def _children(path: Path, config: OperatorConfig) -> tuple[Any, list[dict[str, Any]]]:
    resource = load_resource(path)
    uris = {run: f"s3://runs/{run}/final" for run in referenced_runs(resource)}
    return resource, build_children(resource, config, "team", uris)


# --- training operator -------------------------------------------------------------------------


def operator_env(job: dict[str, Any]) -> dict[str, str]:
    """The variables the training operator (release-1.9) adds to a PyTorchJob pod."""
    spec = job["spec"]
    nproc = spec.get("nprocPerNode", "auto")  # its defaulting, when the builder set none
    replicas = sum(r["replicas"] for r in spec["pytorchReplicaSpecs"].values())
    per_pod = int(nproc) if nproc.isdigit() else 1
    return {"PET_NPROC_PER_NODE": nproc, "PET_NNODES": str(replicas), "PET_NODE_RANK": "0",
            "WORLD_SIZE": str(replicas * per_pod), "RANK": "0", "MASTER_ADDR": "master-0",
            "MASTER_PORT": "23456"}


@pytest.mark.parametrize("path", JOB_INPUTS, ids=[p.name for p in JOB_INPUTS])
def test_pytorchjobs_meet_the_training_operators_contract(path: Path) -> None:
    resource, children = _children(path, PLATFORM)
    jobs = [c for c in children if c["kind"] == "PyTorchJob"]
    if not jobs:  # an EvalSuite of endpoints only: a batch Job, no torchrun, no GPUs
        (batch,) = [c for c in children if c["kind"] == "Job"]
        assert "nprocPerNode" not in batch["spec"]
        return
    (job,) = jobs
    res = resource.spec.resources
    nproc = job["spec"]["nprocPerNode"]
    assert isinstance(nproc, str) and nproc.isdigit() and int(nproc) >= 1, nproc
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    for replica in replicas.values():
        pod = replica["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch"  # the only container the operator wires up
        assert replica["restartPolicy"] == "OnFailure"
    if isinstance(resource, ScoreRun):
        # torchrun: one process per GPU, one on a CPU pod; the world is every GPU (or pod)
        assert nproc == str(max(1, res.gpus_per_worker))
        world = int(operator_env(job)["WORLD_SIZE"])
        assert world == res.workers * max(1, res.gpus_per_worker)
        grace = res.termination_grace_period_seconds or PLATFORM.train_grace_seconds
        for replica in replicas.values():
            pod = replica["template"]["spec"]
            assert pod["terminationGracePeriodSeconds"] == grace
            env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
            # torchrun stops its workers inside the grace period, with time left to exit
            shutdown = int(env["SCOREOPS_SHUTDOWN_TIMEOUT"])
            assert shutdown == torchrun_shutdown_seconds(grace)
            assert 5 <= grace - shutdown < grace
    else:
        assert nproc == "1"  # the evaluator is one process per pod, without torchrun


def test_a_scoreruns_own_grace_period_wins_over_the_platforms() -> None:
    doc = yaml.safe_load((GOLDEN_INPUTS / "scorerun-cpu.yaml").read_text())
    (_, job) = build_children(parse_resource(doc), PLATFORM)
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 900
    doc["spec"]["resources"]["terminationGracePeriodSeconds"] = 45
    (_, job) = build_children(parse_resource(doc), PLATFORM)
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 45
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["SCOREOPS_SHUTDOWN_TIMEOUT"] == "40"
    doc["spec"]["resources"]["terminationGracePeriodSeconds"] = 5
    with pytest.raises(ValueError, match="terminationGracePeriodSeconds"):
        parse_resource(doc)


@pytest.mark.parametrize(("manifest", "want"), [
    (EXAMPLES / "scorerun-openo1-llama8b.yaml", "4"),  # 2 workers x 4 GPUs
    (GOLDEN_INPUTS / "scorerun-cpu.yaml", "1"),
])
def test_scoreops_render_shows_processes_per_pod(manifest: Path, want: str) -> None:
    out = subprocess.run([sys.executable, "-m", "scoreops", "render", str(manifest)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "python")})
    job = next(d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "PyTorchJob")
    assert job["spec"]["nprocPerNode"] == want
    assert f"nprocPerNode: '{want}'" in out.stdout


def _launch_argv(tmp_path: Path, env: dict[str, str]) -> list[str]:
    """The arguments jobs/launch.sh gives torchrun in a pod with ``env`` (torchrun replaced
    by a script that prints them)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "torchrun"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PET_", "SCOREOPS_", "NPROC")) and k not in (
                "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    base["PATH"] = f"{bin_dir}:{Path(sys.executable).parent}:{base.get('PATH', '')}"
    base["CUDA_VISIBLE_DEVICES"] = ""  # a CPU pod
    out = subprocess.run(["bash", str(ROOT / "jobs" / "launch.sh"), "--spec", "/x/run.json"],
                         env={**base, **env}, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


@pytest.mark.parametrize("path", [GOLDEN_INPUTS / "scorerun-gpu.yaml",
                                  GOLDEN_INPUTS / "scorerun-cpu.yaml"],
                         ids=["gpu", "cpu"])
def test_launch_gives_torchrun_what_the_job_says(path: Path, tmp_path: Path) -> None:
    run_mod = pytest.importorskip("torch.distributed.run")
    resource, children = _children(path, PLATFORM)
    job = next(c for c in children if c["kind"] == "PyTorchJob")
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    argv = _launch_argv(tmp_path, {**env, **operator_env(job)})
    args = run_mod.get_args_parser().parse_args(argv)  # torch's own parser
    res = resource.spec.resources
    assert args.nproc_per_node == str(max(1, res.gpus_per_worker))
    assert args.nnodes == str(res.workers)
    assert args.max_restarts == 0  # restarts belong to the PyTorchJob's backoffLimit
    assert args.shutdown_timeout == int(env["SCOREOPS_SHUTDOWN_TIMEOUT"])
    assert args.module and args.training_script == "scoreops.train"
    assert args.training_script_args == ["--spec", "/x/run.json"]


def test_launch_never_passes_auto(tmp_path: Path) -> None:
    """A job made without nprocPerNode (the operator then exports "auto"): one process on a
    CPU pod, not one per CPU."""
    argv = _launch_argv(tmp_path, {"PET_NPROC_PER_NODE": "auto", "PET_NNODES": "1"})
    assert "--nproc_per_node=1" in argv, argv
    assert not any(a.startswith("--shutdown-timeout") for a in argv)  # torchrun's default


# --- KServe ------------------------------------------------------------------------------------


def kserve_transformer_args(args: list[str], isvc_name: str) -> list[str]:
    """What KServe's custom transformer gets (transformer_custom.go): each of its arguments is
    appended unless one of ``args`` starts with it (utils.IncludesArg)."""
    out = list(args)
    for flag, value in (("--model_name", isvc_name),
                        ("--predictor_host", f"{isvc_name}-predictor.team"),
                        ("--http_port", "8080")):
        if not any(a == flag or a.startswith(flag) for a in out):
            out += [flag, value]
    return out


def _service(path: Path, config: OperatorConfig) -> tuple[CorrectorService, list[dict[str, Any]]]:
    service, children = _children(path, config)
    assert isinstance(service, CorrectorService)
    return service, children


SERVICES = [GOLDEN_INPUTS / "correctorservice-hf.yaml", GOLDEN_INPUTS / "correctorservice-vllm.yaml",
            *sorted(EXAMPLES.glob("correctorservice*.yaml"))]


@pytest.mark.parametrize("path", SERVICES, ids=[p.name for p in SERVICES])
def test_the_transformer_answers_under_the_served_name(path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from scoreops.serving.cli import build_entrypoint_parser, config_from_args

    service, children = _service(path, PLATFORM)
    isvc = children[-1]
    served = service.spec.model.served_name or service.metadata.name
    (container,) = isvc["spec"]["transformer"]["containers"]
    assert container["name"] == "kserve-container"
    args = kserve_transformer_args(container["args"], isvc["metadata"]["name"])
    parsed, unknown = build_entrypoint_parser().parse_known_args(args)
    assert unknown == []
    env = {e["name"]: e.get("value") for e in container["env"]}
    monkeypatch.setenv("SCOREOPS_STRATEGY_JSON", env["SCOREOPS_STRATEGY_JSON"])
    config = config_from_args(parsed)
    assert config.name == served
    meta = isvc["metadata"]
    assert config.predictor_url == f"http://{meta['name']}-predictor.{meta['namespace']}"
    # the predictor (KServe's Hugging Face runtime) serves under the same name
    assert f"--model_name={served}" in isvc["spec"]["predictor"]["model"]["args"]


@pytest.mark.parametrize("path", SERVICES, ids=[p.name for p in SERVICES])
def test_the_predictor_runs_as_a_service_account_that_carries_s3(path: Path) -> None:
    service, children = _service(path, PLATFORM)  # no ScoreRun Secret known: the platform's
    predictor = children[-1]["spec"]["predictor"]
    if service.spec.service_account_name:
        assert [c["kind"] for c in children] == ["InferenceService"]
        assert predictor["serviceAccountName"] == service.spec.service_account_name
        return
    account, isvc = children
    assert account["kind"] == "ServiceAccount"
    assert predictor["serviceAccountName"] == account["metadata"]["name"] == \
        f"{service.metadata.name}-storage"
    assert account["metadata"]["namespace"] == isvc["metadata"]["namespace"]
    assert account["secrets"] == [{"name": "platform-s3"}]  # named, never copied
    assert account["automountServiceAccountToken"] is False  # no API access from the pods
    # KServe reads s3-* annotations on a ServiceAccount only next to an IAM role
    assert "annotations" not in account["metadata"]
    assert account["metadata"]["labels"]["scoreops.io/correctorservice"] == \
        service.metadata.name
    assert "data" not in account and "stringData" not in account


def test_no_platform_secret_no_service_account() -> None:
    _, children = _service(GOLDEN_INPUTS / "correctorservice-hf.yaml", BARE)
    assert [c["kind"] for c in children] == ["InferenceService"]
    assert "serviceAccountName" not in children[0]["spec"]["predictor"]


def test_s3_annotations_for_the_secret() -> None:
    """What docs/cluster.md tells the platform team to put on the credentials Secret."""
    from scoreops.k8s.builders import kserve_s3_annotations

    assert kserve_s3_annotations(OperatorConfig(s3_endpoint="https://s3.example.com/")) == {
        "serving.kserve.io/s3-endpoint": "s3.example.com", "serving.kserve.io/s3-usehttps": "1"}
    assert kserve_s3_annotations(PLATFORM) == {
        "serving.kserve.io/s3-endpoint": "minio.storage.svc:9000",  # host[:port], no scheme
        "serving.kserve.io/s3-usehttps": "0", "serving.kserve.io/s3-region": "eu-west-1"}


# --- the server image ---------------------------------------------------------------------------


def _final_stage_exec_form(dockerfile: Path, op: str) -> list[str]:
    lines = dockerfile.read_text().replace("\\\n", " ").splitlines()
    found = [line.split(None, 1)[1] for line in lines if line.startswith(f"{op} ")]
    return json.loads(found[-1])


def test_server_image_default_cmd_passes_the_servers_validation() -> None:
    from scoreops.serving.cli import build_entrypoint_parser, config_from_args

    dockerfile = ROOT / "images" / "server" / "Dockerfile"
    assert _final_stage_exec_form(dockerfile, "ENTRYPOINT") == ["python", "-m", "scoreops.serving"]
    cmd = _final_stage_exec_form(dockerfile, "CMD")
    # as a KServe transformer: KServe appends the model name, the predictor and the port
    args, unknown = build_entrypoint_parser().parse_known_args(
        kserve_transformer_args(cmd, "corrector"))
    assert unknown == []  # nothing left for KServe's parser to trip on
    config = config_from_args(args)  # raises on an invalid combination
    assert (config.backend, config.predictor_url) == (
        "openai", "http://corrector-predictor.team")
    assert args.http_port == 8080


@pytest.mark.parametrize(("gpu", "flags", "want"), [
    (True, [], "bfloat16"),
    (False, [], "float32"),
    (True, ["--dtype", "float16"], "float16"),
])
def test_vllm_backend_defaults_to_bf16_on_gpu(monkeypatch: pytest.MonkeyPatch, gpu: bool,
                                             flags: list[str], want: str) -> None:
    from scoreops.serving import cli

    monkeypatch.setattr(cli, "_cuda_available", lambda: gpu)
    monkeypatch.setattr("scoreops.vllm_env.vllm_installed", lambda: True)  # the image has it
    args, _ = cli.build_entrypoint_parser().parse_known_args(
        ["--backend", "vllm", "--model", "/mnt/models", *flags])
    assert cli.config_from_args(args).dtype == want
    hf, _ = cli.build_entrypoint_parser().parse_known_args(["--model", "/mnt/models"])
    assert cli.config_from_args(hf).dtype == "float32"  # hf on CPU keeps float32


def test_the_trainer_warns_once_when_a_step_outlasts_the_stop_window(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from scoreops.train import StopWindow

    monkeypatch.setenv("SCOREOPS_SHUTDOWN_TIMEOUT", "570")
    window = StopWindow.from_env()
    assert window.check({"step": 1, "seconds": 120.0}) is None
    warning = window.check({"step": 2, "seconds": 700.0})
    assert warning is not None and warning["event"] == "warning" and warning["step"] == 2
    assert "570 s" in warning["message"]
    assert "terminationGracePeriodSeconds" in warning["message"]
    assert window.check({"step": 3, "seconds": 900.0}) is None  # once
    monkeypatch.delenv("SCOREOPS_SHUTDOWN_TIMEOUT")
    assert StopWindow.from_env().check({"step": 1, "seconds": 1e9}) is None  # no window known


# === the cluster contract: each upstream rule, its source, and our objects held to it =========
#
# A bare kube-apiserver validates schemas; what KServe, Knative and the training operator then
# do with the objects is only in their source. Each rule below names the file it was read from
# (at the commit given) and a check that runs over every example manifest, the golden inputs,
# and the operator configured by the chart's default values (rendered by the real helm).
# "checked against upstream source" means the rule was read in that file at that commit.


@dataclass(frozen=True)
class Rule:
    """One thing a controller does with our objects."""

    rule: str
    repo: str
    files: tuple[str, ...]
    version: str


KSERVE = ("kserve/kserve", "aaac4e294dae2c7b1aa1886447793f3aa1c30912 (master after v0.20.0, "
          "Aug 2026; v0.20.0 identical for these rules)")
KNATIVE = ("knative/serving", "98e5ef90aa7033797aa0a61ef97f3ff7e49a3944 (knative-v1.23.0+5)")
TRAINING = ("kubeflow/training-operator", "v1.9.0 (6f74c7f6b2ed6c27aabd82d0a316b23f0646059c)")

RULES: dict[str, Rule] = {
    "kserve-default-mode": Rule(
        "KServe's shipped inferenceservice-config and Helm chart default to Serverless "
        "(Knative); an InferenceService picks its own mode with the annotation "
        "serving.kserve.io/deploymentMode (RawDeployment is read as Standard, Serverless as "
        "Knative).", KSERVE[0],
        ("config/configmap/inferenceservice.yaml", "charts/kserve-resources/values.yaml",
         "pkg/constants/constants.go", "pkg/controller/v1beta1/inferenceservice/utils/utils.go"),
        KSERVE[1]),
    "knative-podspec": Rule(
        "Knative refuses ('must not set the field(s)') a pod spec with affinity, nodeSelector, "
        "tolerations, runtimeClassName, securityContext, priorityClassName, schedulerName, "
        "hostIPC/PID/Network, initContainers, ... unless the config-features flag "
        "kubernetes.podspec-<field> is enabled; all are disabled by default, emptyDir enabled.",
        KNATIVE[0], ("pkg/apis/serving/fieldmask.go", "pkg/apis/config/features.go",
                     "config/core/configmaps/features.yaml"), KNATIVE[1]),
    "transformer-args": Rule(
        "A custom transformer gets --model_name <isvc>, --predictor_host and --http_port "
        "appended unless an argument starts with that flag (utils.IncludesArg, a prefix "
        "match); its container gets the config's default resources where it sets none.",
        KSERVE[0], ("pkg/apis/serving/v1beta1/transformer_custom.go", "pkg/utils/collections.go"),
        KSERVE[1]),
    "runtime-image-tag": Rule(
        "UpdateImageTag: for a container with an nvidia.com/gpu (or nvidia.com/mig-*) limit "
        "whose runtime is huggingfaceserver - by the runtime's annotation "
        "serving.kserve.io/server-type, else by the name kserve-huggingfaceserver - KServe "
        "appends '-gpu' to the image tag (the CUDA build its publishing workflow tags "
        "<version>-gpu); otherwise the image runs as given, i.e. the CPU build.", KSERVE[0],
        ("pkg/controller/v1beta1/inferenceservice/utils/utils.go", "pkg/utils/utils.go",
         "pkg/constants/constants.go", ".github/workflows/huggingface-docker-publish.yml",
         "config/runtimes/kserve-huggingfaceserver.yaml"), KSERVE[1]),
    "runtime-resources": Rule(
        "MergeRuntimeContainers: the InferenceService's model container is merged over the "
        "runtime's (strategic merge), so a resource it leaves out is the runtime's: 1 CPU and "
        "2Gi in KServe's stock kserve-huggingfaceserver runtime.", KSERVE[0],
        ("pkg/controller/v1beta1/inferenceservice/utils/utils.go",
         "config/runtimes/kserve-huggingfaceserver.yaml",
         "pkg/apis/serving/v1beta1/inference_service_defaults.go"), KSERVE[1]),
    "storage-credentials": Rule(
        "The storage initializer takes S3 keys from the Secrets its ServiceAccount lists (each "
        "one with the key s3SecretAccessKeyName, AWS_SECRET_ACCESS_KEY in the shipped config; "
        "a later Secret's variables win) and the endpoint/region from that Secret's "
        "serving.kserve.io/s3-* annotations or keys (AWS_DEFAULT_REGION, S3_ENDPOINT), else "
        "from the config; a ServiceAccount's own s3-* annotations are read only next to "
        "eks.amazonaws.com/role-arn.", KSERVE[0],
        ("pkg/credentials/service_account_credentials.go", "pkg/credentials/s3/s3_secret.go",
         "pkg/credentials/s3/utils.go", "config/configmap/inferenceservice.yaml"), KSERVE[1]),
    "pet-env": Rule(
        "setPodEnv gives every container of a PyTorchJob pod PYTHONUNBUFFERED, MASTER_ADDR/"
        "PORT, WORLD_SIZE = replicas x nprocPerNode, RANK, PET_NODE_RANK, PET_NPROC_PER_NODE "
        "and PET_NNODES; the exit code and the port are read from the container named "
        "'pytorch'.", TRAINING[0],
        ("pkg/controller.v1/pytorch/envvar.go", "pkg/controller.v1/common/pod.go",
         "pkg/apis/kubeflow.org/v1/pytorch_types.go"), TRAINING[1]),
    "nproc-per-node": Rule(
        "spec.nprocPerNode is a string, defaulted to 'auto' and exported as "
        "PET_NPROC_PER_NODE.", TRAINING[0],
        ("pkg/apis/kubeflow.org/v1/pytorch_defaults.go", "pkg/controller.v1/pytorch/envvar.go"),
        TRAINING[1]),
    "restart-counting": Rule(
        "PastBackoffLimit: the job fails once the restartCounts of the containers of its "
        "Running pods (replicas under OnFailure/Always/ExitCode) add up to backoffLimit (> 0 "
        "with a limit of 0); a failed or evicted pod is deleted and recreated with a count of "
        "0.", TRAINING[0], ("pkg/core/job.go", "pkg/controller.v1/common/pod.go"), TRAINING[1]),
}

# --- the controllers' behaviour, ported from the files above ---

KNATIVE_GATED = {  # PodSpecMask: field -> feature flag (pkg/apis/serving/fieldmask.go)
    "affinity": "kubernetes.podspec-affinity",
    "topologySpreadConstraints": "kubernetes.podspec-topologyspreadconstraints",
    "hostAliases": "kubernetes.podspec-hostaliases",
    "nodeSelector": "kubernetes.podspec-nodeselector",
    "runtimeClassName": "kubernetes.podspec-runtimeclassname",
    "tolerations": "kubernetes.podspec-tolerations",
    "securityContext": "kubernetes.podspec-securitycontext",
    "shareProcessNamespace": "kubernetes.podspec-shareprocessnamespace",
    "priorityClassName": "kubernetes.podspec-priorityclassname",
    "schedulerName": "kubernetes.podspec-schedulername",
    "initContainers": "kubernetes.podspec-init-containers",
    "dnsPolicy": "kubernetes.podspec-dnspolicy",
    "dnsConfig": "kubernetes.podspec-dnsconfig",
    "hostIPC": "kubernetes.podspec-hostipc",
    "hostPID": "kubernetes.podspec-hostpid",
    "hostNetwork": "kubernetes.podspec-hostnetwork",
}


def kserve_mode(isvc: dict[str, Any]) -> str:
    """GetDeploymentMode: the annotation, else the shipped default (Serverless = Knative)."""
    mode = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")
    mode = {"RawDeployment": "Standard", "Serverless": "Knative"}.get(mode or "", mode)
    return mode if mode in ("Standard", "Knative", "ModelMesh") else "Knative"


def knative_refused(pod: dict[str, Any], enabled: set[str]) -> list[str]:
    """The fields of ``pod`` Knative's webhook refuses with the feature flags ``enabled``."""
    return sorted(f for f, flag in KNATIVE_GATED.items() if pod.get(f) and flag not in enabled)


def merge_pod_spec(runtime: dict[str, Any] | None, component: dict[str, Any]) -> dict[str, Any]:
    """MergePodSpec: the runtime's placement fields under the component's own."""
    spec = {k: v for k, v in (runtime or {}).items()
            if k in ("nodeSelector", "affinity", "tolerations", "volumes", "imagePullSecrets",
                     "schedulerName")}
    spec.update({k: v for k, v in component.items() if k not in ("model", "containers")})
    return spec


def merge_resources(runtime: dict[str, Any], isvc: dict[str, Any]) -> dict[str, Any]:
    """MergeRuntimeContainers on resources: the isvc's keys over the runtime's, per map."""
    return {part: {**runtime.get(part, {}), **isvc.get(part, {})}
            for part in ("requests", "limits") if runtime.get(part) or isvc.get(part)}


def update_image_tag(image: str, limits: dict[str, Any], runtime_name: str,
                     annotations: dict[str, str]) -> str:
    """UpdateImageTag without a runtimeVersion (we set none)."""
    server = annotations.get("serving.kserve.io/server-type") or {
        "kserve-huggingfaceserver": "huggingfaceserver"}.get(runtime_name, "")
    if not server or "@sha256:" in image or ":" not in image.rsplit("/", 1)[-1]:
        return image
    gpu = "nvidia.com/gpu" in limits or any(k.startswith("nvidia.com/mig-") for k in limits)
    if gpu and server in ("tensorflow", "torchserve", "huggingfaceserver") \
            and not image.endswith("-gpu"):
        return image + "-gpu"
    return image


def storage_initializer_env(account: dict[str, Any], secrets: dict[str, dict[str, Any]],
                            key_name: str = "AWS_SECRET_ACCESS_KEY") -> dict[str, Any]:
    """CreateSecretVolumeAndEnvFromServiceAccount for S3: the variables the storage
    initializer gets (``secrets``: name -> Secret as the cluster holds it)."""
    env: dict[str, Any] = {}
    annotations = account["metadata"].get("annotations") or {}
    if "eks.amazonaws.com/role-arn" in annotations:
        env["S3_ENDPOINT"] = annotations.get("serving.kserve.io/s3-endpoint")
    for ref in account.get("secrets", []):
        secret = secrets[ref["name"]]
        if key_name in secret["data"]:
            env["AWS_ACCESS_KEY_ID"] = (ref["name"], "AWS_ACCESS_KEY_ID")
            env["AWS_SECRET_ACCESS_KEY"] = (ref["name"], key_name)
            if "serving.kserve.io/s3-endpoint" in (secret.get("annotations") or {}):
                env["S3_ENDPOINT"] = secret["annotations"]["serving.kserve.io/s3-endpoint"]
    return env


def past_backoff_limit(limit: int, restarts: list[int]) -> bool:
    """PastBackoffLimit over the restart counts of the running pods."""
    total = sum(restarts)
    return total > 0 if limit == 0 else total >= limit


# --- the inputs: every example and golden input, under each platform configuration ---

ALL_INPUTS = sorted([*GOLDEN_INPUTS.glob("*.yaml"), *EXAMPLES.glob("*.yaml")])


def _examples_by_name() -> dict[str, Any]:
    return {r.metadata.name: r for r in (load_resource(p) for p in ALL_INPUTS)
            if isinstance(r, ScoreRun)}


def contract_children(path: Path, config: OperatorConfig) -> tuple[Any, list[dict[str, Any]]]:
    """The children the operator makes for ``path``, a referenced ScoreRun resolved from the
    examples (its weights, and the Secret it wrote them with) as the reconciler resolves it."""
    resource = load_resource(path)
    runs = _examples_by_name()
    uris = {r: f"s3://runs/{r}/final" for r in referenced_runs(resource)}
    secrets = {r: runs[r].spec.output.credentials_secret for r in referenced_runs(resource)
               if r in runs and runs[r].spec.output.credentials_secret}
    return resource, build_children(resource, config, "team", uris, secrets)


@pytest.fixture(scope="module")
def chart_default() -> tuple[OperatorConfig, dict[str, Any]]:
    """The operator's settings and the ServingRuntime as the chart renders them with its
    default values (the ServingRuntime switched on: it is off by default)."""
    proc = subprocess.run([str(ROOT / "hack" / "tools.sh")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    helm = Path(proc.stdout.strip().splitlines()[-1]) / "helm"
    out = subprocess.run([str(helm), "template", "scoreops", str(ROOT / "charts" / "scoreops"),
                          "--namespace", "team", "--set", "servingRuntime.enabled=true"],
                         capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    env = {e["name"]: e.get("value", "")
           for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    runtime = next(o for o in objs if o["kind"] == "ServingRuntime")
    return OperatorConfig.from_env(env), runtime


STOCK_RUNTIME = {  # config/runtimes/kserve-huggingfaceserver.yaml (a ClusterServingRuntime)
    "metadata": {"name": "kserve-huggingfaceserver",
                 "annotations": {"serving.kserve.io/server-type": "huggingfaceserver"}},
    "spec": {"containers": [{"name": "kserve-container", "image": "kserve/huggingfaceserver:v0.21.0",
                             "resources": {"requests": {"cpu": "1", "memory": "2Gi"},
                                           "limits": {"cpu": "1", "memory": "2Gi"}}}]},
}


def _configs(chart: OperatorConfig) -> list[OperatorConfig]:
    return [chart, PLATFORM, BARE]


CONFIG_IDS = ["chart-defaults", "platform", "bare"]


@pytest.mark.parametrize("which", range(3), ids=CONFIG_IDS)
@pytest.mark.parametrize("path", ALL_INPUTS, ids=[p.name for p in ALL_INPUTS])
def test_every_child_meets_the_cluster_contract(path: Path, which: int,
                                               chart_default: tuple[OperatorConfig,
                                                                    dict[str, Any]]) -> None:
    chart_config, chart_runtime = chart_default
    config = _configs(chart_config)[which]
    resource, children = contract_children(path, config)
    for child in children:
        if child["kind"] == "InferenceService":
            _inference_service_contract(resource, child, children, config, chart_runtime)
        if child["kind"] == "PyTorchJob":
            _pytorchjob_contract(resource, child, config)
        _pull_contract(child, config)


def _pods_of(child: dict[str, Any]) -> list[dict[str, Any]]:
    if child["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in child["spec"]["pytorchReplicaSpecs"].values()]
    if child["kind"] == "Job":
        return [child["spec"]["template"]["spec"]]
    if child["kind"] == "InferenceService":
        return [child["spec"]["predictor"], child["spec"]["transformer"]]
    return []


def _pull_contract(child: dict[str, Any], config: OperatorConfig) -> None:
    """Every pod the operator creates pulls with the platform's secrets and policy."""
    for pod in _pods_of(child):
        assert pod.get("imagePullSecrets", []) == [{"name": s} for s in config.pull_secrets]
        for c in pod.get("containers", []):
            assert c["imagePullPolicy"] == config.pull_policy


def _inference_service_contract(service: Any, isvc: dict[str, Any],
                                children: list[dict[str, Any]], config: OperatorConfig,
                                chart_runtime: dict[str, Any]) -> None:
    spec = isvc["spec"]
    # kserve-default-mode + knative-podspec: in Knative mode every gated field needs its flag
    mode = kserve_mode(isvc)
    enabled = {"kubernetes.podspec-tolerations", "kubernetes.podspec-nodeselector",
               "kubernetes.podspec-affinity"} if config.knative_podspec_flags else set()
    for runtime in (chart_runtime["spec"], STOCK_RUNTIME["spec"]):
        for component in (spec["predictor"], spec["transformer"]):
            refused = knative_refused(merge_pod_spec(
                runtime if component is spec["predictor"] else None, component), enabled)
            if mode == "Knative":
                assert refused == [], f"Knative refuses {refused} ({RULES['knative-podspec']})"
    # runtime-image-tag: a GPU predictor runs the CUDA build of whichever runtime serves it
    model = spec["predictor"]["model"]
    for rt in (chart_runtime, STOCK_RUNTIME):
        container = rt["spec"]["containers"][0]
        limits = merge_resources(container.get("resources", {}),
                                 model.get("resources", {})).get("limits", {})
        image = update_image_tag(container["image"], limits, rt["metadata"]["name"],
                                 rt["metadata"].get("annotations") or {})
        wants_gpu = service.spec.resources.gpus > 0 and \
            service.spec.resources.gpu_resource_name == "nvidia.com/gpu"
        assert image.endswith("-gpu") == wants_gpu, (rt["metadata"]["name"], image)
        # runtime-resources: CPU and memory are the service's or the operator's, never the
        # runtime's defaults
        merged = merge_resources(container.get("resources", {}), model["resources"])
        for part in ("requests", "limits"):
            for key in ("cpu", "memory"):
                assert merged[part][key] == model["resources"][part][key], (part, key)
    # transformer-args: KServe's appended arguments do not change what the server runs
    (container,) = spec["transformer"]["containers"]
    args = kserve_transformer_args(container["args"], isvc["metadata"]["name"])
    assert args[:len(container["args"])] == container["args"]
    assert {"requests", "limits"} <= set(container["resources"])  # no webhook defaults
    # storage-credentials: the initializer reads the weights with the Secret they were written
    # with; the operator's ServiceAccount carries no annotation KServe would ignore
    accounts = [c for c in children if c["kind"] == "ServiceAccount"]
    ref = service.spec.model.score_run
    runs = _examples_by_name()
    own = runs[ref].spec.output.credentials_secret if ref in runs else None
    want = own or config.s3_secret
    if service.spec.service_account_name:
        assert accounts == []
        return
    if want is None:
        assert accounts == [] and "serviceAccountName" not in spec["predictor"]
        return
    (account,) = accounts
    assert spec["predictor"]["serviceAccountName"] == account["metadata"]["name"]
    assert not (account["metadata"].get("annotations") or {}), RULES["storage-credentials"].rule
    cluster = {name: {"data": {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}}
               for name in {want, "platform-s3", "s3-credentials"}}
    env = storage_initializer_env(account, cluster)
    assert env["AWS_SECRET_ACCESS_KEY"] == (want, "AWS_SECRET_ACCESS_KEY")


def _pytorchjob_contract(resource: Any, job: dict[str, Any], config: OperatorConfig) -> None:
    spec = job["spec"]
    # nproc-per-node: a number as a string, never left to the 'auto' default
    assert isinstance(spec.get("nprocPerNode"), str) and spec["nprocPerNode"].isdigit()
    replicas = spec["pytorchReplicaSpecs"]
    for replica in replicas.values():
        # pet-env: every container gets the rendezvous variables; one container, "pytorch"
        assert [c["name"] for c in replica["template"]["spec"]["containers"]] == ["pytorch"]
    if not isinstance(resource, ScoreRun):
        return
    # restart-counting: one eviction restarts every other pod in place (one count each; the
    # evicted pod is recreated with none); the run survives as many as resources.backoffLimit
    pods = sum(r["replicas"] for r in replicas.values())
    limit = spec["runPolicy"]["backoffLimit"]
    incidents = resource.spec.resources.backoff_limit
    if incidents >= 1:
        after = [incidents] * (pods - 1) + [0]
        assert not past_backoff_limit(limit, after), (
            f"{pods} pods, backoffLimit {limit}: {incidents} evictions fail the run "
            f"({RULES['restart-counting'].rule})")
    # and a crash of every pod as often counts as it would for one pod
    assert past_backoff_limit(limit, [max(incidents, 1)] * pods) or incidents == 0


def test_every_rule_names_its_upstream_source() -> None:
    for name, rule in RULES.items():
        assert rule.repo.count("/") == 1 and rule.files and rule.version, name
        assert re.search(r"[0-9a-f]{40}", rule.version), f"{name}: pin the commit"


# --- row by row: what the old objects did on a real cluster ---


def test_gpu_predictors_are_not_refused_by_knatives_default_flags() -> None:
    """Row 1: the operator's GPU toleration reaches the predictor; KServe's shipped default is
    Serverless, so the InferenceService must name RawDeployment, or Knative's flags be on."""
    service = load_resource(EXAMPLES / "correctorservice.yaml")
    isvc = build_children(service, OperatorConfig(gpu_tolerations=(
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)), "team",
        {"openo1-llama8b-score": "s3://runs/x/final"})[-1]
    assert "tolerations" in isvc["spec"]["predictor"]
    assert kserve_mode(isvc) == "Standard"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    serverless = OperatorConfig(kserve_deployment_mode="Serverless", knative_podspec_flags=True)
    assert kserve_mode(contract_children(EXAMPLES / "correctorservice.yaml",
                                         serverless)[1][-1]) == "Knative"


@pytest.mark.parametrize(("env", "message"), [
    ({"SCOREOPS_KSERVE_DEPLOYMENT_MODE": "Serverless"}, "kubernetes.podspec-tolerations"),
    ({"SCOREOPS_KSERVE_DEPLOYMENT_MODE": "Standby"}, "is not RawDeployment or Serverless"),
])
def test_serverless_needs_the_knative_flags(env: dict[str, str], message: str) -> None:
    from scoreops.k8s.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        OperatorConfig.from_env(env)
    ok = OperatorConfig.from_env({"SCOREOPS_KSERVE_DEPLOYMENT_MODE": "Knative",
                                  "SCOREOPS_KNATIVE_PODSPEC_FLAGS": "true"})
    assert ok.kserve_deployment_mode == "Serverless" and ok.knative_podspec_flags


def test_the_chart_runtime_gets_kserves_gpu_build(
        chart_default: tuple[OperatorConfig, dict[str, Any]]) -> None:
    """Row 2: the chart's ServingRuntime names the CPU tag; KServe turns it into the -gpu
    build for a GPU predictor only through the server-type annotation."""
    _, runtime = chart_default
    container = runtime["spec"]["containers"][0]
    assert container["image"] == "kserve/huggingfaceserver:v0.21.0"
    annotations = runtime["metadata"].get("annotations") or {}
    gpu = update_image_tag(container["image"], {"nvidia.com/gpu": "1"},
                           runtime["metadata"]["name"], annotations)
    assert gpu == "kserve/huggingfaceserver:v0.21.0-gpu"
    assert update_image_tag(container["image"], {"cpu": "4"}, runtime["metadata"]["name"],
                            annotations) == container["image"]


def test_pull_secrets_and_policy_reach_every_pod_the_operator_makes() -> None:
    """Row 3: the chart's images.pullSecrets / pullPolicy, read by the operator."""
    config = OperatorConfig.from_env({"SCOREOPS_IMAGE_PULL_SECRETS": '["regcred", "mirror"]',
                                      "SCOREOPS_IMAGE_PULL_POLICY": "Always"})
    assert config.pull_secrets == ("regcred", "mirror") and config.pull_policy == "Always"
    pods = 0
    for path in ALL_INPUTS:
        for child in contract_children(path, config)[1]:
            _pull_contract(child, config)
            pods += len(_pods_of(child))
    assert pods >= len(ALL_INPUTS)
    from scoreops.k8s.config import ConfigError

    with pytest.raises(ConfigError, match="SCOREOPS_IMAGE_PULL_POLICY"):
        OperatorConfig.from_env({"SCOREOPS_IMAGE_PULL_POLICY": "always"})
    with pytest.raises(ConfigError, match="SCOREOPS_IMAGE_PULL_SECRETS"):
        OperatorConfig.from_env({"SCOREOPS_IMAGE_PULL_SECRETS": '[{"name": "regcred"}]'})


@pytest.mark.parametrize(("workers", "incidents"), [(2, 3), (4, 3), (4, 1), (8, 5), (1, 3)])
def test_evictions_cost_one_incident_whatever_the_pod_count(workers: int, incidents: int) -> None:
    """Row 4: ``incidents`` evictions of a ``workers``-pod run, as PastBackoffLimit counts
    them, leave it running; one more crash of every pod than that ends it."""
    doc = yaml.safe_load((GOLDEN_INPUTS / "scorerun-gpu.yaml").read_text())
    doc["spec"]["resources"]["workers"] = workers
    doc["spec"]["resources"]["backoffLimit"] = incidents
    (_, job) = build_children(parse_resource(doc), PLATFORM)
    limit = job["spec"]["runPolicy"]["backoffLimit"]
    survivors = [incidents] * (workers - 1) + [0]  # the evicted pod is a new pod each time
    assert not past_backoff_limit(limit, survivors)
    assert past_backoff_limit(limit, [incidents] * workers)  # crashes: as for one pod


def test_a_predictor_without_cpu_and_memory_is_not_left_to_the_runtime() -> None:
    """Row 5: KServe's stock runtime gives 1 CPU / 2Gi to what the InferenceService leaves
    out; vLLM loading a 7-8B model needs far more host memory."""
    doc = yaml.safe_load((EXAMPLES / "correctorservice.yaml").read_text())
    for key in ("cpu", "memory"):
        doc["spec"]["resources"].pop(key)
    doc["spec"]["resources"]["gpus"] = 2
    children = build_children(parse_resource(doc), BARE, "team", {
        doc["spec"]["model"]["scoreRun"]: "s3://runs/x/final"})
    model = children[-1]["spec"]["predictor"]["model"]
    merged = merge_resources(STOCK_RUNTIME["spec"]["containers"][0]["resources"],
                             model["resources"])
    assert merged["limits"]["memory"] == merged["requests"]["memory"] == "64Gi"
    assert merged["limits"]["cpu"] == "8" and merged["limits"]["nvidia.com/gpu"] == "2"


def test_the_transformer_runs_without_torch(tmp_path: Path) -> None:
    """Row 6: the transformer's code path - arguments as KServe completes them, the server's
    validation, loading the corrector against an OpenAI-compatible predictor, registering
    the routes - imports no torch, transformers or vLLM (which its image does not carry)."""
    pytest.importorskip("kserve")
    script = tmp_path / "probe.py"
    script.write_text(_TRANSFORMER_PROBE)
    out = subprocess.run([sys.executable, str(script), str(EXAMPLES / "correctorservice.yaml")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "python")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "loaded openai []"


_TRANSFORMER_PROBE = '''
import importlib.abc, json, os, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer

HEAVY = ("torch", "transformers", "vllm", "deepspeed", "accelerate")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(name + " is not in the transformer image")
        return None

sys.meta_path.insert(0, Block())

class Predictor(BaseHTTPRequestHandler):  # an OpenAI-compatible predictor's model list
    def do_GET(self):
        body = json.dumps({"data": [{"id": "m"}]}).encode()
        self.send_response(200 if self.path.endswith("/v1/models") else 404)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", 0), Predictor)
threading.Thread(target=server.serve_forever, daemon=True).start()

from scoreops.api import load_resource
from scoreops.k8s.builders import build_children
from scoreops.k8s.config import OperatorConfig

res = load_resource(sys.argv[1])
runs = [res.spec.model.score_run] if res.spec.model.score_run else []
isvc = build_children(res, OperatorConfig(), "team", {r: "s3://x/final" for r in runs})[-1]
(c,) = isvc["spec"]["transformer"]["containers"]
for e in c["env"]:
    if "value" in e:
        os.environ[e["name"]] = e["value"]
args = [("--predictor-url=http://127.0.0.1:%d" % server.server_port)
        if a.startswith("--predictor-url") else a for a in c["args"]]
if "--predictor-url" in args:
    args[args.index("--predictor-url") + 1] = "http://127.0.0.1:%d" % server.server_port
args += ["--predictor_host", "x-predictor.team", "--http_port", "8080"]
from scoreops.serving.cli import build_entrypoint_parser, config_from_args
ns, rest = build_entrypoint_parser().parse_known_args(args)
config = config_from_args(ns)
from scoreops.serving.model import CorrectorModel
model = CorrectorModel(config)
model.load()
from kserve import model_server
from scoreops.serving.openai_routes import register_openai_routes
register_openai_routes(model_server.app, model.corrector)
model.stop()
print("loaded", config.backend, sorted({k.split(".")[0] for k in sys.modules} & set(HEAVY)))
'''


def test_the_predictor_reads_weights_with_the_runs_own_secret() -> None:
    """Row 7: weights a ScoreRun wrote with its own credentialsSecret are downloaded with that
    Secret, not the platform's; without one, the platform's."""
    service, children = contract_children(EXAMPLES / "correctorservice.yaml", PLATFORM)
    assert service.spec.model.score_run == "openo1-llama8b-score"
    account = children[0]
    assert account["kind"] == "ServiceAccount"
    assert account["secrets"] == [{"name": "s3-credentials"}]  # the run's output Secret
    uris = {"openo1-llama8b-score": "s3://runs/x/final"}
    (account, _) = build_children(service, PLATFORM, "team", uris)
    assert account["secrets"] == [{"name": "platform-s3"}]
    (account, isvc) = build_children(service, BARE, "team", uris,
                                     {"openo1-llama8b-score": "team-s3"})
    assert account["secrets"] == [{"name": "team-s3"}]
    assert isvc["spec"]["predictor"]["serviceAccountName"] == account["metadata"]["name"]


def test_the_reconciler_resolves_the_secret_a_run_wrote_with() -> None:
    """Row 7, the operator's side: the reconciler reads the referenced run's Secret."""
    import asyncio

    from scoreops.k8s.reconcile import Reconciler

    run = {"spec": {"output": {"uri": "s3://runs/r", "credentialsSecret": "team-s3"}},
           "status": {"phase": "Succeeded"}}

    class Client:
        async def get(self, *_args: Any) -> dict[str, Any]:
            return run

    service = load_resource(EXAMPLES / "correctorservice.yaml")
    uris, secrets, waiting = asyncio.run(
        Reconciler(Client(), BARE)._resolve(service))  # type: ignore[arg-type]
    assert (uris, secrets, waiting) == ({"openo1-llama8b-score": "s3://runs/r/final"},
                                        {"openo1-llama8b-score": "team-s3"}, "")


def test_the_docs_say_what_the_upstream_sources_say() -> None:
    """Row 8: the region variable KServe and boto3 read, who gets PET_*, the key names."""
    guide = (ROOT / "docs" / "cluster.md").read_text()
    values = (ROOT / "charts" / "scoreops" / "values.yaml").read_text()
    for text in (guide, values):
        assert not re.search(r"\bAWS_REGION\b", text)
    assert "only container the training operator wires up" not in guide
    assert "awsSecretAccessKey=" not in guide  # KServe's shipped config reads AWS_* names
    assert "AWS_DEFAULT_REGION" in values and "AWS_DEFAULT_REGION" in guide


def test_a_reward_model_needs_an_image_with_torch() -> None:
    """Row 6's consequence: the default transformer image has no torch, so a strategy that
    loads a reward model in the transformer is refused unless the service names its image."""
    from scoreops.k8s.kinds import spec_of

    doc = yaml.safe_load((EXAMPLES / "correctorservice.yaml").read_text())
    doc["spec"]["strategy"] = {"name": "best-of-n", "samples": 4, "verifier": "reward-model",
                               "rewardModel": "s3://models/prm"}
    service = parse_resource(doc)
    errors = spec_of(service).cluster_errors(service)
    assert [e.field for e in errors] == ["spec.strategy.rewardModel"]
    assert "spec.resources.image" in errors[0].message
    doc["spec"]["resources"]["image"] = "registry.example.com/ml/server-full:1.2.3"
    service = parse_resource(doc)
    assert spec_of(service).cluster_errors(service) == []


def test_the_reconciler_gives_every_child_pod_the_pull_secrets() -> None:
    """Row 3 through the operator's own reconcile path (no API server: a recording client):
    every example reconciled with the chart's private-registry settings applies children
    whose every pod pulls with them; referenced runs resolve with the Secret they wrote with."""
    import asyncio

    from scoreops.k8s.reconcile import Reconciler

    config = OperatorConfig.from_env({"SCOREOPS_IMAGE_REGISTRY": "registry.example.com/ml",
                                      "SCOREOPS_IMAGE_PULL_SECRETS": '["regcred"]',
                                      "SCOREOPS_IMAGE_PULL_POLICY": "Always",
                                      "SCOREOPS_S3_SECRET": "platform-s3"})
    # the cluster examples (the *-tiny ones are for a laptop: builtin:// weights)
    docs = [yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))
            if "tiny" not in p.name]
    for doc in docs:
        doc["metadata"].update(namespace="team", uid=f"uid-{doc['metadata']['name']}",
                               generation=1, resourceVersion="1")
        if doc["kind"] == "ScoreRun":
            doc["status"] = {"phase": "Succeeded"}

    class Client:
        def __init__(self) -> None:
            self.applied: list[dict[str, Any]] = []

        async def get(self, _api: str, kind: str, _ns: str | None, name: str) -> Any:
            return next((d for d in docs if (d["kind"], d["metadata"]["name"]) == (kind, name)),
                        None)

        async def apply(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
            self.applied.append(obj)
            return obj

        async def merge_patch(self, *_args: Any, **_kw: Any) -> dict[str, Any]:
            return {}

    client = Client()
    for doc in docs:
        fresh = {**doc, "status": {}}
        outcome = asyncio.run(Reconciler(client, config).reconcile(fresh))  # type: ignore[arg-type]
        assert outcome.action == "applied", (doc["metadata"]["name"], outcome)
    pods = [pod for child in client.applied for pod in _pods_of(child)]
    assert len(pods) >= len(docs)
    for pod in pods:
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        for c in pod.get("containers", []):  # a predictor's container is KServe's runtime
            assert c["imagePullPolicy"] == "Always"
            assert c["image"].startswith("registry.example.com/ml/")
    accounts = {a["metadata"]["name"]: a["secrets"] for a in client.applied
                if a["kind"] == "ServiceAccount"}
    assert accounts["llama8b-corrector-storage"] == [{"name": "s3-credentials"}]
