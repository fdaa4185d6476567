"""Fixtures for integration tests against real servers on loopback.

S3: ``s3_server`` is a session fixture parametrised over the servers in
``$SCOREOPS_S3_SERVERS`` (default ``rclone,ceph``); pytest groups the tests by server, so
each one is started once per session (Ceph: a few seconds, plus a one-time
``apt-get install`` of radosgw/ceph-mon/ceph-osd). ``s3_env`` points
:mod:`scoreops.storage` at the server; ``s3_bucket`` adds a fresh bucket per test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from scoreops import storage
from testkit.s3 import KINDS, S3Server, S3ServerError

_S3_VARS_TO_CLEAR = (
    "AWS_ENDPOINT_URL_S3",
    "S3_ENDPOINT_URL",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


def _s3_kinds() -> list[str]:
    raw = os.environ.get("SCOREOPS_S3_SERVERS", ",".join(KINDS))
    kinds = [k.strip() for k in raw.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise pytest.UsageError(
            f"SCOREOPS_S3_SERVERS names unknown servers {unknown}: use {', '.join(KINDS)}"
        )
    return kinds


@pytest.fixture(scope="session", params=_s3_kinds())
def s3_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Server]:
    """A running S3 server (rclone serve s3, or Ceph radosgw); logs stay in pytest's
    basetemp, so a failed session can be inspected."""
    kind = request.param
    server = S3Server(kind, tmp_path_factory.mktemp(f"s3-{kind}"))
    try:
        server.start()
    except S3ServerError as exc:
        server.stop()
        pytest.fail(
            f"could not start the {kind} S3 server (set SCOREOPS_S3_SERVERS to choose "
            f"servers):\n{exc}",
            pytrace=False,
        )
    print(f"\n{kind} S3 server ready at {server.endpoint} in {server.startup_seconds:.2f}s")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """The environment of this test points scoreops.storage at ``s3_server``; the client
    cache is reset before and after."""
    for name in _S3_VARS_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    # a failing test should fail fast, not back off against a dead server for minutes
    monkeypatch.setenv("SCOREOPS_S3_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("SCOREOPS_S3_CONNECT_RETRIES", "1")
    storage.clear_client_cache()
    try:
        yield s3_server
    finally:
        storage.clear_client_cache()


@pytest.fixture
def s3_bucket(s3_env: S3Server) -> str:
    """``s3://<fresh bucket>`` on the current server."""
    return s3_env.create_bucket(f"t-{uuid.uuid4().hex[:16]}")
