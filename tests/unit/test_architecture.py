"""The package's shape, held to the goals in ``hack/architecture.py``'s docstring."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _measure(root: Path):
    spec = importlib.util.spec_from_file_location("architecture", ROOT / "hack" / "architecture.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("architecture", mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.measure(root)


@pytest.fixture(scope="module")
def report():
    return _measure(ROOT)


def test_long_modules_state_why(report) -> None:
    unexplained = [m["file"] for m in report.long_modules if not m["reason"]]
    assert not unexplained, f"modules over 400 lines without a 'Size:' line: {unexplained}"


def test_at_most_five_long_functions(report) -> None:
    names = [f"{f['file']}:{f['function']} ({f['lines']})" for f in report.long_functions]
    assert len(names) <= 5, names


def test_no_import_cycles(report) -> None:
    assert report.cycles == []


def test_names_are_matched_only_in_registries(report) -> None:
    found = [f"{c['file']}:{c['line']} {c['literals']}" for c in report.name_comparisons]
    assert found == []


def test_test_harnesses_are_not_in_the_wheel(report) -> None:
    assert "scoreops" in report.wheel_packages
    assert not [p for p in report.wheel_packages if "testing" in p or "testkit" in p]


def test_the_measure_finds_what_it_looks_for(tmp_path: Path) -> None:
    """A tree with one of each problem: the checks above can fail."""
    import textwrap

    pkg = tmp_path / "python" / "scoreops"
    (pkg / "testing").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "testing" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from scoreops import b\n\n\ndef long():\n" + "    x = 1\n" * 61)
    (pkg / "b.py").write_text(textwrap.dedent("""
        def f(kind):
            from scoreops import a
            return kind == "ScoreRun"
    """) + "x = 1\n" * 400)
    found = _measure(tmp_path)
    assert [m["file"] for m in found.long_modules] == ["python/scoreops/b.py"]
    assert [f["function"] for f in found.long_functions] == ["long"]
    assert found.cycles == [["scoreops.a", "scoreops.b"]]
    assert [c["literals"] for c in found.name_comparisons] == [["ScoreRun"]]
    assert "scoreops.testing" in found.wheel_packages
