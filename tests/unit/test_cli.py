"""The command line: help explains the verbs, start-up is light, validate exits 2 with fields."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scoreops.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for verb in ("run", "eval", "serve", "query", "crds", "data", "validate", "render"):
        assert f"    {verb}" in out, verb


def test_startup_imports_no_heavy_module() -> None:
    code = (
        "import sys, scoreops.cli as c\n"
        "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'kserve', 'boto3', 'vllm', 'kopf')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "HEAVY []" in out


def test_validate_reports_fields_and_exit_code(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: scoreops.io/v1alpha1\nkind: ScoreRun\nmetadata: {name: x}\n"
        "spec:\n  model: {uri: s3://models/m}\n  dataset: {train: {uri: d.jsonl}}\n"
        "  algorithm: {name: score, score: {alpha: -3}}\n  output: {uri: s3://runs/x}\n"
    )
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "spec.algorithm.score.alpha" in err
    assert main(["validate", str(ROOT / "manifests/examples/scorerun-tiny.yaml")]) == 0
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2


def test_crds_stdout_is_three_documents(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    assert main(["crds", "--stdout"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert sorted(d["spec"]["names"]["kind"] for d in docs) == [
        "CorrectorService", "EvalSuite", "ScoreRun"]
