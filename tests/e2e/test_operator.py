"""The operator, as a process, against a real kube-apiserver and a real S3 server.

Nothing runs pods here, so the tests play the training operator (patching PyTorchJob / Job /
InferenceService status) and the training run (writing progress.json and summary.json to the
S3 server); the operator under test is the real ``kopf run operator/main.py``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from scoreops.api import parse_resource
from scoreops.k8s.builders import build_pytorchjob, build_run_config_map
from scoreops.k8s.config import OperatorConfig
from scoreops.k8s.process import OperatorProcess
from testkit.cluster import LocalCluster, repo_root

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

pytestmark = pytest.mark.e2e

GROUP, VERSION = "scoreops.io", "v1alpha1"
SYNC = "0.5"  # seconds between status syncs in the operator under test
OPERATOR_ENV = {"SCOREOPS_SYNC_INTERVAL": SYNC, "SCOREOPS_IMAGE_TAG": "e2e",
                "SCOREOPS_S3_SECRET": "s3-credentials",
                # a private registry, as the chart passes images.pullSecrets / pullPolicy
                "SCOREOPS_IMAGE_PULL_SECRETS": '["regcred"]',
                "SCOREOPS_IMAGE_PULL_POLICY": "Always"}
T = TypeVar("T")


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crds(cluster: LocalCluster) -> None:
    """Our CRDs, as shipped in manifests/crds."""
    cluster.apply(repo_root() / "manifests" / "crds")


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A real S3 server; its env is set in this process too (the tests write progress)."""
    from scoreops import storage
    from testkit.s3 import S3Server

    with S3Server("rclone") as server, pytest.MonkeyPatch.context() as mp:
        for key, value in server.env().items():
            mp.setenv(key, value)
        storage.clear_client_cache()
        server.create_bucket("runs")
        server.create_bucket("evals")
        yield server.env()
    storage.clear_client_cache()


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, crds: None, s3: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    proc = OperatorProcess(cluster.kubeconfig, env={**s3, **OPERATOR_ENV}, log_path=log)
    proc.start()
    proc.wait_ready()
    try:
        yield proc
    finally:
        proc.stop()


# --- helpers ---------------------------------------------------------------------------------


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll ``check`` until it returns something truthy (a deadline, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.1)


