"""Suite-wide pytest hooks: no silent skips.

Many tests skip themselves when an optional package, the built-in model or a second
interpreter is missing (``pytest.importorskip``, ``pytest.skip``). A broken install step would
then still give a green run. With ``--fail-on-unexpected-skips`` (what ``hack/test.sh``, and
so ``make test``, passes) the session fails when any test or module is skipped unless
``tests/expected-skips.txt`` names it and says why.

``tests/expected-skips.txt``: one ``PATTERN | REASON`` per line (``#`` starts a comment).
``PATTERN`` is an ``fnmatch`` pattern over the skipped node id (``tests/unit/test_x.py::test_y``,
or the module path for a module skipped at import); ``REASON`` must not be empty.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

ALLOWLIST = Path(__file__).parent / "expected-skips.txt"
_OPTION = "--fail-on-unexpected-skips"


class AllowlistError(ValueError):
    pass


def load_allowlist(path: Path = ALLOWLIST) -> list[tuple[str, str]]:
    """(pattern, reason) pairs of the expected skips; a line without a reason is an error."""
    if not path.exists():
        return []
    entries = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = "" if raw.lstrip().startswith("#") else raw.strip()
        if not line:
            continue
        pattern, sep, reason = line.partition("|")
        if not sep or not pattern.strip() or not reason.strip():
            raise AllowlistError(f"{path.name}:{number}: expected 'PATTERN | REASON', got {raw!r}")
        entries.append((pattern.strip(), reason.strip()))
    return entries


def unexpected_skips(skipped: list[tuple[str, str]],
                     allowed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (node id, skip reason) pairs no allowlist pattern matches."""
    return [(nodeid, why) for nodeid, why in skipped
            if not any(fnmatch.fnmatchcase(nodeid, pattern) for pattern, _ in allowed)]


def _reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        _OPTION, action="store_true", default=False,
        help="fail the session when a test is skipped that tests/expected-skips.txt does "
             "not name (make test sets this)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption(_OPTION):
        try:
            allowed = load_allowlist()
        except AllowlistError as exc:
            raise pytest.UsageError(str(exc)) from exc
        config.pluginmanager.register(SkipGuard(allowed), "scoreops-skip-guard")


class SkipGuard:
    """Records every skip of the session and fails it on those the allowlist lacks."""

    def __init__(self, allowed: list[tuple[str, str]]) -> None:
        self.allowed = allowed
        self.skipped: list[tuple[str, str]] = []
        self.unexpected: list[tuple[str, str]] = []

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and report.nodeid and not hasattr(report, "wasxfail"):
            self.skipped.append((report.nodeid, _reason(report)))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.unexpected = unexpected_skips(self.skipped, self.allowed)
        if self.unexpected and session.exitstatus in (pytest.ExitCode.OK,
                                                      pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.unexpected:
            return
        terminalreporter.section("unexpected skips", sep="=", red=True, bold=True)
        for nodeid, why in self.unexpected:
            terminalreporter.line(f"SKIPPED {nodeid}: {why}", red=True)
        terminalreporter.line(
            f"{len(self.unexpected)} skip(s) not named in tests/{ALLOWLIST.name}: install what "
            "they need (make install) or add 'PATTERN | REASON' there", red=True)
