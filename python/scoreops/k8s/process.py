"""Run the operator as a local process against any API server (development, tests, benchmarks).

    with OperatorProcess(kubeconfig, env={"SCOREOPS_SYNC_INTERVAL": "1"}) as op:
        ...                       # kopf run --standalone ... operator/main.py
        op.kill()                 # SIGKILL, as a crashed pod would die
        op.start()                # and back

It is the same command the operator image runs, with the liveness endpoint on a free
loopback port; :meth:`OperatorProcess.wait_ready` polls it. Peak memory (``VmHWM``) is read
from ``/proc`` before the process exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self


def operator_main() -> Path:
    """``operator/main.py``: ``$SCOREOPS_OPERATOR_MAIN``, the image's path, or this checkout's."""
    candidates = [Path(p) for p in (os.environ.get("SCOREOPS_OPERATOR_MAIN"),) if p]
    candidates += [Path("/opt/scoreops/operator/main.py"),
                   Path(__file__).resolve().parents[3] / "operator" / "main.py"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "cannot find operator/main.py; set SCOREOPS_OPERATOR_MAIN "
        f"(looked in: {', '.join(str(c) for c in candidates)})"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """``kopf run --standalone`` on ``operator/main.py`` with a given kubeconfig and env."""

    def __init__(self, kubeconfig: str | os.PathLike[str], *,
                 env: Mapping[str, str] | None = None, namespace: str | None = None,
                 log_path: str | os.PathLike[str] | None = None) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.extra_env = dict(env or {})
        self.namespace = namespace
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._log: IO[bytes] | None = None
        self.peak_rss_kib = 0

    def command(self) -> list[str]:
        scope = ["--namespace", self.namespace] if self.namespace else ["--all-namespaces"]
        return [sys.executable, "-m", "kopf", "run", "--standalone",
                f"--liveness=http://127.0.0.1:{self.port}/healthz", *scope,
                str(operator_main())]

    def start(self) -> Self:
        if self.running:
            return self
        self.port = free_port()
        env = {**os.environ, **self.extra_env, "KUBECONFIG": str(self.kubeconfig)}
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in _reap)
        self.proc = subprocess.Popen(self.command(), env=env, stdout=self._log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the liveness endpoint answers (kopf is logged in and watching)."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/healthz"
        while True:
            if not self.running:
                raise RuntimeError(f"the operator exited with {self.proc and self.proc.returncode}"
                                   + self._log_tail())
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            self.sample_rss()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the operator was not ready after {timeout}s"
                                   + self._log_tail())
            time.sleep(0.1)

    def sample_rss(self) -> int:
        """Peak resident memory so far, in KiB (VmHWM from /proc); also kept in peak_rss_kib."""
        if self.proc is None:
            return self.peak_rss_kib
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return self.peak_rss_kib
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
        return self.peak_rss_kib

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a node dies or the OOM killer strikes."""
        if self.running and self.proc is not None:
            self.sample_rss()
            self.proc.kill()
        self._reap()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM and wait (kopf finishes the handlers in flight), SIGKILL after ``timeout``."""
        if self.running and self.proc is not None:
            self.sample_rss()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def _reap(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n" + "\n".join(tail)

    def __enter__(self) -> Self:
        self.start()
        self.wait_ready()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