class Kube:
    """The few calls the tests make, on the admin's ApiClient."""

    def __init__(self, api: ApiClient, namespace: str) -> None:
        from kubernetes import client

        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.events = client.CoreV1Api(api)

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        plural = doc["kind"].lower() + "s"
        return dict(self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, plural,
                                                                doc))

    def get(self, plural: str, name: str, group: str = GROUP,
            version: str = VERSION) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(self.custom.get_namespaced_custom_object(group, version, self.ns, plural,
                                                                 name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch(self, plural: str, name: str, body: dict[str, Any], *, status: bool = False,
              group: str = GROUP, version: str = VERSION) -> None:
        call = (self.custom.patch_namespaced_custom_object_status if status
                else self.custom.patch_namespaced_custom_object)
        call(group, version, self.ns, plural, name, body,
             _content_type="application/merge-patch+json")

    def job(self, name: str) -> dict[str, Any] | None:
        return self.get("pytorchjobs", name, "kubeflow.org", "v1")

    def set_job(self, name: str, *types: str) -> None:
        """Play the training operator: the PyTorchJob's conditions (True, in order)."""
        conds = [{"type": t, "status": "True", "reason": f"PyTorchJob{t}",
                  "message": f"PyTorchJob {name} is {t.lower()}",
                  "lastTransitionTime": "2026-01-01T00:00:00Z"} for t in types]
        self.patch("pytorchjobs", name, {"status": {"conditions": conds}}, status=True,
                   group="kubeflow.org", version="v1")

    def status(self, plural: str, name: str) -> dict[str, Any]:
        return dict((self.get(plural, name) or {}).get("status") or {})

    def config_map(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.core.read_namespaced_config_map(name, self.ns).to_dict()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def scorerun(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"uri": "s3://models/llama-8b"},
        "dataset": {"train": {"uri": "s3://data/math/train.jsonl"}},
        "algorithm": {"name": "score", "score": {"stage1Steps": 6, "stage2Steps": 12}},
        "rollout": {"engine": "vllm"},
        "resources": {"workers": 2, "gpusPerWorker": 4},
        "output": {"uri": f"s3://runs/{namespace}/{name}"},
    }
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ScoreRun",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def write_progress(namespace: str, run: str, step: int, **fields: Any) -> None:
    from scoreops import storage

    doc = {"phase": "Running", "stage": "stage1" if step <= 6 else "stage2", "step": step,
           "total_steps": 18, "reward_t1": 0.25, "reward_t2": 0.5, "acc_t1": None,
           "acc_t2": None, "last_checkpoint": None, "updated": "2026-01-01T00:00:00Z",
           "message": "", "versions": {"scoreops": "0.1.0"}, **fields}
    storage.write_json(f"s3://runs/{namespace}/{run}/progress.json", doc)


@pytest.fixture
def kube(kube_api: ApiClient, namespace: str) -> Kube:
    return Kube(kube_api, namespace)


# --- ScoreRun ----------------------------------------------------------------------------------


def test_scorerun_becomes_the_configmap_and_pytorchjob_the_builders_make(
        operator: OperatorProcess, kube: Kube) -> None:
    created = kube.create(scorerun("llama", kube.ns))
    job = wait_for(lambda: kube.job("llama-train"), "the PyTorchJob")
    cm = wait_for(lambda: kube.config_map("llama-spec"), "the ConfigMap")

    run = parse_resource({**created, "metadata": {
        "name": "llama", "namespace": kube.ns, "uid": created["metadata"]["uid"]}})
    config = OperatorConfig.from_env(OPERATOR_ENV)
    expected = build_pytorchjob(run, config)
    assert job["spec"] == expected["spec"]
    for key in ("labels", "annotations", "ownerReferences"):
        assert job["metadata"][key] == expected["metadata"][key], key
    assert job["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert cm["data"] == build_run_config_map(run, config)["data"]
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert master["image"] == "ghcr.io/scoreops/trainer:e2e"
    assert {e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
            for e in master["env"]}["AWS_ACCESS_KEY_ID"] == "s3-credentials"

    status = wait_for(lambda: (s := kube.status("scoreruns", "llama")).get("phase") and s,
                      "a status")
    assert status["phase"] == "Pending"
    assert status["jobName"] == "llama-train"
    assert status["observedGeneration"] == 1
    assert condition(status, "Created")["status"] == "True"
    assert "kopf" not in status and "scorerun-create" not in status  # no handler results


def test_status_follows_the_job_and_the_progress_file(
        operator: OperatorProcess, kube: Kube, cluster: LocalCluster) -> None:
    kube.create(scorerun("follow", kube.ns))
    wait_for(lambda: kube.job("follow-train"), "the PyTorchJob")
    write_progress(kube.ns, "follow", 3)
    kube.set_job("follow-train", "Created", "Running")
    status = wait_for(lambda: (s := kube.status("scoreruns", "follow")).get("step") == 3 and s,
                      "step 3 in status")
    assert status["phase"] == "Running"
    assert (status["stage"], status["rewardT2"], status["totalSteps"]) == ("stage1", 0.5, 18)
    assert condition(status, "Running")["reason"] == "PyTorchJobRunning"

    checkpoint = f"s3://runs/{kube.ns}/follow/checkpoints/step-000012"
    write_progress(kube.ns, "follow", 12, acc_t1=0.5, acc_t2=0.625, last_checkpoint=checkpoint)
    status = wait_for(lambda: (s := kube.status("scoreruns", "follow")).get("step") == 12 and s,
                      "step 12 in status")
    assert (status["stage"], status["accT2"], status["lastCheckpoint"]) == \
        ("stage2", 0.625, checkpoint)

    write_progress(kube.ns, "follow", 18, acc_t1=0.5, acc_t2=0.75, phase="Succeeded",
                   last_checkpoint=checkpoint.replace("12", "18"))
    kube.set_job("follow-train", "Created", "Succeeded")
    status = wait_for(lambda: (s := kube.status("scoreruns", "follow"))["phase"] == "Succeeded"
                      and s, "phase Succeeded")
    assert (status["step"], status["accT2"]) == (18, 0.75)
    assert status["resultsUri"] == f"s3://runs/{kube.ns}/follow"
    assert condition(status, "Succeeded")["status"] == "True"
    assert condition(status, "Running")["status"] == "False"

    row = cluster.kubectl("get", "scoreruns", "-n", kube.ns, "follow").stdout.splitlines()
    assert row[0].split()[:6] == ["NAME", "PHASE", "ALGORITHM", "STAGE", "STEP", "ACC@T2"]
    assert row[1].split()[:6] == ["follow", "Succeeded", "score", "stage2", "18", "0.75"]


def test_a_schema_violation_is_rejected_by_the_api_server(operator: OperatorProcess,
                                                         kube: Kube) -> None:
    from kubernetes.client.exceptions import ApiException

    bad = scorerun("bad", kube.ns, rollout={"engine": "vllm", "turns": 99})
    with pytest.raises(ApiException) as info:
        kube.create(bad)
    assert info.value.status == 422
    assert "spec.rollout.turns" in info.value.body
    bad = scorerun("bad", kube.ns, algorithm={"name": "ppo"})
    with pytest.raises(ApiException) as info:
        kube.create(bad)
    assert "spec.algorithm.name" in info.value.body


def test_a_cross_field_error_fails_the_run_until_it_is_fixed(operator: OperatorProcess,
                                                              kube: Kube) -> None:
    kube.create(scorerun("cpu", kube.ns, resources={"workers": 1, "gpusPerWorker": 0}))
    status = wait_for(lambda: (s := kube.status("scoreruns", "cpu")).get("phase") == "Failed"
                      and s, "phase Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "rollout.engine vllm needs resources.gpusPerWorker" in failed["message"]
    assert kube.job("cpu-train") is None
    events = kube.events.list_namespaced_event(kube.ns).items
    assert any(e.reason == "InvalidSpec" and e.involved_object.name == "cpu" for e in events)

    kube.patch("scoreruns", "cpu", {"spec": {"resources": {"gpusPerWorker": 1}}})
    wait_for(lambda: kube.job("cpu-train"), "the PyTorchJob after the fix")
    status = wait_for(lambda: (s := kube.status("scoreruns", "cpu")).get("phase") == "Pending"
                      and s, "phase Pending")
    assert condition(status, "Failed") == {}
    assert status["observedGeneration"] == 2


def test_a_spec_change_on_a_running_run_is_refused(operator: OperatorProcess,
                                                   kube: Kube) -> None:
    kube.create(scorerun("frozen", kube.ns))
    job = wait_for(lambda: kube.job("frozen-train"), "the PyTorchJob")
    kube.set_job("frozen-train", "Created", "Running")
    wait_for(lambda: kube.status("scoreruns", "frozen").get("phase") == "Running", "Running")
    cm_before = kube.config_map("frozen-spec")

    kube.patch("scoreruns", "frozen", {"spec": {"resources": {"gpusPerWorker": 8}}})
    status = wait_for(lambda: (s := kube.status("scoreruns", "frozen")).get(
        "observedGeneration") == 2 and s, "generation 2 observed")
    refused = condition(status, "SpecApplied")
    assert (refused["status"], refused["reason"]) == ("False", "SpecChangeRefused")
    assert "Running" in refused["message"]
    assert status["phase"] == "Running"
    after = kube.job("frozen-train")
    assert after is not None and after["spec"] == job["spec"]
    assert (kube.config_map("frozen-spec") or {})["data"] == (cm_before or {})["data"]

    kube.patch("scoreruns", "frozen", {"spec": {"resources": {"gpusPerWorker": 4}}})
    wait_for(lambda: condition(kube.status("scoreruns", "frozen"), "SpecApplied").get("status")
             == "True", "SpecApplied back to True")


def test_a_stalled_run_fails_and_releases_its_gpus(operator: OperatorProcess,
                                                   kube: Kube) -> None:
    kube.create(scorerun("stuck", kube.ns, stallTimeout="2s"))
    wait_for(lambda: kube.job("stuck-train"), "the PyTorchJob")
    write_progress(kube.ns, "stuck", 4)
    kube.set_job("stuck-train", "Created", "Running")
    wait_for(lambda: kube.status("scoreruns", "stuck").get("step") == 4, "step 4")
    status = wait_for(lambda: (s := kube.status("scoreruns", "stuck")).get("phase") == "Failed"
                      and s, "phase Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "Stalled"
    assert "step 4/18" in failed["message"]
    # the job is suspended (its GPUs released) by the same reconcile, which may land just
    # after the status the test saw
    wait_for(lambda: ((kube.job("stuck-train") or {}).get("spec", {}).get("runPolicy", {})
                      .get("suspend") is True), "the PyTorchJob suspended")


def test_a_restarted_operator_changes_nothing(operator: OperatorProcess, kube: Kube) -> None:
    kube.create(scorerun("steady", kube.ns))
    wait_for(lambda: kube.job("steady-train"), "the PyTorchJob")
    write_progress(kube.ns, "steady", 5)
    kube.set_job("steady-train", "Created", "Running")
    wait_for(lambda: kube.status("scoreruns", "steady").get("step") == 5, "step 5")

    def versions() -> dict[str, str]:
        return {
            "run": (kube.get("scoreruns", "steady") or {})["metadata"]["resourceVersion"],
            "job": (kube.job("steady-train") or {})["metadata"]["resourceVersion"],
            "cm": (kube.config_map("steady-spec") or {})["metadata"]["resource_version"],
        }

    before = versions()
    operator.restart()
    operator.wait_ready()
    # A run created after the restart is reconciled after the resumed ones were listed;
    # once it has its job and a few syncs passed, every resume and timer has had its turn.
    kube.create(scorerun("sentinel", kube.ns))
    wait_for(lambda: kube.status("scoreruns", "sentinel").get("phase") == "Pending", "sentinel")
    seen = kube.status("scoreruns", "steady")
    time.sleep(4 * float(SYNC))  # let a few status syncs run over the resumed runs
    assert versions() == before
    assert kube.status("scoreruns", "steady") == seen


def test_operator_killed_20_times_while_20_runs_arrive(operator: OperatorProcess,
                                                       kube: Kube) -> None:
    rng = random.Random(20)
    names = [f"k{i:02d}" for i in range(20)]
    errors: list[BaseException] = []

    def apply_all() -> None:
        try:
            for name in names:
                kube.create(scorerun(name, kube.ns))
                time.sleep(rng.uniform(0.0, 0.8))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    applier = threading.Thread(target=apply_all)
    operator.kill()
    applier.start()
    for _ in range(20):
        operator.start()
        time.sleep(rng.uniform(0.3, 2.0))  # anywhere from start-up to mid-reconcile
        operator.kill()
    applier.join()
    assert not errors, errors
    operator.start()
    operator.wait_ready()

    def all_created() -> bool:
        return all(condition(kube.status("scoreruns", n), "Created").get("status") == "True"
                   for n in names)

    wait_for(all_created, "every run to have its children", timeout=60)
    selector = "app.kubernetes.io/managed-by=scoreops"
    jobs = kube.custom.list_namespaced_custom_object("kubeflow.org", "v1", kube.ns,
                                                     "pytorchjobs")["items"]
    cms = kube.core.list_namespaced_config_map(kube.ns, label_selector=selector).items
    assert sorted(j["metadata"]["name"] for j in jobs) == [f"{n}-train" for n in names]
    assert sorted(c.metadata.name for c in cms) == [f"{n}-spec" for n in names]
    for name in names:
        run = kube.get("scoreruns", name) or {}
        job = next(j for j in jobs if j["metadata"]["labels"]["scoreops.io/run"] == name)
        assert job["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
        assert run["status"]["phase"] == "Pending"


def test_output_is_deleted_with_the_run_only_when_asked(operator: OperatorProcess,
                                                        kube: Kube) -> None:
    from scoreops import storage

    plain = scorerun("keep", kube.ns)
    kube.create(plain)
    asked = scorerun("drop", kube.ns)
    asked["metadata"]["annotations"] = {"scoreops.io/delete-output": "true"}
    kube.create(asked)
    wait_for(lambda: kube.job("keep-train") and kube.job("drop-train"), "both jobs")
    for name in ("keep", "drop"):
        write_progress(kube.ns, name, 1)
    wait_for(lambda: (kube.get("scoreruns", "drop") or {})["metadata"].get("finalizers"),
             "our finalizer on the run that asks for clean-up")
    assert (kube.get("scoreruns", "drop") or {})["metadata"]["finalizers"] == \
        ["scoreops.io/finalizer"]
    assert not (kube.get("scoreruns", "keep") or {})["metadata"].get("finalizers")

    for name in ("keep", "drop"):
        kube.custom.delete_namespaced_custom_object(GROUP, VERSION, kube.ns, "scoreruns", name)
    wait_for(lambda: kube.get("scoreruns", "drop") is None, "the run to go")
    assert not storage.exists(f"s3://runs/{kube.ns}/drop/progress.json")
    assert storage.exists(f"s3://runs/{kube.ns}/keep/progress.json")


# --- EvalSuite and CorrectorService ------------------------------------------------------------


def test_evalsuite_waits_for_its_scorerun_then_mirrors_the_summary(
        operator: OperatorProcess, kube: Kube) -> None:
    from scoreops import storage

    kube.create({
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EvalSuite",
        "metadata": {"name": "compare", "namespace": kube.ns},
        "spec": {
            "models": [{"name": "base", "uri": "s3://models/llama-8b"},
                       {"name": "trained", "scoreRun": "src"}],
            "benchmarks": [{"name": "gsm8k", "limit": 8}],
            "generation": {"engine": "vllm"},
            "resources": {"gpusPerWorker": 1},
            "output": {"uri": f"s3://evals/{kube.ns}/compare"},
        },
    })
    status = wait_for(lambda: (s := kube.status("evalsuites", "compare")).get("conditions")
                      and s, "a status")
    waiting = condition(status, "Created")
    assert (waiting["status"], waiting["reason"]) == ("False", "WaitingForModel")
    assert "ScoreRun src does not exist" in waiting["message"]

    kube.create(scorerun("src", kube.ns))
    wait_for(lambda: kube.job("src-train"), "the ScoreRun's job")
    final = f"s3://runs/{kube.ns}/src/final"
    write_progress(kube.ns, "src", 18, phase="Succeeded",
                   last_checkpoint=f"s3://runs/{kube.ns}/src/checkpoints/step-000018")
    kube.set_job("src-train", "Created", "Running", "Succeeded")
    wait_for(lambda: kube.status("scoreruns", "src").get("phase") == "Succeeded", "src done")

    job = wait_for(lambda: kube.job("compare-eval"), "the eval PyTorchJob", timeout=45)
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    suite = json.loads((kube.config_map("compare-eval-spec") or {})["data"]["suite.json"])
    assert suite["spec"]["models"][1] == {"name": "trained", "uri": final}

    storage.write_json(f"s3://evals/{kube.ns}/compare/summary.json", {
        "models": {"base": {"gsm8k": {"acc_t1": 0.5, "acc_t2": 0.625, "delta": 0.125,
                                      "delta_i2c": 0.125, "delta_c2i": 0.0, "n": 8}}},
        "report": f"s3://evals/{kube.ns}/compare/report.md"})
    kube.set_job("compare-eval", "Created", "Running", "Succeeded")
    status = wait_for(lambda: (s := kube.status("evalsuites", "compare")).get("phase")
                      == "Succeeded" and s, "the suite to succeed")
    assert status["summary"]["base"]["gsm8k"] == {"accT1": 0.5, "accT2": 0.625, "delta": 0.125,
                                                  "deltaIC": 0.125, "deltaCI": 0.0, "n": 8}
    assert status["resultsUri"] == f"s3://evals/{kube.ns}/compare/report.md"


def test_corrector_service_becomes_an_inference_service_with_a_url(
        operator: OperatorProcess, kube: Kube) -> None:
    kube.create({
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CorrectorService",
        "metadata": {"name": "corrector", "namespace": kube.ns},
        "spec": {"model": {"uri": "s3://runs/llama/final"}, "strategy": {"turns": 2},
                 "serviceAccountName": "s3-reader"},
    })
    isvc = wait_for(lambda: kube.get("inferenceservices", "corrector", "serving.kserve.io",
                                     "v1beta1"), "the InferenceService")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://runs/llama/final"
    url = f"http://corrector.{kube.ns}.example.com"
    kube.patch("inferenceservices", "corrector", {"status": {
        "url": url, "conditions": [{"type": "Ready", "status": "True",
                                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}},
        status=True, group="serving.kserve.io", version="v1beta1")
    status = wait_for(lambda: (s := kube.status("correctorservices", "corrector")).get("url")
                      and s, "the URL")
    assert (status["url"], status["phase"]) == (url, "Running")

    # a spec change rolls out (a CorrectorService is not frozen like a job)
    kube.patch("correctorservices", "corrector", {"spec": {"strategy": {"turns": 3}}})

    def turns() -> str | None:
        got = kube.get("inferenceservices", "corrector", "serving.kserve.io", "v1beta1") or {}
        args = got["spec"]["transformer"]["containers"][0]["args"]
        return args[args.index("--turns") + 1]

    wait_for(lambda: turns() == "3", "the new turns in the transformer")
    wait_for(lambda: kube.status("correctorservices", "corrector").get("observedGeneration") == 2,
             "generation 2 observed")


def test_corrector_service_without_an_account_gets_the_platforms_storage_account(
        operator: OperatorProcess, kube: Kube) -> None:
    """The operator applies a ServiceAccount listing the platform's S3 Secret, owned by the
    CorrectorService, and runs the predictor as it; the transformer answers under the
    served name."""
    kube.create({
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CorrectorService",
        "metadata": {"name": "plain", "namespace": kube.ns},
        "spec": {"model": {"uri": "s3://runs/llama/final", "servedName": "llama-fixed"}},
    })
    isvc = wait_for(lambda: kube.get("inferenceservices", "plain", "serving.kserve.io",
                                     "v1beta1"), "the InferenceService")
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "plain-storage"
    assert "--model_name=llama-fixed" in isvc["spec"]["transformer"]["containers"][0]["args"]
    account = kube.core.read_namespaced_service_account("plain-storage", kube.ns)
    assert [s.name for s in account.secrets] == ["s3-credentials"]
    assert account.automount_service_account_token is False
    owner = kube.get("correctorservices", "plain")
    assert owner is not None
    assert [(o.kind, o.name, o.uid) for o in account.metadata.owner_references] == [
        ("CorrectorService", "plain", owner["metadata"]["uid"])]



def _pod_specs(child: dict[str, Any]) -> list[dict[str, Any]]:
    spec = child["spec"]
    if child["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in spec["pytorchReplicaSpecs"].values()]
    if child["kind"] == "Job":
        return [spec["template"]["spec"]]
    return [spec["predictor"], spec["transformer"]]


def test_every_child_pod_pulls_from_the_private_registry(
        operator: OperatorProcess, kube: Kube) -> None:
    """With the chart's images.pullSecrets / pullPolicy in its environment, the operator puts
    them on every pod it creates: the trainers, the evaluator, the predictor and the
    transformer; and the predictor of a trained run's weights reads them with the Secret the
    run wrote them with."""
    from kubernetes import client

    kube.create(scorerun("pulls", kube.ns,
                         output={"uri": f"s3://runs/{kube.ns}/pulls",
                                 "credentialsSecret": "team-s3"}))
    kube.create({
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EvalSuite",
        "metadata": {"name": "pulls-endpoint", "namespace": kube.ns},
        "spec": {"models": [{"name": "svc", "endpoint": "http://corrector.team/openai/v1"}],
                 "benchmarks": [{"name": "gsm8k", "limit": 4}],
                 "output": {"uri": f"s3://evals/{kube.ns}/pulls"}},
    })
    job = wait_for(lambda: kube.job("pulls-train"), "the PyTorchJob")
    batch = client.BatchV1Api(kube.core.api_client)
    eval_job = wait_for(lambda: next(iter(batch.list_namespaced_job(
        kube.ns, field_selector="metadata.name=pulls-endpoint-eval").items), None),
        "the evaluator Job")
    write_progress(kube.ns, "pulls", 18, phase="Succeeded")
    kube.set_job("pulls-train", "Created", "Running", "Succeeded")
    wait_for(lambda: kube.status("scoreruns", "pulls").get("phase") == "Succeeded", "done")
    kube.create({
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CorrectorService",
        "metadata": {"name": "pulls-svc", "namespace": kube.ns},
        "spec": {"model": {"scoreRun": "pulls"}},
    })
    isvc = wait_for(lambda: kube.get("inferenceservices", "pulls-svc", "serving.kserve.io",
                                     "v1beta1"), "the InferenceService", timeout=45)
    children = [job, {**kube.core.api_client.sanitize_for_serialization(eval_job), "kind": "Job"},
                isvc]
    pods = [pod for child in children for pod in _pod_specs(child)]
    assert len(pods) == 5  # master, worker, evaluator, predictor, transformer
    for pod in pods:
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        for container in pod.get("containers", []):
            assert container["imagePullPolicy"] == "Always"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == \
        "RawDeployment"
    account = kube.core.read_namespaced_service_account("pulls-svc-storage", kube.ns)
    assert [s.name for s in account.secrets] == ["team-s3"]  # the run's, not the platform's
