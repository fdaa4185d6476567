"""Each built child against the contract of the controller that runs it, beyond its schema.

A child can validate against the upstream CRD and still break on a real cluster. These tests
hold the children to what the controllers do with them (sources read at the versions the
platform supports; docs/cluster.md cites them):

* Kubeflow training operator, release-1.9: only the container named ``pytorch`` gets the
  rendezvous variables (``PyTorchJobDefaultContainerName``); ``spec.nprocPerNode`` is a
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
import subprocess
import sys
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
    service, children = _service(path, PLATFORM)
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
    assert account["metadata"]["annotations"] == {
        "serving.kserve.io/s3-endpoint": "minio.storage.svc:9000",  # host[:port], no scheme
        "serving.kserve.io/s3-usehttps": "0",
        "serving.kserve.io/s3-region": "eu-west-1"}
    assert account["metadata"]["labels"]["scoreops.io/correctorservice"] == \
        service.metadata.name
    assert "data" not in account and "stringData" not in account


def test_no_platform_secret_no_service_account() -> None:
    _, children = _service(GOLDEN_INPUTS / "correctorservice-hf.yaml", BARE)
    assert [c["kind"] for c in children] == ["InferenceService"]
    assert "serviceAccountName" not in children[0]["spec"]["predictor"]


def test_https_endpoint_annotations() -> None:
    config = OperatorConfig(s3_secret="s", s3_endpoint="https://s3.example.com/")
    account, _ = _service(GOLDEN_INPUTS / "correctorservice-hf.yaml", config)[1]
    assert account["metadata"]["annotations"] == {
        "serving.kserve.io/s3-endpoint": "s3.example.com", "serving.kserve.io/s3-usehttps": "1"}


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
    args, unknown = build_entrypoint_parser().parse_known_args(cmd)
    assert unknown == []  # nothing left for KServe's parser to trip on
    config = config_from_args(args)  # raises on an invalid combination
    assert (config.backend, config.model_uri) == ("hf", "/mnt/models")
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
