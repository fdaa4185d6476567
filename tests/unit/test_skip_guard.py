"""No silent skips: ``--fail-on-unexpected-skips`` (tests/conftest.py) fails a session whose
skips ``expected-skips.txt`` does not name, in a scratch project with a copy of the hook."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

TESTS = {
    "test_a.py": (
        "import pytest\n"
        "def test_runs():\n    assert True\n"
        "def test_needs_x():\n    pytest.skip('needs x')\n"
    ),
    "test_b.py": (
        "import pytest\n"
        "pytest.importorskip('no_such_package_here')\n"
        "def test_never():\n    assert False\n"
    ),
}


def _run(tmp_path: Path, allow: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    project = tmp_path / "proj"
    project.mkdir(exist_ok=True)
    shutil.copy(CONFTEST, project / "conftest.py")
    for name, text in TESTS.items():
        (project / name).write_text(text)
    if allow is not None:
        (project / "expected-skips.txt").write_text(allow)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(project), str(project), *args],
        capture_output=True, text=True, cwd=project, check=False)


def test_an_unlisted_skip_fails_the_session(tmp_path: Path) -> None:
    proc = _run(tmp_path, "", "--fail-on-unexpected-skips")
    assert proc.returncode == 1, proc.stdout
    assert "unexpected skips" in proc.stdout
    assert "test_a.py::test_needs_x: needs x" in proc.stdout
    # a module skipped at import (importorskip) counts too
    assert "SKIPPED test_b.py: " in proc.stdout and "no_such_package_here" in proc.stdout


def test_listed_skips_pass_and_the_option_is_off_by_default(tmp_path: Path) -> None:
    allow = ("# comment\n"
             "test_a.py::test_needs_x | x is not on CI machines\n"
             "test_b.py | the package is optional\n")
    assert _run(tmp_path, allow, "--fail-on-unexpected-skips").returncode == 0
    # a pattern matches several
    assert _run(tmp_path, "test_*.py* | all optional\n",
                "--fail-on-unexpected-skips").returncode == 0
    # without the option (a developer's targeted run) skips stay skips
    assert _run(tmp_path, "").returncode == 0


def test_a_listed_skip_without_a_reason_is_refused(tmp_path: Path) -> None:
    proc = _run(tmp_path, "test_a.py::test_needs_x\n", "--fail-on-unexpected-skips")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    assert "expected-skips.txt:1: expected 'PATTERN | REASON'" in proc.stderr


def test_the_repository_allowlist_is_well_formed() -> None:
    # by path: in a whole-suite run the module name ``conftest`` is another directory's
    spec = importlib.util.spec_from_file_location("scoreops_tests_root_conftest", CONFTEST)
    assert spec is not None and spec.loader is not None
    root = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root)
    entries = root.load_allowlist(root.ALLOWLIST)
    # every entry names tests that exist, with a reason a reader can act on
    for pattern, reason in entries:
        assert pattern.startswith("tests/") and len(reason) > 20, (pattern, reason)
        assert (CONFTEST.parent.parent / pattern.split("::")[0]).exists(), pattern
